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

use crate::ata::{AtaCommand, CommandKind, TaskFile};
use crate::buffer::IoBuffer;
use crate::error::{CommandError, InitError, PortError, SubmitError};
use crate::identify::{DeviceInfo, parse_identify};
use crate::prdt::{MAX_PRD_BYTES, PRD_ENTRY_BYTES, build_prdt};
use crate::regs::{self, bohc, cap, cap2, cmd, ghc, hba, is, port as preg, sig, ssts, tfd};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use device_io::{Clock, Registers};
use dma::{BusSegment, DmaDevice, DmaPool, FromDevice, PoolBlock, SgMapping, ToDevice};

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
/// Retries granted to a command that was outstanding when another one failed.
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
}

enum DataMapping {
    None,
    FromDevice(SgMapping<IoBuffer, FromDevice>),
    ToDevice(SgMapping<IoBuffer, ToDevice>),
}

impl DataMapping {
    fn segments(&self) -> &[BusSegment] {
        match self {
            DataMapping::None => &[],
            DataMapping::FromDevice(m) => m.segments(),
            DataMapping::ToDevice(m) => m.segments(),
        }
    }

    fn unmap(self) -> Vec<IoBuffer> {
        match self {
            DataMapping::None => Vec::new(),
            DataMapping::FromDevice(m) => m.unmap(),
            DataMapping::ToDevice(m) => m.unmap(),
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
    /// Brings the HBA up (AHCI 1.3.1 §10.1.2) and every port with an ATA disk on it:
    /// 1. BIOS/OS handoff when CAP2.BOH is set (§10.6.3);
    /// 2. GHC.AE, then HBA reset through GHC.HR (§10.4.3), then GHC.AE again;
    /// 3. CAP and PI decide the ports and slots; CAP.S64A decides the DMA mask (64 or 32 bits);
    /// 4. per implemented port: device detection, engine stop, structures, FRE, errors cleared,
    ///    ST, IDENTIFY DEVICE ([`Controller::init_port`]).
    ///
    /// `name` names the device in every log line ("00:1f.2 ahci"). Interrupts stay off until
    /// [`Controller::enable_interrupts`].
    pub fn init(name: &str, regs: R, clock: C, dev: DmaDevice) -> Result<Self, InitError> {
        let cap_reg = regs.read32(hba::CAP);
        if cap_reg == u32::MAX {
            return Err(InitError::NotResponding);
        }
        if regs.read32(hba::CAP2) & cap2::BOH != 0 {
            bios_handoff(&regs, &clock, name)?;
        }
        regs.set_bits(hba::GHC, ghc::AE);
        regs.write32(hba::GHC, ghc::AE | ghc::HR);
        if !clock.poll_until(1_000_000, || regs.read32(hba::GHC) & ghc::HR == 0) {
            return Err(InitError::ResetTimeout);
        }
        // The reset clears GHC.AE (§10.4.3); interrupts stay off for now.
        regs.write32(hba::GHC, ghc::AE);
        let caps = Capabilities::decode(
            regs.read32(hba::CAP),
            regs.read32(hba::CAP2),
            regs.read32(hba::PI),
            regs.read32(hba::VS),
        );
        log::info!(
            "{name}: AHCI {}.{} HBA, {} ports (PI {:#x}), {} slots, {}-bit DMA, NCQ {}",
            caps.version >> 16,
            (caps.version >> 8) & 0xFF,
            caps.ports,
            caps.implemented,
            caps.slots,
            if caps.addr64 { 64 } else { 32 },
            if caps.ncq { "yes" } else { "no" }
        );
        // A 32-bit HBA ignores the upper address registers: everything it touches must lie
        // below 4 GiB, which the mask makes the DMA service guarantee (or bounce).
        dev.set_mask(if caps.addr64 { 64 } else { 32 }).map_err(InitError::DmaMask)?;
        let _ = dev.set_max_segment_size(MAX_PRD_BYTES);
        let page = dma::PAGE_SIZE;
        let command_lists =
            DmaPool::create("ahci-cmd-list", &dev, COMMAND_LIST_BYTES, 1024, page).map_err(InitError::Pool)?;
        let received_fis =
            DmaPool::create("ahci-rx-fis", &dev, RECEIVED_FIS_BYTES, 256, page).map_err(InitError::Pool)?;
        let command_tables =
            DmaPool::create("ahci-cmd-table", &dev, COMMAND_TABLE_BYTES, 128, page).map_err(InitError::Pool)?;
        let mut controller = Controller {
            name: name.into(),
            regs,
            clock,
            ports: Vec::new(),
            skipped: Vec::new(),
            command_lists,
            received_fis,
            command_tables,
            dev,
            caps,
            completions: BTreeMap::new(),
            next_id: 1,
            interrupts: 0,
        };
        for n in bits(caps.implemented) {
            if let Err(e) = controller.init_port(n) {
                match e {
                    PortError::NoDevice { .. } => log::info!("{name} port {n}: {e}; skipped"),
                    _ => log::warn!("{name} port {n}: {e}"),
                }
                controller.skipped.push((n, e));
            }
        }
        controller.regs.write32(hba::IS, u32::MAX);
        Ok(controller)
    }

    /// Port bring-up (§10.1.2, §10.3.1): a device must be present and active (PxSSTS.DET = 3,
    /// IPM = 1); the command engine and FIS receive are stopped before PxCLB/PxFB change
    /// (ST cleared → wait CR clear; FRE cleared → wait FR clear, 500 ms each); the structures are
    /// programmed; FRE is set, PxSERR and PxIS cleared; once the device's status shows neither
    /// BSY nor DRQ, PxSIG says what it is; ST is set; an ATA disk is identified.
    fn init_port(&mut self, n: u8) -> Result<(), PortError> {
        let p = PortRegs::new(&self.regs, n);
        if self.caps.staggered_spin_up {
            p.set(preg::CMD, cmd::SUD | cmd::POD);
        }
        if !self.clock.poll_until(10_000, || device_present(p.read(preg::SSTS))) {
            return Err(PortError::NoDevice { ssts: p.read(preg::SSTS) });
        }
        if !stop_engines(&p, &self.clock) {
            comreset(&p, &self.clock);
            if !stop_engines(&p, &self.clock) {
                return Err(PortError::EngineWillNotStop);
            }
        }
        let command_list = self.command_lists.zalloc().map_err(PortError::NoMemory)?;
        let received_fis = self.received_fis.zalloc().map_err(PortError::NoMemory)?;
        let slots = usize::from(self.caps.slots).min(32);
        let mut tables = Vec::with_capacity(slots);
        for _ in 0..slots {
            tables.push(self.command_tables.zalloc().map_err(PortError::NoMemory)?);
        }
        let clb = command_list.bus_addr().as_u64();
        let fb = received_fis.bus_addr().as_u64();
        p.write(preg::CLB, clb as u32);
        p.write(preg::FB, fb as u32);
        if self.caps.addr64 {
            p.write(preg::CLBU, (clb >> 32) as u32);
            p.write(preg::FBU, (fb >> 32) as u32);
        }
        p.set(preg::CMD, cmd::FRE);
        p.write(preg::SERR, u32::MAX);
        p.write(preg::IS, u32::MAX);
        let ready = |p: &PortRegs<'_, R>| p.read(preg::TFD) & (tfd::BSY | tfd::DRQ) == 0;
        if !self.clock.poll_until(DEVICE_READY_US, || ready(&p)) {
            let tfd_reg = p.read(preg::TFD);
            let _ = stop_engines(&p, &self.clock);
            return Err(PortError::DeviceBusy { tfd: tfd_reg });
        }
        let signature = p.read(preg::SIG);
        if DeviceKind::from_signature(signature) != DeviceKind::Ata {
            let _ = stop_engines(&p, &self.clock);
            return Err(PortError::Unsupported { signature });
        }
        p.write(preg::IE, is::ENABLED);
        p.set(preg::CMD, cmd::ST);
        self.ports.push(Port {
            number: n,
            info: None,
            command_list,
            received_fis,
            tables,
            slots: (0..slots).map(|_| None).collect(),
            issued: 0,
            queued: 0,
            retry_queue: VecDeque::new(),
            disabled: false,
            ncq_depth: 0,
            pending_is: 0,
            stats: PortStats::default(),
        });
        let index = self.ports.len() - 1;
        match self.identify(index) {
            Ok(info) => {
                let depth = if self.caps.ncq && info.ncq { info.queue_depth.min(slots as u8) } else { 0 };
                log::info!(
                    "{} port {n}: ATA disk \"{}\" serial \"{}\" firmware \"{}\", {} sectors of {} B ({} MiB), NCQ depth {}",
                    self.name,
                    info.model,
                    info.serial,
                    info.firmware,
                    info.sectors,
                    info.logical_sector_size,
                    info.capacity_mib(),
                    depth
                );
                let port = &mut self.ports[index];
                port.ncq_depth = depth;
                port.info = Some(info);
                Ok(())
            }
            Err(e) => {
                let _ = stop_engines(&PortRegs::new(&self.regs, n), &self.clock);
                self.ports.pop();
                Err(e)
            }
        }
    }

    /// IDENTIFY DEVICE by polling, during bring-up.
    fn identify(&mut self, index: usize) -> Result<DeviceInfo, PortError> {
        let buffer = IoBuffer::pages(self.dev.memory(), 512).map_err(PortError::NoMemory)?;
        let id = self.submit_at(index, Request::Identify { buffer }, SubmitOptions::default()).map_err(|e| {
            PortError::Identify(CommandError::Aborted {
                port: self.ports[index].number,
                command: CommandKind::Identify,
                reason: submit_reason(&e),
            })
        })?;
        let done = self.wait_polled(index, id);
        done.result.map_err(PortError::Identify)?;
        let data = done.buffers.first().map(|b| &b[..]).unwrap_or(&[]);
        parse_identify(data).map_err(PortError::BadIdentify)
    }

    /// Services `index` by polling until request `id` completes (deadlines make this finite).
    fn wait_polled(&mut self, index: usize, id: RequestId) -> Completion {
        loop {
            self.service_port(index);
            if let Some(c) = self.completions.remove(&id) {
                return c;
            }
            core::hint::spin_loop();
        }
    }

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

    /// Sends `request` to port `port` with default options. See [`Controller::submit_with`].
    pub fn submit(&mut self, port: u8, request: Request) -> Result<RequestId, SubmitError> {
        self.submit_with(port, request, SubmitOptions::default())
    }

    /// Checks `request`, maps its buffers, fills a command table and issues it.
    ///
    /// Refused before anything reaches the device (the buffers are dropped): an unknown or
    /// disabled port, zero length, a length that is not whole sectors, an odd buffer length
    /// or address, a range past the end, more than 65,535 sectors, a full queue, or a mix of
    /// queued and non-queued commands (which SATA forbids).
    pub fn submit_with(&mut self, port: u8, request: Request, opts: SubmitOptions) -> Result<RequestId, SubmitError> {
        let index = self.ports.iter().position(|p| p.number == port).ok_or(SubmitError::NoDisk { port })?;
        self.submit_at(index, request, opts)
    }

    fn submit_at(&mut self, index: usize, request: Request, opts: SubmitOptions) -> Result<RequestId, SubmitError> {
        let addr64 = self.caps.addr64;
        let port = &mut self.ports[index];
        let n = port.number;
        if port.disabled {
            return Err(SubmitError::PortDisabled { port: n });
        }
        let (sector_size, capacity) = match &port.info {
            Some(info) => (info.logical_sector_size, info.sectors),
            None if matches!(request, Request::Identify { .. }) => (512, 0),
            None => return Err(SubmitError::NoDisk { port: n }),
        };
        let (mut kind, lba, buffers) = match request {
            Request::Read { lba, buffers } => (CommandKind::ReadDmaExt, lba, buffers),
            Request::Write { lba, buffers } => (CommandKind::WriteDmaExt, lba, buffers),
            Request::Flush => (CommandKind::FlushCacheExt, 0, Vec::new()),
            Request::Identify { buffer } => (CommandKind::Identify, 0, vec![buffer]),
        };
        let bytes: usize = buffers.iter().map(|b| b.len()).sum();
        let mut count = 0u64;
        if kind.has_data() {
            if bytes == 0 {
                return Err(SubmitError::ZeroLength);
            }
            if kind == CommandKind::Identify {
                if bytes != 512 {
                    return Err(SubmitError::Misaligned { bytes, sector_size: 512 });
                }
            } else {
                if !bytes.is_multiple_of(sector_size as usize) {
                    return Err(SubmitError::Misaligned { bytes, sector_size });
                }
                count = (bytes / sector_size as usize) as u64;
                if count > MAX_SECTORS_PER_COMMAND {
                    return Err(SubmitError::TooLarge { count, max: MAX_SECTORS_PER_COMMAND });
                }
                if opts.check_range && lba.checked_add(count).is_none_or(|end| end > capacity) {
                    return Err(SubmitError::PastEnd { lba, count, capacity });
                }
            }
            if let Some((segment, b)) = buffers.iter().enumerate().find(|(_, b)| b.len() % 2 != 0) {
                return Err(SubmitError::Prdt(crate::prdt::PrdtError::OddLength { segment, len: b.len() }));
            }
        }
        let queued =
            opts.queued && port.ncq_depth > 0 && matches!(kind, CommandKind::ReadDmaExt | CommandKind::WriteDmaExt);
        if queued {
            kind = if kind == CommandKind::ReadDmaExt {
                CommandKind::ReadFpdmaQueued
            } else {
                CommandKind::WriteFpdmaQueued
            };
        }
        let slot = port.free_slot(queued)?;

        let mapping = if !kind.has_data() {
            DataMapping::None
        } else if kind.writes_to_device() {
            DataMapping::ToDevice(self.dev.map_sg(buffers, ToDevice).map_err(|e| SubmitError::Map(e.error))?)
        } else {
            DataMapping::FromDevice(self.dev.map_sg(buffers, FromDevice).map_err(|e| SubmitError::Map(e.error))?)
        };
        let prdt = if kind.has_data() {
            match build_prdt(mapping.segments(), PRDT_ENTRIES, addr64) {
                Ok(prdt) => prdt,
                Err(e) => {
                    drop(mapping.unmap());
                    return Err(SubmitError::Prdt(e));
                }
            }
        } else {
            Vec::new()
        };
        let command = AtaCommand { kind, lba, count: count as u32, tag: slot };

        // Command table (§4.2.3): the FIS, a zeroed ATAPI area, the PRDT.
        let table = &mut port.tables[usize::from(slot)];
        let mut cfis = [0u8; 0x80];
        cfis[..crate::ata::H2D_FIS_LEN].copy_from_slice(&command.to_fis());
        let _ = table.write_bytes(0, &cfis);
        for (i, entry) in prdt.iter().enumerate() {
            let _ = table.write_bytes(PRDT_OFFSET + i * PRD_ENTRY_BYTES, &entry.to_bytes());
        }
        let ctba = table.bus_addr().as_u64();
        // Command header (§4.2.2): CFL = 5 DWORDs, W for host-to-device data, PRDTL.
        let header = usize::from(slot) * COMMAND_HEADER_BYTES;
        let flags = (crate::ata::H2D_FIS_LEN / 4) as u32
            | if kind.writes_to_device() { 1 << 6 } else { 0 }
            | (prdt.len() as u32) << 16;
        let list = &mut port.command_list;
        put(list, header, flags);
        put(list, header + 4, 0);
        put(list, header + 8, ctba as u32);
        put(list, header + 12, if addr64 { (ctba >> 32) as u32 } else { 0 });
        for dw in 4..8 {
            put(list, header + dw * 4, 0);
        }

        let id = self.next_id;
        self.next_id += 1;
        let now = self.clock.now_us();
        port.slots[usize::from(slot)] = Some(InFlight {
            id,
            command,
            mapping,
            submitted_at: now,
            issued_at: now,
            timeout_us: opts.timeout_us,
            retries_left: RETRIES,
            retries: 0,
        });
        issue(&PortRegs::new(&self.regs, n), port, slot, queued);
        port.issued |= 1 << slot;
        if queued {
            port.queued |= 1 << slot;
        }
        Ok(id)
    }

    /// Whether port `port` would accept a command now (queued: a read or write with NCQ, when
    /// the disk has it). The same checks [`Controller::submit_with`] makes about the queue.
    pub fn can_accept(&self, port: u8, queued: bool) -> Result<(), SubmitError> {
        let p = self.port(port).ok_or(SubmitError::NoDisk { port })?;
        p.free_slot(queued && p.ncq_depth > 0).map(|_| ())
    }

    /// Takes the completion of `id`, if it has completed.
    pub fn take_completion(&mut self, id: RequestId) -> Option<Completion> {
        self.completions.remove(&id)
    }

    /// Takes every completion waiting.
    pub fn drain_completions(&mut self) -> Vec<Completion> {
        core::mem::take(&mut self.completions).into_values().collect()
    }

    /// The interrupt handler's work: the *top half* (AHCI 1.3.1 §10.7.2 steps 1–3). Reads IS;
    /// for each port with its bit set, reads PxIS and clears it, and remembers the bits; then
    /// clears those IS bits, which lowers an INTx line. False when no port of this HBA asked
    /// for attention (a shared line, or a spurious interrupt).
    ///
    /// It deliberately does *not* complete commands. Completing means unmapping buffers (IOMMU
    /// page tables, invalidation queue, bounce slots) and allocating the completion record, and
    /// every one of those takes a lock that code interrupted by this handler may be holding: on
    /// a single CPU that is a deadlock, not a wait. So the handler touches only this HBA's
    /// registers and its own fields, and [`Controller::service`] (the *bottom half*, called by
    /// waiters in thread context) finishes the work. Linux splits drivers the same way (hard
    /// IRQ handler versus threaded handler or NAPI poll).
    pub fn handle_interrupt(&mut self) -> bool {
        let pending = self.regs.read32(hba::IS);
        if pending == 0 || pending == u32::MAX {
            return false;
        }
        self.interrupts += 1;
        for port in self.ports.iter_mut() {
            if pending & (1 << port.number) != 0 {
                let p = PortRegs::new(&self.regs, port.number);
                let port_is = p.read(preg::IS);
                if port_is != 0 && port_is != u32::MAX {
                    p.write(preg::IS, port_is);
                    port.pending_is |= port_is;
                }
            }
        }
        self.regs.write32(hba::IS, pending);
        true
    }

    /// Whether the interrupt handler left work for [`Controller::service`].
    pub fn has_pending_work(&self) -> bool {
        self.ports.iter().any(|p| p.pending_is != 0)
    }

    /// The *bottom half*: looks at every port, completes finished commands (unmapping their
    /// buffers), recovers from errors, enforces deadlines and re-issues retries. Call it from
    /// thread context: after an interrupt (see [`Controller::has_pending_work`]) or, without
    /// interrupts, to poll. Returns completions now waiting.
    pub fn service(&mut self) -> usize {
        let pending = self.regs.read32(hba::IS);
        for index in 0..self.ports.len() {
            self.service_port(index);
        }
        if pending != 0 && pending != u32::MAX {
            self.regs.write32(hba::IS, pending);
        }
        self.completions.len()
    }

    /// Checks deadlines only (no register access unless one passed). For waiters that rely on
    /// the interrupt for completions.
    pub fn check_timeouts(&mut self) {
        let now = self.clock.now_us();
        for index in 0..self.ports.len() {
            let late = self.ports[index].slots.iter().flatten().any(|f| now.saturating_sub(f.issued_at) > f.timeout_us);
            if late {
                self.service_port(index);
            }
        }
    }

    fn service_port(&mut self, index: usize) {
        if self.ports[index].disabled {
            self.ports[index].pending_is = 0;
            return;
        }
        let n = self.ports[index].number;
        let p = PortRegs::new(&self.regs, n);
        // Read and clear PxIS *before* snapshotting CI and SACT (AHCI 1.3.1 §10.6.2 order).
        // The other order loses completions: a command that finishes after the CI snapshot but
        // before PxIS is cleared has its interrupt status cleared while it still looks busy, and
        // with MSI nothing ever signals it again. In this order, anything that completes after
        // the clear sets PxIS anew and interrupts again; a command that fails keeps its CI bit
        // (the HBA stops on error, §6.2.2), so it is never mistaken for a success, and its error
        // bits in PxIS bring us back here for recovery.
        let fresh = p.read(preg::IS);
        if fresh != 0 && fresh != u32::MAX {
            p.write(preg::IS, fresh);
        }
        // What the interrupt handler already cleared counts too (it cleared it before this
        // snapshot, so the same order holds).
        let port_is =
            if fresh == u32::MAX { fresh } else { fresh | core::mem::take(&mut self.ports[index].pending_is) };
        let ci = p.read(preg::CI);
        let sact = p.read(preg::SACT);
        if port_is != u32::MAX && port_is & is::ERRORS != 0 {
            self.recover(index, Cause::Error { port_is });
        } else if port_is & (is::PCS | is::PRCS) != 0 {
            log::warn!("{} port {n}: link change (PxIS {port_is:#x}, PxSERR {:#x})", self.name, p.read(preg::SERR));
            p.write(preg::SERR, u32::MAX);
        }
        if port_is & is::ERRORS == 0 {
            let port = &self.ports[index];
            let done = port.issued & !ci & !sact;
            for slot in bits(done) {
                self.complete(index, slot, Ok(()));
            }
        }
        // Deadlines.
        let now = self.clock.now_us();
        let late = self.ports[index]
            .slots
            .iter()
            .enumerate()
            .find(|(_, f)| f.as_ref().is_some_and(|f| now.saturating_sub(f.issued_at) > f.timeout_us))
            .map(|(s, _)| s as u8);
        if let Some(slot) = late {
            self.recover(index, Cause::Timeout { slot });
        }
        // Re-issue, one at a time, what an error interrupted.
        let port = &mut self.ports[index];
        if port.issued == 0 && !port.disabled {
            while let Some(slot) = port.retry_queue.pop_front() {
                let Some(f) = port.slots[usize::from(slot)].as_mut() else { continue };
                f.issued_at = self.clock.now_us();
                f.retries += 1;
                let queued = f.command.kind.is_queued();
                put(&mut port.command_list, usize::from(slot) * COMMAND_HEADER_BYTES + 4, 0);
                port.stats.retried += 1;
                issue(&PortRegs::new(&self.regs, n), port, slot, queued);
                port.issued |= 1 << slot;
                if queued {
                    port.queued |= 1 << slot;
                }
                break;
            }
        }
    }

    /// Finishes `slot`: unmaps its buffers (the HBA is done with them) and records the result.
    fn complete(&mut self, index: usize, slot: u8, result: Result<(), CommandError>) {
        let port = &mut self.ports[index];
        port.issued &= !(1 << slot);
        port.queued &= !(1 << slot);
        let Some(f) = port.slots[usize::from(slot)].take() else { return };
        let bytes_transferred =
            port.command_list.read::<u32>(usize::from(slot) * COMMAND_HEADER_BYTES + 4).unwrap_or(0);
        match &result {
            Ok(()) => {
                port.stats.completed += 1;
                match f.command.kind {
                    CommandKind::ReadDmaExt | CommandKind::ReadFpdmaQueued => {
                        port.stats.sectors_read += u64::from(f.command.count)
                    }
                    CommandKind::WriteDmaExt | CommandKind::WriteFpdmaQueued => {
                        port.stats.sectors_written += u64::from(f.command.count)
                    }
                    _ => {}
                }
            }
            Err(e) => {
                port.stats.failed += 1;
                log::error!("{}: {e}", self.name);
            }
        }
        let completion = Completion {
            id: f.id,
            port: port.number,
            command: f.command,
            result,
            buffers: f.mapping.unmap(),
            bytes_transferred,
            retries: f.retries,
            latency_us: self.clock.now_us().saturating_sub(f.submitted_at),
        };
        self.completions.insert(completion.id, completion);
    }

    /// Error recovery (AHCI 1.3.1 §6.2.2): stop the command list (clear PxCMD.ST, wait for CR
    /// to clear), clear PxSERR and PxIS, send COMRESET (PxSCTL.DET, §10.4.2) if the device is
    /// still busy or the engine would not stop, restart (ST), then fail the command at fault and
    /// re-issue the others one at a time — a command that fails while alone is the culprit.
    fn recover(&mut self, index: usize, cause: Cause) {
        let n = self.ports[index].number;
        let p = PortRegs::new(&self.regs, n);
        let tfd_reg = p.read(preg::TFD);
        let serr = p.read(preg::SERR);
        let outstanding = self.ports[index].issued;
        self.ports[index].stats.recoveries += 1;
        match cause {
            Cause::Error { port_is } => log::error!(
                "{} port {n}: error: {} ({}), PxSERR {serr:#x}, {} command(s) outstanding; resetting the port (§6.2.2)",
                self.name,
                crate::ata::describe_port_is(port_is),
                TaskFile::from_tfd(tfd_reg),
                outstanding.count_ones()
            ),
            Cause::Timeout { slot } => log::error!(
                "{} port {n}: slot {slot} timed out (PxTFD {tfd_reg:#x}, PxCI {:#x}, PxSACT {:#x}); resetting the port (§6.2.2)",
                self.name,
                p.read(preg::CI),
                p.read(preg::SACT)
            ),
        }
        p.clear(preg::CMD, cmd::ST);
        let mut stopped = self.clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::CR == 0);
        p.write(preg::SERR, u32::MAX);
        p.write(preg::IS, u32::MAX);
        let busy = |p: &PortRegs<'_, R>| p.read(preg::TFD) & (tfd::BSY | tfd::DRQ) != 0;
        // COMRESET when the device is stuck busy or the engine would not stop (§6.2.2.1), and
        // also after a device error: the device keeps ERR in its status until it is reset or
        // executes a new non-queued command, and an NCQ command issued next would be answered
        // with that stale status (QEMU's AHCI does exactly this).
        let device_error = matches!(cause, Cause::Error { port_is } if port_is & is::TFES != 0);
        if !stopped || busy(&p) || device_error {
            self.ports[index].stats.comresets += 1;
            log::warn!(
                "{} port {n}: sending COMRESET (engine stopped: {stopped}, PxTFD {:#x})",
                self.name,
                p.read(preg::TFD)
            );
            comreset(&p, &self.clock);
            stopped = self.clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::CR == 0);
            p.set(preg::CMD, cmd::FRE);
            let _ = self.clock.poll_until(DEVICE_READY_US, || !busy(&p));
            p.write(preg::SERR, u32::MAX);
            p.write(preg::IS, u32::MAX);
            p.write(preg::IE, is::ENABLED);
        }
        if !stopped || busy(&p) {
            log::error!(
                "{} port {n}: recovery failed (PxCMD {:#x}, PxTFD {:#x}); port disabled, outstanding buffers quarantined",
                self.name,
                p.read(preg::CMD),
                p.read(preg::TFD)
            );
            self.disable_port(index, stopped);
            return;
        }
        p.set(preg::CMD, cmd::ST);

        let port = &mut self.ports[index];
        let alone = (outstanding.count_ones() == 1).then(|| outstanding.trailing_zeros() as u8);
        let culprit = match cause {
            Cause::Timeout { slot } => Some(slot),
            Cause::Error { .. } => alone,
        };
        port.issued = 0;
        port.queued = 0;
        let mut to_fail = Vec::new();
        for slot in bits(outstanding) {
            let Some(f) = port.slots[usize::from(slot)].as_mut() else { continue };
            if Some(slot) == culprit {
                let error = match cause {
                    Cause::Timeout { .. } => {
                        port.stats.timeouts += 1;
                        CommandError::Timeout {
                            port: n,
                            command: f.command.kind,
                            lba: f.command.lba,
                            after_us: f.timeout_us,
                        }
                    }
                    Cause::Error { port_is } if port_is & is::TFES != 0 => CommandError::Device {
                        port: n,
                        command: f.command.kind,
                        lba: f.command.lba,
                        task_file: TaskFile::from_tfd(tfd_reg),
                        port_is,
                    },
                    Cause::Error { port_is } => {
                        CommandError::Interface { port: n, command: f.command.kind, port_is, serr }
                    }
                };
                to_fail.push((slot, error));
            } else if f.retries_left > 0 {
                f.retries_left -= 1;
                port.retry_queue.push_back(slot);
            } else {
                to_fail.push((
                    slot,
                    CommandError::Aborted {
                        port: n,
                        command: f.command.kind,
                        reason: "failed again when retried after a port error",
                    },
                ));
            }
        }
        for (slot, error) in to_fail {
            self.complete(index, slot, Err(error));
        }
    }

