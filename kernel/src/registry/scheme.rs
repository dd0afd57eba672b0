//! Read-only views published under `scheme:path` names, in the style of Redox's schemes.
//!
//! A service registers a name (`pci:devices`, `dma:pools`, …) and a function that renders its
//! current state as text. The shell's `cat NAME` prints it, and in-kernel tests read the same
//! text, so what a user sees is what the tests check.

use alloc::string::String;
use alloc::vec::Vec;
use spin::Mutex;

/// Renders a view.
pub type Render = fn() -> String;

static VIEWS: Mutex<Vec<(&'static str, &'static str, Render)>> = Mutex::new(Vec::new());

/// Publishes `name` (with a one-line description). A second registration of a name replaces it.
pub fn register(name: &'static str, about: &'static str, render: Render) {
    let mut views = VIEWS.lock();
    views.retain(|(n, _, _)| *n != name);
    views.push((name, about, render));
    views.sort_by_key(|(n, _, _)| *n);
}

/// Renders `name`, or `None` if nothing is published under it.
pub fn read(name: &str) -> Option<String> {
    // Copy the function out so rendering does not hold the registry lock.
    let render = VIEWS.lock().iter().find(|(n, _, _)| *n == name).map(|(_, _, r)| *r)?;
    Some(render())
}

/// Every published name with its description.
pub fn list() -> Vec<(&'static str, &'static str)> {
    VIEWS.lock().iter().map(|(n, a, _)| (*n, *a)).collect()
}
