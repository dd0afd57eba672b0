//! Block devices: the AHCI driver's kernel glue, and the interface the rest of the kernel uses.
//!
//! [`init`] finds every AHCI controller (PCI class 01/06/01), maps its ABAR (BAR5), gives the
//! `ahci` crate a `DmaDevice` named after the function, and brings it up. Each identified disk
//! becomes a [`Disk`], named `ahci<controller>p<port>` (`ahci0p1` is port 1 of the first HBA).
//!
//! # The interface
//! - Asynchronous: [`Disk::submit`] sends a [`BlockOp`] and returns a [`Ticket`] at once;
//!   [`Disk::poll`] returns the [`Done`] result when the command has completed; up to the
//!   NCQ depth (32 on QEMU) commands may be outstanding per disk.
//! - Blocking: [`Disk::read`], [`Disk::write`], [`Disk::flush`] submit and wait.
//!
//! # Completion
//! With a local APIC, each controller gets a vector and its MSI (or INTx through the I/O APIC
//! when there is no MSI capability). The handler is a top half: it acknowledges the HBA and
//! notes which ports want attention. Waiters do the rest (the bottom half: completing,
//! unmapping, recovery) in thread context when the handler left work, and otherwise only
//! check deadlines, so they touch no register while nothing happened. Without interrupts, or after
//! [`set_polling`]`(true)`, waiters poll the HBA's registers themselves.
//!
//! # Safety rails
//! Requests are checked by the driver before anything is sent (range, length, alignment). A
//! disk whose sector 0 carries an MBR boot signature (0x55AA at byte 510) — the disk the kernel
//! booted from — is read-only here: [`Disk::write`] refuses it.
//!
//! # Locking
//! One spin lock per controller, always taken with interrupts disabled; the interrupt handler
//! takes the same lock, so on this single-CPU kernel the two never wait on each other.

mod shell;

use crate::arch::time::KernelClock;
use ahci::{Completion, Controller, IoBuffer, Request, RequestId, SubmitOptions};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicBool, Ordering};
use pci::Bdf;

pub use ahci::{CommandError, DeviceInfo, SubmitError};

/// Shell commands this service adds.
pub use shell::COMMANDS;

type Hba = Controller<device_io::Mmio, KernelClock>;

/// How a controller signals completions: the kernel's one [`IrqMode`] for PCI functions
/// (MSI, INTx through the I/O APIC, or polling), set up by [`crate::platform::pci::wire_interrupt`].
pub use crate::platform::pci::IrqMode;

struct HbaEntry {
    bdf: String,
    /// Pre-mapped data buffers for this controller alone ([`dma::arena`]).
    arena: dma::DmaArena,
    /// Copy heap write data into the arena (behind an IOMMU) rather than mapping it.
    shadow_writes: bool,
    /// The controller's IOMMU domain, for the counters in `disk:info`.
    domain: Option<alloc::sync::Arc<iommu_vtd::Domain>>,
    hba: spin::Mutex<Hba>,
    irq: IrqMode,
    /// Ports whose disk is read-only (bit per port).
    read_only: u32,
}

/// Largest I/O arena per controller: room for a 1 MiB request and a full NCQ queue of 4 KiB
/// ones several times over, grown 2 MiB at a time as requests need it.
const ARENA_BYTES: usize = 8 << 20;

static CONTROLLERS: spin::Once<Vec<HbaEntry>> = spin::Once::new();
static FORCE_POLLING: AtomicBool = AtomicBool::new(false);
static NCQ_OFF: AtomicBool = AtomicBool::new(false);

/// Turns native command queuing off (every read and write is then READ/WRITE DMA EXT, up to 32
/// of them issued in PxCI at once) or back on, for requests submitted from now on. The tests
/// use it to run the same workload queued and non-queued (`disk ncq on|off`).
pub fn set_ncq(on: bool) {
    NCQ_OFF.store(!on, Ordering::SeqCst);
}

/// The options every request gets unless its caller chooses: NCQ unless [`set_ncq`] turned it off.
fn default_options() -> SubmitOptions {
    SubmitOptions { queued: !NCQ_OFF.load(Ordering::SeqCst), ..SubmitOptions::default() }
}

