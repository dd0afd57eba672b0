//! How a PCI function should interrupt the CPU: MSI-X, MSI or INTx, and which INTx routings mean
//! anything. Pure decisions, host-tested here; the kernel programs the choice (local APIC vector,
//! MSI-X table entry, MSI message, I/O APIC redirection entry) in one place,
//! `kernel/src/platform/pci.rs`, for every driver.
//!
//! # Preference
//! 1. **MSI-X** (PCI Local Bus Spec 3.0 §6.8.2): a table of messages in a BAR, one per queue,
//!    each masked on its own; programmed by [`crate::msix`] (the kernel uses entry 0).
//! 2. **MSI** (§6.8.1): the device writes one message to the local APIC. No wire, no routing
//!    knowledge, never shared, and edge-like: nothing stays asserted.
//! 3. **INTx** (§2.2.6): a wire (INTA#..INTD#), shared, level-triggered. Its route to an
//!    interrupt controller input is the platform's business, and the firmware reports it in the
//!    Interrupt Line register.
//!
//! A mechanism is chosen only if the function offers it and the kernel can program it; the
//! kernel then tries the candidates in order and falls back when one fails at run time (the
//! capability refuses to enable, a test interrupt never arrives). With none left, the driver
//! polls.
//!
//! # Which INTx routings are valid ([`intx_route`])
//! - Interrupt Pin (register 0x3D, §6.2.4): 0 means the function uses no INTx pin; 1..=4 are
//!   INTA#..INTD#; anything else is reserved, so refused.
//! - Interrupt Line (register 0x3C, §6.2.4): written by the firmware, read by the OS. "The value
//!   255 is defined as meaning 'unknown' or 'no connection' to the interrupt controller"; on x86
//!   PCs the values "correspond to IRQ numbers (0-15) of the standard dual 8259 configuration",
//!   and 16..=254 are reserved. This kernel therefore accepts ISA IRQs 1 and 3..=15 and refuses:
//!   - 255: not connected;
//!   - 16..=254: reserved on x86 PCs. (Firmware that writes an I/O APIC input of 16 or more
//!     here follows no spec; the real routing to GSIs 16 and up comes from ACPI's `_PRT`, which
//!     needs an AML interpreter this kernel does not have.)
//!   - 0: ISA IRQ 0 is the system timer, never a PCI interrupt, and 0 is what an unprogrammed
//!     register holds;
//!   - 2: ISA IRQ 2 is the cascade input of the master 8259, which no device can drive (its
//!     devices moved to IRQ 9 on the PC/AT).
//!
//! # Trigger and polarity of a routed INTx ([`INTX_TRIGGER`], [`INTX_POLARITY`])
//! At the pin, INTx# is level-sensitive and active low (§2.2.6). But the kernel does not see the
//! pin: the Interrupt Line names the *ISA IRQ* the chipset's PIRQ router connected it to, and the
//! kernel programs the I/O APIC input that carries that ISA IRQ. What that input sees is decided
//! by the platform, and ACPI says so in the MADT: an Interrupt Source Override for the ISA IRQ
//! (ACPI 6.5 §5.2.12.5) gives its GSI, trigger mode and polarity, and the kernel's
//! `apic::route_isa_irq` applies it, over the defaults below, whenever one exists.
//!
//! On QEMU's q35 and PC machines the MADT has overrides for the four IRQs the firmware hands to
//! PCI (5, 9, 10 and 11): **level-triggered, active high**. That is the signal the PIRQ router
//! drives onto an ISA IRQ line: a level, asserted high, as the 8259 expects of an input its ELCR
//! puts in level mode. Both drivers here (e1000 on IRQ 11, AHCI on IRQ 10) work that way, and
//! experiment agrees (a cause raised through the e1000's ICS arrives once, and stops after the
//! handler reads ICR).
//!
//! Without an override, ACPI's default for an ISA IRQ is edge-triggered, active high. Edge is
//! wrong for a PCI interrupt: a shared level that is still asserted when the handler returns
//! would never interrupt again. So the defaults are **level, active high**: the level a PCI
//! interrupt is, with the polarity of an ISA IRQ line. (Active low is right for GSIs 16 and up,
//! which the I/O APIC receives straight from the PIRQ pins in APIC mode; this kernel refuses
//! those lines, above.) Before this module the AHCI glue defaulted to active low and the e1000
//! glue to active high; the difference only ever mattered on a line without an override, never on
//! q35, where both lines have one.

use core::fmt;

use crate::enumerate::PciFunction;

/// When an interrupt controller input recognises an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// On a transition to the asserted state (ISA devices, MSI).
    Edge,
    /// While the input is asserted (PCI INTx: it stays asserted until the device is serviced).
    Level,
}

/// Which electrical level (or edge) asserts an interrupt controller input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// High asserts.
    ActiveHigh,
    /// Low asserts.
    ActiveLow,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::Edge => "edge",
            Trigger::Level => "level",
        })
    }
}

