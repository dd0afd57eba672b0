//! DMA-API debugging (Linux's CONFIG_DMA_API_DEBUG): track live mappings, report misuse.
//!
//! The typed API makes most misuse impossible: a [`Mapping`](crate::Mapping) is unmapped once,
//! with its own size and direction, because it is consumed by `unmap`. The raw, Linux-shaped
//! layer (`DmaDevice::map_single_raw` and friends) hands out bare bus addresses, so there the
//! classic mistakes are possible again: unmapping an address that was never mapped, with a
//! different size or direction, twice; syncing in a direction the mapping does not allow. The
//! per-device tracker catches each of them, refuses the operation (nothing is freed, no state
//! changes) and records a [`DebugReport`] naming the device.
//!
//! Reports are counted per device and globally, and the most recent [`RECENT_REPORTS`] are kept
//! for the `dma:errors` view. Pool misuse (double free, wrong pool, write after free, destroying
//! a busy pool) is recorded here too.
//!
//! # Example
//! A driver on the raw layer syncs a receive mapping in the wrong direction, then unmaps it
//! twice: the checks of Linux's DMA-API debugging (Documentation/core-api/dma-api.rst,
//! Part III). Each mistake is refused with a report naming the device, the device's data is
//! not lost, and the `dma:errors` view shows what happened.
//! ```
//! # use std::sync::Arc;
//! # use dma::{sim::{SimDevice, SimMemory}, mapper::Direct, DmaDevice, PhysMemory, PageBuffer};
//! # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
//! # let phys: Arc<dyn PhysMemory> = mem.clone();
//! # let dev = DmaDevice::new("00:05.0 debug-demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
//! use dma::{DmaBuf, DmaDirection, ReportKind};
//! let hw = SimDevice::new(&dev);
//! let buf = PageBuffer::alloc(&phys, 64, 0xffff_ffff).unwrap();
//! // SAFETY: `buf` outlives the mapping, and the CPU reads it only after the unmap.
//! let bus = unsafe { dev.map_single_raw(buf.dma_ptr(), 64, DmaDirection::FromDevice) }.unwrap();
//! hw.write(bus, b"data").unwrap();
//!
//! // Mapped FromDevice, synced as if ToDevice: refused and reported.
//! let report = dev.sync_single_raw_for_cpu(bus, 64, DmaDirection::ToDevice).unwrap_err();
//! assert_eq!(report.device, "00:05.0 debug-demo");
//! assert!(matches!(report.kind, ReportKind::SyncDirectionMismatch { for_cpu: true, .. }));
//!
//! dev.unmap_single_raw(bus, 64, DmaDirection::FromDevice).unwrap();
//! let report = dev.unmap_single_raw(bus, 64, DmaDirection::FromDevice).unwrap_err();
//! assert!(matches!(report.kind, ReportKind::DoubleUnmap { .. }));
//! assert_eq!(dev.report_count(), 2);
//! assert_eq!(&buf[..4], b"data"); // nothing was freed twice or overwritten
//!
//! // One line per report in the shell's `cat dma:errors`, each naming the device.
//! let view = dma::view("dma:errors").unwrap();
//! assert!(view.contains("00:05.0 debug-demo: DMA-API: device driver frees DMA memory twice"));
//! assert!(view.contains("00:05.0 debug-demo: DMA-API: device driver syncs DMA memory for cpu"));
//! ```

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};

use crate::direction::DmaDirection;
use crate::mapper::Mapped;
use crate::phys::BusAddr;

/// How many reports the `dma:errors` view keeps.
pub const RECENT_REPORTS: usize = 64;

/// How many recent unmaps a device remembers, to tell a double unmap from a wild address.
const RECENT_UNMAPS: usize = 64;

/// What was wrong with a pool free ([`ReportKind::PoolBadFree`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BadFree {
    /// The address is not in this pool.
    NotInPool,
    /// The address is inside the pool but not at the start of a block.
    NotBlockStart,
    /// The CPU and bus addresses name different blocks.
    AddressesDisagree,
    /// The block belongs to a `PoolBlock` handle, which frees itself on drop.
    OwnedByHandle,
}

impl BadFree {
    /// The words a log line uses for it.
    pub const fn text(self) -> &'static str {
        match self {
            BadFree::NotInPool => "address is not in this pool",
            BadFree::NotBlockStart => "address is not the start of a block",
            BadFree::AddressesDisagree => "CPU and bus addresses name different blocks",
            BadFree::OwnedByHandle => "block belongs to a PoolBlock handle, which frees itself on drop",
        }
    }
}

