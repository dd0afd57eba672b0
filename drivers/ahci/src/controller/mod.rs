//! One AHCI host bus adapter: bring-up, per-port command slots, completion and error recovery.
//!
//! # Memory the HBA reads and writes (AHCI 1.3.1 §4)
//! Per port with a disk, three kinds of structure, each from its own [`DmaPool`] so the pool's
//! alignment and boundary rules give the layout the HBA requires:
//! - a **command list** (§4.2.2): 32 command headers of 32 bytes, 1 KiB, 1 KiB aligned;
//! - a **received-FIS area** (§4.2.1): 256 bytes, 256-byte aligned, where the HBA copies the
//!   FISes the device sends;
//! - one **command table** per slot (§4.2.3): the command FIS at 0x00, the ATAPI command at
//!   0x40, and the PRDT at 0x80 — [`PRDT_ENTRIES`] entries of 16 bytes, 128-byte aligned.
//!
//! Every pool uses a 4 KiB boundary, so no structure straddles a page (one IOMMU page, one
//! contiguous run for the HBA). Data buffers are lent to the HBA with streaming scatter-gather
//! mappings ([`dma::SgMapping`]) in the direction of the transfer, and come back in the
//! [`Completion`].
//!
//! # Rules of use
//! - The controller is one object; the kernel keeps it behind a lock taken with interrupts off,
//!   and the interrupt handler takes the same lock ([`Controller::handle_interrupt`]).
//! - Nothing here sleeps or panics on device input. Every wait is bounded by the [`Clock`].
//! - A command's buffers are unmapped only once the HBA can no longer touch them: after it
//!   completed, or after the port's command engine was stopped (PxCMD.CR clear). If the engine
//!   cannot be stopped, the buffers are never unmapped or freed (quarantined).
//!
//! # Where the code lives
//! - `mod.rs`: this documentation, the layout constants, the public types ([`Controller`],
//!   [`Port`], [`Request`], [`Completion`], …) and the controller's accessors;
//! - `init.rs`: bring-up of the HBA and its ports ([`Controller::init`], `init_port`, `identify`);
//! - `submit.rs`: checking, mapping and issuing a request ([`Controller::submit_with`], `issue`);
//! - `complete.rs`: the interrupt top half ([`Controller::handle_interrupt`]), the bottom half
//!   ([`Controller::service`], `service_port`) and `complete`;
//! - `recover.rs`: error recovery (`recover`, §6.2.2), `disable_port`, `stop_engines`, `comreset`.

use crate::ata::AtaCommand;
use crate::buffer::IoBuffer;
use crate::error::{CommandError, PortError, SubmitError};
use crate::identify::DeviceInfo;
use crate::prdt::PRD_ENTRY_BYTES;
use crate::regs::{self, cap, cap2, ghc, hba, sig, ssts};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use device_io::{Clock, Registers};
use dma::{BusSegment, DmaDevice, DmaPool, FromDevice, PoolBlock, SgMapping, ToDevice};

mod complete;
mod init;
mod recover;
mod slot_view;
mod submit;

/// Bytes of one command header (§4.2.2).
pub const COMMAND_HEADER_BYTES: usize = 32;
/// Bytes of a command list: 32 headers (§4.2.2).
pub const COMMAND_LIST_BYTES: usize = 1024;
/// Bytes of a received-FIS area without FIS-based switching (§4.2.1).
pub const RECEIVED_FIS_BYTES: usize = 256;
/// Offset of the PRDT in a command table (§4.2.3).
pub const PRDT_OFFSET: usize = 0x80;
/// PRDT entries per command table: sized so one table is exactly one 4 KiB page.
pub const PRDT_ENTRIES: usize = 248;
/// Bytes of one command table.
pub const COMMAND_TABLE_BYTES: usize = PRDT_OFFSET + PRDT_ENTRIES * PRD_ENTRY_BYTES;
/// Most sectors one command moves in this driver (the 16-bit count fields, 0 excluded).
pub const MAX_SECTORS_PER_COMMAND: u64 = 65535;
/// Default per-command deadline.
pub const DEFAULT_TIMEOUT_US: u64 = 5_000_000;
/// How long PxCMD.CR/FR may take to clear (§10.1.2: 500 ms).
const ENGINE_STOP_US: u64 = 500_000;
/// How long the device may stay busy after a reset.
const DEVICE_READY_US: u64 = 2_000_000;
/// Retries granted to a command that failed (or that was outstanding when a failure could not
/// be pinned on one command). See `recover.rs` for the policy.
const RETRIES: u8 = 1;

/// Names a submitted request.
pub type RequestId = u64;

