//! Fault reasons and fault records (VT-d spec §7.1, §7.3, §10.4.14, Appendix A).
//!
//! When a DMA request cannot be translated (no context entry, an unmapped IOVA, a write to a
//! read-only page) the unit blocks it and, unless the context entry says FPD, logs it in one
//! of its *fault recording registers*: 128 bits holding the page address, the requester id,
//! the access type and a *reason code*. Software reads them, clears each by writing 1 to its
//! F bit, and clears the overflow flag in FSTS (§7.3.1).
//!
//! ```text
//! bits  63..12  FI: faulting page address      bits 103..96  FR: fault reason
//!       79..64  SID: requester id (bus/dev/fn) bit  126      T: 0 = write, 1 = read
//!                                              bit  127      F: fault (RW1C)
//! ```
//!
//! # Example
//! What the driver reads after the NIC at 00:02.0 wrote to a page it may only read: the two
//! 64-bit halves of a fault recording register (§10.4.14), decoded into the device, the page,
//! the access type and the reason code (Appendix A). The record's `Display` is the log line,
//! so a student sees which device did what, where, and why it was stopped. A register whose
//! F bit is clear holds nothing.
//! ```
//! use iommu_vtd::fault::{FRCD_F, FRCD_T, FaultRecord};
//! use iommu_vtd::{AccessKind, FaultReason, SourceId};
//! let lo = 0x1234_5678; // FI: bits 63..12 are the page; bits 11..0 are reserved
//! let hi = FRCD_F | (0x05 << 32) | 0x0010; // F set, T clear (a write), FR = 5h, SID = 0x0010
//!
//! let record = FaultRecord::decode(lo, hi).unwrap();
//! assert_eq!((record.source, record.address), (SourceId::new(0, 2, 0), 0x1234_5000));
//! assert_eq!((record.access, record.reason), (AccessKind::Write, FaultReason::WRITE_DENIED));
//! assert_eq!(
//!     record.to_string(),
//!     "DMA write fault from 00:02.0 at IOVA 0x12345000: reason 0x05 (PTE write access is not set)"
//! );
//! assert_eq!(record.encode(), (0x1234_5000, hi)); // the simulated unit writes it back this way
//!
//! assert_eq!(FaultRecord::decode(lo, hi | FRCD_T).unwrap().access, AccessKind::Read); // T set: a read
//! assert_eq!(FaultRecord::decode(lo, hi & !FRCD_F), None); // F clear: nothing recorded here
//! assert_eq!(FaultReason::CONTEXT_NOT_PRESENT.to_string(), "0x02 present bit in context entry is clear");
//! ```

use core::fmt;

use super::{AccessKind, SourceId};

/// A fault reason code (Appendix A, legacy-mode codes 1h..Dh).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultReason(pub u8);

impl FaultReason {
    /// 1h: the root entry's present bit is clear: no device on that bus may do DMA.
    pub const ROOT_NOT_PRESENT: FaultReason = FaultReason(0x1);
    /// 2h: the context entry's present bit is clear: the device is not attached to a domain.
    pub const CONTEXT_NOT_PRESENT: FaultReason = FaultReason(0x2);
    /// 3h: the context entry is programmed wrongly (unsupported AW or translation type).
    pub const CONTEXT_INVALID: FaultReason = FaultReason(0x3);
    /// 4h: the address is above 2^X − 1, X = min(MGAW, the context entry's AGAW).
    pub const BEYOND_AGAW: FaultReason = FaultReason(0x4);
    /// 5h: a write to a page without write permission (or not present).
    pub const WRITE_DENIED: FaultReason = FaultReason(0x5);
    /// 6h: a read from a page without read permission (or not present).
    pub const READ_DENIED: FaultReason = FaultReason(0x6);
    /// 7h: reading a second-level paging entry failed (its address is not memory).
    pub const PAGING_ENTRY_ERROR: FaultReason = FaultReason(0x7);
    /// 8h: reading the root table failed.
    pub const ROOT_TABLE_ERROR: FaultReason = FaultReason(0x8);
    /// 9h: reading a context table failed.
    pub const CONTEXT_TABLE_ERROR: FaultReason = FaultReason(0x9);
    /// Ah: non-zero reserved field in a present root entry.
    pub const ROOT_RESERVED: FaultReason = FaultReason(0xA);
    /// Bh: non-zero reserved field in a present context entry.
    pub const CONTEXT_RESERVED: FaultReason = FaultReason(0xB);
    /// Ch: non-zero reserved field in a present paging entry (including an unsupported
    /// large page).
    pub const PAGING_RESERVED: FaultReason = FaultReason(0xC);
    /// Dh: the context entry's translation type blocks this kind of request.
    pub const TRANSLATION_BLOCKED: FaultReason = FaultReason(0xD);

    /// What the code means, in the words Linux's DMAR driver prints.
    pub const fn text(self) -> &'static str {
        match self.0 {
            0x0 => "software (no reason)",
            0x1 => "present bit in root entry is clear",
            0x2 => "present bit in context entry is clear",
            0x3 => "invalid context entry",
            0x4 => "access beyond MGAW/AGAW",
            0x5 => "PTE write access is not set",
            0x6 => "PTE read access is not set",
            0x7 => "next page table pointer is invalid",
            0x8 => "root table address invalid",
            0x9 => "context table pointer is invalid",
            0xA => "non-zero reserved fields in root entry",
            0xB => "non-zero reserved fields in context entry",
            0xC => "non-zero reserved fields in PTE",
            0xD => "translation type blocks the request",
            0x20..=0x26 => "interrupt remapping fault",
            _ => "unknown fault reason",
        }
    }
}

impl fmt::Debug for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultReason({:#04x}: {})", self.0, self.text())
    }
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x} {}", self.0, self.text())
    }
}

/// F bit (127) of a fault record: in the high 64-bit half, bit 63.
pub const FRCD_F: u64 = 1 << 63;
/// T bit (126): 1 = read, 0 = write.
pub const FRCD_T: u64 = 1 << 62;

/// One decoded fault recording register.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FaultRecord {
    /// The device that made the request.
    pub source: SourceId,
    /// The faulting page's address (IOVA; low 12 bits are zero).
    pub address: u64,
    /// Read or write.
    pub access: AccessKind,
    /// Why it was blocked.
    pub reason: FaultReason,
}

impl FaultRecord {
    /// Decodes the two 64-bit halves of a fault recording register; `None` if F is clear
    /// (no fault recorded there).
    pub const fn decode(lo: u64, hi: u64) -> Option<FaultRecord> {
        if hi & FRCD_F == 0 {
            return None;
        }
        Some(FaultRecord {
            source: SourceId(hi as u16),
            address: lo & !0xfff,
            access: if hi & FRCD_T != 0 { AccessKind::Read } else { AccessKind::Write },
            reason: FaultReason((hi >> 32) as u8),
        })
    }

    /// Encodes a record the way the hardware writes it (for the simulated unit).
    pub const fn encode(&self) -> (u64, u64) {
        let t = match self.access {
            AccessKind::Read => FRCD_T,
            AccessKind::Write => 0,
        };
        (self.address & !0xfff, FRCD_F | t | ((self.reason.0 as u64) << 32) | self.source.0 as u64)
    }

    /// The reason in words.
    pub const fn reason_text(&self) -> &'static str {
        self.reason.text()
    }
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DMA {} fault from {} at IOVA {:#x}: reason {:#04x} ({})",
            self.access,
            self.source,
            self.address,
            self.reason.0,
            self.reason.text()
        )
    }
}