fn controllers() -> &'static [HbaEntry] {
    CONTROLLERS.get().map(Vec::as_slice).unwrap_or(&[])
}

fn with_hba<T>(entry: &HbaEntry, f: impl FnOnce(&mut Hba) -> T) -> T {
    x86_64::instructions::interrupts::without_interrupts(|| f(&mut entry.hba.lock()))
}

/// Whether requests use the controllers' I/O arenas (on by default). Off, every request maps its
/// heap buffers with a strict streaming mapping, as before the arenas existed: for measuring
/// what they save (`disk arena off`, `cargo xtask bench disk`).
static USE_ARENA: AtomicBool = AtomicBool::new(true);

/// Whether new requests use the I/O arenas (see [`USE_ARENA`]).
pub fn arena_on() -> bool {
    USE_ARENA.load(Ordering::SeqCst)
}

/// Turns the I/O arenas on or off for new requests (see [`USE_ARENA`]).
pub fn set_arena(on: bool) {
    USE_ARENA.store(on, Ordering::SeqCst);
}

/// An arena buffer of `len` bytes from `entry`'s controller, if arenas are on and it has room.
fn arena_buffer(entry: &HbaEntry, len: usize) -> Option<dma::ArenaBuf> {
    if !USE_ARENA.load(Ordering::Relaxed) {
        return None;
    }
    entry.arena.alloc(len).ok()
}

/// Makes waiters poll the HBA (and turns the HBA's interrupt off), or goes back to interrupts.
pub fn set_polling(on: bool) {
    FORCE_POLLING.store(on, Ordering::SeqCst);
    for c in controllers() {
        if c.irq.is_interrupt() {
            with_hba(c, |h| if on { h.disable_interrupts() } else { h.enable_interrupts() });
        }
    }
}

/// Whether waiters poll.
pub fn polling() -> bool {
    FORCE_POLLING.load(Ordering::SeqCst)
}

/// The controller's interrupt handler: the top half only. It acknowledges the HBA and notes
/// which ports want attention; waiters finish the work ([`Disk::poll`] calls `service` when
/// work is pending). Completing a command here would unmap buffers and allocate, and the code
/// this interrupt stopped may hold the heap's or the IOMMU's lock: on one CPU, a deadlock.
fn interrupt(context: usize) {
    if let Some(c) = controllers().get(context) {
        // Interrupts are off in the handler, and every other holder of this lock has them off
        // too, so this cannot spin against an interrupted holder.
        c.hba.lock().handle_interrupt();
    }
}

/// What a waiter does on each look at the HBA: the bottom half (`service`) when it polls or the
/// interrupt handler left work, otherwise only a deadline check, which touches no register.
fn service_or_check_deadlines(h: &mut Hba, poll: bool) {
    if poll || h.has_pending_work() {
        h.service();
    } else {
        h.check_timeouts();
    }
}

/// Finds and starts the AHCI controllers.
pub fn init() {
    let mut entries = Vec::new();
    for f in crate::platform::pci::functions().iter().filter(|f| ahci::matches(f) || ahci::raid_mode_with_abar(f)) {
        let bdf = format!("{}", Bdf(f.address));
        if ahci::raid_mode_with_abar(f) {
            log::warn!(
                "{bdf}: SATA controller in RAID mode (class 01/04); using it as AHCI. Set SATA mode to AHCI in \
                 the firmware setup if disks are missing."
            );
        }
        let name = format!("{bdf} ahci");
        let regs = match crate::platform::pci::map_bar(f, ahci::ABAR) {
            Ok(regs) => regs,
            Err(e) => {
                log::error!("{name}: cannot map ABAR: {e}");
                continue;
            }
        };
        let dev = crate::services::dma_service::device_for(f, "ahci");
        let arena = dma::DmaArena::new(&dev, "ahci-io", ARENA_BYTES);
        let shadow_writes = dev.mapper().kind() != "direct";
        let domain = crate::platform::iommu::domain_of(f);
        let mut hba = match Controller::init(&name, regs, KernelClock, dev) {
            Ok(hba) => hba,
            Err(e) => {
                log::error!("{name}: {e}");
                continue;
            }
        };
        let read_only = boot_disks(&mut hba);
        let index = entries.len();
        let irq = setup_interrupt(f, &name, index);
        entries.push(HbaEntry { bdf, arena, shadow_writes, domain, hba: spin::Mutex::new(hba), irq, read_only });
    }
    let entries = CONTROLLERS.call_once(|| entries);
    for c in entries {
        if c.irq.is_interrupt() {
            with_hba(c, |h| h.enable_interrupts());
        }
    }
    crate::registry::scheme::register(
        "disk:info",
        "AHCI controllers and disks: identity, size, queueing, counters",
        render_info,
    );
    crate::registry::scheme::register("disk:slots", "AHCI command slots: header, FIS, PRDT; PxCI, PxSACT", || {
        controllers().iter().map(|c| with_hba(c, |h| h.render_slots())).collect()
    });
}

