//! Time: the CPU's time-stamp counter, calibrated once against the ACPI PM timer.
//!
//! Drivers need deadlines ("the reset bit must clear within 1 ms", "a command that has not
//! completed in 5 s has hung"). The TSC is the cheapest clock there is — one instruction — but
//! its frequency is not architecturally known. The ACPI power-management timer has a fixed
//! frequency, 3.579545 MHz (ACPI 6.5 §4.8.3.3), so counting TSC ticks across a known number of
//! PM-timer ticks gives the TSC frequency. Without a PM timer we assume 1 GHz, and say so.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

/// PM timer frequency in Hz.
const PM_TIMER_HZ: u64 = 3_579_545;

/// TSC ticks per microsecond (at least 1).
static TSC_PER_US: AtomicU64 = AtomicU64::new(1000);

/// How many times the CPU halted in [`sleep_until_interrupt`], and for how many TSC ticks.
static SLEEPS: AtomicU64 = AtomicU64::new(0);
static SLEPT_TSC: AtomicU64 = AtomicU64::new(0);

/// Halts so far and the microseconds spent halted (for `sys:report` and idle checks).
pub fn sleep_stats() -> (u64, u64) {
    (SLEEPS.load(Ordering::Relaxed), SLEPT_TSC.load(Ordering::Relaxed) / TSC_PER_US.load(Ordering::Relaxed))
}

/// Reads the time-stamp counter.
pub fn tsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Calibrates the TSC over ~10 ms of the PM timer at `pm_timer_port`.
pub fn init(pm_timer_port: Option<u16>) {
    let Some(port) = pm_timer_port else {
        log::warn!("time: no ACPI PM timer; assuming a 1 GHz TSC (timeouts may be off)");
        return;
    };
    // SAFETY: reading the PM timer has no side effects.
    let read = || unsafe { Port::<u32>::new(port).read() } & 0x00ff_ffff;
    let wanted = PM_TIMER_HZ / 100; // 10 ms
    let mut elapsed = 0u64;
    let mut last = read();
    let start_tsc = tsc();
    while elapsed < wanted {
        let now = read();
        elapsed += u64::from(now.wrapping_sub(last) & 0x00ff_ffff);
        last = now;
    }
    let ticks = tsc() - start_tsc;
    let per_us = (ticks * PM_TIMER_HZ / elapsed / 1_000_000).max(1);
    TSC_PER_US.store(per_us, Ordering::Relaxed);
    log::info!("time: TSC runs at {} MHz (calibrated on the ACPI PM timer)", per_us);
}

/// Microseconds since an arbitrary point (boot, roughly).
pub fn now_us() -> u64 {
    tsc() / TSC_PER_US.load(Ordering::Relaxed)
}

/// A point in time after which something is late.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    /// `us` microseconds from now.
    pub fn after_us(us: u64) -> Self {
        Deadline(tsc().saturating_add(us.saturating_mul(TSC_PER_US.load(Ordering::Relaxed))))
    }

    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self::after_us(ms.saturating_mul(1000))
    }

    /// True once the deadline has passed.
    pub fn expired(&self) -> bool {
        tsc() >= self.0
    }
}

/// Polls `done` until it returns true or `timeout_us` passes; true if it completed.
pub fn poll_until(timeout_us: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Deadline::after_us(timeout_us);
    loop {
        if done() {
            return true;
        }
        if deadline.expired() {
            return done();
        }
        core::hint::spin_loop();
    }
}

/// Sleeps (`hlt`) until any interrupt, or at most `max_us`: the CPU does nothing while a
/// device works, instead of spinning. Without the APIC wake-up timer it only enables interrupts
/// and returns (the caller's loop then spins, as before).
///
/// Call it with interrupts **disabled**, right after finding nothing to do: `sti; hlt` takes no
/// interrupt between the two instructions (`sti` delays interrupts by one instruction), so a
/// device interrupt that arrives after the check ends the `hlt` instead of slipping in before
/// it and leaving the CPU asleep. Returns with interrupts enabled.
pub fn sleep_until_interrupt(max_us: u64) {
    if crate::arch::apic::arm_wakeup_timer(max_us) {
        let start = tsc();
        x86_64::instructions::interrupts::enable_and_hlt();
        SLEEPS.fetch_add(1, Ordering::Relaxed);
        SLEPT_TSC.fetch_add(tsc().saturating_sub(start), Ordering::Relaxed);
    } else {
        x86_64::instructions::interrupts::enable();
    }
}

/// Lets the CPU rest for up to `max_us`, or until an interrupt: for loops that poll for work
/// (the shell waiting for a key). Falls back to a spin-loop hint when interrupts are off.
pub fn rest(max_us: u64) {
    if !x86_64::instructions::interrupts::are_enabled() {
        core::hint::spin_loop();
        return;
    }
    x86_64::instructions::interrupts::disable();
    sleep_until_interrupt(max_us);
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    let deadline = Deadline::after_us(us);
    while !deadline.expired() {
        core::hint::spin_loop();
    }
}

/// The kernel's clock, for drivers (`device_io::Clock`).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelClock;

impl device_io::Clock for KernelClock {
    fn now_us(&self) -> u64 {
        now_us()
    }
}
