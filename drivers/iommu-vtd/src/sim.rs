//! A simulated VT-d unit for host tests: registers with the spec's behaviour, queued
//! invalidation, a context cache and an IOTLB that really cache, and fault recording.
//!
//! [`SimUnit`] implements [`VtdRegisters`], so the driver in [`super::unit`] runs against it
//! unchanged. What makes it useful is that it is *unforgiving* in the ways hardware is:
//! - GCMD bits are commands: a GCMD write without a persistent bit turns that feature off;
//!   SRTP latches RTADDR; WBF, ICC and IVT complete and clear.
//! - The context cache and IOTLB keep what they translated (tagged by domain id) until the
//!   matching invalidation: a driver that forgets one keeps using a stale translation, and a
//!   test sees the device still reach an unmapped page. With caching mode (`CAP.CM`) it
//!   also caches *failed* lookups, tagged with domain 0 for context entries, so a driver that
//!   skips the not-present → present invalidation sees its device fault.
//! - A page-selective invalidation ignores address bits below its mask, as hardware may, so a
//!   wrong address mask leaves stale entries.
//! - Queued invalidation processes descriptors from IQH to IQT when IQT is written; a wait
//!   descriptor writes its status dword to memory. A malformed descriptor (an unknown type,
//!   a reserved bit set, granularity 0, a mask above MAMV, a wait that does nothing: the
//!   checks of QEMU 7.2's `vtd_process_inv_desc`) stops the queue as §6.5.2.10 says: FSTS.IQE
//!   set, IQH left on the bad descriptor, nothing fetched until software clears IQE. Then a
//!   unit like hardware fetches again at once; one like QEMU 7.2
//!   ([`SimConfig::resume_on_iqe_clear`] false) only at the next IQT write. A rev-3 unit
//!   ([`SimConfig::error_record`]) says why in IQERCD.IQEI.
//! - A failed device access records a fault in the fault recording registers (F, reason,
//!   source, address, type), sets FSTS.PPF/FRI, or PFO when all records are full.
//! - Misuse the spec calls undefined (register invalidation while the queue is on, enabling
//!   translation without a root table, a mask above MAMV) is recorded as a *violation* that
//!   tests assert to be empty.
//!
//! # Example
//! The driver runs against the simulated unit unchanged, and a simulated device's reads go
//! through the unit's caches: the first read of a page walks the tables (an IOTLB miss), the
//! next is served from the IOTLB. A blocked write comes back as the fault record the hardware
//! would log, and the driver reads that same record from the fault recording registers.
//! ```
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, FrameRequest, PhysMemory};
//! use iommu_vtd::sim::{SimConfig, SimDmaError, SimUnit};
//! use iommu_vtd::{FaultReason, Perms, SourceId, Unit, UnitConfig, UnmapPolicy};
//! # let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
//! let sim = SimUnit::new(phys.clone(), SimConfig::default());
//! let unit = Unit::bring_up("dmar0", sim.clone(), phys.clone(), UnitConfig::default()).unwrap();
//! let (nic, domain) = (SourceId::new(0, 2, 0), unit.create_domain(UnmapPolicy::Strict).unwrap());
//! domain.attach(nic).unwrap();
//! # let page = phys.alloc_frames(FrameRequest { count: 1, max_addr: u64::MAX, align: 4096 }).unwrap();
//! let iova = domain.map(None, page, 4096, Perms::READ, u64::MAX).unwrap();
//!
//! let before = sim.stats();
//! sim.dma_read(nic, iova, &mut [0; 8]).unwrap();
//! sim.dma_read(nic, iova + 8, &mut [0; 8]).unwrap();
//! let after = sim.stats();
//! assert_eq!(after.iotlb_misses - before.iotlb_misses, 1);
//! assert_eq!(after.iotlb_hits - before.iotlb_hits, 1);
//!
//! let Err(SimDmaError::Fault(record)) = sim.dma_write(nic, iova, b"x") else { panic!("write allowed") };
//! assert_eq!((record.source, record.reason), (nic, FaultReason::WRITE_DENIED));
//! assert_eq!(unit.poll_faults(), vec![record]);
//! assert!(sim.violations().is_empty()); // the driver broke no rule of the spec
//! ```

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use dma::phys::{PAGE_SIZE, PhysAddr, PhysMemory};

use super::fault::{FaultReason, FaultRecord};
use super::regs::{self, VtdRegisters, fsts, gcmd};
use super::walker::{ContextLookup, WalkCaps, lookup_context, walk_tables};
use super::{AccessKind, Perms, SourceId};

