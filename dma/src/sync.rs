//! The lock behind the DMA pool's shared state and the bounce area's slot map, swapped for
//! `loom`'s under `cfg(loom)`.
//!
//! Normally [`Mutex`] is `spin::Mutex`: the kernel has no scheduler to sleep on, and these
//! critical sections are a few dozen instructions. A spin lock is invisible to the `loom` model
//! checker, though: loom runs one thread at a time and switches only at operations it knows,
//! so it would never see two threads race for the lock (and a thread spinning on a lock held
//! by another would spin for ever). Built with `RUSTFLAGS="--cfg loom"`, [`Mutex`] wraps
//! `loom::sync::Mutex` behind the same `new`/`lock`/`get_mut` calls, and the models in
//! `dma/tests/loom_*.rs` explore every interleaving of the real pool and bounce code.
//!
//! Only locks created at run time go through here: loom's cannot be built in a `const`, so
//! the registries in `static`s stay `spin::Mutex` (the models create and destroy pools and
//! devices on one thread, where those are uncontended).

#[cfg(not(loom))]
pub(crate) use spin::Mutex;

/// `loom::sync::Mutex` with `spin::Mutex`'s calls.
#[cfg(loom)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Mutex<T> {
        Mutex(loom::sync::Mutex::new(value))
    }

    /// Locks; a poisoned lock (a model thread panicked holding it) is taken as it is, the
    /// panic being the failure loom reports.
    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.0.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}