/// What the HBA can do, from CAP, CAP2, PI and VS (§3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// CAP as read.
    pub cap: u32,
    /// CAP2 as read.
    pub cap2: u32,
    /// Ports Implemented bitmap.
    pub implemented: u32,
    /// Version (major in bits 31:16).
    pub version: u32,
    /// Number of ports the HBA supports (CAP.NP + 1).
    pub ports: u8,
    /// Command slots per port (CAP.NCS + 1).
    pub slots: u8,
    /// 64-bit addressing (CAP.S64A).
    pub addr64: bool,
    /// Native command queuing (CAP.SNCQ).
    pub ncq: bool,
    /// Staggered spin-up (CAP.SSS).
    pub staggered_spin_up: bool,
    /// BIOS/OS handoff (CAP2.BOH).
    pub bios_handoff: bool,
}

impl Capabilities {
    /// Decodes the registers.
    pub fn decode(cap_reg: u32, cap2_reg: u32, implemented: u32, version: u32) -> Capabilities {
        Capabilities {
            cap: cap_reg,
            cap2: cap2_reg,
            implemented,
            version,
            ports: (cap_reg & cap::NP_MASK) as u8 + 1,
            slots: ((cap_reg >> cap::NCS_SHIFT) & 0x1F) as u8 + 1,
            addr64: cap_reg & cap::S64A != 0,
            ncq: cap_reg & cap::SNCQ != 0,
            staggered_spin_up: cap_reg & cap::SSS != 0,
            bios_handoff: cap2_reg & cap2::BOH != 0,
        }
    }
}

/// What sits on a port, from PxSIG (§3.3.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// An ATA disk.
    Ata,
    /// An ATAPI device.
    Atapi,
    /// An enclosure management bridge.
    EnclosureBridge,
    /// A port multiplier.
    PortMultiplier,
    /// Anything else.
    Unknown(u32),
}

impl DeviceKind {
    /// Decodes PxSIG.
    pub fn from_signature(signature: u32) -> DeviceKind {
        match signature {
            sig::ATA => DeviceKind::Ata,
            sig::ATAPI => DeviceKind::Atapi,
            sig::SEMB => DeviceKind::EnclosureBridge,
            sig::PM => DeviceKind::PortMultiplier,
            other => DeviceKind::Unknown(other),
        }
    }
}

/// A request for one port.
#[derive(Debug)]
pub enum Request {
    /// Read `buffers.len()` bytes (a whole number of sectors) starting at `lba`.
    Read {
        /// First sector.
        lba: u64,
        /// Where the data goes, in order.
        buffers: Vec<IoBuffer>,
    },
    /// Write the buffers' bytes starting at `lba`.
    Write {
        /// First sector.
        lba: u64,
        /// The data, in order.
        buffers: Vec<IoBuffer>,
    },
    /// FLUSH CACHE EXT.
    Flush,
    /// IDENTIFY DEVICE into a 512-byte buffer.
    Identify {
        /// 512 bytes.
        buffer: IoBuffer,
    },
}

/// How to send a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubmitOptions {
    /// Use NCQ (READ/WRITE FPDMA QUEUED) when the HBA and the device support it.
    pub queued: bool,
    /// Deadline after issue.
    pub timeout_us: u64,
    /// Refuse ranges past the end of the disk. Only tests that provoke device errors clear it.
    pub check_range: bool,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        SubmitOptions { queued: true, timeout_us: DEFAULT_TIMEOUT_US, check_range: true }
    }
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The request.
    pub id: RequestId,
    /// Its port.
    pub port: u8,
    /// The command that was sent.
    pub command: AtaCommand,
    /// Success, or why not.
    pub result: Result<(), CommandError>,
    /// The buffers, given back (empty if they had to be quarantined).
    pub buffers: Vec<IoBuffer>,
    /// Bytes the HBA reports having moved (PRDBC, §4.2.2; not updated for NCQ by every HBA).
    pub bytes_transferred: u32,
    /// How often it was re-issued after another command's error.
    pub retries: u8,
    /// Microseconds from submission to completion.
    pub latency_us: u64,
}

/// Counters of one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Commands handed to the HBA (re-issues included).
    pub issued: u64,
    /// Commands completed successfully.
    pub completed: u64,
    /// Commands that failed.
    pub failed: u64,
    /// Re-issues after an error.
    pub retried: u64,
    /// Error recoveries run (§6.2.2).
    pub recoveries: u64,
    /// Commands that timed out.
    pub timeouts: u64,
    /// COMRESETs sent.
    pub comresets: u64,
    /// Most commands outstanding at once.
    pub max_outstanding: u32,
    /// Sectors read.
    pub sectors_read: u64,
    /// Sectors written.
    pub sectors_written: u64,
    /// Data commands whose buffers came from this device's I/O arena: already mapped, so
    /// submitted and completed without a mapping call or an IOTLB invalidation.
    pub premapped: u64,
    /// Data commands whose buffers needed a streaming mapping (and, behind an IOMMU, the
    /// strict unmap with its invalidation at completion).
    pub mapped: u64,
}