impl fmt::Display for BadFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// Unmap or sync of a bus address with no live mapping.
    UnknownAddress {
        /// The address given.
        bus: BusAddr,
        /// The length given.
        len: usize,
    },
    /// Unmap of an address that was unmapped recently and not mapped again.
    DoubleUnmap {
        /// The address given.
        bus: BusAddr,
        /// The length given.
        len: usize,
    },
    /// Unmap with a size different from the map's.
    SizeMismatch {
        /// The address given.
        bus: BusAddr,
        /// Size at map time.
        mapped_len: usize,
        /// Size given to unmap.
        unmap_len: usize,
    },
    /// Unmap with a direction different from the map's.
    DirectionMismatch {
        /// The address given.
        bus: BusAddr,
        /// Direction at map time.
        mapped: DmaDirection,
        /// Direction given to unmap.
        given: DmaDirection,
    },
    /// A sync in a direction the mapping does not allow.
    SyncDirectionMismatch {
        /// The address given.
        bus: BusAddr,
        /// Direction at map time.
        mapped: DmaDirection,
        /// Direction given to the sync.
        given: DmaDirection,
        /// `true` for sync_for_cpu, `false` for sync_for_device.
        for_cpu: bool,
    },
    /// A partial sync reaching past the end of the mapping.
    SyncOutOfRange {
        /// The mapping's address.
        bus: BusAddr,
        /// Offset given.
        offset: usize,
        /// Length given.
        len: usize,
        /// The mapping's length.
        mapped_len: usize,
    },
    /// Mappings were still live when the device was torn down.
    LiveAtTeardown {
        /// How many.
        live: usize,
    },
    /// A typed mapping was dropped without `unmap`; it was unmapped by its destructor.
    DroppedWhileMapped {
        /// The mapping's bus address.
        bus: BusAddr,
        /// Its length.
        len: usize,
    },
    /// A pool block was freed twice.
    PoolDoubleFree {
        /// Pool name.
        pool: String,
        /// The block's bus address.
        bus: BusAddr,
    },
    /// A block was freed into a pool it does not belong to, or with inconsistent addresses.
    PoolBadFree {
        /// Pool name.
        pool: String,
        /// The bus address given.
        bus: BusAddr,
        /// What exactly was wrong.
        reason: BadFree,
    },
    /// A freed pool block was written (poison damaged) before it was allocated again.
    PoolWriteAfterFree {
        /// Pool name.
        pool: String,
        /// The block's bus address.
        bus: BusAddr,
        /// Offset of the first damaged byte inside the block.
        offset: usize,
        /// The byte found there.
        found: u8,
    },
    /// The pool's free list was damaged (a device wrote into a free block); the rest of the
    /// free list was abandoned.
    PoolFreeListCorrupt {
        /// Pool name.
        pool: String,
    },
    /// A pool was destroyed with blocks still allocated; their pages were quarantined.
    PoolDestroyedBusy {
        /// Pool name.
        pool: String,
        /// Blocks still out.
        live: usize,
    },
}

