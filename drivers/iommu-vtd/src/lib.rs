//! Intel VT-d: the IOMMU that turns a device's bus addresses (IOVAs) into physical ones.
//!
//! Without an IOMMU a bus-mastering device can read and write *all* of memory; one buggy or
//! hostile device (or driver) can corrupt the kernel. VT-d (Intel® Virtualization Technology
//! for Directed I/O, Architecture Specification rev 3.x; section numbers below refer to it)
//! puts a translation between the device and memory, keyed by the device's PCI requester id:
//!
//! ```text
//!  device (bus:dev.fn) ── DMA to IOVA ──► root table[bus] ─► context table[devfn]
//!                                            (§9.1)              (§9.3: domain id, table pointer)
//!                                                                   │
//!                         second-level page tables (§9.8, like x86 paging: 3 or 4 levels)
//!                                                                   │
//!                                                            physical address + R/W checks
//! ```
//!
//! Every device (or group of devices) gets a *domain*: its own address space with its own page
//! tables. The unit caches translations (context cache, IOTLB), so software must *invalidate*
//! those caches after changing entries (§6.5); when a translation fails, the unit records a
//! *fault* (§7) naming the device, the address and the reason.
//!
//! # Modules, one concept each
//! - [`dmar`]: the ACPI DMAR table (§8): which units exist, where their registers are, which
//!   devices each one translates, and firmware-reserved memory (RMRR).
//! - [`regs`]: register offsets and bit layouts (§10.4), the [`regs::VtdRegisters`] access
//!   trait, and MMIO access for the kernel.
//! - [`tables`]: root/context tables and second-level page tables in frames from
//!   [`PhysMemory`](dma::PhysMemory).
//! - [`walker`]: a software page walk that translates exactly as the hardware does, with the
//!   spec's fault reasons (Appendix A). Tests use it to prove the tables are right.
//! - [`iova`]: the per-domain IOVA allocator; freed IOVAs wait for their invalidation.
//! - [`invalidation`]: context-cache and IOTLB invalidation, by registers or by the queued
//!   invalidation interface (§6.5).
//! - [`fault`]: fault recording registers and their decoding (§7.3), DMA and interrupt faults.
//! - [`interrupt_remap`]: interrupt remapping formats (§5.1, §9.10): IRTEs, remappable MSI
//!   messages and I/O APIC entries, the table allocator.
//! - [`unit`](mod@unit): bring-up of one remapping unit and [`unit::Domain`]s with map/unmap.
//! - [`view`]: the `iommu:units` and `iommu:faults` text views.
//! - [`mapper`]: [`Iommu`], the `dma` crate's [`DmaMapper`](dma::mapper::DmaMapper) whose bus
//!   addresses are IOVAs of one domain. This is how the crate plugs into the DMA service: `dma`
//!   does not know this crate; a domain's failures reach drivers as [`dma::IommuError`]
//!   (converted from [`DomainError`]).
//! - [`sim`] (cargo feature `sim`, for host tests; the kernel leaves it off): a simulated unit
//!   (registers, queued invalidation, an IOTLB cache, fault recording).
//!
//! # Bringing a unit up (kernel)
//! ```ignore
//! use iommu_vtd::{dmar::Dmar, regs::MmioRegisters, unit::{Unit, UnitConfig, UnmapPolicy}};
//! let dmar = Dmar::parse(&acpi_info.dmar_bytes)?;
//! for drhd in &dmar.units {
//!     let mmio = map_mmio(drhd.register_base, drhd.register_size()); // kernel paging
//!     // SAFETY: `mmio` maps this unit's register page(s), uncached, for the kernel's lifetime.
//!     let regs = unsafe { MmioRegisters::new(mmio, drhd.register_size()) };
//!     let unit = Unit::bring_up("dmar0", regs, phys.clone(), UnitConfig::default())?;
//!     let domain = unit.create_domain(UnmapPolicy::Strict)?;
//!     domain.attach(SourceId::new(0, 2, 0))?;                   // the e1000 at 00:02.0
//!     let iova = domain.map(None, pa, len, Perms::READ, 0xffff_ffff)?; // 32-bit device
//!     // ... program the device with `iova` ...
//!     domain.unmap(iova, len)?;                                 // strict: invalidated on return
//!     for f in unit.poll_faults() { log::warn!("{f}"); }        // or from the fault interrupt
//! }
//! ```
//!
//! # Rules of use
//! - Every public operation takes short spin locks and may be called from any CPU; none sleeps.
//!   Invalidation waits poll the hardware with a bounded loop and fail with an error (never
//!   hang, never panic) if the unit does not answer.
//! - Nothing here panics on input firmware or a device can produce: table bytes, register
//!   values and fault records are all treated as untrusted.