enum DataMapping {
    None,
    FromDevice(SgMapping<IoBuffer, FromDevice>),
    ToDevice(SgMapping<IoBuffer, ToDevice>),
    /// Buffers from this device's own I/O arena ([`dma::arena`]): mapped for it for the
    /// arena's whole life, so there is nothing to map now or to unmap at completion.
    Premapped {
        buffers: Vec<IoBuffer>,
        segments: Vec<BusSegment>,
    },
}

impl DataMapping {
    fn segments(&self) -> &[BusSegment] {
        match self {
            DataMapping::None => &[],
            DataMapping::FromDevice(m) => m.segments(),
            DataMapping::ToDevice(m) => m.segments(),
            DataMapping::Premapped { segments, .. } => segments,
        }
    }

    /// The premapped form of `buffers`, if every one of them is an arena buffer of `dev`
    /// (reachable by it at its bus address now); otherwise the buffers back.
    fn premapped(buffers: Vec<IoBuffer>, dev: &dma::DmaDevice) -> Result<DataMapping, Vec<IoBuffer>> {
        let mut segments = Vec::with_capacity(buffers.len());
        for b in &buffers {
            match b {
                IoBuffer::Arena(a) if a.is_for(dev) => segments.push(BusSegment { bus: a.bus_addr(), len: a.len() }),
                _ => return Err(buffers),
            }
        }
        Ok(DataMapping::Premapped { buffers, segments })
    }

    fn unmap(self) -> Vec<IoBuffer> {
        match self {
            DataMapping::None => Vec::new(),
            DataMapping::FromDevice(m) => m.unmap(),
            DataMapping::ToDevice(m) => m.unmap(),
            DataMapping::Premapped { buffers, .. } => {
                // The device's writes are done (the command completed): order the CPU's reads
                // of the data after that observation, as a streaming sync would.
                core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
                buffers
            }
        }
    }
}

struct InFlight {
    id: RequestId,
    command: AtaCommand,
    mapping: DataMapping,
    submitted_at: u64,
    issued_at: u64,
    timeout_us: u64,
    retries_left: u8,
    retries: u8,
}

/// One port with an ATA disk, and the structures the HBA uses for it.
pub struct Port {
    number: u8,
    info: Option<DeviceInfo>,
    command_list: PoolBlock,
    received_fis: PoolBlock,
    tables: Vec<PoolBlock>,
    /// A command table of its own for READ LOG EXT during recovery, so reading the NCQ error
    /// log never overwrites an outstanding command's table.
    log_table: PoolBlock,
    slots: Vec<Option<InFlight>>,
    /// Slots handed to the HBA and not yet completed.
    issued: u32,
    /// The subset of `issued` that are NCQ commands.
    queued: u32,
    /// Slots waiting to be re-issued, one at a time, after an error.
    retry_queue: VecDeque<u8>,
    disabled: bool,
    /// NCQ tags usable (0: no NCQ).
    ncq_depth: u8,
    /// PxIS bits the interrupt handler read and cleared, not yet acted on by
    /// [`Controller::service`] (the top half's note to the bottom half).
    pending_is: u32,
    stats: PortStats,
}

