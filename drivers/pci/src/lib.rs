//! PCI for the teaching kernel: configuration-space access, bus enumeration, BAR sizing,
//! capabilities, MSI and MSI-X programming, and text views for the shell.
//!
//! # Why the code is shaped this way
//! Every PCI function has a small configuration space (256 bytes on conventional PCI, 4 KiB on
//! PCI Express) that describes it: who made it, what it is, where its registers live (BARs), and
//! which optional features it has (the capability list). The CPU reaches that space in one of
//! two ways:
//!
//! - **ECAM** (PCIe Base Spec 3.0, §7.2.2 "PCI Express Enhanced Configuration Access Mechanism"):
//!   the whole configuration space of a segment is a memory-mapped window whose address ACPI's
//!   MCFG table gives. See [`ecam`].
//! - **Configuration mechanism #1** (PCI Local Bus Spec 3.0, §3.2.2.3.2 "Software Generation of
//!   Configuration Transactions"): an address written to port `0xCF8`, data moved through port
//!   `0xCFC`. Only the first 256 bytes are reachable. See [`port_io`].
//!
//! All the logic in this crate (enumeration, BAR sizing, capability walking, MSI, MSI-X) is written
//! against one seam, [`access::CheckedConfigAccess`], so that host tests can run it over a
//! simulated configuration space (`sim`, behind the `sim` feature) long before it runs on a machine.
//!
//! # Rules of use
//! - Nothing in this crate panics on configuration-space contents. A function whose registers
//!   make no sense is logged (the log line names its BDF) and skipped; the walk goes on.
//! - [`enumerate::enumerate`] sizes BARs, which briefly turns off a function's memory and I/O
//!   decoding. Run it once at boot, before drivers use the devices.
//! - Reading config space is cheap and may happen anywhere; enumeration and MSI/MSI-X programming
//!   write to devices and belong in boot or driver-probe code, not in interrupt handlers.
//!   (`PortIoAccess` holds its lock with interrupts off, so a stray access from a handler
//!   cannot deadlock, but it would still interleave with a driver's read-modify-write.)
//!
//! # Map of the crate
//! | module | concept |
//! |---|---|
//! | [`access`] | the access seam and a typed per-function handle (command register, reads, writes) |
//! | [`ecam`] | memory-mapped access from ACPI MCFG regions |
//! | [`port_io`] | legacy port `0xCF8`/`0xCFC` access |
//! | [`bar`] | decoding and sizing Base Address Registers |
//! | [`capability`] | walking and decoding the capability list |
//! | [`msi`] | programming MSI (PCI 3.0 §6.8.1) and the x86 message format |
//! | [`msix`] | programming MSI-X (PCI 3.0 §6.8.2): the table in a BAR, reached through [`msix::MsixTable`] |
//! | [`mod@enumerate`] | the bus walk that produces [`enumerate::PciFunction`]s |
//! | [`interrupt`] | choosing MSI-X, MSI or INTx for a function; which INTx lines are valid |
//! | [`view`] | `lspci`-style lines and the `pci:devices` scheme view |
//! | `sim` | a simulated configuration space and named machine fixtures for tests (feature `sim`) |
#![no_std]

extern crate alloc;

pub mod access;
pub mod bar;
pub mod capability;
pub mod ecam;
pub mod enumerate;
pub mod interrupt;
pub mod msi;
pub mod msix;
pub mod port_io;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod view;

pub use access::{CheckedConfigAccess, FunctionConfig};
pub use bar::{Bar, BarError, DecodedBar};
pub use capability::{
    Capability, CapabilityError, CapabilityKind, MsiCapability, MsiError, MsixCapability, PcieCapability, PciePortType,
    PowerManagementCapability,
};
pub use ecam::{EcamAccess, EcamError, EcamRegion, MappedEcamRegion};
pub use enumerate::{BridgeBuses, BridgeHop, ClassCode, FunctionError, PciFunction, Subsystem, enumerate};
pub use msix::{MsixError, MsixTable};
#[cfg(target_arch = "x86_64")]
pub use port_io::PortIoAccess;
pub use view::{Bdf, DeviceBlock, LspciLine, devices_view, lspci};

// The vocabulary types come from rust-osdev's `pci_types`, so drivers and the kernel share them.
pub use pci_types::{CommandRegister, ConfigRegionAccess, HeaderType, PciAddress};
