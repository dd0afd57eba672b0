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
//! # When the queue stops: invalidation queue errors (§6.5.2.10)
//! A descriptor the unit cannot accept (an unknown type, a reserved bit set, a field out of
//! range) makes it set FSTS.IQE (§10.4.9) and stop: IQH stays on the bad descriptor, nothing
//! after it is fetched, and every later wait would spin forever. The driver recovers the way
//! §6.5.2.10 allows ([`Invalidator`] does it while it waits):
//! 1. read IQH to find the bad descriptor, and IQERCD.IQEI for the unit's reason (0, "not
//!    available", on older units and QEMU 7.2: then the driver's own decode,
//!    [`check_descriptor`], names it);
//! 2. report it, decoded ([`QueueFault`]: slot, type, reason), naming the unit;
//! 3. overwrite the slot with a harmless descriptor (a wait that writes a scratch dword);
//! 4. clear FSTS.IQE (RW1C), after which the unit fetches again, and write IQT once more:
//!    QEMU 7.2 resumes only on an IQT write (hw/i386/intel_iommu.c, `vtd_handle_iqt_write`;
//!    `vtd_handle_fsts_write` leaves a FIXME there), and rewriting the same tail is harmless;
//! 5. fail the batch the bad descriptor belonged to with [`InvalidationError::QueueError`]:
//!    the work it asked for was not done, so the caller keeps its range quarantined (as for
//!    any failed invalidation) and later flushes retry. If the bad descriptor was the batch's
//!    own wait, a fresh wait is queued so the batch can still be drained.
//!
//! The queue keeps working afterwards; only if the unit stops again and again on the same
//! batch (more errors than descriptors submitted) is it declared [`InvalidationError::Broken`].
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

use alloc::collections::VecDeque;
use alloc::string::String;
use core::fmt;

use dma::phys::{FrameRequest, PAGE_SIZE, PhysAddr, PhysMemory};

use super::SourceId;
use super::regs::{self, Cap, Ecap, VtdRegisters, ccmd, fsts, gcmd, iotlb, iqercd};
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
    /// The invalidation queue stopped on a bad descriptor of this batch (FSTS.IQE). The
    /// driver replaced it and restarted the queue, which keeps working; what the batch asked
    /// for was not (all) done.
    QueueError(QueueFault),
    /// The queue cannot be used: it kept stopping after recovery, or its memory is gone.
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
            InvalidationError::QueueError(q) => {
                write!(f, "{q}; the descriptor was replaced and the queue restarted, but its invalidation was not done")
            }
            InvalidationError::Broken => f.write_str(
                "IOMMU invalidation queue is stopped and could not be recovered; invalidations are no longer \
                 possible, stop DMA",
            ),
            InvalidationError::OutOfMemory => f.write_str("no frame for the IOMMU invalidation queue"),
        }
    }
}

/// A descriptor's type: bits 3:0 with bits 11:9 above them (§6.5.2; the high bits exist from
/// spec rev 3.0 on and must be 0 before).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DescriptorType {
    /// 1: context-cache invalidate (§6.5.2.1).
    ContextCache,
    /// 2: IOTLB invalidate (§6.5.2.3).
    Iotlb,
    /// 3: device-TLB invalidate (§6.5.2.5).
    DeviceTlb,
    /// 4: interrupt entry cache invalidate (§6.5.2.7).
    InterruptEntryCache,
    /// 5: invalidation wait (§6.5.2.8).
    Wait,
    /// 6: PASID-based IOTLB invalidate (§6.5.2.4), scalable mode only.
    PasidIotlb,
    /// 7: PASID-cache invalidate (§6.5.2.2), scalable mode only.
    PasidCache,
    /// Anything else: reserved or beyond what a legacy-mode queue takes.
    Other(u8),
}