/// Ports whose sector 0 has an MBR boot signature.
fn boot_disks(hba: &mut Hba) -> u32 {
    let mut mask = 0;
    let ports: Vec<u8> = hba.ports().iter().map(|p| p.number()).collect();
    for port in ports {
        let sector = hba.port(port).and_then(|p| p.info()).map_or(512, |i| i.logical_sector_size as usize);
        let request = Request::Read { lba: 0, buffers: vec![IoBuffer::Heap(vec![0; sector])] };
        let Ok(id) = hba.submit_with(port, request, SubmitOptions { queued: false, ..Default::default() }) else {
            continue;
        };
        let done = loop {
            hba.service();
            if let Some(done) = hba.take_completion(id) {
                break done;
            }
        };
        if done.result.is_ok()
            && done.buffers.first().is_some_and(|b| b.len() >= 512 && b[510] == 0x55 && b[511] == 0xAA)
        {
            log::info!("{} port {port}: boot signature in sector 0; read-only", hba.name());
            mask |= 1 << port;
        }
    }
    mask
}

/// Wires the controller's interrupt through the kernel's one wiring path
/// ([`crate::platform::pci::wire_interrupt`]): MSI when the function offers it, else INTx through the I/O
/// APIC, else polling. Nothing is proved here (an HBA cannot raise an interrupt on demand); the
/// interrupt is enabled on the HBA once every controller is registered.
fn setup_interrupt(f: &pci::PciFunction, name: &str, index: usize) -> IrqMode {
    let wired = crate::platform::pci::wire_interrupt(f, interrupt, index, &mut |_| Ok(()));
    match wired.mode {
        IrqMode::MsiX { vector } => log::info!("{name}: MSI-X on vector {vector:#x}"),
        IrqMode::Msi { vector } => log::info!("{name}: MSI on vector {vector:#x}"),
        IrqMode::Intx { irq, vector, .. } => {
            if f.msi().is_some()
                && let Some(why) = wired.why_not("MSI")
            {
                log::warn!("{name}: MSI failed ({why}); using INTx");
            }
            log::info!("{name}: INTx (line {irq}) on vector {vector:#x}");
        }
        IrqMode::Polling { reason: pci::interrupt::NO_APIC } => {
            log::info!("{name}: no local APIC; completions by polling")
        }
        IrqMode::Polling { reason } => log::warn!("{name}: no usable interrupt ({reason}); completions by polling"),
    }
    wired.mode
}

/// A disk: one port of one controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    controller: usize,
    port: u8,
}

/// A submitted command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    disk: Disk,
    id: RequestId,
}

/// What to do.
#[derive(Debug)]
pub enum BlockOp {
    /// Read `sectors` sectors from `lba`.
    Read {
        /// First sector.
        lba: u64,
        /// How many.
        sectors: u32,
    },
    /// Write `data` (whole sectors) at `lba`.
    Write {
        /// First sector.
        lba: u64,
        /// The bytes: build them in [`Disk::buffer`] to skip a copy.
        data: BlockData,
    },
    /// Flush the device's write cache.
    Flush,
}

/// The bytes of a block request: the caller's own heap memory, or a buffer of the disk
/// controller's I/O arena ([`dma::arena`]).
///
/// The two differ in who can reach them afterwards, which is why the type says which it is:
/// - `Heap`: kernel memory. Written by a strict streaming mapping (or copied into the arena,
///   see [`Disk::submit`]); once the request completed, no device can reach it.
/// - `Arena`: pages mapped for *this controller only*, for the arena's whole life, holding
///   nothing but data this controller transferred. Requests made of them map nothing and
///   invalidate nothing; the price is that the controller can still reach them after the
///   request completed. Never put secrets in them; copy out what must be protected from it.
#[derive(Debug)]
pub enum BlockData {
    /// Kernel heap bytes.
    Heap(Vec<u8>),
    /// Controller-arena bytes (see the type's documentation).
    Arena(dma::ArenaBuf),
}