    /// Takes a port out of service. If its engine stopped, outstanding commands fail and their
    /// buffers come back; if not, the HBA might still write into them, so their mappings and
    /// buffers are leaked on purpose (quarantined) and the completions carry no buffers.
    fn disable_port(&mut self, index: usize, engine_stopped: bool) {
        let port = &mut self.ports[index];
        port.disabled = true;
        let n = port.number;
        let slots: Vec<u8> = (0..port.slots.len() as u8).filter(|&s| port.slots[usize::from(s)].is_some()).collect();
        port.retry_queue.clear();
        for slot in slots {
            if !engine_stopped {
                let port = &mut self.ports[index];
                if let Some(f) = port.slots[usize::from(slot)].as_mut() {
                    core::mem::forget(core::mem::replace(&mut f.mapping, DataMapping::None));
                }
            }
            let command = self.ports[index].slots[usize::from(slot)].as_ref().map(|f| f.command.kind);
            if let Some(command) = command {
                self.complete(
                    index,
                    slot,
                    Err(CommandError::Aborted {
                        port: n,
                        command,
                        reason: "the port could not be recovered and is disabled",
                    }),
                );
            }
        }
    }
}

fn submit_reason(e: &SubmitError) -> &'static str {
    match e {
        SubmitError::Map(_) => "buffer could not be mapped",
        _ => "refused",
    }
}