impl DescriptorType {
    /// The type field of a descriptor's low quadword.
    pub const fn of(lo: u64) -> DescriptorType {
        match (lo & 0xf) | ((lo >> 5) & 0x70) {
            1 => DescriptorType::ContextCache,
            2 => DescriptorType::Iotlb,
            3 => DescriptorType::DeviceTlb,
            4 => DescriptorType::InterruptEntryCache,
            5 => DescriptorType::Wait,
            6 => DescriptorType::PasidIotlb,
            7 => DescriptorType::PasidCache,
            t => DescriptorType::Other(t as u8),
        }
    }
}

impl fmt::Display for DescriptorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DescriptorType::ContextCache => f.write_str("context-cache invalidate"),
            DescriptorType::Iotlb => f.write_str("IOTLB invalidate"),
            DescriptorType::DeviceTlb => f.write_str("device-TLB invalidate"),
            DescriptorType::InterruptEntryCache => f.write_str("interrupt-entry-cache invalidate"),
            DescriptorType::Wait => f.write_str("invalidation wait"),
            DescriptorType::PasidIotlb => f.write_str("PASID-based IOTLB invalidate"),
            DescriptorType::PasidCache => f.write_str("PASID-cache invalidate"),
            DescriptorType::Other(t) => write!(f, "type {t:#x}"),
        }
    }
}

/// Why the unit stopped the queue: IQERCD.IQEI when the unit gives one, else what
/// [`check_descriptor`] finds wrong with the descriptor at IQH.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum QueueErrorCause {
    /// IQEI 1: the tail pointer is invalid.
    InvalidTail,
    /// IQEI 2: fetching the descriptor failed.
    FetchFailed,
    /// IQEI 3, or a type a legacy-mode queue does not take.
    InvalidType,
    /// IQEI 4, or reserved bits set: `lo`/`hi` are the offending bits, as far as the driver
    /// can tell (both 0 when only the unit's IQEI says so).
    ReservedBits {
        /// Reserved bits set in the low quadword.
        lo: u64,
        /// Reserved bits set in the high quadword.
        hi: u64,
    },
    /// IQEI 5: the descriptor width in IQA does not fit.
    DescriptorWidth,
    /// A granularity of 0 (reserved) in a context-cache or IOTLB descriptor.
    ReservedGranularity,
    /// A page-selective IOTLB invalidation whose address mask exceeds CAP.MAMV.
    MaskAboveMamv {
        /// The descriptor's address mask.
        am: u8,
    },
    /// A wait descriptor asking for neither a status write nor an interrupt (QEMU 7.2
    /// refuses those).
    WaitDoesNothing,
    /// No reason found: IQEI was 0 (or unknown) and the descriptor looks valid.
    Unexplained {
        /// IQERCD.IQEI as read.
        iqei: u8,
    },
}

impl fmt::Display for QueueErrorCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueErrorCause::InvalidTail => f.write_str("the tail pointer is invalid"),
            QueueErrorCause::FetchFailed => f.write_str("the unit could not fetch it"),
            QueueErrorCause::InvalidType => f.write_str("its type is not one this queue takes"),
            QueueErrorCause::ReservedBits { lo: 0, hi: 0 } => f.write_str("reserved bits are set"),
            QueueErrorCause::ReservedBits { lo, hi } => write!(f, "reserved bits {lo:#x}:{hi:#x} are set"),
            QueueErrorCause::DescriptorWidth => f.write_str("the descriptor width does not match IQA.DW"),
            QueueErrorCause::ReservedGranularity => f.write_str("its granularity is 0 (reserved)"),
            QueueErrorCause::MaskAboveMamv { am } => write!(f, "its address mask {am} exceeds CAP.MAMV"),
            QueueErrorCause::WaitDoesNothing => f.write_str("it asks for neither a status write nor an interrupt"),
            QueueErrorCause::Unexplained { iqei } => write!(f, "no reason found (IQEI {iqei})"),
        }
    }
}

