//! One remapping unit: bring-up, domains, device attachment, map/unmap, faults.
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
//! writes that ([`regs::set_gcmd`]).
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

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use dma::error::IommuError;
use dma::phys::{PAGE_SIZE, PhysAddr, PhysMemory, mask_from_bits};

use super::fault::{FaultReason, FaultRecord};
use super::invalidation::{ContextScope, InvalidationError, InvalidationStats, Invalidator, IotlbScope, page_scope};
use super::iova::{IovaAllocator, IovaError, IovaStats};
use super::regs::{self, Cap, Ecap, SAGAW_39, SAGAW_48, Version, VtdRegisters, fsts, gcmd};
use super::tables::{CacheFlush, ContextEntry, ContextTables, PageTable, TableError, TableMemory};
use super::walker::{ContextLookup, Translation, WalkCaps, walk_tables};
use super::{AccessKind, Perms, SourceId};

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

/// A status change bring-up or shutdown waits for in the global status register (§10.4.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnitStep {
    /// Translation turned off (GSTS.TES clear).
    TranslationDisable,
    /// The invalidation queue turned off (GSTS.QIES clear).
    QueuedInvalidationDisable,
    /// The root table pointer latched (GSTS.RTPS).
    RootTablePointer,
    /// Translation turned on (GSTS.TES).
    TranslationEnable,
}

impl UnitStep {
    /// The words a log line uses for it.
    pub const fn text(self) -> &'static str {
        match self {
            UnitStep::TranslationDisable => "translation disable",
            UnitStep::QueuedInvalidationDisable => "queued invalidation disable",
            UnitStep::RootTablePointer => "set root table pointer (GSTS.RTPS)",
            UnitStep::TranslationEnable => "translation enable (GSTS.TES)",
        }
    }
}

impl fmt::Display for UnitStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// Why bring-up or a unit-level operation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnitError {
    /// Neither 39-bit/3-level nor 48-bit/4-level tables are supported.
    UnsupportedWidth {
        /// CAP.SAGAW.
        sagaw: u8,
    },
    /// A status bit never changed.
    Timeout {
        /// What was waited for.
        what: UnitStep,
    },
    /// Invalidation failed.
    Invalidation(InvalidationError),
    /// Table memory.
    Table(TableError),
    /// Every domain id is in use.
    NoDomainIds {
        /// How many the unit supports.
        supported: u32,
    },
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitError::UnsupportedWidth { sagaw } => write!(
                f,
                "IOMMU supports no 3- or 4-level page tables (SAGAW {}); leave VT-d off",
                regs::sagaw_names(*sagaw)
            ),
            UnitError::Timeout { what } => write!(f, "IOMMU did not acknowledge {what}; the unit is not responding"),
            UnitError::Invalidation(e) => write!(f, "{e}"),
            UnitError::Table(e) => write!(f, "{e}"),
            UnitError::NoDomainIds { supported } => {
                write!(f, "all {supported} IOMMU domain ids are in use; share domains between devices")
            }
        }
    }
}

impl From<InvalidationError> for UnitError {
    fn from(e: InvalidationError) -> UnitError {
        UnitError::Invalidation(e)
    }
}

impl From<TableError> for UnitError {
    fn from(e: TableError) -> UnitError {
        UnitError::Table(e)
    }
}

