//! ATA commands (ATA8-ACS §7) and the Register Host-to-Device FIS that carries them
//! (Serial ATA 3.x §10.3.4, AHCI 1.3.1 §4.2.3.1 "Command FIS").

use core::fmt;

/// ATA command opcodes used by this driver (ATA8-ACS §7).
pub mod opcode {
    /// READ DMA EXT (§7.25): LBA48, up to 65,536 sectors.
    pub const READ_DMA_EXT: u8 = 0x25;
    /// WRITE DMA EXT (§7.60).
    pub const WRITE_DMA_EXT: u8 = 0x35;
    /// FLUSH CACHE EXT (§7.11): the device writes its volatile cache to the medium.
    pub const FLUSH_CACHE_EXT: u8 = 0xEA;
    /// IDENTIFY DEVICE (§7.16): 512 bytes of PIO data-in describing the device.
    pub const IDENTIFY_DEVICE: u8 = 0xEC;
    /// READ FPDMA QUEUED (§7.28): an NCQ read, tag in COUNT(7:3).
    pub const READ_FPDMA_QUEUED: u8 = 0x60;
    /// WRITE FPDMA QUEUED (§7.62): an NCQ write.
    pub const WRITE_FPDMA_QUEUED: u8 = 0x61;
    /// READ LOG EXT (ACS-3 §7.23): 512-byte pages of a General Purpose Log, PIO data-in; log
    /// address in LBA(7:0), page in LBA(15:8), page count in COUNT.
    pub const READ_LOG_EXT: u8 = 0x2F;
}

/// Log address of the NCQ Command Error log (ACS-3 §9.13, SATA 3.x §13.7.4).
pub const LOG_NCQ_COMMAND_ERROR: u8 = 0x10;

/// FIS type of a Register Host-to-Device FIS (SATA §10.3.4).
pub const FIS_TYPE_REG_H2D: u8 = 0x27;
/// Length of a Register H2D FIS in bytes (5 DWORDs: the command header's CFL).
pub const H2D_FIS_LEN: usize = 20;
/// DEVICE register bit 6: the LBA field holds a logical block address.
const DEVICE_LBA: u8 = 1 << 6;

/// What one command does, as the driver tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// IDENTIFY DEVICE.
    Identify,
    /// READ DMA EXT.
    ReadDmaExt,
    /// WRITE DMA EXT.
    WriteDmaExt,
    /// FLUSH CACHE EXT.
    FlushCacheExt,
    /// READ FPDMA QUEUED (NCQ).
    ReadFpdmaQueued,
    /// WRITE FPDMA QUEUED (NCQ).
    WriteFpdmaQueued,
    /// READ LOG EXT: the `lba` field holds the log address (bits 7:0) and page (bits 15:8).
    ReadLogExt,
}

impl CommandKind {
    /// The ATA opcode.
    pub fn opcode(self) -> u8 {
        match self {
            CommandKind::Identify => opcode::IDENTIFY_DEVICE,
            CommandKind::ReadDmaExt => opcode::READ_DMA_EXT,
            CommandKind::WriteDmaExt => opcode::WRITE_DMA_EXT,
            CommandKind::FlushCacheExt => opcode::FLUSH_CACHE_EXT,
            CommandKind::ReadFpdmaQueued => opcode::READ_FPDMA_QUEUED,
            CommandKind::WriteFpdmaQueued => opcode::WRITE_FPDMA_QUEUED,
            CommandKind::ReadLogExt => opcode::READ_LOG_EXT,
        }
    }

    /// Whether this is a native-command-queuing command (tracked in PxSACT).
    pub fn is_queued(self) -> bool {
        matches!(self, CommandKind::ReadFpdmaQueued | CommandKind::WriteFpdmaQueued)
    }

    /// Whether data flows host → device (the command header's W bit, AHCI §4.2.2).
    pub fn writes_to_device(self) -> bool {
        matches!(self, CommandKind::WriteDmaExt | CommandKind::WriteFpdmaQueued)
    }

    /// Whether the command moves data at all.
    pub fn has_data(self) -> bool {
        !matches!(self, CommandKind::FlushCacheExt)
    }

