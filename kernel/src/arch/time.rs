//! Time: the CPU's time-stamp counter, calibrated once against the ACPI PM timer.
//!
//! Drivers need deadlines ("the reset bit must clear within 1 ms", "a command that has not
//! completed in 5 s has hung"). The TSC is the cheapest clock there is — one instruction — but
//! its frequency is not architecturally known. The ACPI power-management timer has a fixed
//! frequency, 3.579545 MHz (ACPI 6.5 §4.8.3.3), so counting TSC ticks across a known number of
//! PM-timer ticks gives the TSC frequency. Without a PM timer we assume 1 GHz, and say so.
//!
//! Sleeping needs an alarm as well: the local APIC's one-shot timer ([`init_wakeup_timer`]) ends
//! a `hlt` that no device interrupt ends, so [`sleep_until_interrupt`] and [`rest`] are bounded.

use super::{apic, interrupts};
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
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
    if arm_wakeup_timer(max_us) {
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

/// Local APIC timer ticks per microsecond (divide-by-16), 0 until [`init_wakeup_timer`] ran.
static TIMER_TICKS_PER_US: AtomicU32 = AtomicU32::new(0);
/// The vector the wake-up timer fires on.
static TIMER_VECTOR: AtomicU8 = AtomicU8::new(0);

/// Times the wake-up timer has fired.
static TIMER_FIRES: AtomicU64 = AtomicU64::new(0);

/// The timer's handler: nothing to do but count. Its only job was to end a `hlt`.
fn timer_interrupt(_context: usize) {
    TIMER_FIRES.fetch_add(1, Ordering::Relaxed);
}

/// How often the wake-up timer has fired.
pub fn wakeup_timer_fires() -> u64 {
    TIMER_FIRES.load(Ordering::Relaxed)
}

/// Sets up the local APIC timer as a one-shot wake-up alarm (SDM Vol. 3A §11.5.4) and measures
/// its rate against the TSC. Its frequency is the bus or crystal clock, which the architecture
/// does not tell us, so we count its ticks over 10 ms of the calibrated TSC.
///
/// Waiters that sleep with `hlt` until a device interrupts (see
/// [`sleep_until_interrupt`]) arm it first, so that a lost interrupt costs them
/// a bounded delay instead of sleeping forever.
pub fn init_wakeup_timer() {
    if !apic::is_ready() {
        return;
    }
    let Ok(vector) = interrupts::allocate_vector(timer_interrupt, 0) else {
        log::warn!("APIC: no vector for the wake-up timer; waiters spin");
        return;
    };
    // SAFETY: the timer registers are mapped; one-shot mode (bits 17:18 = 0), masked (bit 16)
    // while measuring, divide by 16 (0b0011), counting down from the largest value.
    unsafe {
        apic::local_apic_reg(apic::reg::LVT_TIMER).write_volatile(1 << 16 | u32::from(vector));
        apic::local_apic_reg(apic::reg::TIMER_DIVIDE).write_volatile(0b0011);
        apic::local_apic_reg(apic::reg::TIMER_INITIAL_COUNT).write_volatile(u32::MAX);
    }
    delay_us(10_000);
    // SAFETY: reading the current count has no side effects; writing 0 stops the timer.
    let left = unsafe { apic::local_apic_reg(apic::reg::TIMER_CURRENT_COUNT).read_volatile() };
    // SAFETY: as above.
    unsafe { apic::local_apic_reg(apic::reg::TIMER_INITIAL_COUNT).write_volatile(0) };
    let per_us = (u32::MAX - left) / 10_000;
    if per_us == 0 {
        log::warn!("APIC: the local APIC timer did not count; waiters spin");
        interrupts::free_vector(vector);
        return;
    }
    // SAFETY: unmask the timer, still one-shot on our vector; it is stopped (count 0).
    unsafe { apic::local_apic_reg(apic::reg::LVT_TIMER).write_volatile(u32::from(vector)) };
    TIMER_VECTOR.store(vector, Ordering::Relaxed);
    TIMER_TICKS_PER_US.store(per_us, Ordering::Release);
    log::info!("APIC: wake-up timer on vector {vector:#x}, {per_us} ticks/us (divide by 16)");
}

/// Arms the one-shot wake-up timer to fire in `us` microseconds (at most about a minute).
/// False if there is no timer.
pub fn arm_wakeup_timer(us: u64) -> bool {
    let per_us = TIMER_TICKS_PER_US.load(Ordering::Acquire);
    if per_us == 0 {
        return false;
    }
    let ticks = us.saturating_mul(u64::from(per_us)).clamp(1, u64::from(u32::MAX)) as u32;
    // SAFETY: writing the initial count (re)starts the one-shot countdown.
    unsafe { apic::local_apic_reg(apic::reg::TIMER_INITIAL_COUNT).write_volatile(ticks) };
    true
}

/// The kernel's clock, for drivers (`device_io::Clock`).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelClock;

impl device_io::Clock for KernelClock {
    fn now_us(&self) -> u64 {
        now_us()
    }
}