/// Why a domain operation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DomainError {
    /// IOVA allocation.
    Iova(IovaError),
    /// Page tables.
    Table(TableError),
    /// The invalidation did not complete; the range stays quarantined (not reused) until a
    /// later flush succeeds.
    Invalidation(InvalidationError),
    /// Zero-length map.
    ZeroLength,
    /// A mapping with neither read nor write would be not-present.
    NoPermissions,
    /// `phys + len` wraps.
    BadRange,
    /// `unmap` of an address that is not a live mapping.
    NotMapped {
        /// The address.
        iova: u64,
    },
    /// `unmap` with a length that does not match the mapping.
    LengthMismatch {
        /// The address.
        iova: u64,
        /// Bytes (page rounded) the mapping has.
        mapped: u64,
        /// Bytes (page rounded) asked for.
        asked: u64,
    },
    /// The device already has a context entry in another domain.
    AlreadyAttached {
        /// The device.
        source: SourceId,
        /// Its domain.
        domain: u16,
    },
    /// The device is not attached to this domain.
    NotAttached {
        /// The device.
        source: SourceId,
    },
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainError::Iova(e) => write!(f, "{e}"),
            DomainError::Table(e) => write!(f, "{e}"),
            DomainError::Invalidation(e) => write!(f, "{e}; the range stays quarantined"),
            DomainError::ZeroLength => f.write_str("zero-length IOMMU mapping"),
            DomainError::NoPermissions => f.write_str("IOMMU mapping with neither read nor write permission"),
            DomainError::BadRange => f.write_str("physical range wraps around the address space"),
            DomainError::NotMapped { iova } => {
                write!(f, "IOVA {iova:#x} is not mapped in this domain (double unmap, or a wrong address)")
            }
            DomainError::LengthMismatch { iova, mapped, asked } => write!(
                f,
                "unmap of IOVA {iova:#x} with {asked:#x} bytes, but it was mapped with {mapped:#x}; unmap what was mapped"
            ),
            DomainError::AlreadyAttached { source, domain } => {
                write!(f, "{source} is already attached to IOMMU domain {domain}; detach it first")
            }
            DomainError::NotAttached { source } => write!(f, "{source} is not attached to this IOMMU domain"),
        }
    }
}

/// What the DMA service is told when a domain refuses a request: the same cases, in
/// `dma`'s own error type (which cannot name this crate's).
impl From<DomainError> for IommuError {
    fn from(e: DomainError) -> IommuError {
        match e {
            DomainError::Iova(e) => match e {
                IovaError::ZeroLength => IommuError::ZeroLength,
                IovaError::NoSpace { len, limit } => IommuError::IovaExhausted { len, limit },
                IovaError::Overlaps { iova } => IommuError::IovaInUse { iova },
                IovaError::BadRange { iova } => IommuError::BadIovaRange { iova, len: 0 },
                IovaError::NotAllocated { iova } => IommuError::NotMapped { iova },
            },
            DomainError::Table(e) => match e {
                TableError::OutOfMemory => IommuError::TableAllocFailed,
                TableError::Unaligned { iova, len } => IommuError::BadIovaRange { iova, len },
                TableError::PhysUnaligned { phys } | TableError::PhysTooHigh { phys } => {
                    IommuError::BadPhysAddr { phys }
                }
                TableError::BeyondWidth { iova, width } => IommuError::BeyondWidth { iova, width },
                TableError::AlreadyMapped { iova } => IommuError::AlreadyMapped { iova },
                TableError::SplitsLargePage { iova } => IommuError::SplitsLargePage { iova },
            },
            DomainError::Invalidation(_) => IommuError::InvalidationFailed,
            DomainError::ZeroLength => IommuError::ZeroLength,
            DomainError::NoPermissions => IommuError::NoPermissions,
            DomainError::BadRange => IommuError::PhysRangeWraps,
            DomainError::NotMapped { iova } => IommuError::NotMapped { iova },
            DomainError::LengthMismatch { iova, mapped, asked } => IommuError::LengthMismatch { iova, mapped, asked },
            DomainError::AlreadyAttached { source, domain } => {
                IommuError::DeviceAlreadyAttached { requester: source.0, domain }
            }
            DomainError::NotAttached { source } => IommuError::DeviceNotAttached { requester: source.0 },
        }
    }
}

impl From<IovaError> for DomainError {
    fn from(e: IovaError) -> DomainError {
        DomainError::Iova(e)
    }
}

impl From<TableError> for DomainError {
    fn from(e: TableError) -> DomainError {
        DomainError::Table(e)
    }
}

