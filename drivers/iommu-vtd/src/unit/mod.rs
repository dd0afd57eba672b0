//! One remapping unit: bring-up, domains, device attachment, map/unmap, faults.
//!
//! The code is split by concern: this file holds the configuration, the [`Unit`] itself and
//! its read-only accessors; `bring_up.rs` the register sequence below (and the fault
//! interrupt's programming); `domain.rs` domain creation, attachment, map/unmap and flushes;
//! `invalidate.rs` the IOTLB invalidation a domain asks its unit for; `faults.rs` fault
//! recording; `interrupt_remap.rs` the interrupt remapping table (§5.1); `error.rs` the error types.
//!
//! # Bring-up (§10.4, Linux's `init_dmars` order)
//! 1. Read VER, CAP, ECAP; turn off translation and queued invalidation if firmware (or a
//!    previous kernel) left them on, so the unit starts from a known state.
//! 2. Pick the page-table depth: the smallest AGAW in `CAP.SAGAW` (39-bit/3-level or
//!    48-bit/4-level) that covers min(`CAP.MGAW`, the configured width).
//! 3. Enable queued invalidation if `ECAP.QI` (IQA, IQT = 0, GCMD.QIE, wait GSTS.QIES).
//! 4. Allocate an empty root table, write RTADDR, issue GCMD.SRTP and wait for GSTS.RTPS.
//! 5. Invalidate the context cache and IOTLB globally (whatever firmware left cached is gone),
//!    flush the write buffer if `CAP.RWBF`.
//! 6. Enable translation (GCMD.TE, wait GSTS.TES). From here, every device without a context
//!    entry is blocked: DMA is deny-by-default.
//!
//! Every GCMD write follows §10.4.4: GCMD bits are commands, not state. Software reads GSTS,
//! keeps the persistent status bits (TES, QIES, IRES, ...), changes the one bit it means and
//! writes that ([`regs::set_gcmd`](crate::regs::set_gcmd)).
//!
//! # Domains and devices
//! A [`Domain`] is an IOVA space: page tables, an IOVA allocator and a domain id that tags the
//! unit's caches. [`Domain::attach`] points a device's context entry at it. Mapping writes
//! page-table entries; unmapping clears them and invalidates.
//!
//! # Why caching mode needs invalidation on map
//! Real units never cache a not-present entry, so making an entry present needs no
//! invalidation (only a write-buffer flush on `CAP.RWBF` units). A unit with `CAP.CM = 1`
//! (QEMU with `caching-mode=on`, and virtual IOMMUs in general, which use invalidations to
//! learn about new mappings and shadow them) *may* cache not-present entries (§6.1), so after a
//! not-present → present change software invalidates too: page-selective IOTLB for new PTEs;
//! for a new context entry, device-selective context cache with domain id 0 (not-present
//! entries are cached under domain 0) and the domain's IOTLB.
//!
//! # Unmap policies
//! - [`UnmapPolicy::Strict`] (default): clear the PTEs, invalidate the range page-selectively
//!   and wait, then release the IOVA and free emptied tables. When `unmap` returns, the device
//!   cannot reach the memory any more: the buffer can go back to the allocator safely.
//! - [`UnmapPolicy::Deferred`]: clear the PTEs and park the IOVA; invalidate the whole domain
//!   once per `batch` unmaps (or on [`Domain::flush`]). Much cheaper per unmap, at a price:
//!   **until the flush, the device can still reach the unmapped pages through stale IOTLB
//!   entries**, even after the kernel gave those pages to someone else. A buggy or malicious
//!   device can read or corrupt that memory during the window (Linux's "lazy" mode makes the
//!   same trade). The IOVA itself is never reused before the flush, so at least no *new*
//!   mapping can be reached through an old translation.
//!
//! # Example
//! Bring-up on a simulated unit, then the life of one mapping: the NIC at 00:02.0 gets a
//! domain, one page above 4 GiB is mapped read-only at an IOVA a 32-bit device can use, and
//! after a strict unmap the IOVA translates to nothing. A device with no domain is refused
//! from the start (deny-by-default).
//! ```
//! use std::sync::Arc;
//! use dma::sim::SimMemory;
//! use iommu_vtd::sim::{SimConfig, SimUnit};
//! use iommu_vtd::{AccessKind, FaultReason, Perms, SourceId, Unit, UnitConfig, UnmapPolicy};
//! use dma::{FrameRequest, PhysMemory};
//! let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
//! let sim = SimUnit::new(phys.clone(), SimConfig::default()); // registers and caches
//! let unit = Unit::bring_up("dmar0", sim.clone(), phys.clone(), UnitConfig::default()).unwrap();
//! assert!(sim.translation_enabled() && sim.violations().is_empty());
//! assert!(sim.dma_read(SourceId::new(0, 3, 0), 0x1000, &mut [0; 4]).is_err()); // no domain
//!
//! let nic = SourceId::new(0, 2, 0);
//! let domain = unit.create_domain(UnmapPolicy::Strict).unwrap();
//! domain.attach(nic).unwrap();
//! let page = phys.alloc_frames(FrameRequest { count: 1, max_addr: u64::MAX, align: 4096 }).unwrap();
//! let iova = domain.map(None, page, 4096, Perms::READ, 0xffff_ffff).unwrap();
//! assert!(page.as_u64() >= 1 << 32 && iova < 1 << 32);
//! assert_eq!(domain.translate(iova + 8, AccessKind::Read).unwrap().phys, page.checked_add(8).unwrap());
//! assert_eq!(domain.translate(iova, AccessKind::Write), Err(FaultReason::WRITE_DENIED));
//!
//! domain.unmap(iova, 4096).unwrap(); // strict: invalidated and waited for
//! assert!(domain.translate(iova, AccessKind::Read).is_err());
//! assert!(sim.dma_read(nic, iova, &mut [0; 4]).is_err());
//! // SAFETY: the page was allocated above, and no device can reach it any more.
//! unsafe { phys.free_frames(page, 1) };
//! ```