    /// The ATA name, for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Identify => "IDENTIFY DEVICE",
            CommandKind::ReadDmaExt => "READ DMA EXT",
            CommandKind::WriteDmaExt => "WRITE DMA EXT",
            CommandKind::FlushCacheExt => "FLUSH CACHE EXT",
            CommandKind::ReadFpdmaQueued => "READ FPDMA QUEUED",
            CommandKind::WriteFpdmaQueued => "WRITE FPDMA QUEUED",
            CommandKind::ReadLogExt => "READ LOG EXT",
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One ATA command with its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtaCommand {
    /// Which command.
    pub kind: CommandKind,
    /// First logical block (0 for commands without an LBA).
    pub lba: u64,
    /// Number of logical blocks (0 for commands without a count; 1..=65535 otherwise).
    pub count: u32,
    /// NCQ tag (the command slot) for queued commands.
    pub tag: u8,
}

impl AtaCommand {
    /// The Register H2D FIS for this command (SATA §10.3.4; layout in AHCI §4.2.3.1).
    ///
    /// - DMA EXT commands: LBA48 in LBA(47:0), the sector count in COUNT(15:0) (ATA8-ACS §7.25).
    /// - FPDMA QUEUED commands: the sector count moves to FEATURE(15:0) and the NCQ tag to
    ///   COUNT(7:3) (ATA8-ACS §7.28.1).
    pub fn to_fis(&self) -> [u8; H2D_FIS_LEN] {
        let mut fis = [0u8; H2D_FIS_LEN];
        fis[0] = FIS_TYPE_REG_H2D;
        fis[1] = 1 << 7; // C: this FIS carries a command (not a device control update)
        fis[2] = self.kind.opcode();
        let lba = self.lba.to_le_bytes();
        let uses_lba = !matches!(self.kind, CommandKind::Identify | CommandKind::FlushCacheExt);
        if uses_lba {
            fis[4] = lba[0];
            fis[5] = lba[1];
            fis[6] = lba[2];
            fis[8] = lba[3];
            fis[9] = lba[4];
            fis[10] = lba[5];
            fis[7] = DEVICE_LBA;
        }
        let count = (self.count as u16).to_le_bytes();
        if self.kind.is_queued() {
            fis[3] = count[0]; // FEATURE(7:0)
            fis[11] = count[1]; // FEATURE(15:8)
            fis[12] = self.tag << 3; // COUNT(7:3) = NCQ tag
        } else if uses_lba {
            fis[12] = count[0];
            fis[13] = count[1];
        }
        fis
    }
}

/// The device's ATA status and error registers after a failed command (PxTFD, AHCI §3.3.8;
/// the error bits are ATA8-ACS §6.2 and §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskFile {
    /// STATUS: BSY(7) DRDY(6) DF(5) DRQ(3) ERR(0).
    pub status: u8,
    /// ERROR: ICRC(7) UNC(6) IDNF(4) ABRT(2).
    pub error: u8,
}

impl TaskFile {
    /// Decodes PxTFD.
    pub fn from_tfd(tfd: u32) -> TaskFile {
        TaskFile { status: tfd as u8, error: (tfd >> 8) as u8 }
    }
}

impl fmt::Display for TaskFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "status {:#04x}", self.status)?;
        for (bit, name) in [(7, "BSY"), (6, "DRDY"), (5, "DF"), (3, "DRQ"), (0, "ERR")] {
            if self.status & (1 << bit) != 0 {
                write!(f, " {name}")?;
            }
        }
        write!(f, ", error {:#04x}", self.error)?;
        let meanings = [
            (7, "ICRC (interface CRC error)"),
            (6, "UNC (uncorrectable data)"),
            (4, "IDNF (address not found: LBA out of range)"),
            (2, "ABRT (command aborted: unsupported or invalid)"),
        ];
        for (bit, name) in meanings {
            if self.error & (1 << bit) != 0 {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

/// Names the PxIS bits that are set, for error reports.
pub fn describe_port_is(is: u32) -> alloc::string::String {
    use crate::regs::is as bits;
    let names = [
        (bits::TFES, "TFES task-file error"),
        (bits::HBFS, "HBFS host-bus fatal error"),
        (bits::HBDS, "HBDS host-bus data error"),
        (bits::IFS, "IFS interface fatal error"),
        (bits::INFS, "INFS interface non-fatal error"),
        (bits::OFS, "OFS overflow"),
        (bits::UFS, "UFS unknown FIS"),
        (bits::PCS, "PCS port connect change"),
        (bits::PRCS, "PRCS PhyRdy change"),
    ];
    let mut out = alloc::string::String::new();
    for (bit, name) in names {
        if is & bit != 0 {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(name);
        }
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

/// Page 0 of the NCQ Command Error log (log address 10h; ACS-3 §9.13, SATA 3.x §13.7.4), which
/// a device keeps after a queued command fails. Reading it is also how the host leaves the
/// device's error state: until then the device aborts every new queued command, and it has
/// already aborted every command that was outstanding (ACS-3 §4.20.3).
///
/// Layout: byte 0 = NQ (bit 7) and TAG (bits 4:0); byte 2 = STATUS; byte 3 = ERROR; bytes 4–6
/// and 8–10 = LBA(47:0); byte 7 = DEVICE; bytes 12–13 = COUNT; byte 511 = checksum (the 512
/// bytes sum to 0 modulo 256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NcqErrorLog {
    /// NQ: the error was in a *non-queued* command, so TAG means nothing.
    pub non_queued: bool,
    /// The tag of the queued command that failed.
    pub tag: u8,
    /// The device's status and error registers for that command.
    pub task_file: TaskFile,
    /// The LBA the device was at when the command failed (the failing sector).
    pub lba: u64,
    /// COUNT as the device reports it.
    pub count: u16,
}

/// Why a log page could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogPageError {
    /// Fewer than 512 bytes.
    Short(usize),
    /// The bytes do not sum to 0 modulo 256 (byte 511 is the checksum).
    Checksum(u8),
}

impl fmt::Display for LogPageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogPageError::Short(n) => write!(f, "log page has {n} bytes, not 512"),
            LogPageError::Checksum(sum) => write!(f, "log page checksum wrong (bytes sum to {sum:#04x}, not 0)"),
        }
    }
}

