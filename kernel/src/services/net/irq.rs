//! The NIC's interrupt: MSI when the function offers it, else legacy INTx through the I/O APIC,
//! with polling as the fallback.
//!
//! MSI (PCI Local Bus Spec 3.0 §6.8) needs no routing knowledge: the device writes the vector to
//! the local APIC itself, and the message is edge-like, so nothing stays asserted. Some 8254x
//! parts have the capability (the 82546GB, 82541 and 82547 families); the 82540EM that QEMU
//! emulates does not, so there its interrupt is a level-triggered wire.
//! The firmware routes the function's PIRQ link to an ISA IRQ and writes its number into the
//! interrupt-line register; on q35, ICH9 drives the I/O APIC input of the same number.
//! QEMU's MADT carries an interrupt source override for such IRQs (5, 9, 10, 11): level
//! triggered, active high, which [`crate::arch::apic::route_isa_irq`] applies. Experiment agrees:
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
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use pci::PciFunction;

/// How the NIC's interrupts are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqMode {
    /// No interrupts: the stack is polled.
    Polling {
        /// Why not interrupts.
        reason: &'static str,
    },
    /// Message-signalled: the device writes `vector` to the local APIC.
    Msi {
        /// CPU vector.
        vector: u8,
    },
    /// INTx routed through the I/O APIC.
    Intx {
        /// ISA IRQ (and I/O APIC input) from the interrupt-line register.
        irq: u8,
        /// CPU vector.
        vector: u8,
    },
}

impl IrqMode {
    /// True when interrupts are delivered.
    pub fn is_interrupt(&self) -> bool {
        matches!(self, IrqMode::Intx { .. } | IrqMode::Msi { .. })
    }
}

impl fmt::Display for IrqMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IrqMode::Polling { reason } => write!(f, "polling ({reason})"),
            IrqMode::Msi { vector } => write!(f, "MSI vector {vector:#x}"),
            IrqMode::Intx { irq, vector } => {
                write!(f, "INTx IRQ {irq} (I/O APIC, level, active high) vector {vector:#x}")
            }
        }
    }
}

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

/// Wires the NIC's interrupt, proves it works, and records the mode in `NET`.
pub fn setup(function: &PciFunction) {
    let msi = match function.msi() {
        Some(_) => try_msi(function),
        None => Err("the function has no MSI capability"),
    };
    let mode = match msi {
        Ok(mode) => mode,
        Err(why_not_msi) => match try_intx(function) {
            Ok(mode) => {
                log::info!("net: {}: no MSI ({why_not_msi}); using INTx", pci::Bdf(function.address));
                mode
            }
            Err(reason) => IrqMode::Polling { reason },
        },
    };
    super::with_net(|net| {
        net.irq = mode;
        match mode {
            IrqMode::Intx { .. } | IrqMode::Msi { .. } => log::info!("net: {}: interrupts: {mode}", net.bdf),
            IrqMode::Polling { .. } => {
                net.nic.disable_interrupts();
                log::warn!("net: {}: interrupts unavailable, {mode}", net.bdf);
            }
        }
    });
}

/// Programs MSI to a fresh vector and proves delivery with a test interrupt.
fn try_msi(function: &PciFunction) -> Result<IrqMode, &'static str> {
    if !crate::arch::apic::is_ready() {
        return Err("no APIC");
    }
    let vector = crate::arch::interrupts::allocate_vector(on_interrupt, 0).map_err(|_| "no free interrupt vector")?;
    let (address, data) = crate::arch::apic::msi_message(vector);
    if function.enable_msi(crate::platform::pci::access(), address, data).is_err() {
        crate::arch::interrupts::free_vector(vector);
        return Err("the MSI capability refused to enable");
    }
    let before = count();
    super::with_net(|net| {
        net.nic.enable_interrupts();
        net.nic.raise_interrupt(e1000::regs::int::TXDW);
    });
    if crate::arch::time::poll_until(20_000, || count() > before) {
        return Ok(IrqMode::Msi { vector });
    }
    super::with_net(|net| net.nic.disable_interrupts());
    crate::arch::interrupts::free_vector(vector);
    Err("a test MSI never arrived")
}

fn try_intx(function: &PciFunction) -> Result<IrqMode, &'static str> {
    if function.interrupt_pin == 0 {
        return Err("the function has no interrupt pin");
    }
    let irq = function.interrupt_line;
    if irq == 0 || irq >= 16 {
        return Err("the firmware assigned no IRQ (interrupt line 0 or 255)");
    }
    if !crate::arch::apic::is_ready() {
        return Err("no APIC");
    }
    let vector = crate::arch::interrupts::allocate_vector(on_interrupt, 0).map_err(|_| "no free interrupt vector")?;
    // Level-triggered, active high (QEMU's MADT override for PCI IRQs says the same).
    if !crate::arch::apic::route_isa_irq(irq, vector, true, false) {
        crate::arch::interrupts::free_vector(vector);
        return Err("no I/O APIC input for the IRQ");
    }
    function.config(crate::platform::pci::access()).enable_intx();
    let before = count();
    super::with_net(|net| {
        net.nic.enable_interrupts();
        net.nic.raise_interrupt(e1000::regs::int::TXDW);
    });
    let delivered = crate::arch::time::poll_until(20_000, || count() > before);
    if delivered {
        return Ok(IrqMode::Intx { irq, vector });
    }
    super::with_net(|net| net.nic.disable_interrupts());
    crate::arch::interrupts::free_vector(vector);
    Err("a test interrupt raised through ICS never arrived")
}

/// Raises a test interrupt and waits up to `timeout_us` for the handler: true if it ran.
pub fn self_test(timeout_us: u64) -> bool {
    let before = count();
    if super::with_net(|net| net.nic.raise_interrupt(e1000::regs::int::TXDW)).is_none() {
        return false;
    }
    crate::arch::time::poll_until(timeout_us, || count() > before)
}