impl BlockData {
    /// The bytes as a `Vec` (a copy for an arena buffer, which then goes back to the arena).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            BlockData::Heap(v) => v,
            BlockData::Arena(a) => a.to_vec(),
        }
    }

    /// Whether the bytes are in the controller's arena.
    pub fn is_arena(&self) -> bool {
        matches!(self, BlockData::Arena(_))
    }
}

impl From<Vec<u8>> for BlockData {
    fn from(v: Vec<u8>) -> BlockData {
        BlockData::Heap(v)
    }
}

impl core::ops::Deref for BlockData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            BlockData::Heap(v) => v,
            BlockData::Arena(a) => a,
        }
    }
}

impl core::ops::DerefMut for BlockData {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            BlockData::Heap(v) => v,
            BlockData::Arena(a) => a,
        }
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Done {
    /// The data read (empty for writes and flushes): in the controller's arena when it had
    /// room, else on the heap.
    pub data: BlockData,
    /// Microseconds from submission to completion.
    pub latency_us: u64,
}

/// Why a block request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockError {
    /// No disk by that name.
    NoSuchDisk(String),
    /// The disk is read-only (it holds the boot image).
    ReadOnly(String),
    /// The driver refused the request before sending it.
    Refused(SubmitError),
    /// The device or HBA failed it.
    Failed(CommandError),
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::NoSuchDisk(name) => write!(f, "no disk named `{name}` (see `cat disk:info`)"),
            BlockError::ReadOnly(name) => {
                write!(f, "{name} holds a boot signature and is read-only; write to a scratch disk instead")
            }
            BlockError::Refused(e) => write!(f, "refused: {e}"),
            BlockError::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Every disk, in controller and port order.
pub fn disks() -> Vec<Disk> {
    controllers()
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            with_hba(c, |h| h.ports().iter().map(|p| Disk { controller: i, port: p.number() }).collect::<Vec<_>>())
        })
        .collect()
}

/// The disk called `name` (`ahci0p1`).
pub fn find(name: &str) -> Result<Disk, BlockError> {
    disks().into_iter().find(|d| d.name() == name).ok_or_else(|| BlockError::NoSuchDisk(name.into()))
}

