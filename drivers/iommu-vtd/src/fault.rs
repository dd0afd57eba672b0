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

/// A fault reason code (Appendix A: legacy-mode DMA codes 1h..Dh, interrupt-remapping codes 20h..26h).
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
    /// 20h: the interrupt request has reserved fields set (address or data of a remappable
    /// message, e.g. a non-zero upper address, or data bits 31:16 with SHV).
    pub const IR_REQUEST_RESERVED: FaultReason = FaultReason(0x20);
    /// 21h: the handle is beyond the table's size (IRTA.S).
    pub const IR_INDEX_BEYOND_TABLE: FaultReason = FaultReason(0x21);
    /// 22h: the IRTE the handle names is not present.
    pub const IR_ENTRY_NOT_PRESENT: FaultReason = FaultReason(0x22);
    /// 23h: reading the IRTE failed (the table address is not memory).
    pub const IR_TABLE_ERROR: FaultReason = FaultReason(0x23);
    /// 24h: the IRTE has reserved fields set.
    pub const IR_ENTRY_RESERVED: FaultReason = FaultReason(0x24);
    /// 25h: a compatibility-format interrupt was blocked (GCMD.CFI clear, or EIME set).
    pub const IR_COMPATIBILITY_BLOCKED: FaultReason = FaultReason(0x25);
    /// 26h: source-id validation failed: the requester is not the one the IRTE names.
    pub const IR_SOURCE_ID: FaultReason = FaultReason(0x26);

    /// Whether the code is an interrupt-remapping fault (20h..26h, §7.1.3): the record then
    /// names an IRTE index, not a page.
    pub const fn is_interrupt(self) -> bool {
        self.0 >= 0x20 && self.0 <= 0x26
    }

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
            0x20 => "reserved field set in the interrupt request",
            0x21 => "interrupt index beyond the remapping table",
            0x22 => "present bit in IRTE is clear",
            0x23 => "error reading the interrupt remapping table",
            0x24 => "non-zero reserved fields in IRTE",
            0x25 => "compatibility-format interrupt blocked",
            0x26 => "source-id validation failed for the IRTE",
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

/// What a fault record is about: a DMA request (a page address and an access) or an
/// interrupt request (an IRTE index). The reason code decides (§7.1.3, §10.4.14).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultKind {
    /// Reasons 1h..Dh: a DMA request to `address` was blocked.
    Dma,
    /// Reasons 20h..26h: an interrupt request was blocked. `index` is the IRTE index the
    /// message named (FI bits 63:48; 0 for reasons that have none, such as 20h and 25h).
    Interrupt {
        /// The interrupt remapping table index.
        index: u16,
    },
}

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
    /// (no fault recorded there). Interrupt-remapping reasons (20h..26h) decode as their own
    /// kind: see [`FaultRecord::kind`].
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

    /// A DMA or an interrupt-remapping fault. For an interrupt fault the record's FI field holds
    /// the IRTE index in bits 63:48 (its bits 47:12 are reserved) and T is reserved, so
    /// [`FaultRecord::address`] and [`FaultRecord::access`] mean nothing there.
    pub const fn kind(&self) -> FaultKind {
        if self.reason.is_interrupt() {
            FaultKind::Interrupt { index: (self.address >> 48) as u16 }
        } else {
            FaultKind::Dma
        }
    }

    /// The reason in words.
    pub const fn reason_text(&self) -> &'static str {
        self.reason.text()
    }
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let FaultKind::Interrupt { index } = self.kind() {
            return write!(
                f,
                "interrupt remapping fault from {}, IRTE index {index}: reason {:#04x} ({})",
                self.source,
                self.reason.0,
                self.reason.text()
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// Each interrupt-remapping reason decodes as an interrupt fault with its IRTE index, as
    /// QEMU (`vtd_report_ir_fault`) and hardware write it: FR in bits 103:96, SID in 79:64,
    /// the index in FI bits 63:48.
    #[test]
    fn interrupt_remapping_reasons_decode_as_their_own_kind() {
        let sid = SourceId::new(0, 4, 0);
        for code in 0x20u8..=0x26 {
            let index = 0x40 + u16::from(code);
            let lo = u64::from(index) << 48;
            let hi = FRCD_F | (u64::from(code) << 32) | u64::from(sid.0);
            let r = FaultRecord::decode(lo, hi).unwrap();
            assert!(r.reason.is_interrupt());
            assert_eq!(r.kind(), FaultKind::Interrupt { index }, "reason {code:#x}");
            assert_eq!(r.source, sid);
            let text = r.to_string();
            assert!(text.starts_with("interrupt remapping fault from 00:04.0"), "{text}");
            assert!(text.contains(&alloc::format!("IRTE index {index}")), "{text}");
            assert!(text.contains(&alloc::format!("reason {code:#04x}")), "{text}");
            assert!(!r.reason_text().contains("unknown"), "{code:#x} has a name");
            assert_eq!(FaultRecord::decode(r.encode().0, r.encode().1), Some(r));
        }
        assert_eq!(FaultReason::IR_SOURCE_ID.text(), "source-id validation failed for the IRTE");
        assert_eq!(FaultReason::IR_ENTRY_NOT_PRESENT.0, 0x22);
        for code in [0x01u8, 0x05, 0x0D, 0x1F, 0x27] {
            assert!(!FaultReason(code).is_interrupt());
            let r = FaultRecord::decode(0x1234_5000, FRCD_F | (u64::from(code) << 32)).unwrap();
            assert_eq!(r.kind(), FaultKind::Dma);
            assert!(r.to_string().starts_with("DMA write fault"));
        }
    }
}