impl From<InvalidationError> for DomainError {
    fn from(e: InvalidationError) -> DomainError {
        DomainError::Invalidation(e)
    }
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

const RECENT_FAULTS: usize = 64;

#[derive(Default)]
struct FaultLog {
    recent: VecDeque<FaultRecord>,
    per_source: BTreeMap<SourceId, u64>,
    total: u64,
    overflows: u64,
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
}

impl Unit {
    /// Brings up the unit behind `regs` (see the module documentation for the steps). `name`
    /// appears in logs and views.
    pub fn bring_up(
        name: &str,
        regs: impl VtdRegisters + 'static,
        phys: Arc<dyn PhysMemory>,
        config: UnitConfig,
    ) -> Result<Arc<Unit>, UnitError> {
        let regs: Box<dyn VtdRegisters> = Box::new(regs);
        let version = Version(regs.read32(regs::VER));
        let cap = Cap(regs.read64(regs::CAP));
        let ecap = Ecap(regs.read64(regs::ECAP));
        log::info!("{name}: VT-d {version}, cap {cap}, ecap {ecap}");

        let status = regs.read32(regs::GSTS);
        if status & gcmd::TE != 0 {
            log::warn!("{name}: translation was left enabled by firmware; disabling it");
            if !regs::set_gcmd(&*regs, gcmd::TE, false) {
                return Err(UnitError::Timeout { what: UnitStep::TranslationDisable });
            }
        }
        if status & gcmd::QIE != 0 && !regs::set_gcmd(&*regs, gcmd::QIE, false) {
            return Err(UnitError::Timeout { what: UnitStep::QueuedInvalidationDisable });
        }

        let levels = choose_levels(cap, config.max_width).ok_or(UnitError::UnsupportedWidth { sagaw: cap.sagaw() })?;
        let width = (12 + 9 * levels as u32).min(cap.mgaw());
        let flush = if ecap.coherent() { None } else { config.flush_cache.clone().or_else(default_flush) };
        let max_addr = mask_from_bits(config.host_address_width as u32);
        let mem = TableMemory::new(phys.clone(), flush.clone(), max_addr);

        let mut inval = if ecap.qi() && config.prefer_queued {
            Invalidator::enable_queue(&*regs, &*phys, cap, max_addr, flush)?
        } else {
            Invalidator::registers(cap, ecap)
        };

        let tables = ContextTables::new(&mem)?;
        regs.write64(regs::RTADDR, tables.root().0);
        if !regs::gcmd_oneshot(&*regs, gcmd::SRTP, true) {
            return Err(UnitError::Timeout { what: UnitStep::RootTablePointer });
        }
        inval.context(&*regs, &*phys, ContextScope::Global)?;
        inval.iotlb(&*regs, &*phys, IotlbScope::Global)?;
        inval.flush_write_buffer(&*regs)?;

        let ids = vec![1u64; (cap.domains() as usize).div_ceil(64)];
        let unit = Arc::new(Unit {
            name: String::from(name),
            regs,
            phys,
            version,
            cap,
            ecap,
            walk: WalkCaps::from_regs(cap, ecap),
            levels,
            width,
            large_pages: config.large_pages,
            mem,
            hw: spin::Mutex::new(HwState { inval, translation: false }),
            ctx: spin::Mutex::new(ContextState { tables, ids, attached: BTreeMap::new(), domains: 0 }),
            faults: spin::Mutex::new(FaultLog::default()),
        });
        let stale = unit.poll_faults();
        if !stale.is_empty() {
            log::warn!("{name}: cleared {} fault record(s) left from before bring-up", stale.len());
        }
        if config.enable_translation {
            unit.enable_translation()?;
        }
        log::info!(
            "{name}: {}-level tables, {width}-bit IOVAs, {} invalidation{}",
            levels,
            if unit.hw.lock().inval.is_queued() { "queued" } else { "register" },
            if cap.caching_mode() { ", caching mode" } else { "" }
        );
        Ok(unit)
    }

    /// Turns translation on (GCMD.TE, wait GSTS.TES). From now on, devices without a context
    /// entry are blocked.
    pub fn enable_translation(&self) -> Result<(), UnitError> {
        let mut hw = self.hw.lock();
        hw.inval.flush_write_buffer(&*self.regs)?;
        if !regs::set_gcmd(&*self.regs, gcmd::TE, true) {
            return Err(UnitError::Timeout { what: UnitStep::TranslationEnable });
        }
        hw.translation = true;
        log::info!("{}: DMA remapping enabled", self.name);
        Ok(())
    }