#![no_std]
#![warn(missing_docs)]
extern crate alloc;

pub mod dmar;
pub mod fault;
pub mod interrupt_remap;
pub mod invalidation;
pub mod iova;
pub mod mapper;
pub mod regs;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod tables;
mod trace;
pub mod unit;
pub mod view;
pub mod walker;

use core::fmt;

pub use fault::{FaultKind, FaultReason, FaultRecord};
pub use mapper::{Iommu, PENDING_PAGES_LIMIT};
pub use unit::{Domain, DomainError, Unit, UnitConfig, UnitError, UnmapPolicy};

/// A PCI requester id, the name the unit knows a device by (§3.4.1): bus in bits 15..8, device
/// in bits 7..3 and function in bits 2..0 ("devfn" is the low byte).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceId(pub u16);

impl SourceId {
    /// The requester id of `bus:device.function` (device and function are masked to 5 and 3
    /// bits, as on the bus).
    pub const fn new(bus: u8, device: u8, function: u8) -> SourceId {
        SourceId(((bus as u16) << 8) | (((device & 0x1f) as u16) << 3) | (function & 7) as u16)
    }

    /// From bus and devfn.
    pub const fn from_bus_devfn(bus: u8, devfn: u8) -> SourceId {
        SourceId(((bus as u16) << 8) | devfn as u16)
    }

    /// The bus number: the index into the root table.
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Device and function together: the index into the bus's context table.
    pub const fn devfn(self) -> u8 {
        self.0 as u8
    }

    /// The device number (0..32).
    pub const fn device(self) -> u8 {
        (self.0 as u8) >> 3
    }

    /// The function number (0..8).
    pub const fn function(self) -> u8 {
        (self.0 as u8) & 7
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus(), self.device(), self.function())
    }
}

impl fmt::Debug for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceId({self})")
    }
}

/// What a device may do through a mapping: the R and W bits of a second-level entry (§9.8).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Perms {
    /// The device may read (DMA to the device: transmit, disk write).
    pub read: bool,
    /// The device may write (DMA from the device: receive, disk read).
    pub write: bool,
}

impl Perms {
    /// Device reads only (`ToDevice`).
    pub const READ: Perms = Perms { read: true, write: false };
    /// Device writes only (`FromDevice`).
    pub const WRITE: Perms = Perms { read: false, write: true };
    /// Both (`Bidirectional`, coherent memory).
    pub const READ_WRITE: Perms = Perms { read: true, write: true };

    /// The permissions a streaming mapping in direction `dir` needs: no more than that, so a
    /// device that writes into a buffer it was only meant to read is stopped by the IOMMU.
    pub const fn for_direction(dir: dma::DmaDirection) -> Perms {
        match dir {
            dma::DmaDirection::ToDevice => Perms::READ,
            dma::DmaDirection::FromDevice => Perms::WRITE,
            dma::DmaDirection::Bidirectional => Perms::READ_WRITE,
        }
    }

    /// Whether the mapping allows anything (an entry with neither bit is not present).
    pub const fn any(self) -> bool {
        self.read || self.write
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.read { "r" } else { "-" };
        let w = if self.write { "w" } else { "-" };
        write!(f, "{r}{w}")
    }
}

/// The kind of a device access, as a fault record reports it (§10.4.14, bit T).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AccessKind {
    /// The device read memory.
    Read,
    /// The device wrote memory.
    Write,
}

impl fmt::Display for AccessKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccessKind::Read => "read",
            AccessKind::Write => "write",
        })
    }
}
