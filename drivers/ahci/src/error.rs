//! What can go wrong, in terms a caller can act on.

use crate::ata::{CommandKind, NcqErrorLog, TaskFile, describe_port_is};
use crate::identify::IdentifyError;
use crate::prdt::PrdtError;
use core::fmt;

/// Why a controller could not be brought up (AHCI 1.3.1 §10.1.2, §10.4.3, §10.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The BIOS kept ownership: BOHC.BOS did not clear within 2 s of setting OOS (§10.6.3).
    HandoffTimeout,
    /// GHC.HR did not clear within 1 s: the HBA did not finish its reset (§10.4.3).
    ResetTimeout,
    /// Reading CAP gave all ones: the register block does not answer (BAR not decoded?).
    NotResponding,
    /// The DMA service refused the device's mask.
    DmaMask(dma::MaskError),
    /// A DMA pool could not be created.
    Pool(dma::PoolError),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::HandoffTimeout => {
                f.write_str("the BIOS did not release the HBA (BOHC.BOS still set after 2 s); disable legacy SATA in firmware setup")
            }
            InitError::ResetTimeout => f.write_str("HBA reset (GHC.HR) did not complete within 1 s; the controller is unusable"),
            InitError::NotResponding => f.write_str("ABAR reads all ones; is BAR5 mapped and memory decoding on?"),
            InitError::DmaMask(e) => write!(f, "cannot set the DMA mask: {e}"),
            InitError::Pool(e) => write!(f, "cannot create a DMA pool: {e}"),
        }
    }
}

/// Why a port could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortError {
    /// No device: PxSSTS.DET is not 3 (present, PHY up) with IPM 1 (active).
    NoDevice {
        /// PxSSTS.
        ssts: u32,
    },
    /// PxCMD.CR or FR did not clear within 500 ms after clearing ST/FRE (§10.1.2), even after
    /// COMRESET.
    EngineWillNotStop,
    /// The device stayed busy (PxTFD.BSY/DRQ) after reset.
    DeviceBusy {
        /// PxTFD.
        tfd: u32,
    },
    /// Command structures could not be allocated.
    NoMemory(dma::AllocError),
    /// Not an ATA disk (ATAPI, enclosure bridge, port multiplier): this driver leaves it alone.
    Unsupported {
        /// PxSIG.
        signature: u32,
    },
    /// IDENTIFY DEVICE failed.
    Identify(CommandError),
    /// IDENTIFY data was not usable.
    BadIdentify(IdentifyError),
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortError::NoDevice { ssts } => write!(f, "no device (PxSSTS {ssts:#x}: DET!=3 or IPM!=1)"),
            PortError::EngineWillNotStop => {
                f.write_str("command engine did not stop (PxCMD.CR/FR stuck after 500 ms and COMRESET); port disabled")
            }
            PortError::DeviceBusy { tfd } => {
                write!(f, "device stayed busy after reset (PxTFD {tfd:#x}); port disabled")
            }
            PortError::NoMemory(e) => write!(f, "cannot allocate command structures: {e}"),
            PortError::Unsupported { signature } => {
                write!(f, "device signature {signature:#010x} is not an ATA disk; left alone")
            }
            PortError::Identify(e) => write!(f, "IDENTIFY DEVICE failed: {e}"),
            PortError::BadIdentify(e) => write!(f, "{e}"),
        }
    }
}

