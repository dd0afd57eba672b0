//! Parsing the 512-byte IDENTIFY DEVICE data (ATA8-ACS §7.16, Table 22).
//!
//! The data is 256 little-endian 16-bit words. Strings are ASCII with the two bytes of every
//! word swapped ("ATA string" convention, ATA8-ACS §3.4.9), padded with spaces.

use alloc::string::String;
use core::fmt;

/// What the driver needs to know about a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Model number, words 27–46.
    pub model: String,
    /// Serial number, words 10–19.
    pub serial: String,
    /// Firmware revision, words 23–26.
    pub firmware: String,
    /// Addressable logical sectors: words 100–103 when 48-bit addressing is supported (word 83
    /// bit 10), else words 60–61.
    pub sectors: u64,
    /// Whether the 48-bit feature set is supported (word 83 bit 10).
    pub lba48: bool,
    /// Bytes per logical sector: words 117–118 (in words) when word 106 bit 12 says sectors are
    /// longer than 256 words; otherwise 512.
    pub logical_sector_size: u32,
    /// Logical sectors per physical sector, 2^(word 106 bits 3:0) when word 106 is valid.
    pub logical_per_physical: u32,
    /// Native Command Queuing supported (word 76 bit 8).
    pub ncq: bool,
    /// Maximum queue depth (word 75 bits 4:0, plus one), 1 without NCQ.
    pub queue_depth: u8,
}

impl DeviceInfo {
    /// The capacity in MiB (whole MiB, rounded down), as the log and `disk:info` show it.
    pub fn capacity_mib(&self) -> u64 {
        self.sectors.saturating_mul(u64::from(self.logical_sector_size)) >> 20
    }
}

/// Why IDENTIFY data was not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifyError {
    /// Fewer than 512 bytes.
    Short {
        /// Bytes given.
        len: usize,
    },
    /// The device reports neither 28- nor 48-bit capacity (word 49 bit 9 clear: no LBA).
    NoLba,
    /// A logical sector size that is not a multiple of 512 or above 64 KiB.
    BadSectorSize {
        /// Reported size in bytes.
        bytes: u64,
    },
}

impl fmt::Display for IdentifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IdentifyError::Short { len } => write!(f, "IDENTIFY DEVICE returned {len} bytes, expected 512"),
            IdentifyError::NoLba => {
                f.write_str("device does not support LBA addressing (IDENTIFY word 49 bit 9); not usable")
            }
            IdentifyError::BadSectorSize { bytes } => {
                write!(f, "device reports a logical sector of {bytes} bytes; only multiples of 512 up to 64 KiB work")
            }
        }
    }
}

fn word(data: &[u8], index: usize) -> u16 {
    u16::from_le_bytes([data[2 * index], data[2 * index + 1]])
}

