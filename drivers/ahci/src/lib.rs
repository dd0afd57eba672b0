//! AHCI SATA driver, following *Serial ATA AHCI 1.3.1* and *ATA8-ACS* (sections cited in the code).
//!
//! An AHCI host bus adapter (HBA) is a DMA engine in front of up to 32 SATA ports. For each
//! port the driver keeps, in memory the HBA reads by bus address:
//!
//! ```text
//!  PxCLB ──► command list (32 × 32-byte headers) ──CTBA──► command table: FIS | ATAPI | PRDT ──► data buffers
//!  PxFB  ──► received-FIS area (the HBA copies D2H Register / Set Device Bits FISes here)
//! ```
//!
//! A command is sent by filling a command table (the ATA command as a Register H2D FIS, and a
//! Physical Region Descriptor Table listing the data buffers' bus segments), pointing a command
//! header at it, and setting the slot's bit in PxCI (and in PxSACT for a native-command-queuing
//! command). The HBA clears a PxCI bit when a FIS from the device clears BSY for that command
//! (§3.3.14): at completion for a non-queued command, as soon as the device has accepted it for
//! NCQ; the device then clears PxSACT bits with Set Device Bits FISes when each NCQ command
//! finishes, in any order.
//!
//! The driver is written against [`device_io::Registers`] and [`device_io::Clock`], and reaches
//! memory only through its [`dma::DmaDevice`]: DMA pools for the structures, streaming
//! scatter-gather mappings for data. The same code therefore runs on the machine and, in host
//! tests, against a simulated HBA (the `sim` test module) that executes commands by reading the
//! structures through the DMA service's simulated bus.
//!
//! Modules: [`regs`] (register map), [`ata`] (commands and FIS), [`identify`] (IDENTIFY data),
//! [`prdt`] (PRD tables), [`slot`] (filling and issuing a command slot, finding finished ones:
//! the part the labs in `docs/labs` have students write), [`controller`] (bring-up, submission,
//! completion, recovery),
//! [`error`], [`buffer`], [`pattern`] (test data shared with the host-side checks).
#![no_std]
#![warn(missing_docs)]
extern crate alloc;

pub mod ata;
pub mod buffer;
pub mod controller;
pub mod error;
pub mod identify;
mod lab;
pub mod pattern;
pub mod prdt;
pub mod regs;
pub mod slot;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trace_tests;

pub use ata::{AtaCommand, CommandKind, NcqErrorLog, TaskFile};
pub use buffer::IoBuffer;
pub use controller::{
    Capabilities, Completion, Controller, DeviceKind, Port, PortStats, Request, RequestId, SubmitOptions,
};
pub use error::{CommandError, InitError, PortError, SubmitError};
pub use identify::DeviceInfo;

/// PCI class of an AHCI controller: mass storage (01), SATA (06), AHCI 1.0 interface (01).
pub const PCI_CLASS: (u8, u8, u8) = (0x01, 0x06, 0x01);
/// The BAR holding the AHCI registers (ABAR), AHCI 1.3.1 §2.1.11.
pub const ABAR: u8 = 5;

/// Whether `function` is an AHCI controller this driver can take (class 01/06/01, AHCI 1.3.1
/// §2.1.2) with a memory BAR5.
pub fn matches(function: &pci::PciFunction) -> bool {
    let c = function.class;
    (c.base, c.sub, c.prog_if) == PCI_CLASS && function.bar(ABAR).is_some_and(|b| b.is_memory())
}

/// Whether `function` is a SATA controller set to RAID mode in the firmware (class 01/04, as
/// Intel's "RST" setting makes it) that still has an AHCI register set in BAR5. Such controllers
/// speak AHCI underneath (Linux's ahci driver takes Intel ones too); the kernel uses them as
/// AHCI and says so, since the RAID metadata on the disks is then ignored.
pub fn raid_mode_with_abar(function: &pci::PciFunction) -> bool {
    let c = function.class;
    (c.base, c.sub) == (0x01, 0x04) && function.vendor_id == 0x8086 && function.bar(ABAR).is_some_and(|b| b.is_memory())
}

#[cfg(test)]
mod class_tests {
    use pci::ClassCode;
    use pci::sim::{SimConfigSpace, SimFunction, bdf};

    fn function(class: ClassCode, vendor: u16) -> pci::PciFunction {
        let sim = SimConfigSpace::new()
            .with(bdf(0, 2, 0), SimFunction::endpoint(vendor, 0x2822, class).bar32(5, 0xfebf_1000, 0x800, false));
        pci::enumerate(&sim, 0).into_iter().next().expect("one function")
    }

    #[test]
    fn ahci_class_matches_and_raid_mode_is_recognised() {
        let ahci = function(ClassCode { base: 1, sub: 6, prog_if: 1 }, 0x8086);
        assert!(super::matches(&ahci) && !super::raid_mode_with_abar(&ahci));
        let raid = function(ClassCode { base: 1, sub: 4, prog_if: 0 }, 0x8086);
        assert!(!super::matches(&raid) && super::raid_mode_with_abar(&raid));
        let other_raid = function(ClassCode { base: 1, sub: 4, prog_if: 0 }, 0x1000);
        assert!(!super::raid_mode_with_abar(&other_raid), "only Intel RAID mode is known to be AHCI underneath");
    }
}
