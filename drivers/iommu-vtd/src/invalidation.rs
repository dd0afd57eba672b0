//! Invalidating the unit's caches (VT-d spec §6.5): the context cache and the IOTLB.
//!
//! The unit caches context entries (context cache) and translations (IOTLB, plus
//! paging-structure caches), tagged by domain id. Changing an entry in memory does not change
//! what the unit uses until software invalidates the cached copy and *waits* for the
//! invalidation to complete. Until then, an unmapped page stays reachable: that window is why
//! unmap invalidates before it returns (strict mode) and why a freed IOVA is not reused before
//! its invalidation completed ([`super::iova`]).
//!
//! Two interfaces exist:
//! - **Register-based** (§6.5.1): write CCMD or IOTLB/IVA and poll until the hardware clears
//!   ICC / IVT. One request at a time; the only interface on old units.
//! - **Queued** (§6.5.2, when `ECAP.QI`): descriptors in a ring in memory (IQA), software
//!   writes them at the tail (IQT) and the unit consumes them from the head (IQH). An
//!   *invalidation wait* descriptor with status write (SW) makes the unit store a value to
//!   memory once everything before it completed; software polls that word. While the queue
//!   is enabled the register interface must not be used.
//!
//! Granularities: global, domain-selective (one domain id) and, for the IOTLB,
//! page-selective within a domain: a naturally aligned block of 2^AM pages (§6.5.1.2). A
//! range that needs a mask above `CAP.MAMV`, or a unit without `CAP.PSI`, falls back to
//! domain-selective: over-invalidating is always safe, under-invalidating never is.
//!
//! # Example
//! What the driver puts in the queue after unmapping three pages at IOVA `0x5000` in domain 7:
//! [`page_scope`] finds the smallest aligned block holding them (four pages at `0x4000`,
//! address mask 2), and [`iotlb_descriptor`] encodes the 128-bit IOTLB invalidate descriptor
//! of §6.5.2.3. Covering a fourth page too is harmless; missing one would not be.
//! ```
//! use iommu_vtd::invalidation::{IotlbScope, iotlb_descriptor, page_scope};
//! let scope = page_scope(7, 0x5000, 3 * 4096, 18, true).unwrap();
//! assert_eq!(scope, IotlbScope::Pages { domain: 7, iova: 0x4000, am: 2, leaf_only: true });
//!
//! let [lo, hi] = iotlb_descriptor(scope, false, false);
//! assert_eq!(lo & 0xf, 2); // bits 3:0, type 2: IOTLB invalidate
//! assert_eq!((lo >> 4) & 3, 3); // bits 5:4, granularity 3: pages within one domain
//! assert_eq!((lo >> 16) & 0xffff, 7); // bits 31:16, domain id
//! assert_eq!(hi & !0xfff, 0x4000); // bits 127:76, the address
//! assert_eq!((hi >> 6) & 1, 1); // bit 70, IH: only leaf entries changed
//! assert_eq!(hi & 0x3f, 2); // bits 69:64, AM: 2^2 pages
//!
//! // 1 GiB needs a mask of 18; a unit whose CAP.MAMV is 9 cannot take it page-selectively,
//! // so the caller invalidates the whole domain instead.
//! assert_eq!(page_scope(7, 0, 1 << 30, 9, false), None);
//! ```

use core::fmt;

use dma::phys::{FrameRequest, PAGE_SIZE, PhysAddr, PhysMemory};

use super::SourceId;
use super::regs::{self, Cap, Ecap, VtdRegisters, ccmd, fsts, gcmd, iotlb};
use super::tables::CacheFlush;

/// What a context-cache invalidation covers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ContextScope {
    /// Every cached context entry.
    Global,
    /// Entries tagged with this domain id.
    Domain(u16),
    /// The entry of one device (tagged with `domain`; with caching mode, domain 0 covers
    /// cached not-present entries).
    Device {
        /// The domain id the entry was cached under.
        domain: u16,
        /// The device.
        source: SourceId,
    },
}