/// Where the simulated unit puts its IVA/IOTLB pair (ECAP.IRO × 16).
pub const SIM_IOTLB_OFFSET: usize = 0x200;
/// Where the simulated unit puts its fault recording registers (CAP.FRO × 16).
pub const SIM_FAULT_OFFSET: usize = 0x220;

/// What the simulated unit reports in CAP and ECAP.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SimConfig {
    /// CAP.CM.
    pub caching_mode: bool,
    /// ECAP.QI.
    pub queued_invalidation: bool,
    /// CAP.SAGAW.
    pub sagaw: u8,
    /// CAP.MGAW in bits.
    pub mgaw: u32,
    /// CAP.SLLPS.
    pub sllps: u8,
    /// CAP.PSI.
    pub psi: bool,
    /// CAP.MAMV.
    pub mamv: u8,
    /// CAP.NFR + 1.
    pub fault_records: usize,
    /// ECAP.C.
    pub coherent: bool,
    /// CAP.RWBF.
    pub rwbf: bool,
    /// CAP.ND.
    pub nd: u8,
    /// Whether clearing FSTS.IQE makes the unit fetch again at once (hardware, §6.5.2.10) or
    /// only at the next IQT write (QEMU 7.2).
    pub resume_on_iqe_clear: bool,
    /// Whether IQERCD.IQEI reports why the queue stopped (spec rev 3.0 units); else it reads
    /// 0, "info not available".
    pub error_record: bool,
}

impl Default for SimConfig {
    /// A modern unit: 48-bit 4-level (39-bit too), 2 MiB and 1 GiB pages, PSI with mask up
    /// to 2^18 pages, queued invalidation, coherent, 8 fault records, no caching mode.
    fn default() -> SimConfig {
        SimConfig {
            caching_mode: false,
            queued_invalidation: true,
            sagaw: regs::SAGAW_39 | regs::SAGAW_48,
            mgaw: 48,
            sllps: 0b11,
            psi: true,
            mamv: 18,
            fault_records: 8,
            coherent: true,
            rwbf: false,
            nd: 2,
            resume_on_iqe_clear: true,
            error_record: true,
        }
    }
}

impl SimConfig {
    /// Like QEMU 7.2's `-device intel-iommu,caching-mode=on`: 39-bit 3-level only, 2 MiB
    /// pages, caching mode, queued invalidation that resumes after an error only on an IQT
    /// write and gives no IQERCD.
    pub fn qemu_caching_mode() -> SimConfig {
        SimConfig {
            caching_mode: true,
            sagaw: regs::SAGAW_39,
            mgaw: 39,
            sllps: 0b01,
            resume_on_iqe_clear: false,
            error_record: false,
            ..SimConfig::default()
        }
    }

    /// An old unit: register-based invalidation only, no large pages, RWBF.
    pub fn register_only() -> SimConfig {
        SimConfig { queued_invalidation: false, sllps: 0, rwbf: true, ..SimConfig::default() }
    }

    /// The CAP value.
    pub fn cap(&self) -> u64 {
        (self.nd as u64 & 7)
            | ((self.rwbf as u64) << 4)
            | ((self.caching_mode as u64) << 7)
            | ((self.sagaw as u64 & 0x1f) << 8)
            | (((self.mgaw.clamp(1, 64) - 1) as u64 & 0x3f) << 16)
            | (1 << 22)
            | (((SIM_FAULT_OFFSET / 16) as u64) << 24)
            | ((self.sllps as u64 & 0xf) << 34)
            | ((self.psi as u64) << 39)
            | (((self.fault_records.clamp(1, 256) - 1) as u64) << 40)
            | ((self.mamv as u64 & 0x3f) << 48)
            | (1 << 54)
            | (1 << 55)
    }

    /// The ECAP value.
    pub fn ecap(&self) -> u64 {
        (self.coherent as u64)
            | ((self.queued_invalidation as u64) << 1)
            | (1 << 3)
            | (1 << 6)
            | (((SIM_IOTLB_OFFSET / 16) as u64) << 8)
            | (0xf << 20)
    }
}