    /// Programs the fault event interrupt (an MSI: `address`/`data` as for MSI) and unmasks
    /// it (§7.3.1, §10.4.10..13). The handler should call [`Unit::poll_faults`].
    pub fn configure_fault_interrupt(&self, address: u64, data: u32) {
        self.regs.write32(regs::FEDATA, data);
        self.regs.write32(regs::FEADDR, address as u32);
        self.regs.write32(regs::FEUADDR, (address >> 32) as u32);
        self.regs.write32(regs::FECTL, 0);
    }

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

    /// Creates an empty domain with a fresh domain id.
    pub fn create_domain(self: &Arc<Self>, policy: UnmapPolicy) -> Result<Arc<Domain>, UnitError> {
        let tables = PageTable::new(
            &self.mem,
            self.levels,
            self.large_pages && self.cap.supports_2m(),
            self.large_pages && self.cap.supports_1g(),
        )?;
        let id = {
            let mut ctx = self.ctx.lock();
            let Some(id) = take_id(&mut ctx.ids) else {
                drop(ctx);
                // SAFETY: the tables were never referenced by a context entry.
                unsafe { tables.destroy(&self.mem) };
                return Err(UnitError::NoDomainIds { supported: self.cap.domains() });
            };
            ctx.domains += 1;
            id
        };
        let policy = match policy {
            UnmapPolicy::Deferred { batch } => UnmapPolicy::Deferred { batch: batch.max(1) },
            p => p,
        };
        Ok(Arc::new(Domain {
            unit: self.clone(),
            id,
            top: tables.top(),
            levels: tables.levels(),
            state: spin::Mutex::new(DomainState {
                tables: Some(tables),
                iova: IovaAllocator::new(self.width),
                policy,
                pending_tables: Vec::new(),
                unflushed: 0,
                devices: Vec::new(),
                stats: DomainStats::default(),
            }),
        }))
    }

    fn invalidate_iotlb(&self, scope: IotlbScope) -> Result<(), InvalidationError> {
        let mut hw = self.hw.lock();
        hw.inval.iotlb(&*self.regs, &*self.phys, scope)
    }

    /// Invalidates the IOTLB for `iova..iova+len` of `domain`: page-selective when the unit
    /// can do it in one request, else the whole domain.
    fn invalidate_range(&self, domain: u16, iova: u64, len: u64, leaf_only: bool) -> Result<(), InvalidationError> {
        let scope = match page_scope(domain, iova, len, self.cap.mamv(), leaf_only) {
            Some(s) if self.cap.psi() => s,
            _ => IotlbScope::Domain(domain),
        };
        self.invalidate_iotlb(scope)
    }

    /// Reads and clears every pending fault record (§7.3.1): from FSTS.FRI on, each record
    /// with F set is decoded, logged with its device, counted, and cleared by writing F; then
    /// FSTS.PFO is cleared. Safe to call from the fault interrupt handler or by polling.
    pub fn poll_faults(&self) -> Vec<FaultRecord> {
        let mut log = self.faults.lock();
        let mut out = Vec::new();
        let status = self.regs.read32(regs::FSTS);
        if status & fsts::PPF != 0 {
            let n = self.cap.fault_records();
            let base = self.cap.fault_recording_offset();
            let first = fsts::fri(status) as usize % n;
            for i in 0..n {
                let off = base + ((first + i) % n) * 16;
                let hi = self.regs.read64(off + 8);
                let Some(rec) = FaultRecord::decode(self.regs.read64(off), hi) else {
                    continue;
                };
                // F is RW1C in the record's top dword; the other bits there are read-only.
                self.regs.write32(off + 12, 1 << 31);
                log::warn!("{}: {rec}", self.name);
                out.push(rec);
            }
        }
        if status & fsts::PFO != 0 {
            log.overflows += 1;
            log::warn!("{}: fault recording overflowed (FSTS.PFO); some faults were not recorded", self.name);
            self.regs.write32(regs::FSTS, fsts::PFO);
        }
        for rec in &out {
            log.total += 1;
            *log.per_source.entry(rec.source).or_insert(0) += 1;
            if log.recent.len() == RECENT_FAULTS {
                log.recent.pop_front();
            }
            log.recent.push_back(*rec);
        }
        out
    }