/// Hands `slot` to the HBA: PxSACT first for a queued command (§5.3.2, SATA §13.6), then PxCI.
fn issue<R: Registers>(p: &PortRegs<'_, R>, port: &mut Port, slot: u8, queued: bool) {
    // The command table and header must be in memory before the HBA is told to fetch them.
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    if queued {
        p.write(preg::SACT, 1 << slot);
    }
    p.write(preg::CI, 1 << slot);
    port.stats.issued += 1;
    let outstanding = (port.issued | 1 << slot).count_ones();
    port.stats.max_outstanding = port.stats.max_outstanding.max(outstanding);
}

/// BIOS/OS handoff (§10.6.3): set BOHC.OOS; the BIOS clears BOS when it lets go. If it sets BB
/// (busy finishing commands) within 25 ms, allow it 2 s.
fn bios_handoff<R: Registers, C: Clock>(regs: &R, clock: &C, name: &str) -> Result<(), InitError> {
    regs.set_bits(hba::BOHC, bohc::OOS);
    let released = || regs.read32(hba::BOHC) & bohc::BOS == 0;
    if clock.poll_until(25_000, released) {
        log::info!("{name}: BIOS/OS handoff done");
        return Ok(());
    }
    // Whether or not BB is set (a BIOS may not set it), allow the 2 s a busy BIOS gets.
    let busy = regs.read32(hba::BOHC) & bohc::BB != 0;
    if clock.poll_until(2_000_000, released) {
        log::info!("{name}: BIOS/OS handoff done (BIOS busy: {busy})");
        return Ok(());
    }
    Err(InitError::HandoffTimeout)
}