impl fmt::Display for ReportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportKind::UnknownAddress { bus, len } => write!(
                f,
                "device driver tries to free DMA memory it has not allocated [device address={bus}] [size={len} bytes]"
            ),
            ReportKind::DoubleUnmap { bus, len } => {
                write!(f, "device driver frees DMA memory twice [device address={bus}] [size={len} bytes]")
            }
            ReportKind::SizeMismatch { bus, mapped_len, unmap_len } => write!(
                f,
                "device driver frees DMA memory with different size [device address={bus}] [map size={mapped_len} bytes] [unmap size={unmap_len} bytes]"
            ),
            ReportKind::DirectionMismatch { bus, mapped, given } => write!(
                f,
                "device driver frees DMA memory with different direction [device address={bus}] [mapped with {mapped}] [unmapped with {given}]"
            ),
            ReportKind::SyncDirectionMismatch { bus, mapped, given, for_cpu } => write!(
                f,
                "device driver syncs DMA memory {} with different direction [device address={bus}] [mapped with {mapped}] [synced with {given}]",
                if *for_cpu { "for cpu" } else { "for device" }
            ),
            ReportKind::SyncOutOfRange { bus, offset, len, mapped_len } => write!(
                f,
                "device driver syncs DMA memory outside the mapping [device address={bus}] [mapping size={mapped_len}] [sync {offset}+{len}]"
            ),
            ReportKind::LiveAtTeardown { live } => {
                write!(f, "device torn down with {live} DMA mappings still live; their memory stays reserved")
            }
            ReportKind::DroppedWhileMapped { bus, len } => write!(
                f,
                "mapping dropped without unmap [device address={bus}] [size={len} bytes]; unmapped by its destructor"
            ),
            ReportKind::PoolDoubleFree { pool, bus } => {
                write!(f, "dma_pool {pool}: block {bus} freed twice; ignored")
            }
            ReportKind::PoolBadFree { pool, bus, reason } => {
                write!(f, "dma_pool {pool}: bad free of {bus}: {reason}; ignored")
            }
            ReportKind::PoolWriteAfterFree { pool, bus, offset, found } => {
                write!(f, "dma_pool {pool}: block {bus} written after free: byte {offset} is {found:#04x}, not poison")
            }
            ReportKind::PoolFreeListCorrupt { pool } => write!(
                f,
                "dma_pool {pool}: free list damaged (a free block was written); remaining free blocks abandoned"
            ),
            ReportKind::PoolDestroyedBusy { pool, live } => {
                write!(f, "dma_pool {pool}: destroyed with {live} blocks still in use; their pages are quarantined")
            }
        }
    }
}

/// One report: which device, what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugReport {
    /// The device's name (BDF and driver).
    pub device: String,
    /// What happened.
    pub kind: ReportKind,
}

impl fmt::Display for DebugReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: DMA-API: {}", self.device, self.kind)
    }
}

struct ErrorLog {
    total: u64,
    recent: VecDeque<(u64, DebugReport)>,
}

static ERRORS: spin::Mutex<ErrorLog> = spin::Mutex::new(ErrorLog { total: 0, recent: VecDeque::new() });

/// Logs and records a report in the global log.
pub(crate) fn record(report: &DebugReport) {
    log::error!("{report}");
    let mut log = ERRORS.lock();
    log.total += 1;
    let seq = log.total;
    if log.recent.len() == RECENT_REPORTS {
        log.recent.pop_front();
    }
    log.recent.push_back((seq, report.clone()));
}

/// Total reports recorded since boot, all devices.
pub fn total_reports() -> u64 {
    ERRORS.lock().total
}

/// The most recent reports (at most [`RECENT_REPORTS`]), oldest first.
pub fn recent_reports() -> Vec<DebugReport> {
    ERRORS.lock().recent.iter().map(|(_, r)| r.clone()).collect()
}

/// Renders the `dma:errors` view: the total, then one numbered line per recent report.
pub fn render_errors() -> String {
    let log = ERRORS.lock();
    let mut out = String::new();
    let _ = writeln!(out, "dma errors: {} reported, last {} shown", log.total, log.recent.len());
    for (seq, r) in &log.recent {
        let _ = writeln!(out, "#{seq} {r}");
    }
    out
}

/// What kind of mapping a tracked entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingKind {
    /// A typed single-buffer or page mapping.
    Single,
    /// A typed scatter-gather mapping (`bus`/`len` describe its first segment and total).
    ScatterGather {
        /// Number of bus segments.
        segments: usize,
    },
    /// A non-coherent allocation.
    NonCoherent,
    /// A mapping made through the raw layer.
    Raw,
}

/// One live mapping as the tracker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveMapping {
    /// Tracker id.
    pub id: u64,
    /// Kind of mapping.
    pub kind: MappingKind,
    /// Bus address the device uses.
    pub bus: BusAddr,
    /// Length in bytes.
    pub len: usize,
    /// Direction.
    pub dir: DmaDirection,
    /// Whether it goes through a bounce slot.
    pub bounced: bool,
}

impl fmt::Display for LiveMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            MappingKind::Single => "single",
            MappingKind::ScatterGather { .. } => "sg",
            MappingKind::NonCoherent => "noncoherent",
            MappingKind::Raw => "raw",
        };
        write!(
            f,
            "{:<11} {:#018x} {:>8} {:<17}{}",
            kind,
            self.bus.0,
            self.len,
            self.dir.linux_name(),
            if self.bounced { " bounced" } else { "" }
        )?;
        if let MappingKind::ScatterGather { segments } = self.kind {
            write!(f, " ({segments} segments)")?;
        }
        Ok(())
    }
}