/// Counters the tests read.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SimStats {
    /// Translations served from the IOTLB.
    pub iotlb_hits: u64,
    /// Translations that walked the tables.
    pub iotlb_misses: u64,
    /// Context lookups served from the context cache.
    pub context_hits: u64,
    /// Descriptors processed from the invalidation queue.
    pub descriptors: u64,
    /// IOTLB invalidations (any interface), by granularity: global, domain, page.
    pub iotlb_invalidations: [u64; 3],
    /// Context-cache invalidations (any interface), by granularity: global, domain, device.
    pub context_invalidations: [u64; 3],
    /// Write-buffer flushes.
    pub write_buffer_flushes: u64,
    /// Faults recorded.
    pub faults: u64,
    /// Interrupt entry cache invalidations (queued, §6.5.2.7).
    pub iec_invalidations: u64,
}

/// Why a simulated DMA did not happen.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SimDmaError {
    /// The unit blocked it and recorded (or would have recorded) this fault.
    Fault(FaultRecord),
    /// The translation led to an address that is not memory.
    NotMemory {
        /// The physical address.
        phys: u64,
    },
}

impl fmt::Display for SimDmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimDmaError::Fault(r) => write!(f, "{r}"),
            SimDmaError::NotMemory { phys } => write!(f, "DMA reached {phys:#x}, which is not memory"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum CachedContext {
    Present(ContextLookup),
    /// Caching mode: a failed lookup, tagged with domain 0.
    NotPresent(FaultReason),
}

#[derive(Clone, Copy, Debug)]
enum CachedTranslation {
    /// (physical base of the leaf, permissions)
    Present(u64, Perms),
    /// Caching mode: the walk found nothing (4 KiB granule).
    NotPresent,
}

struct SimState {
    cfg: SimConfig,
    gsts: u32,
    rtaddr_reg: u64,
    rtaddr: Option<u64>,
    ccmd: u64,
    iva: u64,
    iotlb_reg: u64,
    fsts: u32,
    fectl: u32,
    fedata: u32,
    feaddr: u32,
    feuaddr: u32,
    iqa: u64,
    iqh: u64,
    iqt: u64,
    ics: u32,
    /// IRTA as written, and as latched by GCMD.SIRTP (§10.4.29).
    irta_reg: u64,
    irta: Option<u64>,
    iqercd: u64,
    records: Vec<(u64, u64)>,
    next_record: usize,
    context_cache: BTreeMap<SourceId, CachedContext>,
    /// (domain id, leaf base IOVA) → cached translation.
    iotlb: BTreeMap<(u16, u64), (u64, CachedTranslation)>,
    stats: SimStats,
    violations: Vec<String>,
}

/// A simulated remapping unit. See the module documentation.
pub struct SimUnit {
    mem: Arc<dyn PhysMemory>,
    state: spin::Mutex<SimState>,
}

const PAGE: u64 = PAGE_SIZE as u64;

impl SimUnit {
    /// A unit in its reset state (translation off, queue off, caches empty) reading tables
    /// from `mem`.
    pub fn new(mem: Arc<dyn PhysMemory>, cfg: SimConfig) -> Arc<SimUnit> {
        Arc::new(SimUnit {
            mem,
            state: spin::Mutex::new(SimState {
                cfg,
                gsts: 0,
                rtaddr_reg: 0,
                rtaddr: None,
                ccmd: 0,
                iva: 0,
                iotlb_reg: 0,
                fsts: 0,
                fectl: regs::fectl::IM,
                fedata: 0,
                feaddr: 0,
                feuaddr: 0,
                iqa: 0,
                iqh: 0,
                iqt: 0,
                ics: 0,
                irta_reg: 0,
                irta: None,
                iqercd: 0,
                records: vec![(0, 0); cfg.fault_records.clamp(1, 256)],
                next_record: 0,
                context_cache: BTreeMap::new(),
                iotlb: BTreeMap::new(),
                stats: SimStats::default(),
                violations: Vec::new(),
            }),
        })
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.state.lock().stats
    }

    /// Spec violations seen so far (should stay empty).
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().violations.clone()
    }

    /// Entries in the IOTLB.
    pub fn iotlb_entries(&self) -> usize {
        self.state.lock().iotlb.len()
    }

    /// Whether translation is enabled (GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        self.state.lock().gsts & gcmd::TE != 0
    }

    /// The latched root table address (after SRTP).
    pub fn root_table(&self) -> Option<u64> {
        self.state.lock().rtaddr
    }

    /// The device `source` reads `out.len()` bytes at `iova`. Every page is translated before
    /// any byte moves, so a fault leaves memory untouched; the first failing page is recorded
    /// as a fault.
    pub fn dma_read(&self, source: SourceId, iova: u64, out: &mut [u8]) -> Result<(), SimDmaError> {
        let pieces = self.translate_range(source, iova, out.len(), AccessKind::Read)?;
        let mut done = 0;
        for (pa, n) in pieces {
            let p = self.mem.phys_to_virt(PhysAddr(pa));
            // SAFETY: `translate_range` checked that `phys_to_virt` knows this address, and a
            // piece never crosses a page; `out[done..done+n]` is in bounds by construction.
            unsafe { core::ptr::copy(p, out.as_mut_ptr().add(done), n) };
            done += n;
        }
        Ok(())
    }

    /// The device `source` writes `data` at `iova`; as [`SimUnit::dma_read`].
    pub fn dma_write(&self, source: SourceId, iova: u64, data: &[u8]) -> Result<(), SimDmaError> {
        let pieces = self.translate_range(source, iova, data.len(), AccessKind::Write)?;
        let mut done = 0;
        for (pa, n) in pieces {
            let p = self.mem.phys_to_virt(PhysAddr(pa));
            // SAFETY: as in `dma_read`, the other way round.
            unsafe { core::ptr::copy(data.as_ptr().add(done), p, n) };
            done += n;
        }
        Ok(())
    }

    /// Translates one access through the caches, as the unit would, recording a fault on
    /// failure. `Ok(phys)`.
    pub fn translate(&self, source: SourceId, iova: u64, access: AccessKind) -> Result<u64, SimDmaError> {
        let mut st = self.state.lock();
        st.translate(&*self.mem, source, iova, access).map_err(|reason| {
            let rec = FaultRecord { source, address: iova & !0xfff, access, reason };
            st.record_fault(rec);
            SimDmaError::Fault(rec)
        })
    }

    fn translate_range(
        &self,
        source: SourceId,
        iova: u64,
        len: usize,
        access: AccessKind,
    ) -> Result<Vec<(u64, usize)>, SimDmaError> {
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < len {
            let addr = iova.wrapping_add(done as u64);
            let n = (PAGE - addr % PAGE).min((len - done) as u64) as usize;
            let pa = self.translate(source, addr, access)?;
            let p = self.mem.phys_to_virt(PhysAddr(pa));
            if p.is_null() || self.mem.phys_to_virt(PhysAddr(pa + n as u64 - 1)).is_null() {
                return Err(SimDmaError::NotMemory { phys: pa });
            }
            pieces.push((pa, n));
            done += n;
        }
        Ok(pieces)
    }
}