impl Disk {
    fn entry(&self) -> &'static HbaEntry {
        &controllers()[self.controller]
    }

    /// `ahci<controller>p<port>`.
    pub fn name(&self) -> String {
        format!("ahci{}p{}", self.controller, self.port)
    }

    /// The port number.
    pub fn port(&self) -> u8 {
        self.port
    }

    /// IDENTIFY data.
    pub fn info(&self) -> DeviceInfo {
        with_hba(self.entry(), |h| h.port(self.port).and_then(|p| p.info().cloned())).unwrap_or(DeviceInfo {
            model: String::new(),
            serial: String::new(),
            firmware: String::new(),
            sectors: 0,
            lba48: false,
            logical_sector_size: 512,
            logical_per_physical: 1,
            ncq: false,
            queue_depth: 1,
        })
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.entry().read_only & (1 << self.port) != 0
    }

    /// The port's counters.
    pub fn stats(&self) -> ahci::PortStats {
        with_hba(self.entry(), |h| h.port(self.port).map(|p| p.stats()).unwrap_or_default())
    }

    /// Interrupts the disk's controller has handled.
    pub fn interrupts(&self) -> u64 {
        with_hba(self.entry(), |h| h.interrupt_count())
    }

    /// Whether the interrupt handler noted work that no waiter has done yet.
    pub fn has_pending_work(&self) -> bool {
        with_hba(self.entry(), |h| h.has_pending_work())
    }

    /// How the controller completes commands.
    pub fn irq_mode(&self) -> IrqMode {
        self.entry().irq
    }

    /// Sends `op` without waiting (NCQ when the disk supports it).
    pub fn submit(&self, op: BlockOp) -> Result<Ticket, BlockError> {
        self.submit_with(op, default_options())
    }

    /// Sends `op` with explicit driver options (tests use this to reach device errors).
    pub fn submit_with(&self, op: BlockOp, opts: SubmitOptions) -> Result<Ticket, BlockError> {
        let request = self.request_for(op)?;
        let id = with_hba(self.entry(), |h| h.submit_with(self.port, request, opts)).map_err(BlockError::Refused)?;
        Ok(Ticket { disk: *self, id })
    }

    fn request_for(&self, op: BlockOp) -> Result<Request, BlockError> {
        let sector = self.info().logical_sector_size as usize;
        Ok(match op {
            BlockOp::Read { lba, sectors } => {
                let len = sectors as usize * sector;
                let buffer = match arena_buffer(self.entry(), len) {
                    Some(a) => IoBuffer::Arena(a),
                    None => IoBuffer::Heap(vec![0; len]),
                };
                Request::Read { lba, buffers: vec![buffer] }
            }
            BlockOp::Write { lba, data } => {
                if self.read_only() {
                    return Err(BlockError::ReadOnly(self.name()));
                }
                let buffer = match data {
                    BlockData::Arena(a) => IoBuffer::Arena(a),
                    BlockData::Heap(v) => self.shadow(v),
                };
                Request::Write { lba, buffers: vec![buffer] }
            }
            BlockOp::Flush => Request::Flush,
        })
    }

    /// A write buffer for the caller's heap bytes. Behind an IOMMU the bytes are copied into
    /// the controller's arena (a *shadow copy*) when it has room: a heap `Vec` rarely starts
    /// and ends on page boundaries, so sub-page isolation would copy it into fresh pages anyway
    /// and then map, invalidate, unmap and invalidate again; the arena copy skips everything
    /// but the copy, and the caller's own memory is never mapped at all. With the Direct
    /// mapper, mapping in place costs nothing, so the bytes go as they are.
    fn shadow(&self, v: Vec<u8>) -> IoBuffer {
        let entry = self.entry();
        if !entry.shadow_writes {
            return IoBuffer::Heap(v);
        }
        match arena_buffer(entry, v.len()) {
            Some(mut a) => {
                a.copy_from_slice(&v);
                IoBuffer::Arena(a)
            }
            None => IoBuffer::Heap(v),
        }
    }

    /// A buffer of `len` bytes to build a write in (or to read into), from the controller's
    /// I/O arena when it has room (see [`BlockData`]), zeroed on the heap otherwise. Requests
    /// made of arena buffers map nothing and invalidate nothing.
    pub fn buffer(&self, len: usize) -> BlockData {
        match arena_buffer(self.entry(), len) {
            Some(a) => BlockData::Arena(a),
            None => BlockData::Heap(vec![0; len]),
        }
    }

    /// The result of `ticket` if it has completed. Checks deadlines, and polls the HBA when
    /// there is no interrupt.
    pub fn poll(&self, ticket: Ticket) -> Option<Result<Done, BlockError>> {
        let poll = polling() || !self.entry().irq.is_interrupt();
        let done = with_hba(self.entry(), |h| {
            service_or_check_deadlines(h, poll);
            h.take_completion(ticket.id)
        })?;
        Some(finish(done))
    }

    /// Sends several operations under one lock acquisition, so they are all outstanding at
    /// once (the interrupt handler cannot reap one before the next is issued). Results are in
    /// order; after the first refusal for a full or busy queue, nothing later is sent.
    pub fn submit_many(&self, ops: Vec<BlockOp>) -> Vec<Result<Ticket, BlockError>> {
        let requests: Vec<Result<Request, BlockError>> = ops.into_iter().map(|op| self.request_for(op)).collect();
        with_hba(self.entry(), |h| {
            let mut full = false;
            requests
                .into_iter()
                .map(|r| {
                    if full {
                        return Err(BlockError::Refused(SubmitError::Busy {
                            reason: "an earlier request was refused",
                        }));
                    }
                    let result =
                        r.and_then(|req| h.submit_with(self.port, req, default_options()).map_err(BlockError::Refused));
                    full = matches!(
                        result,
                        Err(BlockError::Refused(SubmitError::QueueFull { .. } | SubmitError::Busy { .. }))
                    );
                    result.map(|id| Ticket { disk: *self, id })
                })
                .collect()
        })
    }

    /// Takes every finished one of `tickets` (with one look at the HBA for all of them).
    pub fn poll_any(&self, tickets: &[Ticket]) -> Vec<(Ticket, Result<Done, BlockError>)> {
        let poll = polling() || !self.entry().irq.is_interrupt();
        let done: Vec<(Ticket, Completion)> = with_hba(self.entry(), |h| {
            service_or_check_deadlines(h, poll);
            tickets.iter().filter_map(|t| h.take_completion(t.id).map(|c| (*t, c))).collect()
        });
        done.into_iter().map(|(t, c)| (t, finish(c))).collect()
    }

    /// Waits for `ticket` (bounded by the command's deadline).
    pub fn wait(&self, ticket: Ticket) -> Result<Done, BlockError> {
        loop {
            if let Some(result) = self.poll(ticket) {
                return result;
            }
            self.idle();
        }
    }

    /// Waits a little for something to happen to this disk's commands. With interrupts, the
    /// CPU sleeps (`hlt`) until the next interrupt, or 1 ms at most so deadlines are still
    /// checked; when polling (or with interrupts off) it only pauses, and the caller polls again.
    pub fn idle(&self) {
        use x86_64::instructions::interrupts;
        let entry = self.entry();
        if polling() || !entry.irq.is_interrupt() || !interrupts::are_enabled() {
            core::hint::spin_loop();
            return;
        }
        // Check for work and go to sleep with interrupts off in between, so an interrupt that
        // arrives after the check wakes the `hlt` (see `time::sleep_until_interrupt`).
        interrupts::disable();
        if entry.hba.lock().has_pending_work() {
            interrupts::enable();
        } else {
            crate::arch::time::sleep_until_interrupt(1_000);
        }
    }

    /// Submits, waiting for room in the queue, then waits for the result.
    fn run(&self, op: BlockOp) -> Result<Done, BlockError> {
        let ticket = self.submit_blocking(op)?;
        self.wait(ticket)
    }

    /// Submits; while the port's queue is full or draining, services the HBA and tries again.
    /// The check and the submission happen under one lock, so the request is never dropped.
    pub fn submit_blocking(&self, op: BlockOp) -> Result<Ticket, BlockError> {
        let queued = !matches!(op, BlockOp::Flush) && default_options().queued;
        let mut request = Some(self.request_for(op)?);
        loop {
            let result = with_hba(self.entry(), |h| match h.can_accept(self.port, queued) {
                Err(SubmitError::QueueFull { .. } | SubmitError::Busy { .. }) => {
                    h.service();
                    None
                }
                _ => Some(h.submit_with(self.port, request.take()?, default_options())),
            });
            if let Some(result) = result {
                return result.map(|id| Ticket { disk: *self, id }).map_err(BlockError::Refused);
            }
            core::hint::spin_loop();
        }
    }

    /// Reads `sectors` sectors at `lba`.
    pub fn read(&self, lba: u64, sectors: u32) -> Result<Vec<u8>, BlockError> {
        self.run(BlockOp::Read { lba, sectors }).map(|d| d.data.into_vec())
    }

    /// Writes whole sectors at `lba`.
    pub fn write(&self, lba: u64, data: Vec<u8>) -> Result<(), BlockError> {
        self.run(BlockOp::Write { lba, data: data.into() }).map(|_| ())
    }

    /// FLUSH CACHE EXT.
    pub fn flush(&self) -> Result<(), BlockError> {
        self.run(BlockOp::Flush).map(|_| ())
    }
}

