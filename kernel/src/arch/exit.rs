//! Leaving the machine: QEMU's `isa-debug-exit` device for test results, ACPI soft-off for `exit`.
//!
//! `-device isa-debug-exit,iobase=0xf4,iosize=0x04` makes QEMU exit with status `(value << 1) | 1`
//! when the guest writes `value` to port 0xF4. Status 0 is therefore impossible through it; the
//! shell's `exit` uses ACPI S5 instead, after which QEMU exits with status 0.

use x86_64::instructions::port::Port;

/// Result codes written to isa-debug-exit. xtask maps them back (`33` → success, `35` → failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum QemuExitCode {
    /// QEMU exits with status 33.
    Success = 0x10,
    /// QEMU exits with status 35.
    Failed = 0x11,
}

/// Exits QEMU through isa-debug-exit. On hardware (no such device) falls through to a halt loop.
pub fn exit_qemu(code: QemuExitCode) -> ! {
    let mut port: Port<u32> = Port::new(0xf4);
    // SAFETY: port 0xF4 is the isa-debug-exit device xtask attaches; on a machine without it the
    // write goes nowhere (ISA ports without a device ignore writes).
    unsafe { port.write(code as u32) };
    halt_forever()
}

/// Powers the machine off through ACPI (S5, "soft off").
///
/// ACPI 6.5 §4.8.3.2.1 / §7.4.2: writing SLP_TYPa | SLP_EN to the PM1a control register enters
/// sleep state S5. SLP_TYP comes from the `\_S5` object in the DSDT (AML); QEMU's q35 and i440fx
/// DSDTs declare `_S5` as type 0, which is what we use, since the kernel does not run AML. On a
/// machine where that is wrong, the write does nothing and we fall back to isa-debug-exit / halt.
///
/// The machine does not stop at the write: QEMU, like a real chipset, acts on it a moment later.
/// So we wait up to a second (on the ACPI PM timer) before falling back, or QEMU would see the
/// fallback's isa-debug-exit first and exit with its status instead of 0.
pub fn power_off(pm1a_control_port: Option<u16>, pm_timer_port: Option<u16>) -> ! {
    if let Some(port) = pm1a_control_port {
        const SLP_EN: u16 = 1 << 13;
        const SLP_TYP_S5_QEMU: u16 = 0 << 10;
        let mut pm1a: Port<u16> = Port::new(port);
        // SAFETY: the port comes from the FADT's PM1a_CNT_BLK; writing SLP_EN is the documented
        // way to enter a sleep state, and we are shutting down anyway.
        unsafe { pm1a.write(SLP_TYP_S5_QEMU | SLP_EN) };
        if let Some(timer) = pm_timer_port {
            wait_pm_timer(timer, 3_579_545);
        }
    }
    exit_qemu(QemuExitCode::Success)
}

/// Busy-waits `ticks` of the ACPI PM timer (ACPI 6.5 §4.8.3.3: 3.579545 MHz, at least 24 bits).
fn wait_pm_timer(port: u16, ticks: u32) {
    // SAFETY: reading the PM timer has no side effects.
    let read = || unsafe { Port::<u32>::new(port).read() } & 0x00ff_ffff;
    let mut elapsed: u32 = 0;
    let mut last = read();
    while elapsed < ticks {
        let now = read();
        // The counter is 24 bits wide here; it wraps every ~4.7 s.
        elapsed += now.wrapping_sub(last) & 0x00ff_ffff;
        last = now;
        core::hint::spin_loop();
    }
}

/// Stops the CPU for good.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