impl SimState {
    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    fn walk_caps(&self) -> WalkCaps {
        WalkCaps::from_regs(regs::Cap(self.cfg.cap()), regs::Ecap(self.cfg.ecap()))
    }

    fn translate(
        &mut self,
        mem: &dyn PhysMemory,
        source: SourceId,
        iova: u64,
        access: AccessKind,
    ) -> Result<u64, FaultReason> {
        if self.gsts & gcmd::TE == 0 {
            return Ok(iova); // translation off: DMA is untranslated
        }
        let Some(rt) = self.rtaddr else {
            return Err(FaultReason::ROOT_TABLE_ERROR);
        };
        let caps = self.walk_caps();
        let ctx = match self.context_cache.get(&source) {
            Some(CachedContext::Present(c)) => {
                self.stats.context_hits += 1;
                *c
            }
            Some(CachedContext::NotPresent(r)) => return Err(*r),
            None => match lookup_context(mem, rt, &caps, source) {
                Ok(c) => {
                    self.context_cache.insert(source, CachedContext::Present(c));
                    c
                }
                Err(r) => {
                    if self.cfg.caching_mode {
                        self.context_cache.insert(source, CachedContext::NotPresent(r));
                    }
                    return Err(r);
                }
            },
        };
        let denied = match access {
            AccessKind::Read => FaultReason::READ_DENIED,
            AccessKind::Write => FaultReason::WRITE_DENIED,
        };
        for size in [PAGE, 1 << 21, 1 << 30] {
            let base = iova & !(size - 1);
            if let Some(&(sz, t)) = self.iotlb.get(&(ctx.domain_id, base))
                && sz == size
            {
                self.stats.iotlb_hits += 1;
                return match t {
                    CachedTranslation::Present(pa, perms) => {
                        let ok = match access {
                            AccessKind::Read => perms.read,
                            AccessKind::Write => perms.write,
                        };
                        if ok { Ok(pa | (iova & (size - 1))) } else { Err(denied) }
                    }
                    CachedTranslation::NotPresent => Err(denied),
                };
            }
        }
        self.stats.iotlb_misses += 1;
        if ctx.width < 64 && iova >> ctx.width != 0 {
            return Err(FaultReason::BEYOND_AGAW);
        }
        match walk_tables(mem, &caps, &ctx, iova, access) {
            Ok(t) => {
                let size = t.page_size;
                let base = iova & !(size - 1);
                let pa_base = t.phys.0 & !(size - 1);
                self.iotlb.insert((ctx.domain_id, base), (size, CachedTranslation::Present(pa_base, t.perms)));
                Ok(t.phys.0)
            }
            Err(r) => {
                if self.cfg.caching_mode && (r == FaultReason::READ_DENIED || r == FaultReason::WRITE_DENIED) {
                    // Only a not-present leaf or table is cached; a permission miss on a present
                    // entry is not cached (the entry itself would have been).
                    if let Ok(t) = walk_tables(mem, &caps, &ctx, iova, flip(access)) {
                        let size = t.page_size;
                        let base = iova & !(size - 1);
                        let pa_base = t.phys.0 & !(size - 1);
                        self.iotlb.insert((ctx.domain_id, base), (size, CachedTranslation::Present(pa_base, t.perms)));
                    } else {
                        self.iotlb.insert((ctx.domain_id, iova & !(PAGE - 1)), (PAGE, CachedTranslation::NotPresent));
                    }
                }
                Err(r)
            }
        }
    }

