//! The in-kernel test runner.
//!
//! Some claims can only be checked on the machine: that the frame allocator's runs are really
//! RAM, that ECAM reads return the devices QEMU attached, that a device's DMA lands where the
//! driver said. Those tests live here and run inside the booted kernel when the shell gets
//! `ktest`. Each prints one line, in a format `cargo xtask test` parses:
//!
//! ```text
//! ktest: begin 12 tests
//! ktest: [0] memory::frames_are_ram ... ok
//! ktest: [1] pci::ahci_present ... FAILED: no device with class 01/06/01
//! ktest: done passed=11 failed=1
//! ```
//!
//! A test that panics (or faults) cannot be resumed: there is no unwinding in this kernel. The
//! crash path ([`crate::arch::crash`]) calls the hook this runner installs, which prints `FAILED`
//! for the running test with the panic's message and location, and QEMU exits; xtask then boots again with `ktest --from N+1`, so one panic costs one test, not
//! the run.

mod block;
mod dma;
mod inject;
mod iommu;
mod memory;
mod net;
mod platform;
mod watch;

use crate::registry::commands::Command;
use alloc::string::String;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Why a test did not pass.
#[derive(Debug)]
pub enum TestError {
    /// Something the test checked was false: the message says what.
    Failed(String),
    /// The machine lacks what the test needs (a VT-d unit, a device interrupt). The test says
    /// so instead of passing: `cargo xtask test` counts it as skipped, and as a failure on the
    /// machines that must run it.
    Skipped(&'static str),
}

impl From<String> for TestError {
    fn from(reason: String) -> Self {
        TestError::Failed(reason)
    }
}

impl From<&str> for TestError {
    fn from(reason: &str) -> Self {
        TestError::Failed(reason.into())
    }
}

/// What a test returns: `Err` says whether it failed (and why) or did not apply.
pub type TestResult = Result<(), TestError>;

/// Ends a test that does not apply to this machine, saying why.
pub fn skip(reason: &'static str) -> TestResult {
    Err(TestError::Skipped(reason))
}

/// One in-kernel test.
pub struct KernelTest {
    /// `module::name`, as printed.
    pub name: &'static str,
    /// The test.
    pub run: fn() -> TestResult,
}

/// Every in-kernel test, in the order they run.
fn all_tests() -> impl Iterator<Item = &'static KernelTest> {
    memory::TESTS
        .iter()
        .chain(platform::TESTS.iter())
        .chain(dma::TESTS.iter())
        .chain(iommu::TESTS.iter())
        .chain(iommu::interrupt_remap::TESTS.iter())
        .chain(watch::TESTS.iter())
        .chain(inject::TESTS.iter())
        .chain(net::TESTS.iter())
        .chain(block::TESTS.iter())
}

/// Tests that fail on purpose, to prove the runner reports failures (`ktest --demo-failures`).
static DEMO_FAILURES: &[KernelTest] = &[
    KernelTest { name: "demo::returns_an_error", run: || Err("this test fails on purpose".into()) },
    KernelTest { name: "demo::panics", run: demo_panic },
    KernelTest { name: "demo::page_fault", run: demo_page_fault },
    KernelTest { name: "demo::stack_overflow", run: demo_stack_overflow },
    KernelTest { name: "demo::fault_with_the_heap_locked", run: demo_fault_with_the_heap_locked },
    KernelTest { name: "demo::passes", run: || Ok(()) },
];

/// Panics. Never inlined, so that the backtrace has a frame of its own to name.
#[inline(never)]
fn demo_panic() -> TestResult {
    panic!("this test panics on purpose")
}

/// An address nothing maps: the demo faults read it, and the runner's self-check expects the
/// page-fault report to name it (`read of 0xdeadbeef000`).
const UNMAPPED: u64 = 0x0000_0dea_dbee_f000;

/// Reads an address nothing maps: the page-fault handler must name it.
#[inline(never)]
fn demo_page_fault() -> TestResult {
    let unmapped = UNMAPPED as *const u64;
    // SAFETY: not sound, on purpose: this read faults, and the test shows how a fault is reported.
    let value = unsafe { unmapped.read_volatile() };
    Err(alloc::format!("read {value:#x} from an unmapped address without a fault").into())
}

/// Faults while the heap's lock is held, as a fault inside an allocation would: the report must
/// still appear, so nothing on the crash path may allocate.
#[inline(never)]
fn demo_fault_with_the_heap_locked() -> TestResult {
    #[cfg(target_os = "none")]
    {
        let unmapped = UNMAPPED as *const u64;
        // SAFETY: not sound, on purpose: this read faults with the heap locked.
        let value = crate::mm::while_heap_locked(|| unsafe { unmapped.read_volatile() });
        Err(alloc::format!("read {value:#x} from an unmapped address without a fault").into())
    }
    #[cfg(not(target_os = "none"))]
    {
        Ok(())
    }
}