/// An ATA string from words `first..=last`: bytes swapped in each word, trailing spaces and
/// NULs trimmed, non-printable bytes replaced by '?'.
fn ata_string(data: &[u8], first: usize, last: usize) -> String {
    let mut s = String::new();
    for w in first..=last {
        let [lo, hi] = word(data, w).to_le_bytes();
        for b in [hi, lo] {
            s.push(if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' });
        }
    }
    String::from(s.trim_end_matches([' ', '?']).trim_start())
}

/// Parses IDENTIFY DEVICE data.
pub fn parse_identify(data: &[u8]) -> Result<DeviceInfo, IdentifyError> {
    if data.len() < 512 {
        return Err(IdentifyError::Short { len: data.len() });
    }
    let lba48 = word(data, 83) & (1 << 10) != 0;
    let lba28 = u64::from(word(data, 60)) | (u64::from(word(data, 61)) << 16);
    let sectors =
        if lba48 { (0..4).fold(0u64, |acc, i| acc | (u64::from(word(data, 100 + i)) << (16 * i))) } else { lba28 };
    if word(data, 49) & (1 << 9) == 0 && sectors == 0 {
        return Err(IdentifyError::NoLba);
    }
    let w106 = word(data, 106);
    let w106_valid = w106 & (1 << 14) != 0 && w106 & (1 << 15) == 0;
    let mut logical_sector_size = 512u64;
    let mut logical_per_physical = 1;
    if w106_valid {
        if w106 & (1 << 12) != 0 {
            let words = u64::from(word(data, 117)) | (u64::from(word(data, 118)) << 16);
            logical_sector_size = words * 2;
        }
        logical_per_physical = 1u32 << (w106 & 0xF);
    }
    if logical_sector_size == 0 || logical_sector_size % 512 != 0 || logical_sector_size > 65536 {
        return Err(IdentifyError::BadSectorSize { bytes: logical_sector_size });
    }
    let ncq = word(data, 76) & (1 << 8) != 0 && word(data, 76) != 0xFFFF;
    let queue_depth = if ncq { (word(data, 75) & 0x1F) as u8 + 1 } else { 1 };
    Ok(DeviceInfo {
        model: ata_string(data, 27, 46),
        serial: ata_string(data, 10, 19),
        firmware: ata_string(data, 23, 26),
        sectors,
        lba48,
        logical_sector_size: logical_sector_size as u32,
        logical_per_physical,
        ncq,
        queue_depth,
    })
}

/// Builds IDENTIFY data (for simulations and tests): the inverse of [`parse_identify`] for the
/// fields it reads.
pub fn build_identify(info: &DeviceInfo) -> [u8; 512] {
    let mut words = [0u16; 256];
    let mut put_string = |first: usize, last: usize, s: &str| {
        let bytes = s.as_bytes();
        for (k, word) in words[first..=last].iter_mut().enumerate() {
            let hi = *bytes.get(2 * k).unwrap_or(&b' ');
            let lo = *bytes.get(2 * k + 1).unwrap_or(&b' ');
            *word = u16::from_le_bytes([lo, hi]);
        }
    };
    put_string(10, 19, &info.serial);
    put_string(23, 26, &info.firmware);
    put_string(27, 46, &info.model);
    words[49] = 1 << 9 | 1 << 8;
    let lba28 = info.sectors.min(0x0FFF_FFFF) as u32;
    words[60] = lba28 as u16;
    words[61] = (lba28 >> 16) as u16;
    if info.ncq {
        words[75] = u16::from(info.queue_depth.saturating_sub(1)) & 0x1F;
        words[76] = 1 << 8;
    }
    if info.lba48 {
        words[83] = 1 << 10;
        words[86] = 1 << 10;
        for i in 0..4 {
            words[100 + i] = (info.sectors >> (16 * i)) as u16;
        }
    }
    words[106] = 1 << 14 | (info.logical_per_physical.trailing_zeros() as u16 & 0xF);
    if info.logical_sector_size != 512 {
        words[106] |= 1 << 12;
        let w = info.logical_sector_size / 2;
        words[117] = w as u16;
        words[118] = (w >> 16) as u16;
    }
    let mut out = [0u8; 512];
    for (i, w) in words.iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&w.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceInfo {
        DeviceInfo {
            model: "QEMU HARDDISK".into(),
            serial: "QM00005".into(),
            firmware: "2.5+".into(),
            sectors: 131072,
            lba48: true,
            logical_sector_size: 512,
            logical_per_physical: 1,
            ncq: true,
            queue_depth: 32,
        }
    }

    #[test]
    fn round_trips_every_field() {
        let info = sample();
        assert_eq!(parse_identify(&build_identify(&info)), Ok(info));
    }

    #[test]
    fn strings_are_byte_swapped_per_word() {
        let data = build_identify(&sample());
        // "QE" is stored as 'E','Q' in word 27.
        assert_eq!(&data[54..56], b"EQ");
    }

    #[test]
    fn lba28_only_and_4k_sectors_and_no_ncq() {
        let mut info = sample();
        info.lba48 = false;
        info.sectors = 1000;
        info.logical_sector_size = 4096;
        info.logical_per_physical = 1;
        info.ncq = false;
        info.queue_depth = 1;
        assert_eq!(parse_identify(&build_identify(&info)), Ok(info));
    }

    #[test]
    fn rejects_short_and_garbage() {
        assert_eq!(parse_identify(&[0; 100]), Err(IdentifyError::Short { len: 100 }));
        assert_eq!(parse_identify(&[0; 512]), Err(IdentifyError::NoLba));
        let mut data = build_identify(&sample());
        data[212] = 0x01; // word 106 bit 12 set with odd words 117/118 below
        data[213] = 0x50;
        data[234] = 3;
        assert!(matches!(parse_identify(&data), Err(IdentifyError::BadSectorSize { .. })));
        // Any 512 bytes parse without panicking.
        for seed in 0..64u32 {
            let bytes: alloc::vec::Vec<u8> =
                (0..512u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8).collect();
            let _ = parse_identify(&bytes);
        }
    }
}