/// What an IOTLB invalidation covers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IotlbScope {
    /// Everything.
    Global,
    /// Every translation of one domain (and its paging-structure caches).
    Domain(u16),
    /// 2^`am` pages at `iova` (aligned to that size) in one domain.
    Pages {
        /// Domain id.
        domain: u16,
        /// First IOVA, aligned to 2^am pages.
        iova: u64,
        /// Address mask: log2 of the page count.
        am: u8,
        /// Invalidation hint: only leaf entries changed (paging-structure caches may stay).
        leaf_only: bool,
    },
}

/// Which invalidation request (or queue operation) a timeout or a refusal is about (§6.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InvalidationStep {
    /// A register-based context-cache invalidation (CCMD_REG, §10.4.7).
    ContextCache,
    /// A register-based IOTLB invalidation (IOTLB_REG, §10.4.8.1).
    Iotlb,
    /// Turning the invalidation queue on (GSTS.QIES, §10.4.5).
    QueueEnable,
    /// A write-buffer flush (GSTS.WBFS, §6.8).
    WriteBufferFlush,
    /// Waiting for a free slot in the invalidation queue (§6.5.2).
    QueueSpace,
    /// Waiting for a queued invalidation's wait descriptor (§6.5.2.8).
    Queued,
}

impl InvalidationStep {
    /// The words a log line uses for it.
    pub const fn text(self) -> &'static str {
        match self {
            InvalidationStep::ContextCache => "context-cache",
            InvalidationStep::Iotlb => "IOTLB",
            InvalidationStep::QueueEnable => "queue enable",
            InvalidationStep::WriteBufferFlush => "write-buffer flush",
            InvalidationStep::QueueSpace => "queue space",
            InvalidationStep::Queued => "queued",
        }
    }
}

impl fmt::Display for InvalidationStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// Why an invalidation did not complete.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InvalidationError {
    /// The unit did not finish in time.
    Timeout {
        /// Which request.
        what: InvalidationStep,
    },
    /// The unit refused the request (actual granularity 0).
    Rejected {
        /// Which request.
        what: InvalidationStep,
    },
    /// The invalidation queue stopped on a bad descriptor (FSTS.IQE); the queue is unusable.
    QueueError {
        /// IQH: offset of the descriptor that failed.
        head: u64,
    },
    /// A previous queue error left the queue stopped.
    Broken,
    /// No frame for the invalidation queue.
    OutOfMemory,
}

impl fmt::Display for InvalidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidationError::Timeout { what } => {
                write!(f, "IOMMU {what} invalidation did not complete; the unit is not responding")
            }
            InvalidationError::Rejected { what } => {
                write!(f, "IOMMU refused the {what} invalidation (actual granularity 0)")
            }
            InvalidationError::QueueError { head } => write!(
                f,
                "IOMMU invalidation queue stopped on a bad descriptor at offset {head:#x} (FSTS.IQE); \
                 invalidations are no longer possible, stop DMA"
            ),
            InvalidationError::Broken => f.write_str("IOMMU invalidation queue is stopped after an earlier error"),
            InvalidationError::OutOfMemory => f.write_str("no frame for the IOMMU invalidation queue"),
        }
    }
}

/// Counts of invalidations issued, by kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct InvalidationStats {
    /// Global context-cache invalidations.
    pub context_global: u64,
    /// Domain-selective context-cache invalidations.
    pub context_domain: u64,
    /// Device-selective context-cache invalidations.
    pub context_device: u64,
    /// Global IOTLB invalidations.
    pub iotlb_global: u64,
    /// Domain-selective IOTLB invalidations.
    pub iotlb_domain: u64,
    /// Page-selective IOTLB invalidations.
    pub iotlb_pages: u64,
    /// Waits for completion (queued mode).
    pub waits: u64,
    /// Write-buffer flushes.
    pub write_buffer_flushes: u64,
}

