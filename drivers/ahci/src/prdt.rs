//! Physical Region Descriptor Tables: how a command table tells the HBA where data lives
//! (AHCI 1.3.1 §4.2.3.3).
//!
//! Each entry is 16 bytes: DBA/DBAU (the bus address of the region, bit 0 reserved, so every
//! region starts on an even address), a reserved DWORD, and DW3 with the Data Byte Count in bits
//! 21:0 *minus one* (bit 0 of DBC must be 1: every region is an even number of bytes, at most
//! 4 MiB) and the Interrupt-on-completion bit 31.
//!
//! Segments come from a streaming scatter-gather mapping of the request's buffers; the device's
//! maximum segment size is set to 4 MiB, but a segment longer than that is split here anyway so
//! no entry can ever exceed the limit.

use alloc::vec::Vec;
use core::fmt;
use dma::BusSegment;

/// Largest region one PRD entry describes (DBC is 22 bits: 4 MiB).
pub const MAX_PRD_BYTES: usize = 4 << 20;
/// Bytes per PRDT entry.
pub const PRD_ENTRY_BYTES: usize = 16;

/// One PRDT entry, as the HBA reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrdEntry {
    /// Bus address of the region (even).
    pub bus: u64,
    /// Length in bytes (even, 2..=4 MiB).
    pub len: u32,
}

impl PrdEntry {
    /// The entry's 16 bytes (§4.2.3.3): DBA, DBAU, reserved, DBC = len − 1 (I bit clear: the
    /// driver interrupts on the D2H/SDB FIS instead).
    pub fn to_bytes(self) -> [u8; PRD_ENTRY_BYTES] {
        let mut out = [0u8; PRD_ENTRY_BYTES];
        out[0..4].copy_from_slice(&(self.bus as u32).to_le_bytes());
        out[4..8].copy_from_slice(&((self.bus >> 32) as u32).to_le_bytes());
        out[12..16].copy_from_slice(&((self.len - 1) & 0x003F_FFFF).to_le_bytes());
        out
    }
}

/// Why a buffer cannot be described to the HBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrdtError {
    /// A region has an odd length: DBC bit 0 must be 1, so lengths are even (§4.2.3.3).
    OddLength {
        /// Index of the segment.
        segment: usize,
        /// Its length.
        len: usize,
    },
    /// A region starts at an odd bus address: DBA bit 0 is reserved (§4.2.3.3).
    OddAddress {
        /// Index of the segment.
        segment: usize,
        /// Its bus address.
        bus: u64,
    },
    /// More regions than the command table holds.
    TooManyEntries {
        /// Entries needed.
        needed: usize,
        /// Entries available.
        max: usize,
    },
    /// A segment lies above what a 32-bit-only HBA (CAP.S64A clear) can address.
    Beyond32Bits {
        /// Its bus address.
        bus: u64,
    },
    /// Nothing to transfer.
    Empty,
}

impl fmt::Display for PrdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PrdtError::OddLength { segment, len } => write!(
                f,
                "buffer segment {segment} is {len} bytes; AHCI PRD regions must be an even number of bytes (§4.2.3.3)"
            ),
            PrdtError::OddAddress { segment, bus } => write!(
                f,
                "buffer segment {segment} starts at odd bus address {bus:#x}; AHCI PRD regions must be word aligned"
            ),
            PrdtError::TooManyEntries { needed, max } => write!(
                f,
                "the buffers need {needed} PRD entries but a command table holds {max}; use fewer, larger buffers"
            ),
            PrdtError::Beyond32Bits { bus } => {
                write!(f, "segment at {bus:#x} is above 4 GiB but the HBA only does 32-bit addressing (CAP.S64A clear)")
            }
            PrdtError::Empty => f.write_str("no data to describe"),
        }
    }
}

/// Turns mapped segments into PRD entries: splits anything over 4 MiB, refuses odd lengths
/// and addresses, more than `max_entries` entries, and (for a 32-bit HBA) addresses above 4 GiB.
pub fn build_prdt(segments: &[BusSegment], max_entries: usize, addr64: bool) -> Result<Vec<PrdEntry>, PrdtError> {
    if segments.iter().all(|s| s.len == 0) {
        return Err(PrdtError::Empty);
    }
    let mut out = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        if s.len % 2 != 0 {
            return Err(PrdtError::OddLength { segment: i, len: s.len });
        }
        let bus = s.bus.as_u64();
        if bus % 2 != 0 {
            return Err(PrdtError::OddAddress { segment: i, bus });
        }
        if !addr64 && bus.saturating_add(s.len as u64) > 1 << 32 {
            return Err(PrdtError::Beyond32Bits { bus });
        }
        let mut done = 0usize;
        while done < s.len {
            let len = (s.len - done).min(MAX_PRD_BYTES);
            out.push(PrdEntry { bus: bus + done as u64, len: len as u32 });
            done += len;
        }
    }
    if out.len() > max_entries {
        return Err(PrdtError::TooManyEntries { needed: out.len(), max: max_entries });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dma::BusAddr;

    fn seg(bus: u64, len: usize) -> BusSegment {
        BusSegment { bus: BusAddr(bus), len }
    }

    #[test]
    fn splits_at_4_mib() {
        let prdt = build_prdt(&[seg(0x1000_0000, (9 << 20) + 512)], 8, true).unwrap();
        assert_eq!(
            prdt,
            [
                PrdEntry { bus: 0x1000_0000, len: 4 << 20 },
                PrdEntry { bus: 0x1040_0000, len: 4 << 20 },
                PrdEntry { bus: 0x1080_0000, len: (1 << 20) + 512 },
            ]
        );
        assert!(prdt.iter().all(|e| e.len as usize <= MAX_PRD_BYTES));
    }

    #[test]
    fn dbc_is_count_minus_one_with_bit0_set() {
        let bytes = PrdEntry { bus: 0x1_2345_6780, len: 4 << 20 }.to_bytes();
        assert_eq!(u32::from_le_bytes(bytes[0..4].try_into().unwrap()), 0x2345_6780);
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 1);
        let dbc = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
        assert_eq!(dbc, 0x3F_FFFF);
        assert_eq!(dbc & 1, 1);
    }

    #[test]
    fn refuses_odd_lengths_and_addresses() {
        assert_eq!(build_prdt(&[seg(0x1000, 511)], 8, true), Err(PrdtError::OddLength { segment: 0, len: 511 }));
        assert_eq!(build_prdt(&[seg(0x1001, 512)], 8, true), Err(PrdtError::OddAddress { segment: 0, bus: 0x1001 }));
        assert_eq!(build_prdt(&[], 8, true), Err(PrdtError::Empty));
    }

    #[test]
    fn refuses_too_many_entries_and_high_addresses_on_32_bit_hbas() {
        let many: Vec<BusSegment> = (0..9).map(|i| seg(i * 0x2000, 512)).collect();
        assert_eq!(build_prdt(&many, 8, true), Err(PrdtError::TooManyEntries { needed: 9, max: 8 }));
        assert!(matches!(build_prdt(&[seg(0x1_0000_0000, 512)], 8, false), Err(PrdtError::Beyond32Bits { .. })));
        assert!(build_prdt(&[seg(0xFFFF_FE00, 512)], 8, false).is_ok());
    }
}
