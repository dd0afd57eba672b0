//! The end of the road: a panic or a fatal CPU exception.
//!
//! Both print a report and a backtrace, then stop (QEMU exits with a failure status). The
//! in-kernel test runner, which lives in a layer above and is not always built in, wants to
//! turn a crash into the running test's `FAILED` line: it installs a [`CrashHook`] at boot,
//! and the crash path calls it instead of naming the runner. Without a hook the kernel prints
//! its own `KERNEL PANIC` line and stops.
//!
//! Nothing here allocates: the crash may have come from inside the allocator, with the heap's
//! lock held. The hook is read with [`Once::get`], which never waits.

use super::{backtrace, exit, serial};
use core::fmt;
use spin::Once;

/// What a layer above wants to hear about a crash (the test runner's, see `ktest::init`).
pub struct CrashHook {
    /// A panic at `file:line` with `message`, before its backtrace. Returns true if it reported
    /// the panic itself (as a test's failure); then the kernel's `KERNEL PANIC` line is left out.
    pub panic: fn(file: &str, line: u32, message: &dyn fmt::Display) -> bool,
    /// After the panic's backtrace, just before the kernel stops.
    pub after_backtrace: fn(),
    /// A fatal CPU exception, after its report and backtrace, just before the kernel stops.
    pub exception: fn(report: &dyn fmt::Display),
}

static HOOK: Once<CrashHook> = Once::new();

/// Installs the crash hook. The first registration wins.
pub fn set_hook(hook: CrashHook) {
    HOOK.call_once(|| hook);
}

/// Called by the panic handler: reports the panic (through the hook, or as a `KERNEL PANIC`
/// line), prints a backtrace, and stops.
pub fn panicked(info: &core::panic::PanicInfo) -> ! {
    serial::begin_crash_report();
    let (file, line) = info.location().map(|l| (l.file(), l.line())).unwrap_or(("unknown location", 0));
    let hook = HOOK.get();
    let reported = hook.is_some_and(|h| (h.panic)(file, line, &info.message()));
    if !reported {
        crate::println!("KERNEL PANIC at {file}:{line}: {}", info.message());
    }
    backtrace::print_here();
    if let Some(hook) = hook {
        (hook.after_backtrace)();
    }
    exit::exit_qemu(exit::QemuExitCode::Failed)
}

/// Called by exception handlers once they printed their report: tell the hook, and stop.
pub fn stop_after_exception(report: &dyn fmt::Display) -> ! {
    if let Some(hook) = HOOK.get() {
        (hook.exception)(report);
    }
    exit::exit_qemu(exit::QemuExitCode::Failed)
}