fn finish(done: Completion) -> Result<Done, BlockError> {
    done.result.map_err(BlockError::Failed)?;
    let is_read = matches!(done.command.kind, ahci::CommandKind::ReadDmaExt | ahci::CommandKind::ReadFpdmaQueued);
    let mut data = BlockData::Heap(Vec::new());
    if is_read {
        let mut buffers = done.buffers;
        if buffers.len() == 1 {
            // The usual case, one buffer: handed over without a copy.
            data = match buffers.pop() {
                Some(IoBuffer::Heap(v)) => BlockData::Heap(v),
                Some(IoBuffer::Arena(a)) => BlockData::Arena(a),
                Some(other) => BlockData::Heap(other.to_vec()),
                None => data,
            };
        } else {
            data = BlockData::Heap(buffers.iter().flat_map(|b| b.iter().copied()).collect());
        }
        // A reused arena buffer holds earlier data of this disk, but a read that completed
        // without error transferred every sector it asked for (ATA: the device reports an error
        // otherwise), so all of it is this read's. (The command header's byte count, PRDBC,
        // AHCI 1.3.1 §4.2.2, cannot tell: QEMU 7.2 leaves it 0 for NCQ commands, which is how
        // the block ktests caught an earlier version that zeroed the "untransferred" rest.)
    }
    Ok(Done { data, latency_us: done.latency_us })
}