/// Mappings still live at device teardown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveAtTeardown {
    /// The device.
    pub device: String,
    /// What is still mapped.
    pub live: Vec<LiveMapping>,
}

impl fmt::Display for LiveAtTeardown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} DMA mappings still live at teardown (memory kept reserved):",
            self.device,
            self.live.len()
        )?;
        for m in &self.live {
            writeln!(f, "  {m}")?;
        }
        Ok(())
    }
}

/// The per-device record of live mappings. Raw mappings are always recorded (the raw layer
/// needs them to unmap); typed ones only while debugging is on.
#[derive(Default)]
pub(crate) struct Tracker {
    next_id: u64,
    pub(crate) live: BTreeMap<u64, (LiveMapping, Option<Mapped>)>,
    /// (bus, id) of every raw mapping, to find it by address.
    raw_by_bus: BTreeSet<(u64, u64)>,
    recent_unmaps: VecDeque<(u64, usize)>,
    pub(crate) reports: u64,
}

impl Tracker {
    pub(crate) fn insert(
        &mut self,
        kind: MappingKind,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
        bounced: bool,
        raw: Option<Mapped>,
    ) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        if raw.is_some() {
            self.raw_by_bus.insert((bus.0, id));
        }
        self.recent_unmaps.retain(|&(b, _)| b != bus.0);
        self.live.insert(id, (LiveMapping { id, kind, bus, len, dir, bounced }, raw));
        id
    }

    pub(crate) fn remove(&mut self, id: u64) {
        if let Some((m, raw)) = self.live.remove(&id) {
            if raw.is_some() {
                self.raw_by_bus.remove(&(m.bus.0, id));
            }
            if self.recent_unmaps.len() == RECENT_UNMAPS {
                self.recent_unmaps.pop_front();
            }
            self.recent_unmaps.push_back((m.bus.0, m.len));
        }
    }

    /// Raw mappings starting at `bus`.
    fn raw_at(&self, bus: BusAddr) -> impl Iterator<Item = &(LiveMapping, Option<Mapped>)> {
        self.raw_by_bus.range((bus.0, 0)..=(bus.0, u64::MAX)).filter_map(|(_, id)| self.live.get(id))
    }

    /// Finds the raw mapping an unmap refers to, or says what is wrong with the request.
    pub(crate) fn check_unmap(&self, bus: BusAddr, len: usize, dir: DmaDirection) -> Result<(u64, Mapped), ReportKind> {
        let mut first_mismatch = None;
        for (m, raw) in self.raw_at(bus) {
            if let (true, Some(raw)) = (m.len == len && m.dir == dir, raw) {
                return Ok((m.id, *raw));
            }
            if first_mismatch.is_none() {
                first_mismatch = Some(if m.len != len {
                    ReportKind::SizeMismatch { bus, mapped_len: m.len, unmap_len: len }
                } else {
                    ReportKind::DirectionMismatch { bus, mapped: m.dir, given: dir }
                });
            }
        }
        if let Some(k) = first_mismatch {
            return Err(k);
        }
        if self.recent_unmaps.iter().any(|&(b, _)| b == bus.0) {
            Err(ReportKind::DoubleUnmap { bus, len })
        } else {
            Err(ReportKind::UnknownAddress { bus, len })
        }
    }

    /// Finds the raw mapping a sync refers to and checks the range and direction.
    pub(crate) fn check_sync(
        &self,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
        for_cpu: bool,
    ) -> Result<(Mapped, DmaDirection), ReportKind> {
        let Some((m, Some(raw))) = self.raw_at(bus).next() else {
            return Err(ReportKind::UnknownAddress { bus, len });
        };
        if crate::error::check_range(offset, len, m.len).is_err() {
            return Err(ReportKind::SyncOutOfRange { bus, offset, len, mapped_len: m.len });
        }
        if m.dir != DmaDirection::Bidirectional && m.dir != dir {
            return Err(ReportKind::SyncDirectionMismatch { bus, mapped: m.dir, given: dir, for_cpu });
        }
        Ok((*raw, m.dir))
    }

    pub(crate) fn live(&self) -> Vec<LiveMapping> {
        self.live.values().map(|(m, _)| *m).collect()
    }
}