    fn record_fault(&mut self, rec: FaultRecord) {
        self.stats.faults += 1;
        let n = self.records.len();
        let i = self.next_record % n;
        if self.records[i].1 & super::fault::FRCD_F != 0 {
            self.fsts |= fsts::PFO;
            return;
        }
        if self.fsts & fsts::PPF == 0 {
            self.fsts = (self.fsts & !(0xff << 8)) | ((i as u32) << 8);
        }
        self.records[i] = rec.encode();
        self.fsts |= fsts::PPF;
        self.next_record = (i + 1) % n;
    }

    fn update_ppf(&mut self) {
        if self.records.iter().any(|r| r.1 & super::fault::FRCD_F != 0) {
            self.fsts |= fsts::PPF;
        } else {
            self.fsts &= !fsts::PPF;
        }
    }

    fn invalidate_context(&mut self, gran: u64, did: u16, sid: u16) {
        match gran {
            1 => {
                self.stats.context_invalidations[0] += 1;
                self.context_cache.clear();
            }
            2 => {
                self.stats.context_invalidations[1] += 1;
                self.context_cache.retain(|_, c| match c {
                    CachedContext::Present(l) => l.domain_id != did,
                    CachedContext::NotPresent(_) => did != 0,
                });
            }
            3 => {
                self.stats.context_invalidations[2] += 1;
                let src = SourceId(sid);
                let tagged = match self.context_cache.get(&src) {
                    Some(CachedContext::Present(l)) => l.domain_id,
                    Some(CachedContext::NotPresent(_)) => 0,
                    None => return,
                };
                if tagged == did {
                    self.context_cache.remove(&src);
                }
            }
            _ => self.violation(format!("context-cache invalidation with reserved granularity {gran}")),
        }
    }

    /// Returns the granularity actually performed.
    fn invalidate_iotlb(&mut self, gran: u64, did: u16, iva: u64) -> u64 {
        match gran {
            1 => {
                self.stats.iotlb_invalidations[0] += 1;
                self.iotlb.clear();
                1
            }
            2 => {
                self.stats.iotlb_invalidations[1] += 1;
                self.iotlb.retain(|k, _| k.0 != did);
                2
            }
            3 if !self.cfg.psi => self.invalidate_iotlb(2, did, 0),
            3 => {
                let am = (iva & 0x3f) as u32;
                if am > self.cfg.mamv as u32 {
                    self.violation(format!("page-selective invalidation with mask {am} above MAMV {}", self.cfg.mamv));
                    return self.invalidate_iotlb(2, did, 0);
                }
                self.stats.iotlb_invalidations[2] += 1;
                let size = PAGE << am;
                // Hardware ignores the address bits below the mask.
                let start = iva & !0xfff & !(size - 1);
                let end = start.saturating_add(size);
                self.iotlb.retain(|k, (sz, _)| k.0 != did || k.1 >= end || k.1 + *sz <= start);
                3
            }
            _ => {
                self.violation(format!("IOTLB invalidation with reserved granularity {gran}"));
                0
            }
        }
    }