/// Stops the command engine, then FIS receive (§10.1.2 step 3, §10.3.2): clear ST, wait for CR
/// to clear; clear FRE, wait for FR to clear; 500 ms each. False if either stays set.
fn stop_engines<R: Registers, C: Clock>(p: &PortRegs<'_, R>, clock: &C) -> bool {
    if p.read(preg::CMD) & cmd::ST != 0 {
        p.clear(preg::CMD, cmd::ST);
    }
    if !clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::CR == 0) {
        return false;
    }
    if p.read(preg::CMD) & cmd::FRE != 0 {
        p.clear(preg::CMD, cmd::FRE);
    }
    clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::FR == 0)
}

/// COMRESET (§10.4.2): PxSCTL.DET = 1 for at least 1 ms, then 0; wait up to 1 s for the link
/// (PxSSTS.DET = 3); clear PxSERR.
fn comreset<R: Registers, C: Clock>(p: &PortRegs<'_, R>, clock: &C) {
    let sctl = p.read(preg::SCTL) & !0xF;
    p.write(preg::SCTL, sctl | 1);
    clock.delay_us(1_000);
    p.write(preg::SCTL, sctl);
    let _ = clock.poll_until(1_000_000, || p.read(preg::SSTS) & 0xF == ssts::DET_PRESENT);
    p.write(preg::SERR, u32::MAX);
}