impl fmt::Display for Polarity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Polarity::ActiveHigh => "active high",
            Polarity::ActiveLow => "active low",
        })
    }
}

/// Trigger mode programmed for an INTx routed through an ISA IRQ that has no MADT override (see
/// the module documentation: PCI interrupts are level-triggered).
pub const INTX_TRIGGER: Trigger = Trigger::Level;
/// Polarity programmed for an INTx routed through an ISA IRQ that has no MADT override (see the
/// module documentation: what the PIRQ router drives onto an ISA IRQ line).
pub const INTX_POLARITY: Polarity = Polarity::ActiveHigh;

/// What a function offers, from its configuration space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offers {
    /// It has an MSI-X capability.
    pub msix: bool,
    /// It has an MSI capability.
    pub msi: bool,
    /// Interrupt Pin register: 0 none, 1..=4 INTA#..INTD#.
    pub interrupt_pin: u8,
    /// Interrupt Line register: the ISA IRQ the firmware routed the pin to, 255 none.
    pub interrupt_line: u8,
}

impl Offers {
    /// What `function` offers.
    pub fn of(function: &PciFunction) -> Offers {
        Offers {
            msix: function.msix().is_some(),
            msi: function.msi().is_some(),
            interrupt_pin: function.interrupt_pin,
            interrupt_line: function.interrupt_line,
        }
    }
}

/// What the kernel can program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Support {
    /// A local APIC is running: needed by every mechanism (MSI and MSI-X messages go to it, and
    /// the I/O APIC delivers INTx through it).
    pub apic: bool,
}

/// An INTx route: the ISA IRQ the pin reaches and the trigger mode and polarity to program for it
/// when the MADT has no override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntxRoute {
    /// ISA IRQ, from the Interrupt Line register (1 or 3..=15).
    pub irq: u8,
    /// Trigger mode without an override ([`INTX_TRIGGER`]).
    pub trigger: Trigger,
    /// Polarity without an override ([`INTX_POLARITY`]).
    pub polarity: Polarity,
}

/// A way to deliver a function's interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// MSI-X (§6.8.2).
    MsiX,
    /// MSI (§6.8.1).
    Msi,
    /// INTx through the I/O APIC input of an ISA IRQ.
    Intx(IntxRoute),
}

/// One mechanism in preference order: its name, and either the mechanism to try or why it cannot
/// be used.
pub type Candidate = (&'static str, Result<Mechanism, &'static str>);

/// Why there is no APIC to deliver to.
pub const NO_APIC: &str = "no APIC";

/// The INTx route of a function whose Interrupt Pin and Interrupt Line registers hold `pin` and
/// `line`, or why it has none (see "Which INTx routings are valid" in the module documentation).
pub fn intx_route(pin: u8, line: u8) -> Result<IntxRoute, &'static str> {
    match pin {
        0 => return Err("the function has no interrupt pin"),
        1..=4 => {}
        _ => return Err("the interrupt pin register holds a reserved value (not 1..=4)"),
    }
    match line {
        255 => Err("the firmware assigned no IRQ (interrupt line 255: not connected)"),
        16..=254 => Err("the interrupt line is above 15 (reserved on x86 PCs, PCI 3.0 §6.2.4)"),
        0 => Err("the firmware assigned no IRQ (interrupt line 0, the timer's)"),
        2 => Err("the interrupt line is 2, the 8259 cascade, which no device drives"),
        irq => Ok(IntxRoute { irq, trigger: INTX_TRIGGER, polarity: INTX_POLARITY }),
    }
}

