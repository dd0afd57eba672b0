//! The NIC's interrupt: MSI when the function offers it, else legacy INTx through the I/O APIC,
//! with polling as the fallback. The choice and the programming are the kernel's one wiring path
//! for PCI functions ([`crate::platform::pci::wire_interrupt`], deciding with `pci::interrupt`); this module
//! adds the handler and the proof that an interrupt arrives.
//!
//! MSI (PCI Local Bus Spec 3.0 §6.8) needs no routing knowledge: the device writes the vector to
//! the local APIC itself, and the message is edge-like, so nothing stays asserted. Some 8254x
//! parts have the capability (the 82546GB, 82541 and 82547 families); the 82540EM that QEMU
//! emulates does not, so there its interrupt is a level-triggered wire.
//! The firmware routes the function's PIRQ link to an ISA IRQ and writes its number into the
//! interrupt-line register; on q35, ICH9 drives the I/O APIC input of the same number.
//! QEMU's MADT carries an interrupt source override for such IRQs (5, 9, 10, 11): level
//! triggered, active high, which [`crate::arch::apic::route_isa_irq`] applies (and which is also the
//! default without an override: see `pci::interrupt`, "Trigger and polarity"). Experiment agrees:
//! routed level/active-high, a cause raised through ICS arrives once and stops after the
//! handler reads ICR (QEMU's I/O APIC model takes the level as given either way).
//!
//! Being level-triggered, the line stays asserted until ICR is read, so the handler must read
//! it every time — that is all it does; frames are handled by whoever polls the stack.
//!
//! Start-up proves delivery: with interrupts enabled on the device, a cause is raised through
//! ICS and must reach the handler within 20 ms. If it does not (no APIC, no interrupt line,
//! routing failed), the device's interrupts are masked and the driver polls.

use super::NET;
use core::sync::atomic::{AtomicU64, Ordering};
use pci::PciFunction;

/// How the NIC's interrupts are delivered: the kernel's one [`IrqMode`] for PCI functions.
pub use crate::platform::pci::IrqMode;

static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
static NOT_OURS: AtomicU64 = AtomicU64::new(0);

/// Interrupts the handler has run for.
pub fn count() -> u64 {
    INTERRUPTS.load(Ordering::Relaxed)
}

/// Interrupts that found no cause in ICR (a shared line, or a spurious assertion).
pub fn not_ours() -> u64 {
    NOT_OURS.load(Ordering::Relaxed)
}

/// The interrupt handler: acknowledge (read ICR), count.
fn on_interrupt(_context: usize) {
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    // Every other user takes NET with interrupts off, and there is one CPU: the lock is free.
    let causes = NET.try_lock().and_then(|mut net| net.as_mut().map(|n| n.nic.acknowledge_interrupts()));
    if causes.unwrap_or(0) == 0 {
        NOT_OURS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wires the NIC's interrupt through the kernel's one wiring path ([`crate::platform::pci::wire_interrupt`]:
/// MSI when the function offers it, else INTx), proves each candidate with a test interrupt
/// (`prove`), and records the mode in `NET`.
pub fn setup(function: &PciFunction) {
    let wired = crate::platform::pci::wire_interrupt(function, on_interrupt, 0, &mut prove);
    let mode = wired.mode;
    if let (IrqMode::Intx { .. }, Some(why_not_msi)) = (mode, wired.why_not("MSI")) {
        log::info!("net: {}: no MSI ({why_not_msi}); using INTx", pci::Bdf(function.address));
    }
    super::with_net(|net| {
        net.irq = mode;
        match mode {
            IrqMode::Intx { .. } | IrqMode::Msi { .. } | IrqMode::MsiX { .. } => {
                log::info!("net: {}: interrupts: {mode}", net.bdf)
            }
            IrqMode::Polling { .. } => {
                net.nic.disable_interrupts();
                log::warn!("net: {}: interrupts unavailable, {mode}", net.bdf);
            }
        }
    });
}

/// Proves that `mode`, just programmed, delivers: enables the NIC's interrupts, raises a cause
/// through ICS, and waits up to 20 ms for the handler. On failure the NIC's interrupts are
/// masked again and the wiring tries the next mechanism.
fn prove(mode: IrqMode) -> Result<(), &'static str> {
    let before = count();
    super::with_net(|net| {
        net.nic.enable_interrupts();
        net.nic.raise_interrupt(e1000::regs::int::TXDW);
    });
    if crate::arch::time::poll_until(20_000, || count() > before) {
        return Ok(());
    }
    super::with_net(|net| net.nic.disable_interrupts());
    Err(match mode {
        IrqMode::Msi { .. } => "a test MSI never arrived",
        IrqMode::MsiX { .. } => "a test MSI-X message never arrived",
        _ => "a test interrupt raised through ICS never arrived",
    })
}

/// Raises a test interrupt and waits up to `timeout_us` for the handler: true if it ran.
pub fn self_test(timeout_us: u64) -> bool {
    let before = count();
    if super::with_net(|net| net.nic.raise_interrupt(e1000::regs::int::TXDW)).is_none() {
        return false;
    }
    crate::arch::time::poll_until(timeout_us, || count() > before)
}