impl Port {
    /// The port number (0..32).
    pub fn number(&self) -> u8 {
        self.number
    }
    /// The disk, once identified.
    pub fn info(&self) -> Option<&DeviceInfo> {
        self.info.as_ref()
    }
    /// Counters.
    pub fn stats(&self) -> PortStats {
        self.stats
    }
    /// Commands outstanding now.
    pub fn outstanding(&self) -> u32 {
        self.issued.count_ones() + self.retry_queue.len() as u32
    }
    /// NCQ depth used (0 when NCQ is off).
    pub fn ncq_depth(&self) -> u8 {
        self.ncq_depth
    }
    /// Whether recovery failed and the port is out of service.
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }
    /// Command slots.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }
    /// The slot a new command would get, or why none can be had now: a queued command needs a
    /// free NCQ tag (tags are slot numbers below the device's queue depth) and no non-queued
    /// command outstanding; a non-queued command needs a free slot and no queued command
    /// outstanding (SATA 3.x §13.6.1); nothing new while commands are re-issued after an error.
    fn free_slot(&self, queued: bool) -> Result<u8, SubmitError> {
        if self.disabled {
            return Err(SubmitError::PortDisabled { port: self.number });
        }
        if !self.retry_queue.is_empty() {
            return Err(SubmitError::Busy { reason: "re-issuing commands after an error" });
        }
        if queued && self.issued & !self.queued != 0 {
            return Err(SubmitError::Busy { reason: "a non-queued command is outstanding" });
        }
        if !queued && self.queued != 0 {
            return Err(SubmitError::Busy { reason: "queued (NCQ) commands are outstanding" });
        }
        let usable = if queued { usize::from(self.ncq_depth) } else { self.slots.len() };
        (0..usable)
            .find(|&s| self.slots[s].is_none())
            .map(|s| s as u8)
            .ok_or(SubmitError::QueueFull { outstanding: self.issued.count_ones() })
    }

    /// Bus addresses of the command list, received-FIS area and slot 0's command table.
    pub fn structure_addresses(&self) -> (u64, u64, u64) {
        (
            self.command_list.bus_addr().as_u64(),
            self.received_fis.bus_addr().as_u64(),
            self.tables.first().map_or(0, |t| t.bus_addr().as_u64()),
        )
    }
}

/// A port's register block.
struct PortRegs<'a, R: Registers> {
    regs: &'a R,
    base: usize,
}

impl<'a, R: Registers> PortRegs<'a, R> {
    fn new(regs: &'a R, port: u8) -> Self {
        PortRegs { regs, base: regs::port_base(port) }
    }
    fn read(&self, offset: usize) -> u32 {
        self.regs.read32(self.base + offset)
    }
    fn write(&self, offset: usize, value: u32) {
        self.regs.write32(self.base + offset, value)
    }
    fn set(&self, offset: usize, bits: u32) {
        self.write(offset, self.read(offset) | bits)
    }
    fn clear(&self, offset: usize, bits: u32) {
        self.write(offset, self.read(offset) & !bits)
    }
}

fn device_present(ssts_reg: u32) -> bool {
    ssts_reg & 0xF == ssts::DET_PRESENT && (ssts_reg >> 8) & 0xF == ssts::IPM_ACTIVE
}

/// Why the port is being recovered.
#[derive(Clone, Copy, Debug)]
enum Cause {
    /// PxIS error bits.
    Error { port_is: u32 },
    /// The command in this slot missed its deadline.
    Timeout { slot: u8 },
}

fn put(block: &mut PoolBlock, offset: usize, value: u32) {
    if let Err(e) = block.write::<u32>(offset, value) {
        log::error!("ahci: structure write at {offset:#x} out of bounds ({e:?}); driver bug");
    }
}

fn bits(mask: u32) -> impl Iterator<Item = u8> {
    (0..32u8).filter(move |b| mask & (1 << b) != 0)
}

/// One HBA. See the module documentation.
pub struct Controller<R: Registers, C: Clock> {
    name: String,
    regs: R,
    clock: C,
    // Ports are declared before the pools so their blocks are freed first when dropped.
    ports: Vec<Port>,
    skipped: Vec<(u8, PortError)>,
    command_lists: DmaPool,
    received_fis: DmaPool,
    command_tables: DmaPool,
    dev: DmaDevice,
    caps: Capabilities,
    completions: BTreeMap<RequestId, Completion>,
    next_id: RequestId,
    interrupts: u64,
}

impl<R: Registers, C: Clock> Controller<R, C> {
    /// The name given at init.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the HBA can do.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The DMA handle.
    pub fn dma_device(&self) -> &DmaDevice {
        &self.dev
    }

    /// Ports with a usable disk.
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// The port numbered `n`, if it has a usable disk.
    pub fn port(&self, n: u8) -> Option<&Port> {
        self.ports.iter().find(|p| p.number == n)
    }

    /// Implemented ports that were skipped, and why.
    pub fn skipped_ports(&self) -> &[(u8, PortError)] {
        &self.skipped
    }

    /// Interrupts that found work for this HBA.
    pub fn interrupt_count(&self) -> u64 {
        self.interrupts
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Lets the HBA raise its interrupt (GHC.IE, §3.1.2). Port interrupt enables are already
    /// programmed.
    pub fn enable_interrupts(&mut self) {
        self.regs.set_bits(hba::GHC, ghc::IE);
    }

    /// Stops the HBA's interrupt (polling only from now on).
    pub fn disable_interrupts(&mut self) {
        self.regs.clear_bits(hba::GHC, ghc::IE);
    }
}