/// The page-selective scope covering `iova..iova+len` in `domain`: the smallest naturally
/// aligned block of 2^AM pages that contains the range. `None` when that needs a mask above
/// `mamv` (the caller then invalidates the whole domain).
pub fn page_scope(domain: u16, iova: u64, len: u64, mamv: u32, leaf_only: bool) -> Option<IotlbScope> {
    let page = PAGE_SIZE as u64;
    let first = iova / page;
    let last = (iova.checked_add(len.max(1))? - 1) / page;
    // Smallest am with first >> am == last >> am: one aligned block holds both ends.
    let am = 64 - (first ^ last).leading_zeros();
    if am > mamv || am > 63 {
        return None;
    }
    let base = (first >> am << am) * page;
    Some(IotlbScope::Pages { domain, iova: base, am: am as u8, leaf_only })
}

/// Descriptor types (§6.5.2).
mod desc {
    pub const CONTEXT: u64 = 0x1;
    pub const IOTLB: u64 = 0x2;
    pub const WAIT: u64 = 0x5;
    /// Wait descriptor: status write.
    pub const WAIT_SW: u64 = 1 << 5;
    /// Wait descriptor: fence (later descriptors wait for this one).
    pub const WAIT_FN: u64 = 1 << 6;
}

/// Encodes a context-cache invalidate descriptor (type 1, §6.5.2.2).
pub const fn context_descriptor(scope: ContextScope) -> [u64; 2] {
    let lo = match scope {
        ContextScope::Global => desc::CONTEXT | (1 << 4),
        ContextScope::Domain(d) => desc::CONTEXT | (2 << 4) | ((d as u64) << 16),
        ContextScope::Device { domain, source } => {
            desc::CONTEXT | (3 << 4) | ((domain as u64) << 16) | ((source.0 as u64) << 32)
        }
    };
    [lo, 0]
}

/// Encodes an IOTLB invalidate descriptor (type 2, §6.5.2.3); `drain` sets DR and DW.
pub const fn iotlb_descriptor(scope: IotlbScope, drain_read: bool, drain_write: bool) -> [u64; 2] {
    let dr = if drain_read { 1 << 7 } else { 0 };
    let dw = if drain_write { 1 << 6 } else { 0 };
    match scope {
        IotlbScope::Global => [desc::IOTLB | (1 << 4) | dr | dw, 0],
        IotlbScope::Domain(d) => [desc::IOTLB | (2 << 4) | dr | dw | ((d as u64) << 16), 0],
        IotlbScope::Pages { domain, iova, am, leaf_only } => {
            let ih = if leaf_only { 1 << 6 } else { 0 };
            [desc::IOTLB | (3 << 4) | dr | dw | ((domain as u64) << 16), (iova & !0xfff) | ih | (am as u64 & 0x3f)]
        }
    }
}

/// Encodes an invalidation wait descriptor (type 5, §6.5.2.8) that writes `data` to the
/// dword at `status` once all earlier descriptors completed.
pub const fn wait_descriptor(status: PhysAddr, data: u32) -> [u64; 2] {
    [desc::WAIT | desc::WAIT_SW | desc::WAIT_FN | ((data as u64) << 32), status.0 & !3]
}

/// The invalidation queue: one 4 KiB page of 256 128-bit descriptors, plus a status word.
struct Queue {
    base: PhysAddr,
    status: PhysAddr,
    tail: usize,
    seq: u32,
    broken: bool,
}

const QUEUE_ENTRIES: usize = PAGE_SIZE / 16;

enum Mode {
    Register { iotlb_off: usize },
    Queued(Queue),
}

/// Issues invalidations to one unit, by registers or through the queue.
pub struct Invalidator {
    mode: Mode,
    cap: Cap,
    flush: Option<CacheFlush>,
    stats: InvalidationStats,
}

impl Invalidator {
    /// Register-based invalidation.
    pub fn registers(cap: Cap, ecap: Ecap) -> Invalidator {
        Invalidator {
            mode: Mode::Register { iotlb_off: ecap.iotlb_offset() },
            cap,
            flush: None,
            stats: InvalidationStats::default(),
        }
    }

