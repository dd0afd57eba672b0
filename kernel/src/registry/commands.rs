//! Shell commands, registered by the layers that implement them.
//!
//! A service hands its table of [`Command`]s to [`register`] when it comes up (the network
//! service its `ping` and `ifconfig`, the block service its `disk`, the test runner its `ktest`),
//! and the shell finds them here by name. So the shell imports no service, and a command that is
//! not compiled in is not listed by `help`.
//!
//! The same goes for idle work: the shell calls [`run_idle`] between keys, and the network
//! service registers its poll with [`register_idle`].

use alloc::vec::Vec;
use spin::Mutex;

/// One shell command.
pub struct Command {
    /// What the user types.
    pub name: &'static str,
    /// How to call it, for `help`.
    pub usage: &'static str,
    /// What it does, for `help`.
    pub about: &'static str,
    /// Runs it with the words after the name.
    pub run: fn(&[&str]),
}

/// Every registered table, in registration order.
static TABLES: Mutex<Vec<&'static [Command]>> = Mutex::new(Vec::new());

/// Work for the shell's idle loop.
static IDLE: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Adds `commands`; `help` lists them after those registered before.
pub fn register(commands: &'static [Command]) {
    TABLES.lock().push(commands);
}

/// Every registered command, in registration order.
pub fn all() -> Vec<&'static Command> {
    TABLES.lock().iter().flat_map(|table| table.iter()).collect()
}

/// The first registered command called `name`. The lock is released before it returns, so the
/// command may run commands itself.
pub fn find(name: &str) -> Option<&'static Command> {
    TABLES.lock().iter().flat_map(|table| table.iter()).find(|c| c.name == name)
}

/// Adds `work` to what the shell does while it waits for a key.
pub fn register_idle(work: fn()) {
    IDLE.lock().push(work);
}

/// Runs every idle function once (the lock is not held while one runs).
pub fn run_idle() {
    let mut index = 0;
    while let Some(work) = IDLE.lock().get(index).copied() {
        work();
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing(_: &[&str]) {}

    static FIRST: &[Command] = &[Command { name: "first-test-cmd", usage: "", about: "", run: nothing }];
    static SECOND: &[Command] = &[
        Command { name: "second-test-cmd", usage: "", about: "", run: nothing },
        Command { name: "first-test-cmd", usage: "shadowed", about: "", run: nothing },
    ];

    #[test]
    fn commands_are_found_and_listed_in_registration_order() {
        register(FIRST);
        register(SECOND);
        let names: Vec<&str> = all().iter().map(|c| c.name).filter(|n| n.ends_with("-test-cmd")).collect();
        assert_eq!(names, ["first-test-cmd", "second-test-cmd", "first-test-cmd"]);
        assert_eq!(find("first-test-cmd").map(|c| c.usage), Some(""));
        assert!(find("no-such-test-cmd").is_none());
    }
}