/// One invalidation queue error (FSTS.IQE), decoded: where the unit stopped, on what, and why.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct QueueFault {
    /// The queue slot IQH pointed at (0..256).
    pub slot: usize,
    /// The 128-bit descriptor found there (low, high quadword).
    pub descriptor: [u64; 2],
    /// Its type.
    pub kind: DescriptorType,
    /// Why the unit refused it.
    pub cause: QueueErrorCause,
    /// Whether `cause` came from the unit (IQERCD.IQEI) rather than the driver's decode.
    pub from_unit: bool,
}

impl QueueFault {
    /// Decodes the error: the unit's IQEI when it gives one, else [`check_descriptor`].
    pub fn decode(slot: usize, descriptor: [u64; 2], iqei: u8, mamv: u32) -> QueueFault {
        let kind = DescriptorType::of(descriptor[0]);
        let from_unit = match iqei {
            1 => Some(QueueErrorCause::InvalidTail),
            2 => Some(QueueErrorCause::FetchFailed),
            3 => Some(QueueErrorCause::InvalidType),
            4 => Some(
                check_descriptor(descriptor, mamv)
                    .filter(|c| matches!(c, QueueErrorCause::ReservedBits { .. }))
                    .unwrap_or(QueueErrorCause::ReservedBits { lo: 0, hi: 0 }),
            ),
            5 => Some(QueueErrorCause::DescriptorWidth),
            _ => None,
        };
        let (cause, from_unit) = match from_unit {
            Some(c) => (c, true),
            None => (check_descriptor(descriptor, mamv).unwrap_or(QueueErrorCause::Unexplained { iqei }), false),
        };
        QueueFault { slot, descriptor, kind, cause, from_unit }
    }
}

impl fmt::Display for QueueFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalidation queue error (FSTS.IQE) at slot {}: {} descriptor {:#018x}:{:#018x} refused, {} ({})",
            self.slot,
            self.kind,
            self.descriptor[0],
            self.descriptor[1],
            self.cause,
            if self.from_unit { "IQERCD" } else { "decoded by the driver" }
        )
    }
}