    fn process_queue(&mut self, mem: &dyn PhysMemory) {
        if self.gsts & gcmd::QIE == 0 {
            return;
        }
        if self.iqa & regs::iqa::DW_256 != 0 {
            self.violation(String::from("256-bit descriptors requested; the simulation supports 128-bit"));
        }
        let entries = 256u64 << (self.iqa & regs::iqa::QS_MASK);
        let base = self.iqa & !0xfff;
        while self.iqh != self.iqt && self.fsts & fsts::IQE == 0 {
            let idx = (self.iqh >> 4) % entries;
            let read = |off: u64| -> Option<u64> {
                let p = mem.phys_to_virt(PhysAddr(base + idx * 16 + off));
                // SAFETY: a non-null pointer from `phys_to_virt` for an 8-aligned address
                // points to simulated RAM; the descriptor is read as the unit would.
                (!p.is_null()).then(|| unsafe { core::ptr::read_volatile(p as *const u64) })
            };
            let (Some(lo), Some(hi)) = (read(0), read(8)) else {
                self.queue_error(2);
                break;
            };
            if let Err(iqei) = self.process_descriptor(mem, lo, hi) {
                // §6.5.2.10: IQH stays on the bad descriptor; nothing more is fetched.
                self.queue_error(iqei);
                break;
            }
            self.stats.descriptors += 1;
            self.iqh = (((self.iqh >> 4) + 1) % entries) << 4;
        }
    }

    /// Sets FSTS.IQE and, on a unit with an error record, IQERCD.IQEI.
    fn queue_error(&mut self, iqei: u64) {
        self.fsts |= fsts::IQE;
        self.iqercd = if self.cfg.error_record { iqei } else { 0 };
    }

    /// Carries out one descriptor, or refuses it with the IQEI a rev-3 unit would report
    /// (3 invalid type, 4 reserved field, 2 a status write that cannot be done). The checks
    /// are those of QEMU 7.2's `vtd_process_inv_desc`.
    fn process_descriptor(&mut self, mem: &dyn PhysMemory, lo: u64, hi: u64) -> Result<(), u64> {
        let gran = (lo >> 4) & 3;
        match (lo & 0xf) | ((lo >> 5) & 0x70) {
            1 => {
                if lo & 0xfffc_0000_0000_f1c0 != 0 || hi != 0 || gran == 0 {
                    return Err(4);
                }
                self.invalidate_context(gran, (lo >> 16) as u16, (lo >> 32) as u16);
            }
            2 => {
                if lo & 0xffff_ffff_0000_f100 != 0 || hi & 0xf80 != 0 || gran == 0 {
                    return Err(4);
                }
                if gran == 3 && (hi & 0x3f) > self.cfg.mamv as u64 {
                    return Err(4);
                }
                self.invalidate_iotlb(gran, (lo >> 16) as u16, hi);
            }
            5 => {
                let (sw, iflag) = (lo & (1 << 5) != 0, lo & (1 << 4) != 0);
                if lo & 0xffff_f180 != 0 || hi & 3 != 0 || !(sw || iflag) {
                    return Err(4);
                }
                if sw {
                    let p = mem.phys_to_virt(PhysAddr(hi & !3));
                    if p.is_null() {
                        return Err(2);
                    }
                    // SAFETY: as above; the status address is dword aligned.
                    unsafe { core::ptr::write_volatile(p as *mut u32, (lo >> 32) as u32) };
                }
                if iflag {
                    self.ics |= 1;
                }
            }
            // Interrupt entry cache invalidation (§6.5.2.7): nothing cached here to drop; counted
            // so tests can see the driver invalidated after changing an IRTE.
            4 => self.stats.iec_invalidations += 1,
            _ => return Err(3),
        }
        Ok(())
    }