    /// Sets up and enables queued invalidation (§6.5.2): a zeroed queue page and status word,
    /// IQT = 0, IQA = base with QS = 0 (one page) and 128-bit descriptors, then GCMD.QIE and
    /// wait for GSTS.QIES. `flush` pushes descriptors to memory if the unit is not coherent.
    pub fn enable_queue(
        regs: &dyn VtdRegisters,
        phys: &dyn PhysMemory,
        cap: Cap,
        max_addr: u64,
        flush: Option<CacheFlush>,
    ) -> Result<Invalidator, InvalidationError> {
        let req = FrameRequest { count: 1, max_addr, align: PAGE_SIZE as u64 };
        let base = phys.alloc_frames(req).ok_or(InvalidationError::OutOfMemory)?;
        let Some(status) = phys.alloc_frames(req) else {
            // SAFETY: `base` was just allocated and never given to the unit.
            unsafe { phys.free_frames(base, 1) };
            return Err(InvalidationError::OutOfMemory);
        };
        for pa in [base, status] {
            let va = phys.phys_to_virt(pa);
            if va.is_null() {
                // SAFETY: both frames were just allocated and never given to the unit.
                unsafe {
                    phys.free_frames(base, 1);
                    phys.free_frames(status, 1);
                }
                return Err(InvalidationError::OutOfMemory);
            }
            // SAFETY: `va` maps the whole frame we own.
            unsafe { core::ptr::write_bytes(va, 0, PAGE_SIZE) };
            if let Some(f) = &flush {
                f(va, PAGE_SIZE);
            }
        }
        regs.write64(regs::IQT, 0);
        regs.write64(regs::IQA, base.0 & !0xfff);
        if !regs::set_gcmd(regs, gcmd::QIE, true) {
            // Leak the frames: the unit may have latched IQA and could still read them.
            return Err(InvalidationError::Timeout { what: InvalidationStep::QueueEnable });
        }
        Ok(Invalidator {
            mode: Mode::Queued(Queue { base, status, tail: 0, seq: 0, broken: false }),
            cap,
            flush,
            stats: InvalidationStats::default(),
        })
    }

    /// Whether the queued interface is in use.
    pub fn is_queued(&self) -> bool {
        matches!(self.mode, Mode::Queued(_))
    }

    /// Counters.
    pub fn stats(&self) -> InvalidationStats {
        self.stats
    }

    /// Invalidates context-cache entries and waits for completion.
    pub fn context(
        &mut self,
        regs: &dyn VtdRegisters,
        phys: &dyn PhysMemory,
        scope: ContextScope,
    ) -> Result<(), InvalidationError> {
        match scope {
            ContextScope::Global => self.stats.context_global += 1,
            ContextScope::Domain(_) => self.stats.context_domain += 1,
            ContextScope::Device { .. } => self.stats.context_device += 1,
        }
        match &mut self.mode {
            Mode::Register { .. } => {
                let v = match scope {
                    ContextScope::Global => ccmd::ICC | ccmd::GLOBAL,
                    ContextScope::Domain(d) => ccmd::ICC | ccmd::DOMAIN | d as u64,
                    ContextScope::Device { domain, source } => {
                        ccmd::ICC | ccmd::DEVICE | ((source.0 as u64) << ccmd::SID_SHIFT) | domain as u64
                    }
                };
                let what = InvalidationStep::ContextCache;
                regs::poll64(regs, regs::CCMD, |c| c & ccmd::ICC == 0).ok_or(InvalidationError::Timeout { what })?;
                regs.write64(regs::CCMD, v);
                let done = regs::poll64(regs, regs::CCMD, |c| c & ccmd::ICC == 0)
                    .ok_or(InvalidationError::Timeout { what })?;
                if ccmd::caig(done) == 0 {
                    return Err(InvalidationError::Rejected { what });
                }
                Ok(())
            }
            Mode::Queued(_) => self.submit_and_wait(regs, phys, &[context_descriptor(scope)]),
        }
    }