    /// The last faults seen (up to 64), oldest first, and counts per device.
    pub fn fault_history(&self) -> (Vec<FaultRecord>, Vec<(SourceId, u64)>, u64) {
        let log = self.faults.lock();
        (log.recent.iter().copied().collect(), log.per_source.iter().map(|(s, n)| (*s, *n)).collect(), log.overflows)
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

/// Picks the table depth: the smallest supported AGAW covering min(MGAW, `max_width`), else
/// the widest supported one (then the IOVA space is bounded by MGAW instead).
fn choose_levels(cap: Cap, max_width: u32) -> Option<u8> {
    let need = cap.mgaw().min(max_width);
    let options = [(39u32, 3u8, SAGAW_39), (48, 4, SAGAW_48)];
    let supported = || options.iter().filter(|o| cap.sagaw() & o.2 != 0);
    supported().find(|o| o.0 >= need).or_else(|| supported().next_back()).map(|o| o.1)
}

fn default_flush() -> Option<CacheFlush> {
    #[cfg(target_arch = "x86_64")]
    {
        Some(Arc::new(super::tables::clflush_range))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

fn take_id(ids: &mut [u64]) -> Option<u16> {
    for (w, word) in ids.iter_mut().enumerate() {
        if *word != u64::MAX {
            let b = word.trailing_ones();
            *word |= 1 << b;
            return u16::try_from(w * 64 + b as usize).ok();
        }
    }
    None
}

fn release_id(ids: &mut [u64], id: u16) {
    if id != 0
        && let Some(word) = ids.get_mut(id as usize / 64)
    {
        *word &= !(1 << (id % 64));
    }
}

/// Counters of one domain.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DomainStats {
    /// Successful maps.
    pub maps: u64,
    /// Successful unmaps.
    pub unmaps: u64,
    /// 2 MiB leaves written.
    pub pages_2m: u64,
    /// 1 GiB leaves written.
    pub pages_1g: u64,
    /// Domain-wide flushes of deferred unmaps.
    pub flushes: u64,
}

struct DomainState {
    /// `None` once torn down.
    tables: Option<PageTable>,
    iova: IovaAllocator,
    policy: UnmapPolicy,
    /// Table frames unlinked by deferred unmaps, with the IOVA generation they belong to.
    pending_tables: Vec<(u64, PhysAddr)>,
    /// Deferred unmaps since the last flush.
    unflushed: usize,
    devices: Vec<SourceId>,
    stats: DomainStats,
}

/// An IOVA space with its page tables, on one unit. See the module documentation.
///
/// All methods take `&self` and a short spin lock, so a domain can be shared (`Arc`) by a
/// mapper serving several devices.
pub struct Domain {
    unit: Arc<Unit>,
    id: u16,
    top: PhysAddr,
    levels: u8,
    state: spin::Mutex<DomainState>,
}

impl Domain {
    /// The domain id (tags the unit's caches; appears in context entries).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The unit.
    pub fn unit(&self) -> &Arc<Unit> {
        &self.unit
    }

    /// The highest IOVA this domain can map.
    pub fn max_iova(&self) -> u64 {
        mask_from_bits(self.unit.width)
    }

    /// Counters.
    pub fn stats(&self) -> DomainStats {
        self.state.lock().stats
    }

    /// IOVA allocator counters (live and pending ranges).
    pub fn iova_stats(&self) -> IovaStats {
        self.state.lock().iova.stats()
    }

    /// Devices attached.
    pub fn devices(&self) -> Vec<SourceId> {
        self.state.lock().devices.clone()
    }

    /// Whether `iova` belongs to an unmapped range still waiting for its invalidation.
    pub fn is_pending(&self, iova: u64) -> bool {
        self.state.lock().iova.is_pending(iova)
    }

    /// Points `source`'s context entry at this domain (§9.3), then invalidates as §6.1 and
    /// §6.5.3.3 require: with caching mode, the device's context-cache entry (domain 0, where
    /// not-present entries are cached) and this domain's IOTLB; otherwise a write-buffer flush
    /// on units that need one.
    pub fn attach(&self, source: SourceId) -> Result<(), DomainError> {
        let unit = &self.unit;
        let mut st = self.state.lock();
        let mut ctx = unit.ctx.lock();
        if let Some(&d) = ctx.attached.get(&source) {
            return Err(DomainError::AlreadyAttached { source, domain: d });
        }
        let entry = ContextEntry { domain_id: self.id, table: self.top, aw: self.levels - 2 };
        let old = ctx.tables.set(&unit.mem, source, entry)?;
        ctx.attached.insert(source, self.id);
        st.devices.push(source);
        drop(ctx);
        let mut hw = unit.hw.lock();
        let (regs, phys) = (&*unit.regs, &*unit.phys);
        if let Some(old) = old {
            // Present → present (should not happen: we track attachments): treat like detach.
            hw.inval.context(regs, phys, ContextScope::Device { domain: old.domain_id, source })?;
            hw.inval.iotlb(regs, phys, IotlbScope::Domain(old.domain_id))?;
        } else if unit.cap.caching_mode() {
            hw.inval.context(regs, phys, ContextScope::Device { domain: 0, source })?;
            hw.inval.iotlb(regs, phys, IotlbScope::Domain(self.id))?;
        } else {
            hw.inval.flush_write_buffer(regs)?;
        }
        log::info!("{}: {source} attached to domain {} ({}-bit IOVAs)", unit.name, self.id, unit.width);
        Ok(())
    }

    /// Clears `source`'s context entry; its DMA faults from now on. Invalidates the device's
    /// context-cache entry, then the domain's IOTLB (§6.5.3.3 order: the context first, so no
    /// new translations are cached through it).
    pub fn detach(&self, source: SourceId) -> Result<(), DomainError> {
        let mut st = self.state.lock();
        self.detach_locked(&mut st, source)
    }

    fn detach_locked(&self, st: &mut DomainState, source: SourceId) -> Result<(), DomainError> {
        let unit = &self.unit;
        let mut ctx = unit.ctx.lock();
        if ctx.attached.get(&source) != Some(&self.id) {
            return Err(DomainError::NotAttached { source });
        }
        ctx.tables.clear(&unit.mem, source);
        ctx.attached.remove(&source);
        st.devices.retain(|d| *d != source);
        drop(ctx);
        let mut hw = unit.hw.lock();
        hw.inval.context(&*unit.regs, &*unit.phys, ContextScope::Device { domain: self.id, source })?;
        hw.inval.iotlb(&*unit.regs, &*unit.phys, IotlbScope::Domain(self.id))?;
        log::info!("{}: {source} detached from domain {}", unit.name, self.id);
        Ok(())
    }

    /// Maps `len` bytes at `phys` for devices in this domain with `perms`, and returns the IOVA
    /// of the byte at `phys` (the page offset is kept). The IOVA is chosen by the allocator
    /// below `limit` (the device's DMA mask), or is `fixed` (for identity maps such as RMRRs;
    /// page offsets must then match). With caching mode the new range is invalidated (see the
    /// module documentation).
    pub fn map(
        &self,
        fixed: Option<u64>,
        phys: PhysAddr,
        len: usize,
        perms: Perms,
        limit: u64,
    ) -> Result<u64, DomainError> {
        if len == 0 {
            return Err(DomainError::ZeroLength);
        }
        if !perms.any() {
            return Err(DomainError::NoPermissions);
        }
        let offset = phys.0 % PAGE;
        let span = (offset.checked_add(len as u64).ok_or(DomainError::BadRange)?).div_ceil(PAGE) * PAGE;
        let base = PhysAddr(phys.0 - offset);
        base.0.checked_add(span).ok_or(DomainError::BadRange)?;
        let unit = &self.unit;
        let mut st = self.state.lock();
        let iova = match fixed {
            Some(f) => {
                if f % PAGE != offset {
                    return Err(DomainError::Iova(IovaError::BadRange { iova: f }));
                }
                st.iova.reserve(f - offset, span)?;
                f - offset
            }
            None => st.iova.alloc(span, limit.min(self.max_iova()))?,
        };
        let Some(tables) = st.tables.as_mut() else {
            return Err(DomainError::Table(TableError::OutOfMemory));
        };
        let new_tables = match tables.map(&unit.mem, iova, base, span, perms) {
            Ok(r) => {
                st.stats.maps += 1;
                st.stats.pages_2m += r.pages_2m as u64;
                st.stats.pages_1g += r.pages_1g as u64;
                r.new_tables
            }
            Err(e) => {
                // Entries may have been present for a moment: invalidate before reuse.
                if unit.invalidate_range(self.id, iova, span, false).is_ok() {
                    let _ = st.iova.free_invalidated(iova);
                } else {
                    let _ = st.iova.free_deferred(iova);
                }
                return Err(e.into());
            }
        };
        if unit.cap.caching_mode() {
            // New tables are new non-leaf entries: then the paging-structure caches need it too.
            if let Err(e) = unit.invalidate_range(self.id, iova, span, new_tables == 0) {
                self.unmap_locked(&mut st, iova, span)?;
                return Err(e.into());
            }
        } else {
            unit.hw.lock().inval.flush_write_buffer(&*unit.regs)?;
        }
        Ok(iova + offset)
    }

    /// Identity-maps a firmware-reserved region (a DMAR RMRR, §8.4: memory that firmware-owned
    /// DMA such as USB legacy emulation keeps using) for this domain's devices, read/write, so
    /// turning translation on does not break it. `base` and `len` are whole pages.
    pub fn map_identity(&self, base: u64, len: u64) -> Result<(), DomainError> {
        let len = usize::try_from(len).map_err(|_| DomainError::BadRange)?;
        self.map(Some(base), PhysAddr(base), len, Perms::READ_WRITE, u64::MAX).map(|_| ())
    }

    /// Ends the mapping that `map` returned `iova` for (`len` as passed to `map`). Strict
    /// domains invalidate the range and wait before returning; deferred ones queue it (see
    /// [`UnmapPolicy`]).
    pub fn unmap(&self, iova: u64, len: usize) -> Result<(), DomainError> {
        let offset = iova % PAGE;
        let asked = (offset + len as u64).div_ceil(PAGE) * PAGE;
        let mut st = self.state.lock();
        let start = iova - offset;
        let mapped = st.iova.allocation(start).ok_or(DomainError::NotMapped { iova })?;
        if mapped != asked {
            return Err(DomainError::LengthMismatch { iova, mapped, asked });
        }
        self.unmap_locked(&mut st, start, mapped)
    }

    fn unmap_locked(&self, st: &mut DomainState, start: u64, len: u64) -> Result<(), DomainError> {
        let unit = &self.unit;
        let Some(tables) = st.tables.as_mut() else {
            return Err(DomainError::NotMapped { iova: start });
        };
        let report = tables.unmap(&unit.mem, start, len)?;
        st.stats.unmaps += 1;
        match st.policy {
            UnmapPolicy::Strict => {
                let leaf_only = report.freed_tables.is_empty();
                if let Err(e) = unit.invalidate_range(self.id, start, len, leaf_only) {
                    // Quarantine: released only after a later successful flush.
                    let g = st.iova.generation();
                    let _ = st.iova.free_deferred(start);
                    st.pending_tables.extend(report.freed_tables.iter().map(|t| (g, *t)));
                    return Err(e.into());
                }
                st.iova.free_invalidated(start)?;
                self.free_tables(st, &report.freed_tables);
            }
            UnmapPolicy::Deferred { batch } => {
                let g = st.iova.generation();
                st.iova.free_deferred(start)?;
                st.pending_tables.extend(report.freed_tables.iter().map(|t| (g, *t)));
                st.unflushed += 1;
                if st.unflushed >= batch {
                    self.flush_locked(st)?;
                }
            }
        }
        Ok(())
    }

    fn free_tables(&self, st: &mut DomainState, tables: &[PhysAddr]) {
        for t in tables {
            // SAFETY: the table was unlinked by `PageTable::unmap`, and the invalidation that
            // followed (with IH = 0, so paging-structure caches too) has completed.
            unsafe { self.unit.mem.free_table(*t) };
        }
        if let Some(pt) = st.tables.as_mut() {
            pt.tables_freed(tables.len());
        }
    }

    /// Invalidates the whole domain's IOTLB and releases every range (and table) that waited
    /// for it. Deferred domains call this every `batch` unmaps; call it to close the window
    /// sooner.
    pub fn flush(&self) -> Result<(), DomainError> {
        let mut st = self.state.lock();
        self.flush_locked(&mut st)
    }

    fn flush_locked(&self, st: &mut DomainState) -> Result<(), DomainError> {
        let g = st.iova.begin_flush();
        self.unit.invalidate_iotlb(IotlbScope::Domain(self.id))?;
        st.iova.flush_completed(g);
        let (done, keep): (Vec<_>, Vec<_>) = st.pending_tables.drain(..).partition(|(tg, _)| *tg <= g);
        st.pending_tables = keep;
        let done: Vec<PhysAddr> = done.into_iter().map(|(_, t)| t).collect();
        self.free_tables(st, &done);
        st.unflushed = 0;
        st.stats.flushes += 1;
        Ok(())
    }

    /// Translates `iova` through this domain's tables in software, as the unit would
    /// (`bus_to_phys` for a mapper, and debugging).
    pub fn translate(&self, iova: u64, access: AccessKind) -> Result<Translation, FaultReason> {
        let ctx =
            ContextLookup { domain_id: self.id, table: Some(self.top), levels: self.levels, width: self.unit.width };
        let _guard = self.state.lock();
        walk_tables(&**self.unit.mem.phys(), &self.unit.walk, &ctx, iova, access)
    }
}

impl Drop for Domain {
    /// Tears the domain down safely: devices still attached are detached first (their DMA
    /// faults from then on, which is safe), pending unmaps are flushed, and only then are the
    /// tables freed. If an invalidation fails the tables are leaked (quarantined), never freed
    /// while the unit might still walk them.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        let devices = core::mem::take(&mut st.devices);
        let mut st = core::mem::replace(
            st,
            DomainState {
                tables: None,
                iova: IovaAllocator::new(13),
                policy: UnmapPolicy::Strict,
                pending_tables: Vec::new(),
                unflushed: 0,
                devices: Vec::new(),
                stats: DomainStats::default(),
            },
        );
        let mut ok = true;
        for d in devices {
            st.devices.push(d);
            log::warn!("{}: domain {} dropped with {d} attached; detaching it", self.unit.name, self.id);
            ok &= self.detach_locked(&mut st, d).is_ok();
        }
        ok &= self.unit.invalidate_iotlb(IotlbScope::Domain(self.id)).is_ok();
        let mut ctx = self.unit.ctx.lock();
        ctx.domains = ctx.domains.saturating_sub(1);
        if !ok {
            log::error!("{}: domain {} teardown could not invalidate; its tables are leaked", self.unit.name, self.id);
            return;
        }
        release_id(&mut ctx.ids, self.id);
        drop(ctx);
        for (_, t) in st.pending_tables.drain(..) {
            // SAFETY: unlinked tables, and the domain-wide invalidation above completed.
            unsafe { self.unit.mem.free_table(t) };
        }
        if let Some(t) = st.tables.take() {
            // SAFETY: no context entry points at the domain any more (detached above, with
            // context-cache and IOTLB invalidation), and the domain's IOTLB was invalidated.
            unsafe { t.destroy(&self.unit.mem) };
        }
    }
}