impl NcqErrorLog {
    /// Decodes page 0 of log 10h, checking its checksum.
    pub fn parse(page: &[u8]) -> Result<NcqErrorLog, LogPageError> {
        let page = page.get(..512).ok_or(LogPageError::Short(page.len()))?;
        let sum = page.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        if sum != 0 {
            return Err(LogPageError::Checksum(sum));
        }
        let lba = u64::from_le_bytes([page[4], page[5], page[6], page[8], page[9], page[10], 0, 0]);
        Ok(NcqErrorLog {
            non_queued: page[0] & 0x80 != 0,
            tag: page[0] & 0x1F,
            task_file: TaskFile { status: page[2], error: page[3] },
            lba,
            count: u16::from_le_bytes([page[12], page[13]]),
        })
    }

    /// The page a device would return for this entry (checksum included): what the simulated
    /// device sends, and what the tests parse.
    pub fn to_page(&self) -> [u8; 512] {
        let mut page = [0u8; 512];
        page[0] = (self.tag & 0x1F) | if self.non_queued { 0x80 } else { 0 };
        page[2] = self.task_file.status;
        page[3] = self.task_file.error;
        let lba = self.lba.to_le_bytes();
        page[4..7].copy_from_slice(&lba[..3]);
        page[7] = DEVICE_LBA;
        page[8..11].copy_from_slice(&lba[3..6]);
        page[12..14].copy_from_slice(&self.count.to_le_bytes());
        let sum = page[..511].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        page[511] = 0u8.wrapping_sub(sum);
        page
    }
}

impl fmt::Display for NcqErrorLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.non_queued {
            write!(f, "NQ=1 (a non-queued command failed), {}", self.task_file)
        } else {
            write!(f, "tag {} failed at LBA {}, {}", self.tag, self.lba, self.task_file)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_dma_ext_fis_layout() {
        let fis = AtaCommand { kind: CommandKind::ReadDmaExt, lba: 0x0102_0304_0506, count: 0x0708, tag: 0 }.to_fis();
        assert_eq!(fis[0], 0x27);
        assert_eq!(fis[1], 0x80);
        assert_eq!(fis[2], 0x25);
        assert_eq!([fis[4], fis[5], fis[6], fis[8], fis[9], fis[10]], [6, 5, 4, 3, 2, 1]);
        assert_eq!(fis[7], 0x40);
        assert_eq!([fis[12], fis[13]], [8, 7]);
        assert_eq!([fis[3], fis[11]], [0, 0]);
    }

    #[test]
    fn fpdma_fis_puts_count_in_features_and_tag_in_count() {
        let fis = AtaCommand { kind: CommandKind::WriteFpdmaQueued, lba: 9, count: 0x0203, tag: 31 }.to_fis();
        assert_eq!(fis[2], 0x61);
        assert_eq!([fis[3], fis[11]], [3, 2]);
        assert_eq!(fis[12], 31 << 3);
        assert_eq!(fis[13], 0);
        assert_eq!(fis[4], 9);
    }

    #[test]
    fn ncq_error_log_round_trips_and_checks_its_checksum() {
        let entry = NcqErrorLog {
            non_queued: false,
            tag: 17,
            task_file: TaskFile { status: 0x41, error: 0x40 },
            lba: 0x0000_0102_0304_0506,
            count: 8,
        };
        let mut page = entry.to_page();
        assert_eq!(page[0], 17);
        assert_eq!([page[4], page[5], page[6], page[8], page[9], page[10]], [6, 5, 4, 3, 2, 1]);
        assert_eq!(NcqErrorLog::parse(&page), Ok(entry));
        page[0] |= 0x80;
        assert!(matches!(NcqErrorLog::parse(&page), Err(LogPageError::Checksum(0x80))));
        page[511] = page[511].wrapping_sub(0x80);
        assert!(NcqErrorLog::parse(&page).unwrap().non_queued);
        assert_eq!(NcqErrorLog::parse(&page[..100]), Err(LogPageError::Short(100)));
    }

    #[test]
    fn read_log_ext_fis_carries_log_address_and_page_count() {
        let fis = AtaCommand { kind: CommandKind::ReadLogExt, lba: 0x10, count: 1, tag: 0 }.to_fis();
        assert_eq!((fis[2], fis[4], fis[5], fis[12], fis[13]), (0x2F, 0x10, 0, 1, 0));
    }

    #[test]
    fn task_file_names_error_bits() {
        let tf = TaskFile::from_tfd(0x1051);
        let text = alloc::format!("{tf}");
        assert!(text.contains("ERR") && text.contains("IDNF"), "{text}");
    }
}