    fn write_gcmd(&mut self, v: u32) {
        let persistent = gcmd::TE | gcmd::QIE | gcmd::IRE | gcmd::CFI | gcmd::EAFL;
        let was = self.gsts;
        if v & gcmd::TE != 0 && was & gcmd::TE == 0 && self.rtaddr.is_none() {
            self.violation(String::from("translation enabled before a root table was set (SRTP)"));
        }
        if v & gcmd::QIE != 0 && was & gcmd::QIE == 0 {
            self.iqh = 0;
            if self.iqt != 0 {
                self.violation(String::from("queued invalidation enabled with IQT != 0"));
            }
            if !self.cfg.queued_invalidation {
                self.violation(String::from("queued invalidation enabled on a unit without ECAP.QI"));
            }
        }
        let mut gsts = (was & !persistent) | (v & persistent);
        if v & gcmd::SRTP != 0 {
            self.rtaddr = Some(self.rtaddr_reg & !0xfff);
            gsts |= gcmd::SRTP;
        }
        if v & gcmd::WBF != 0 {
            self.stats.write_buffer_flushes += 1;
            gsts &= !gcmd::WBF; // completes at once
        }
        if v & gcmd::SIRTP != 0 {
            self.irta = Some(self.irta_reg);
            gsts |= gcmd::SIRTP;
        }
        self.gsts = gsts;
    }
}

fn flip(a: AccessKind) -> AccessKind {
    match a {
        AccessKind::Read => AccessKind::Write,
        AccessKind::Write => AccessKind::Read,
    }
}