mod bring_up;
mod domain;
mod error;
mod faults;
mod interrupt_remap;
mod invalidate;

pub use domain::{Domain, DomainStats};
pub use error::{DomainError, UnitError, UnitStep};
pub use interrupt_remap::{InterruptRemapError, IrteInfo};

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use dma::phys::{PAGE_SIZE, PhysAddr, PhysMemory};

use crate::SourceId;
use crate::invalidation::{InvalidationStats, Invalidator};
use crate::regs::{Cap, Ecap, Version, VtdRegisters};
use crate::tables::{CacheFlush, ContextTables, TableMemory};
use crate::walker::WalkCaps;
use faults::FaultLog;

const PAGE: u64 = PAGE_SIZE as u64;

/// How a unit is brought up.
#[derive(Clone)]
pub struct UnitConfig {
    /// Pushes table writes out of the CPU caches when the unit's walks do not snoop
    /// (`ECAP.C = 0`). `None` uses `clflush` on x86_64 (and nothing elsewhere).
    pub flush_cache: Option<CacheFlush>,
    /// Use queued invalidation when the unit has it (`ECAP.QI`).
    pub prefer_queued: bool,
    /// Widest IOVA wanted, in bits (39 or 48 are what the tables support).
    pub max_width: u32,
    /// The platform's host address width (DMAR), bounding where tables may live.
    pub host_address_width: u8,
    /// Use 2 MiB / 1 GiB pages when the unit supports them.
    pub large_pages: bool,
    /// Enable translation at the end of bring-up. Set `false` to attach devices (and map
    /// RMRRs) first, then call [`Unit::enable_translation`].
    pub enable_translation: bool,
}

impl Default for UnitConfig {
    fn default() -> UnitConfig {
        UnitConfig {
            flush_cache: None,
            prefer_queued: true,
            max_width: 48,
            host_address_width: 64,
            large_pages: true,
            enable_translation: true,
        }
    }
}

/// How a domain unmaps. See the module documentation for the trade-off.
///
/// # Examples
/// The price of [`UnmapPolicy::Deferred`], made visible: the device read a page (so the
/// unit's IOTLB holds its translation), the driver unmapped it, and the device can *still*
/// read it until the domain is flushed.
/// ```
/// # use std::sync::Arc;
/// # use dma::{sim::SimMemory, FrameRequest, PhysMemory};
/// # use iommu_vtd::{sim::{SimConfig, SimUnit}, Perms, SourceId, Unit, UnitConfig, UnmapPolicy};
/// # let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
/// # let sim = SimUnit::new(phys.clone(), SimConfig::default());
/// # let unit = Unit::bring_up("dmar0", sim.clone(), phys.clone(), UnitConfig::default()).unwrap();
/// let page = phys.alloc_frames(FrameRequest { count: 1, max_addr: u64::MAX, align: 4096 }).unwrap();
/// let nic = SourceId::new(0, 2, 0);
/// let domain = unit.create_domain(UnmapPolicy::Deferred { batch: 64 }).unwrap();
/// domain.attach(nic).unwrap();
/// let iova = domain.map(None, page, 4096, Perms::READ, u64::MAX).unwrap();
/// sim.dma_read(nic, iova, &mut [0; 4]).unwrap(); // now cached in the IOTLB
///
/// domain.unmap(iova, 4096).unwrap(); // entry cleared, no invalidation yet
/// assert!(domain.is_pending(iova)); // the IOVA is not reused meanwhile
/// assert!(sim.dma_read(nic, iova, &mut [0; 4]).is_ok()); // the window
/// domain.flush().unwrap();
/// assert!(sim.dma_read(nic, iova, &mut [0; 4]).is_err()); // closed
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnmapPolicy {
    /// Invalidate before `unmap` returns.
    Strict,
    /// Invalidate the whole domain once per `batch` unmaps, or on `flush`.
    Deferred {
        /// Unmaps per flush (at least 1).
        batch: usize,
    },
}