/// What is wrong with a 128-bit descriptor on a legacy-mode queue, as far as the driver can
/// tell: `None` when it looks valid. Checks the types this driver issues against §6.5.2
/// (the same fields QEMU 7.2's `vtd_process_inv_desc` checks); the device-TLB and
/// interrupt-entry-cache types are accepted as they are.
pub const fn check_descriptor(d: [u64; 2], mamv: u32) -> Option<QueueErrorCause> {
    let [lo, hi] = d;
    let (rsvd_lo, rsvd_hi) = match DescriptorType::of(lo) {
        // Bits 8:6, 15:12 (11:9 are the high type bits, 0 here), 63:50; the whole high
        // quadword (§6.5.2.1).
        DescriptorType::ContextCache => (0xfffc_0000_0000_f1c0, u64::MAX),
        // Bits 8, 15:12, 63:32; high quadword bits 11:7 (§6.5.2.3).
        DescriptorType::Iotlb => (0xffff_ffff_0000_f100, 0xf80),
        // Bits 8:7, 31:12; high quadword bits 1:0 (§6.5.2.8).
        DescriptorType::Wait => (0xffff_f180, 0x3),
        DescriptorType::DeviceTlb | DescriptorType::InterruptEntryCache => return None,
        DescriptorType::PasidIotlb | DescriptorType::PasidCache | DescriptorType::Other(_) => {
            return Some(QueueErrorCause::InvalidType);
        }
    };
    if lo & rsvd_lo != 0 || hi & rsvd_hi != 0 {
        return Some(QueueErrorCause::ReservedBits { lo: lo & rsvd_lo, hi: hi & rsvd_hi });
    }
    match DescriptorType::of(lo) {
        DescriptorType::ContextCache | DescriptorType::Iotlb if (lo >> 4) & 3 == 0 => {
            Some(QueueErrorCause::ReservedGranularity)
        }
        DescriptorType::Iotlb if (lo >> 4) & 3 == 3 && (hi & 0x3f) as u32 > mamv => {
            Some(QueueErrorCause::MaskAboveMamv { am: (hi & 0x3f) as u8 })
        }
        DescriptorType::Wait if lo & (desc::WAIT_SW | desc::WAIT_IF) == 0 => Some(QueueErrorCause::WaitDoesNothing),
        _ => None,
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
    /// Invalidation queue errors (FSTS.IQE) recovered from.
    pub queue_errors: u64,
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
    /// Wait descriptor: interrupt flag.
    pub const WAIT_IF: u64 = 1 << 4;
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

/// The invalidation queue: one 4 KiB page of 256 128-bit descriptors, plus a status frame
/// whose first dword the wait descriptors write and whose third is a scratch dword for the
/// descriptors that replace bad ones.
struct Queue {
    base: PhysAddr,
    status: PhysAddr,
    tail: usize,
    seq: u32,
    broken: bool,
}

const QUEUE_ENTRIES: usize = PAGE_SIZE / 16;

/// Offset in the status frame of the dword replacement descriptors write.
const SCRATCH_OFFSET: u64 = 8;

/// How many recent queue errors an invalidator keeps.
const RECENT_QUEUE_ERRORS: usize = 8;

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
    /// The unit's name, for the log line a queue error gets.
    unit: String,
    /// The last queue errors, oldest first.
    queue_errors: VecDeque<QueueFault>,
}

impl Invalidator {
    /// Register-based invalidation.
    pub fn registers(cap: Cap, ecap: Ecap) -> Invalidator {
        Invalidator {
            mode: Mode::Register { iotlb_off: ecap.iotlb_offset() },
            cap,
            flush: None,
            stats: InvalidationStats::default(),
            unit: String::new(),
            queue_errors: VecDeque::new(),
        }
    }

    /// Sets up and enables queued invalidation (§6.5.2): a zeroed queue page and status word,
    /// IQT = 0, IQA = base with QS = 0 (one page) and 128-bit descriptors, then GCMD.QIE and
    /// wait for GSTS.QIES. `flush` pushes descriptors to memory if the unit is not coherent;
    /// `unit` names the unit in the log line a queue error gets.
    pub fn enable_queue(
        unit: &str,
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
            unit: String::from(unit),
            queue_errors: VecDeque::new(),
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

    /// The last invalidation queue errors recovered from (up to 8), oldest first.
    pub fn queue_errors(&self) -> impl Iterator<Item = &QueueFault> {
        self.queue_errors.iter()
    }

    /// Queued mode: submits `descriptor` exactly as given, then a wait, and waits. For
    /// fault-injection tests of the error recovery (a malformed descriptor must come back as
    /// [`InvalidationError::QueueError`] with the queue still working); register mode has no
    /// queue and returns [`InvalidationError::Rejected`].
    pub fn submit_raw(
        &mut self,
        regs: &dyn VtdRegisters,
        phys: &dyn PhysMemory,
        descriptor: [u64; 2],
    ) -> Result<(), InvalidationError> {
        if !self.is_queued() {
            return Err(InvalidationError::Rejected { what: InvalidationStep::Queued });
        }
        self.submit_and_wait(regs, phys, &[descriptor])
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

    /// The scope the unit will really be asked for, counted in the stats: a page-selective
    /// request the unit cannot do (no CAP.PSI, or a mask above CAP.MAMV) becomes
    /// domain-selective.
    fn counted_scope(&mut self, scope: IotlbScope) -> IotlbScope {
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
        scope
    }

    /// Invalidates IOTLB entries (and paging-structure caches) and waits for completion.
    pub fn iotlb(
        &mut self,
        regs: &dyn VtdRegisters,
        phys: &dyn PhysMemory,
        scope: IotlbScope,
    ) -> Result<(), InvalidationError> {
        let scope = self.counted_scope(scope);
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
            let scope = self.counted_scope(scope);
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

    /// Invalidates the interrupt entry cache (§6.5.2.7) through the queue and waits. Interrupt
    /// remapping requires queued invalidation (§6.5: there is no register interface for the
    /// IEC), so in register mode this is refused with [`InvalidationError::Broken`].
    pub fn interrupt_entries(
        &mut self,
        regs: &dyn VtdRegisters,
        phys: &dyn PhysMemory,
        scope: crate::interrupt_remap::IecScope,
    ) -> Result<(), InvalidationError> {
        match self.mode {
            Mode::Register { .. } => Err(InvalidationError::Broken),
            Mode::Queued(_) => self.submit_and_wait(regs, phys, &[crate::interrupt_remap::iec_descriptor(scope)]),
        }
    }

    /// Queued mode: writes `descs` and a wait descriptor, bumps IQT, and polls the status word.
    /// An invalidation queue error met on the way is recovered (see the module documentation)
    /// and fails the batch with [`InvalidationError::QueueError`].
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
        let mamv = self.cap.mamv();
        let flush = self.flush.as_ref();
        let status_ptr = phys.phys_to_virt(q.status) as *mut u32;
        if status_ptr.is_null() || phys.phys_to_virt(q.base).is_null() {
            q.broken = true;
            return Err(InvalidationError::Broken);
        }
        self.stats.waits += 1;
        // A queue stopped before this batch (nothing of ours is in it: every batch is waited
        // for) is restarted first; the error is reported but is not this batch's.
        if regs.read32(regs::FSTS) & fsts::IQE != 0 {
            let fault = q.recover(regs, phys, flush, mamv);
            note_queue_error(&mut self.stats, &mut self.queue_errors, &self.unit, fault);
        }
        let mut seq = q.next_seq(status_ptr);
        for d in descs {
            q.push(regs, phys, flush, *d)?;
        }
        let mut wait_slot = q.push(regs, phys, flush, wait_descriptor(q.status, seq))?;
        regs.write64(regs::IQT, (q.tail as u64) << 4);
        let mut failed = None;
        let mut errors = 0;
        for _ in 0..regs::POLL_LIMIT {
            // SAFETY: the status frame is ours for the queue's lifetime; the unit writes it only
            // in response to our wait descriptors.
            if unsafe { core::ptr::read_volatile(status_ptr) } == seq {
                return match failed {
                    None => Ok(()),
                    Some(fault) => Err(InvalidationError::QueueError(fault)),
                };
            }
            if regs.read32(regs::FSTS) & fsts::IQE != 0 {
                errors += 1;
                if errors > descs.len() + 1 {
                    // Replacing what IQH points at does not help (an invalid tail, or a unit
                    // that cannot fetch): stop using the queue rather than spin.
                    q.broken = true;
                    log::error!("{}: invalidation queue keeps stopping (FSTS.IQE); giving up on it", self.unit);
                    return Err(InvalidationError::Broken);
                }
                let fault = q.recover(regs, phys, flush, mamv);
                note_queue_error(&mut self.stats, &mut self.queue_errors, &self.unit, fault);
                if fault.slot == wait_slot {
                    // The wait itself was refused and replaced: queue a new one to drain the batch.
                    seq = q.next_seq(status_ptr);
                    wait_slot = q.push(regs, phys, flush, wait_descriptor(q.status, seq))?;
                    regs.write64(regs::IQT, (q.tail as u64) << 4);
                }
                failed.get_or_insert(fault);
            }
            core::hint::spin_loop();
        }
        Err(InvalidationError::Timeout { what: InvalidationStep::Queued })
    }
}

/// Counts, keeps and logs one recovered queue error.
fn note_queue_error(stats: &mut InvalidationStats, recent: &mut VecDeque<QueueFault>, unit: &str, fault: QueueFault) {
    stats.queue_errors += 1;
    if recent.len() == RECENT_QUEUE_ERRORS {
        recent.pop_front();
    }
    recent.push_back(fault);
    log::error!("{unit}: {fault}; replaced it with a no-op wait and restarted the queue");
}

impl Queue {
    /// The next sequence number, with the status word set to anything but it.
    fn next_seq(&mut self, status_ptr: *mut u32) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        // SAFETY: `status_ptr` maps the status frame, ours for the queue's lifetime; no wait
        // descriptor is outstanding that could write it concurrently with an older value
        // (every batch is waited for, and a replaced wait writes the scratch dword instead).
        unsafe { core::ptr::write_volatile(status_ptr, self.seq.wrapping_sub(1)) };
        self.seq
    }

    /// Writes `d` at the tail (waiting for a free slot) and advances the tail in memory only
    /// (the caller writes IQT). Returns the slot written.
    fn push(
        &mut self,
        regs: &dyn VtdRegisters,
        phys: &dyn PhysMemory,
        flush: Option<&CacheFlush>,
        d: [u64; 2],
    ) -> Result<usize, InvalidationError> {
        // Full when the slot after the tail is the head: wait for the unit to catch up.
        let next = (self.tail + 1) % QUEUE_ENTRIES;
        let head_ok = regs::poll64(regs, regs::IQH, |h| (h as usize >> 4) % QUEUE_ENTRIES != next);
        if head_ok.is_none() {
            return Err(InvalidationError::Timeout { what: InvalidationStep::QueueSpace });
        }
        let slot = self.tail;
        self.write_slot(phys, flush, slot, d);
        self.tail = next;
        Ok(slot)
    }

    /// Stores a descriptor in `slot` and pushes it to memory for a non-coherent unit.
    fn write_slot(&self, phys: &dyn PhysMemory, flush: Option<&CacheFlush>, slot: usize, d: [u64; 2]) {
        let qva = phys.phys_to_virt(self.base) as *mut u64;
        // SAFETY: `submit_and_wait` checked that the queue frame maps (`qva` is not null);
        // `slot` < 256, so both quadwords are inside the 4 KiB frame we own. The unit does not
        // read the slot now: it is either outside head..tail or the one it stopped on.
        unsafe {
            core::ptr::write_volatile(qva.add(slot * 2), d[0]);
            core::ptr::write_volatile(qva.add(slot * 2 + 1), d[1]);
        }
        if let Some(f) = flush {
            // SAFETY: as above; the slot is 16 bytes inside the frame.
            f(unsafe { qva.add(slot * 2) } as *const u8, 16);
        }
    }

    /// The recovery of §6.5.2.10 for a queue the unit stopped (FSTS.IQE set): find the
    /// descriptor at IQH, decode why it was refused (IQERCD.IQEI, else the driver's decode),
    /// replace it with a wait descriptor that writes the scratch dword (valid on every unit,
    /// and in QEMU 7.2, which refuses a wait that does nothing), clear IQE (RW1C, §10.4.9) so
    /// the unit fetches again, and rewrite IQT for units that (like QEMU 7.2) only resume on
    /// a tail write.
    fn recover(
        &mut self,
        regs: &dyn VtdRegisters,
        phys: &dyn PhysMemory,
        flush: Option<&CacheFlush>,
        mamv: u32,
    ) -> QueueFault {
        let slot = (regs.read64(regs::IQH) as usize >> 4) % QUEUE_ENTRIES;
        let iqei = iqercd::iqei(regs.read64(regs::IQERCD));
        let qva = phys.phys_to_virt(self.base) as *const u64;
        // SAFETY: as in `write_slot`; the unit has stopped and does not touch the slot.
        let descriptor =
            unsafe { [core::ptr::read_volatile(qva.add(slot * 2)), core::ptr::read_volatile(qva.add(slot * 2 + 1))] };
        let fault = QueueFault::decode(slot, descriptor, iqei, mamv);
        let scratch = PhysAddr(self.status.0 + SCRATCH_OFFSET);
        self.write_slot(phys, flush, slot, wait_descriptor(scratch, 0));
        regs.write32(regs::FSTS, fsts::IQE);
        regs.write64(regs::IQT, (self.tail as u64) << 4);
        fault
    }
}