    /// Invalidates IOTLB entries (and paging-structure caches) and waits for completion.
    pub fn iotlb(
        &mut self,
        regs: &dyn VtdRegisters,
        phys: &dyn PhysMemory,
        scope: IotlbScope,
    ) -> Result<(), InvalidationError> {
        // A page-selective request the unit cannot do becomes domain-selective.
        let scope = match scope {
            IotlbScope::Pages { domain, am, .. } if !self.cap.psi() || am as u32 > self.cap.mamv() => {
                IotlbScope::Domain(domain)
            }
            s => s,
        };
        match scope {
            IotlbScope::Global => self.stats.iotlb_global += 1,
            IotlbScope::Domain(_) => self.stats.iotlb_domain += 1,
            IotlbScope::Pages { .. } => self.stats.iotlb_pages += 1,
        }
        let (dr, dw) = (self.cap.drd(), self.cap.dwd());
        match &mut self.mode {
            Mode::Register { iotlb_off } => {
                let (iva_off, reg_off) = (*iotlb_off, *iotlb_off + 8);
                let drain = (if dr { iotlb::DR } else { 0 }) | (if dw { iotlb::DW } else { 0 });
                let v = match scope {
                    IotlbScope::Global => iotlb::IVT | iotlb::GLOBAL | drain,
                    IotlbScope::Domain(d) => iotlb::IVT | iotlb::DOMAIN | drain | ((d as u64) << iotlb::DID_SHIFT),
                    IotlbScope::Pages { domain, iova, am, leaf_only } => {
                        let ih = if leaf_only { iotlb::IVA_IH } else { 0 };
                        regs.write64(iva_off, (iova & !0xfff) | ih | am as u64);
                        iotlb::IVT | iotlb::PAGE | drain | ((domain as u64) << iotlb::DID_SHIFT)
                    }
                };
                let what = InvalidationStep::Iotlb;
                regs.write64(reg_off, v);
                let done =
                    regs::poll64(regs, reg_off, |c| c & iotlb::IVT == 0).ok_or(InvalidationError::Timeout { what })?;
                if iotlb::iaig(done) == 0 {
                    return Err(InvalidationError::Rejected { what });
                }
                Ok(())
            }
            Mode::Queued(_) => self.submit_and_wait(regs, phys, &[iotlb_descriptor(scope, dr, dw)]),
        }
    }

    /// Invalidates several IOTLB scopes and waits **once** for all of them: in queued mode the
    /// descriptors go into the queue back to back, followed by a single wait descriptor (§6.5.2:
    /// the unit processes the queue in order, and a wait descriptor completes only after every
    /// descriptor before it). Register-based units do them one by one. Used by strict unmaps
    /// of several ranges at once ([`crate::Domain::unmap_many`]).
    pub fn iotlb_many(
        &mut self,
        regs: &dyn VtdRegisters,
        phys: &dyn PhysMemory,
        scopes: &[IotlbScope],
    ) -> Result<(), InvalidationError> {
        if !matches!(self.mode, Mode::Queued(_)) || scopes.len() == 1 {
            for s in scopes {
                self.iotlb(regs, phys, *s)?;
            }
            return Ok(());
        }
        let (dr, dw) = (self.cap.drd(), self.cap.dwd());
        let mut descs = alloc::vec::Vec::with_capacity(scopes.len());
        for &scope in scopes {
            let scope = match scope {
                IotlbScope::Pages { domain, am, .. } if !self.cap.psi() || am as u32 > self.cap.mamv() => {
                    IotlbScope::Domain(domain)
                }
                s => s,
            };
            match scope {
                IotlbScope::Global => self.stats.iotlb_global += 1,
                IotlbScope::Domain(_) => self.stats.iotlb_domain += 1,
                IotlbScope::Pages { .. } => self.stats.iotlb_pages += 1,
            }
            descs.push(iotlb_descriptor(scope, dr, dw));
        }
        // The queue holds QUEUE_ENTRIES descriptors: submit in slices that leave room for the wait.
        for chunk in descs.chunks(QUEUE_ENTRIES / 2) {
            self.submit_and_wait(regs, phys, chunk)?;
        }
        Ok(())
    }