/// MSI-X, MSI and INTx, best first, each either to be tried or refused with a reason.
pub fn choose(offers: &Offers, support: &Support) -> [Candidate; 3] {
    let needs_apic = |m: Mechanism| if support.apic { Ok(m) } else { Err(NO_APIC) };
    let msix = if offers.msix { needs_apic(Mechanism::MsiX) } else { Err("the function has no MSI-X capability") };
    let msi = if offers.msi { needs_apic(Mechanism::Msi) } else { Err("the function has no MSI capability") };
    let intx = intx_route(offers.interrupt_pin, offers.interrupt_line).and_then(|r| needs_apic(Mechanism::Intx(r)));
    [("MSI-X", msix), ("MSI", msi), ("INTx", intx)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enumerate::{ClassCode, enumerate};
    use crate::sim::{bdf, fixtures};
    use alloc::format;
    use alloc::vec::Vec;

    const APIC: Support = Support { apic: true };

    fn level_high(irq: u8) -> Mechanism {
        Mechanism::Intx(IntxRoute { irq, trigger: Trigger::Level, polarity: Polarity::ActiveHigh })
    }

    #[test]
    fn q35_e1000_gets_intx_on_irq_11_and_ahci_gets_msi_then_intx_on_irq_10() {
        let functions = enumerate(&fixtures::qemu_q35(), 0);
        let offers = |d, f| Offers::of(functions.iter().find(|x| x.address == bdf(0, d, f)).unwrap());
        let e1000 = choose(&offers(2, 0), &APIC);
        assert_eq!(e1000[0], ("MSI-X", Err("the function has no MSI-X capability")));
        assert_eq!(e1000[1], ("MSI", Err("the function has no MSI capability")));
        assert_eq!(e1000[2], ("INTx", Ok(level_high(11))));
        let ahci = choose(&offers(0x1F, 2), &APIC);
        assert_eq!(ahci[0].1, Err("the function has no MSI-X capability"));
        assert_eq!(ahci[1], ("MSI", Ok(Mechanism::Msi)));
        assert_eq!(ahci[2], ("INTx", Ok(level_high(10))));
    }

    #[test]
    fn msix_comes_first_then_msi_then_intx() {
        let all = Offers { msix: true, msi: true, interrupt_pin: 1, interrupt_line: 11 };
        let [msix, msi, intx] = choose(&all, &APIC);
        assert_eq!(msix, ("MSI-X", Ok(Mechanism::MsiX)));
        assert_eq!(msi, ("MSI", Ok(Mechanism::Msi)));
        assert_eq!(intx, ("INTx", Ok(level_high(11))));
        let msix_only = Offers { msix: true, msi: false, interrupt_pin: 0, interrupt_line: 255 };
        let [msix, msi, intx] = choose(&msix_only, &APIC);
        assert_eq!(msix.1, Ok(Mechanism::MsiX));
        assert_eq!(msi.1, Err("the function has no MSI capability"));
        assert_eq!(intx.1, Err("the function has no interrupt pin"));
    }

    #[test]
    fn the_82574_offers_msix_first() {
        // QEMU's e1000e (82574): MSI at 0xD0, MSI-X with 5 entries in BAR3 at 0xA0, INTA#.
        let nic = ClassCode::new(0x02, 0x00, 0x00);
        let function = crate::sim::SimFunction::endpoint(0x8086, 0x10D3, nic)
            .interrupt(11, 1)
            .msi(0xD0, true, false, 0)
            .msix(0xA0, 5, (3, 0), (3, 0x2000));
        let sim = crate::sim::SimConfigSpace::new().with(bdf(0, 3, 0), function);
        let functions = enumerate(&sim, 0);
        let candidates = choose(&Offers::of(&functions[0]), &APIC);
        assert_eq!(candidates.map(|c| c.1.is_ok()), [true, true, true]);
        assert_eq!(candidates[0], ("MSI-X", Ok(Mechanism::MsiX)));
        let msix = functions[0].msix().unwrap();
        assert_eq!((msix.table_size, msix.table_bar, msix.table_offset), (5, 3, 0));
    }

    #[test]
    fn without_an_apic_nothing_is_chosen_but_missing_capabilities_are_named() {
        let all = Offers { msix: true, msi: true, interrupt_pin: 1, interrupt_line: 11 };
        let none = Support { apic: false };
        assert!(choose(&all, &none).iter().all(|c| c.1 == Err(NO_APIC)));
        let bare = Offers { msix: false, msi: false, interrupt_pin: 0, interrupt_line: 255 };
        let reasons = choose(&bare, &none).map(|c| c.1.unwrap_err());
        assert_eq!(reasons[1], "the function has no MSI capability");
        assert_eq!(reasons[2], "the function has no interrupt pin");
    }

    #[test]
    fn valid_intx_lines_are_isa_irqs_1_and_3_to_15() {
        let valid: Vec<u8> = (0..=255u8).filter(|&line| intx_route(1, line).is_ok()).collect();
        assert_eq!(valid, [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        assert!(intx_route(1, 255).unwrap_err().contains("not connected"));
        assert!(intx_route(1, 16).unwrap_err().contains("reserved"));
        assert!(intx_route(1, 254).unwrap_err().contains("reserved"));
        assert!(intx_route(1, 0).is_err());
        assert!(intx_route(1, 2).unwrap_err().contains("cascade"));
    }

    #[test]
    fn valid_intx_pins_are_inta_to_intd() {
        let valid: Vec<u8> = (0..=255u8).filter(|&pin| intx_route(pin, 11).is_ok()).collect();
        assert_eq!(valid, [1, 2, 3, 4]);
        assert_eq!(intx_route(0, 11), Err("the function has no interrupt pin"));
    }

    #[test]
    fn routed_intx_defaults_to_level_active_high() {
        assert_eq!(intx_route(4, 9), Ok(IntxRoute { irq: 9, trigger: Trigger::Level, polarity: Polarity::ActiveHigh }));
        assert_eq!(format!("{}, {}", INTX_TRIGGER, INTX_POLARITY), "level, active high");
        assert_eq!(format!("{}, {}", Trigger::Edge, Polarity::ActiveLow), "edge, active low");
    }
}