/// Recurses until the kernel stack runs into its guard page. The page fault cannot be delivered
/// on the overflowed stack, so the CPU raises a double fault, handled on its own IST stack.
fn demo_stack_overflow() -> TestResult {
    #[allow(unconditional_recursion)]
    fn recurse(depth: u64) -> u64 {
        let frame = [depth; 64];
        core::hint::black_box(&frame);
        recurse(depth + 1) + frame[depth as usize % 64]
    }
    Err(alloc::format!("recursion returned {}", recurse(0)).into())
}

const NO_TEST: usize = usize::MAX;
static RUNNING: AtomicUsize = AtomicUsize::new(NO_TEST);
static RUNNING_NAME: spin::Mutex<&'static str> = spin::Mutex::new("");

/// Runs the tests from index `from` on whose name contains `filter`. Returns (passed, failed).
pub fn run(from: usize, filter: &str, demo_failures: bool) -> (usize, usize) {
    let tests: alloc::vec::Vec<&KernelTest> = if demo_failures {
        DEMO_FAILURES.iter().collect()
    } else {
        all_tests().filter(|t| t.name.contains(filter)).collect()
    };
    crate::println!("ktest: begin {} tests", tests.len());
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (index, test) in tests.iter().enumerate().skip(from) {
        *RUNNING_NAME.lock() = test.name;
        RUNNING.store(index, Ordering::SeqCst);
        let result = (test.run)();
        RUNNING.store(NO_TEST, Ordering::SeqCst);
        match result {
            Ok(()) => {
                passed += 1;
                crate::println!("ktest: [{index}] {} ... ok", test.name);
            }
            Err(TestError::Failed(reason)) => {
                failed += 1;
                crate::println!("ktest: [{index}] {} ... FAILED: {reason}", test.name);
            }
            Err(TestError::Skipped(reason)) => {
                skipped += 1;
                crate::println!("ktest: [{index}] {} ... skipped: {reason}", test.name);
            }
        }
    }
    crate::println!("ktest: done passed={passed} failed={failed} skipped={skipped}");
    (passed, failed)
}

/// The shell command this runner adds.
static COMMANDS: &[Command] = &[Command {
    name: "ktest",
    usage: "ktest [--from N] [FILTER] | ktest --demo-failures",
    about: "run the in-kernel tests",
    run: ktest_command,
}];

/// Brings the runner in: registers the `ktest` command and installs the crash hook. Called once
/// at boot.
pub fn init() {
    crate::registry::commands::register(COMMANDS);
    crate::registry::commands::register(inject::COMMANDS);
    install_crash_hook();
}

/// The `ktest` command: parses its arguments and runs the tests.
fn ktest_command(args: &[&str]) {
    let mut from = 0;
    let mut filter = "";
    let mut demo = false;
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        match arg {
            "--from" => match it.next().and_then(|n| n.parse().ok()) {
                Some(n) => from = n,
                None => {
                    crate::println!("ktest: --from needs a number");
                    return;
                }
            },
            "--demo-failures" => demo = true,
            f => filter = f,
        }
    }
    run(from, filter, demo);
}

/// Installs the runner's crash hook ([`crate::arch::crash::set_hook`]): a panic or CPU exception
/// during a test is reported as that test's failure.
fn install_crash_hook() {
    crate::arch::crash::set_hook(crate::arch::crash::CrashHook {
        panic: report_panic,
        after_backtrace: report_abort,
        exception: report_exception,
    });
}

/// A panic: if a test is running, prints its `FAILED` line and returns true. Nothing here
/// allocates: the panic may have come from inside the allocator, with the heap's lock held.
fn report_panic(file: &str, line: u32, message: &dyn core::fmt::Display) -> bool {
    let index = RUNNING.load(Ordering::SeqCst);
    if index == NO_TEST {
        return false;
    }
    // Do not take RUNNING_NAME's lock if the panic happened while it was held.
    let name = RUNNING_NAME.try_lock().map(|n| *n).unwrap_or("?");
    crate::println!("ktest: [{index}] {name} ... FAILED: panicked at {file}:{line}: {message}");
    true
}

/// After a panic's backtrace: says where a rerun must resume.
fn report_abort() {
    let index = RUNNING.load(Ordering::SeqCst);
    if index != NO_TEST {
        crate::println!("ktest: aborted at {index}");
    }
}

/// A fatal CPU exception, with the handler's report: fails the running test, if any.
fn report_exception(exception: &dyn core::fmt::Display) {
    let index = RUNNING.load(Ordering::SeqCst);
    if index != NO_TEST {
        let name = RUNNING_NAME.try_lock().map(|n| *n).unwrap_or("?");
        crate::println!("ktest: [{index}] {name} ... FAILED: CPU exception: {exception}");
        crate::println!("ktest: aborted at {index}");
    }
}

/// `check!(cond, "format", args)` returns `Err(message)` from the test when `cond` is false.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(alloc::format!($($msg)*).into());
        }
    };
}