/// A request refused before anything was sent to the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// No implemented port with that number, or no usable disk on it.
    NoDisk {
        /// The port asked for.
        port: u8,
    },
    /// The port failed recovery and is disabled.
    PortDisabled {
        /// The port.
        port: u8,
    },
    /// A read or write of zero bytes.
    ZeroLength,
    /// The buffers are not a whole number of logical sectors.
    Misaligned {
        /// Total bytes given.
        bytes: usize,
        /// The disk's logical sector size.
        sector_size: u32,
    },
    /// A buffer of odd length or at an odd address: AHCI moves whole 16-bit words (§4.2.3.3).
    Prdt(PrdtError),
    /// The range runs past the last sector.
    PastEnd {
        /// First sector asked for.
        lba: u64,
        /// Sectors asked for.
        count: u64,
        /// The disk's size in sectors.
        capacity: u64,
    },
    /// More sectors than one command moves (65,535).
    TooLarge {
        /// Sectors asked for.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// Every usable slot (or NCQ tag) is in use; wait for a completion and resubmit.
    QueueFull {
        /// Commands outstanding.
        outstanding: u32,
    },
    /// A queued and a non-queued command cannot be outstanding together (SATA 3.x §13.6.1), or
    /// the port is re-issuing commands after an error; wait for the queue to drain.
    Busy {
        /// What the port is doing.
        reason: &'static str,
    },
    /// The buffers could not be mapped for DMA.
    Map(dma::MapError),
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::NoDisk { port } => write!(f, "no usable disk on port {port}"),
            SubmitError::PortDisabled { port } => {
                write!(f, "port {port} failed error recovery and is disabled; reset the controller")
            }
            SubmitError::ZeroLength => f.write_str("zero-length request refused; ask for at least one sector"),
            SubmitError::Misaligned { bytes, sector_size } => {
                write!(f, "{bytes} bytes is not a whole number of {sector_size}-byte sectors; request refused")
            }
            SubmitError::Prdt(e) => write!(f, "request refused: {e}"),
            SubmitError::PastEnd { lba, count, capacity } => write!(
                f,
                "sectors {lba}..{} run past the end of the disk ({capacity} sectors); request refused",
                lba.saturating_add(*count)
            ),
            SubmitError::TooLarge { count, max } => {
                write!(f, "{count} sectors in one command; the limit is {max}, split the request")
            }
            SubmitError::QueueFull { outstanding } => {
                write!(f, "queue full ({outstanding} commands outstanding); wait for a completion")
            }
            SubmitError::Busy { reason } => write!(f, "port busy: {reason}; retry after completions"),
            SubmitError::Map(e) => write!(f, "cannot map the buffers for DMA: {e}"),
        }
    }
}

/// Why a command that was sent did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The device reported an error (PxIS.TFES with PxTFD.ERR): its status and error registers
    /// say why (for example IDNF for an address it does not have).
    Device {
        /// Port.
        port: u8,
        /// The failed command.
        command: CommandKind,
        /// First LBA of the command.
        lba: u64,
        /// The device's registers.
        task_file: TaskFile,
        /// PxIS at the time.
        port_is: u32,
    },
    /// The HBA or the link failed (PxIS.HBFS/HBDS/IFS/INFS/OFS/UFS; PxSERR has details).
    Interface {
        /// Port.
        port: u8,
        /// The failed command.
        command: CommandKind,
        /// PxIS at the time.
        port_is: u32,
        /// PxSERR at the time.
        serr: u32,
    },
    /// No completion before the command's deadline; the port was reset.
    Timeout {
        /// Port.
        port: u8,
        /// The command.
        command: CommandKind,
        /// First LBA.
        lba: u64,
        /// The deadline it missed, in microseconds after issue.
        after_us: u64,
    },
    /// A queued (NCQ) command that the device's NCQ Command Error log (log 10h) names as the
    /// one that failed, after its retry failed too.
    Queued {
        /// Port.
        port: u8,
        /// The failed command.
        command: CommandKind,
        /// First LBA of the command.
        lba: u64,
        /// What the device's log says: tag, failing LBA, status and error.
        log: NcqErrorLog,
    },
    /// The device's NCQ Command Error log could not be matched to the commands outstanding
    /// (NQ=1 while only queued commands were outstanding, or a tag that was not outstanding),
    /// so no command can be trusted and every outstanding one fails.
    UnmatchedNcqLog {
        /// Port.
        port: u8,
        /// This command.
        command: CommandKind,
        /// Its first LBA.
        lba: u64,
        /// The log as read.
        log: NcqErrorLog,
    },
    /// The command was outstanding when another one failed, and its retry also failed (or the
    /// port could not be recovered).
    Aborted {
        /// Port.
        port: u8,
        /// The command.
        command: CommandKind,
        /// Why.
        reason: &'static str,
    },
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Device { port, command, lba, task_file, port_is } => write!(
                f,
                "port {port}: {command} at LBA {lba} failed: device {task_file} (PxIS: {})",
                describe_port_is(*port_is)
            ),
            CommandError::Interface { port, command, port_is, serr } => write!(
                f,
                "port {port}: {command} failed in the HBA or link: {} (PxSERR {serr:#x})",
                describe_port_is(*port_is)
            ),
            CommandError::Timeout { port, command, lba, after_us } => write!(
                f,
                "port {port}: {command} at LBA {lba} did not complete within {} ms; port reset",
                after_us / 1000
            ),
            CommandError::Queued { port, command, lba, log } => write!(
                f,
                "port {port}: {command} at LBA {lba} failed (NCQ error log: tag {}, failing LBA {}, device {})",
                log.tag, log.lba, log.task_file
            ),
            CommandError::UnmatchedNcqLog { port, command, lba, log } => write!(
                f,
                "port {port}: {command} at LBA {lba} failed: the NCQ error log ({log}) names no outstanding queued \
                 command, so every outstanding command is failed"
            ),
            CommandError::Aborted { port, command, reason } => write!(f, "port {port}: {command} aborted: {reason}"),
        }
    }
}