/// The `disk:info` view.
fn render_info() -> String {
    let mut out = String::new();
    for (i, c) in controllers().iter().enumerate() {
        with_hba(c, |h| {
            let caps = h.capabilities();
            let irq = match c.irq {
                IrqMode::MsiX { vector } => format!("msi-x vector {vector:#x}"),
                IrqMode::Msi { vector } => format!("msi vector {vector:#x}"),
                IrqMode::Intx { vector, irq, .. } => format!("intx line {irq} vector {vector:#x}"),
                IrqMode::Polling { .. } => "polling".into(),
            };
            let _ = writeln!(
                out,
                "controller ahci{i} {} AHCI {}.{} ports={} pi={:#x} slots={} addr64={} ncq={} irq=({irq}) interrupts={}{}",
                c.bdf,
                caps.version >> 16,
                (caps.version >> 8) & 0xFF,
                caps.ports,
                caps.implemented,
                caps.slots,
                caps.addr64,
                caps.ncq,
                h.interrupt_count(),
                if polling() { " (forced polling)" } else { "" }
            );
            for p in h.ports() {
                let s = p.stats();
                let Some(info) = p.info() else { continue };
                let _ = writeln!(
                    out,
                    "disk ahci{i}p{} port={} model=\"{}\" serial=\"{}\" firmware=\"{}\" sectors={} sector_size={} mib={} lba48={} ncq_depth={} {} issued={} completed={} failed={} retried={} recoveries={} timeouts={} max_outstanding={}{}",
                    p.number(),
                    p.number(),
                    info.model,
                    info.serial,
                    info.firmware,
                    info.sectors,
                    info.logical_sector_size,
                    info.capacity_mib(),
                    info.lba48,
                    p.ncq_depth(),
                    if c.read_only & (1 << p.number()) != 0 { "read-only(boot)" } else { "writable" },
                    s.issued,
                    s.completed,
                    s.failed,
                    s.retried,
                    s.recoveries,
                    s.timeouts,
                    s.max_outstanding,
                    if p.is_disabled() { " DISABLED" } else { "" }
                );
            }
            for (n, why) in h.skipped_ports() {
                let _ = writeln!(out, "port ahci{i}p{n} skipped: {why}");
            }
            // The IOMMU's share of the work: how many data commands mapped nothing (arena
            // buffers), and the IOTLB invalidations per completed command.
            let (premapped, mapped, completed) = h.ports().iter().fold((0, 0, 0), |(a, b, c), p| {
                let s = p.stats();
                (a + s.premapped, b + s.mapped, c + s.completed)
            });
            let a = c.arena.stats();
            let _ = write!(
                out,
                "dma ahci{i}: data commands premapped={premapped} mapped={mapped}; arena {} of {} chunks, {} pages in \
                 use, peak {}, {} full",
                a.chunks, a.max_chunks, a.pages_in_use, a.peak_pages, a.full
            );
            match &c.domain {
                Some(d) => {
                    let st = d.stats();
                    let per = st.invalidations as f64 / completed.max(1) as f64;
                    let _ = writeln!(
                        out,
                        "; iommu domain {} invalidations={} per_completed_request={per:.3} superpages={}",
                        d.id(),
                        st.invalidations,
                        st.superpages_live
                    );
                }
                None => out.push_str("; no IOMMU domain\n"),
            }
        });
    }
    if out.is_empty() {
        out.push_str("no AHCI controller\n");
    }
    out
}