    /// Flushes the unit's internal write buffer when `CAP.RWBF` says it has one that table
    /// updates may sit in (§6.8). A no-op otherwise.
    pub fn flush_write_buffer(&mut self, regs: &dyn VtdRegisters) -> Result<(), InvalidationError> {
        if !self.cap.rwbf() {
            return Ok(());
        }
        self.stats.write_buffer_flushes += 1;
        if regs::gcmd_oneshot(regs, gcmd::WBF, false) {
            Ok(())
        } else {
            Err(InvalidationError::Timeout { what: InvalidationStep::WriteBufferFlush })
        }
    }

    /// Queued mode: writes `descs` and a wait descriptor, bumps IQT, and polls the status word.
    fn submit_and_wait(
        &mut self,
        regs: &dyn VtdRegisters,
        phys: &dyn PhysMemory,
        descs: &[[u64; 2]],
    ) -> Result<(), InvalidationError> {
        let Mode::Queued(q) = &mut self.mode else {
            return Ok(());
        };
        if q.broken {
            return Err(InvalidationError::Broken);
        }
        self.stats.waits += 1;
        q.seq = q.seq.wrapping_add(1);
        let seq = q.seq;
        let status_ptr = phys.phys_to_virt(q.status) as *mut u32;
        if status_ptr.is_null() {
            q.broken = true;
            return Err(InvalidationError::Broken);
        }
        // SAFETY: the status frame is ours for the queue's lifetime; the unit writes it only
        // in response to a wait descriptor, and none is outstanding (we always wait).
        unsafe { core::ptr::write_volatile(status_ptr, seq.wrapping_sub(1)) };
        let wait = wait_descriptor(q.status, seq);
        let qva = phys.phys_to_virt(q.base) as *mut u64;
        if qva.is_null() {
            q.broken = true;
            return Err(InvalidationError::Broken);
        }
        for d in descs.iter().chain(core::iter::once(&wait)) {
            // Full when the slot after the tail is the head: wait for the unit to catch up.
            let next = (q.tail + 1) % QUEUE_ENTRIES;
            let head_ok = regs::poll64(regs, regs::IQH, |h| (h as usize >> 4) % QUEUE_ENTRIES != next);
            if head_ok.is_none() {
                return Err(InvalidationError::Timeout { what: InvalidationStep::QueueSpace });
            }
            // SAFETY: slot `tail` (< 256) is inside the queue frame, and the unit does not read
            // it: it lies outside head..tail.
            unsafe {
                core::ptr::write_volatile(qva.add(q.tail * 2), d[0]);
                core::ptr::write_volatile(qva.add(q.tail * 2 + 1), d[1]);
            }
            if let Some(f) = &self.flush {
                // SAFETY: as above; the slot is 16 bytes inside the frame.
                f(unsafe { qva.add(q.tail * 2) } as *const u8, 16);
            }
            q.tail = next;
        }
        regs.write64(regs::IQT, (q.tail as u64) << 4);
        for _ in 0..regs::POLL_LIMIT {
            // SAFETY: as above.
            if unsafe { core::ptr::read_volatile(status_ptr) } == seq {
                return Ok(());
            }
            let f = regs.read32(regs::FSTS);
            if f & fsts::IQE != 0 {
                q.broken = true;
                let head = regs.read64(regs::IQH);
                regs.write32(regs::FSTS, fsts::IQE);
                return Err(InvalidationError::QueueError { head });
            }
            core::hint::spin_loop();
        }
        Err(InvalidationError::Timeout { what: InvalidationStep::Queued })
    }
}