impl VtdRegisters for SimUnit {
    fn read32(&self, offset: usize) -> u32 {
        let st = self.state.lock();
        match offset {
            regs::VER => 0x10,
            regs::GSTS => st.gsts,
            regs::FSTS => st.fsts,
            regs::FECTL => st.fectl,
            regs::FEDATA => st.fedata,
            regs::FEADDR => st.feaddr,
            regs::FEUADDR => st.feuaddr,
            regs::ICS => st.ics,
            o if o % 8 == 4 => (self_read64(&st, o - 4) >> 32) as u32,
            o => self_read64(&st, o) as u32,
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        self_read64(&self.state.lock(), offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut st = self.state.lock();
        match offset {
            regs::GCMD => st.write_gcmd(value),
            regs::FSTS => {
                let was_stopped = st.fsts & fsts::IQE != 0;
                st.fsts &= !(value & (fsts::PFO | fsts::IQE | fsts::ICE | fsts::ITE));
                if was_stopped && st.fsts & fsts::IQE == 0 && st.cfg.resume_on_iqe_clear {
                    st.process_queue(&*self.mem);
                }
            }
            regs::FECTL => st.fectl = value & regs::fectl::IM,
            regs::FEDATA => st.fedata = value,
            regs::FEADDR => st.feaddr = value,
            regs::FEUADDR => st.feuaddr = value,
            regs::ICS => st.ics &= !(value & 1),
            o if (SIM_FAULT_OFFSET..SIM_FAULT_OFFSET + st.records.len() * 16).contains(&o) => {
                let i = (o - SIM_FAULT_OFFSET) / 16;
                if (o - SIM_FAULT_OFFSET) % 16 == 12 && value & (1 << 31) != 0 {
                    st.records[i].1 &= !super::fault::FRCD_F;
                    st.update_ppf();
                }
            }
            o => st.violation(format!("32-bit write of {value:#x} to unexpected register {o:#x}")),
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        let mut st = self.state.lock();
        match offset {
            regs::RTADDR => st.rtaddr_reg = value,
            regs::CCMD => {
                if value & regs::ccmd::ICC != 0 {
                    if st.gsts & gcmd::QIE != 0 {
                        st.violation(String::from("register-based context invalidation while the queue is enabled"));
                    }
                    let gran = (value >> 61) & 3;
                    st.invalidate_context(gran, value as u16, (value >> 16) as u16);
                    st.ccmd = (value & !regs::ccmd::ICC & !(3 << 59)) | (gran << 59);
                } else {
                    st.ccmd = value;
                }
            }
            o if o == SIM_IOTLB_OFFSET => st.iva = value,
            o if o == SIM_IOTLB_OFFSET + 8 => {
                if value & regs::iotlb::IVT != 0 {
                    if st.gsts & gcmd::QIE != 0 {
                        st.violation(String::from("register-based IOTLB invalidation while the queue is enabled"));
                    }
                    let iva = st.iva;
                    let done = st.invalidate_iotlb((value >> 60) & 3, (value >> 32) as u16, iva);
                    st.iotlb_reg = (value & !regs::iotlb::IVT & !(3 << 57)) | (done << 57);
                } else {
                    st.iotlb_reg = value;
                }
            }
            regs::IQA => {
                if st.gsts & gcmd::QIE != 0 {
                    st.violation(String::from("IQA written while the queue is enabled"));
                }
                st.iqa = value;
            }
            crate::interrupt_remap::IRTA_REG => st.irta_reg = value,
            regs::IQT => {
                st.iqt = value & 0x7fff0;
                st.process_queue(&*self.mem);
            }
            o => st.violation(format!("64-bit write of {value:#x} to unexpected register {o:#x}")),
        }
    }
}

fn self_read64(st: &SimState, offset: usize) -> u64 {
    match offset {
        regs::CAP => st.cfg.cap(),
        regs::ECAP => st.cfg.ecap(),
        regs::RTADDR => st.rtaddr_reg,
        regs::CCMD => st.ccmd,
        regs::IQH => st.iqh,
        regs::IQT => st.iqt,
        regs::IQA => st.iqa,
        crate::interrupt_remap::IRTA_REG => st.irta_reg,
        regs::IQERCD => st.iqercd,
        o if o == SIM_IOTLB_OFFSET => st.iva,
        o if o == SIM_IOTLB_OFFSET + 8 => st.iotlb_reg,
        o if (SIM_FAULT_OFFSET..SIM_FAULT_OFFSET + st.records.len() * 16).contains(&o) => {
            let i = (o - SIM_FAULT_OFFSET) / 16;
            if (o - SIM_FAULT_OFFSET) % 16 == 0 { st.records[i].0 } else { st.records[i].1 }
        }
        _ => 0,
    }
}

/// Interrupt remapping (§5.1.4): what the unit does with a write to 0xFEEx_xxxx.
impl SimUnit {
    /// A device at `source` writes `data` to the interrupt window at `address`. With GCMD.IRE
    /// off the message is delivered as it is (compatibility format: the vector is the data's
    /// low byte, the APIC id address bits 19:12). With IRE on, a compatibility-format message
    /// is blocked unless GCMD.CFI is set (reason 25h); a remappable one is looked up in the
    /// table IRTA named at the last SIRTP: beyond its size (21h), not present (22h), or raised
    /// by a requester the entry's SVT/SQ/SID does not allow (26h) is blocked and recorded.
    /// `Ok((vector, destination APIC id))` when delivered.
    pub fn interrupt(&self, source: SourceId, address: u64, data: u32) -> Result<(u8, u8), FaultRecord> {
        use crate::interrupt_remap::{Irte, msi_handle};
        let mut st = self.state.lock();
        let fault = |st: &mut SimState, reason: FaultReason, index: u16| {
            let rec = FaultRecord { source, address: u64::from(index) << 48, access: AccessKind::Write, reason };
            st.record_fault(rec);
            rec
        };
        let compat = || (data as u8, (address >> 12) as u8);
        if st.gsts & gcmd::IRE == 0 {
            return Ok(compat());
        }
        if address >> 32 != 0 {
            return Err(fault(&mut st, FaultReason::IR_REQUEST_RESERVED, 0));
        }
        let Some(handle) = msi_handle(address, data) else {
            return if st.gsts & gcmd::CFI != 0 {
                Ok(compat())
            } else {
                Err(fault(&mut st, FaultReason::IR_COMPATIBILITY_BLOCKED, 0))
            };
        };
        let irta = st.irta.unwrap_or(0);
        if u64::from(handle) >= 2u64 << (irta & 0xf) {
            return Err(fault(&mut st, FaultReason::IR_INDEX_BEYOND_TABLE, handle));
        }
        let at = (irta & !0xfff) + u64::from(handle) * 16;
        let p = self.mem.phys_to_virt(PhysAddr(at));
        if p.is_null() {
            return Err(fault(&mut st, FaultReason::IR_TABLE_ERROR, handle));
        }
        // SAFETY: a non-null pointer from `phys_to_virt` for a 16-aligned address points to
        // simulated RAM; the entry is read as the unit would.
        let words =
            unsafe { [core::ptr::read_volatile(p as *const u64), core::ptr::read_volatile((p as *const u64).add(1))] };
        let irte = Irte::decode(words);
        if !irte.present {
            return Err(fault(&mut st, FaultReason::IR_ENTRY_NOT_PRESENT, handle));
        }
        if !irte.validation.allows(source) {
            return Err(fault(&mut st, FaultReason::IR_SOURCE_ID, handle));
        }
        Ok((irte.vector, irte.destination))
    }

    /// Whether GCMD.IRE is on.
    pub fn interrupt_remapping_enabled(&self) -> bool {
        self.state.lock().gsts & gcmd::IRE != 0
    }
}