struct HwState {
    inval: Invalidator,
    translation: bool,
}

struct ContextState {
    tables: ContextTables,
    /// Domain id → in use (bit per id). Id 0 is never handed out: with caching mode the unit
    /// tags cached not-present entries with it.
    ids: Vec<u64>,
    attached: BTreeMap<SourceId, u16>,
    domains: usize,
}

/// A snapshot of a unit's state, for views and tests.
#[derive(Clone, Debug)]
pub struct UnitInfo {
    /// Name ("dmar0").
    pub name: String,
    /// Architecture version.
    pub version: Version,
    /// Capabilities.
    pub cap: Cap,
    /// Extended capabilities.
    pub ecap: Ecap,
    /// Page-table levels in use.
    pub levels: u8,
    /// IOVA width in bits (min of the table width and MGAW).
    pub width: u32,
    /// Queued (true) or register-based invalidation.
    pub queued: bool,
    /// Whether translation is on.
    pub translation: bool,
    /// Live domains.
    pub domains: usize,
    /// Attached devices and their domain ids.
    pub attached: Vec<(SourceId, u16)>,
    /// Invalidation counters.
    pub invalidations: InvalidationStats,
    /// Faults seen.
    pub faults_total: u64,
    /// Fault overflows (FSTS.PFO) seen.
    pub fault_overflows: u64,
}

/// One remapping unit. See the module documentation.
pub struct Unit {
    name: String,
    regs: Box<dyn VtdRegisters>,
    phys: Arc<dyn PhysMemory>,
    version: Version,
    cap: Cap,
    ecap: Ecap,
    walk: WalkCaps,
    levels: u8,
    width: u32,
    large_pages: bool,
    mem: TableMemory,
    hw: spin::Mutex<HwState>,
    ctx: spin::Mutex<ContextState>,
    faults: spin::Mutex<FaultLog>,
    /// The interrupt remapping table, once enabled (`interrupt_remap.rs`). Lock order: `hw`
    /// before `ir`.
    ir: spin::Mutex<Option<interrupt_remap::InterruptTable>>,
}

impl Unit {
    /// The unit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Capabilities.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// Extended capabilities.
    pub fn ecap(&self) -> Ecap {
        self.ecap
    }

    /// IOVA width of this unit's domains in bits.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Page-table levels of this unit's domains.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// Physical address of the root table (what RTADDR holds).
    pub fn root_table(&self) -> PhysAddr {
        self.ctx.lock().tables.root()
    }

    /// What the walker needs to know about this unit.
    pub fn walk_caps(&self) -> WalkCaps {
        self.walk
    }

    /// Invalidation counters.
    pub fn invalidation_stats(&self) -> InvalidationStats {
        self.hw.lock().inval.stats()
    }

    /// A snapshot for views.
    pub fn info(&self) -> UnitInfo {
        let (queued, translation, invalidations) = {
            let hw = self.hw.lock();
            (hw.inval.is_queued(), hw.translation, hw.inval.stats())
        };
        let (domains, attached) = {
            let ctx = self.ctx.lock();
            (ctx.domains, ctx.attached.iter().map(|(s, d)| (*s, *d)).collect())
        };
        let (faults_total, fault_overflows) = {
            let l = self.faults.lock();
            (l.total, l.overflows)
        };
        UnitInfo {
            name: self.name.clone(),
            version: self.version,
            cap: self.cap,
            ecap: self.ecap,
            levels: self.levels,
            width: self.width,
            queued,
            translation,
            domains,
            attached,
            invalidations,
            faults_total,
            fault_overflows,
        }
    }
}
