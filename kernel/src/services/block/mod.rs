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
    hba: spin::Mutex<Hba>,
    irq: IrqMode,
    /// Ports whose disk is read-only (bit per port).
    read_only: u32,
}

static CONTROLLERS: spin::Once<Vec<HbaEntry>> = spin::Once::new();
static FORCE_POLLING: AtomicBool = AtomicBool::new(false);

fn controllers() -> &'static [HbaEntry] {
    CONTROLLERS.get().map(Vec::as_slice).unwrap_or(&[])
}

fn with_hba<T>(entry: &HbaEntry, f: impl FnOnce(&mut Hba) -> T) -> T {
    x86_64::instructions::interrupts::without_interrupts(|| f(&mut entry.hba.lock()))
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
        entries.push(HbaEntry { bdf, hba: spin::Mutex::new(hba), irq, read_only });
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
        /// The bytes.
        data: Vec<u8>,
    },
    /// Flush the device's write cache.
    Flush,
}

/// A finished command.
#[derive(Debug)]
pub struct Done {
    /// The data read (empty for writes and flushes).
    pub data: Vec<u8>,
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
        self.submit_with(op, SubmitOptions::default())
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
                Request::Read { lba, buffers: vec![IoBuffer::Heap(vec![0; sectors as usize * sector])] }
            }
            BlockOp::Write { lba, data } => {
                if self.read_only() {
                    return Err(BlockError::ReadOnly(self.name()));
                }
                Request::Write { lba, buffers: vec![IoBuffer::Heap(data)] }
            }
            BlockOp::Flush => Request::Flush,
        })
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
                    let result = r.and_then(|req| {
                        h.submit_with(self.port, req, SubmitOptions::default()).map_err(BlockError::Refused)
                    });
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
        let queued = !matches!(op, BlockOp::Flush);
        let mut request = Some(self.request_for(op)?);
        loop {
            let result = with_hba(self.entry(), |h| match h.can_accept(self.port, queued) {
                Err(SubmitError::QueueFull { .. } | SubmitError::Busy { .. }) => {
                    h.service();
                    None
                }
                _ => Some(h.submit_with(self.port, request.take()?, SubmitOptions::default())),
            });
            if let Some(result) = result {
                return result.map(|id| Ticket { disk: *self, id }).map_err(BlockError::Refused);
            }
            core::hint::spin_loop();
        }
    }

    /// Reads `sectors` sectors at `lba`.
    pub fn read(&self, lba: u64, sectors: u32) -> Result<Vec<u8>, BlockError> {
        self.run(BlockOp::Read { lba, sectors }).map(|d| d.data)
    }

    /// Writes whole sectors at `lba`.
    pub fn write(&self, lba: u64, data: Vec<u8>) -> Result<(), BlockError> {
        self.run(BlockOp::Write { lba, data }).map(|_| ())
    }

    /// FLUSH CACHE EXT.
    pub fn flush(&self) -> Result<(), BlockError> {
        self.run(BlockOp::Flush).map(|_| ())
    }
}

fn finish(done: Completion) -> Result<Done, BlockError> {
    done.result.map_err(BlockError::Failed)?;
    let is_read = matches!(done.command.kind, ahci::CommandKind::ReadDmaExt | ahci::CommandKind::ReadFpdmaQueued);
    let mut data = Vec::new();
    if is_read {
        for buffer in done.buffers {
            match buffer {
                // The usual case, one heap buffer: handed over without a copy.
                IoBuffer::Heap(v) if data.is_empty() => data = v,
                other => data.extend_from_slice(&other),
            }
        }
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
        });
    }
    if out.is_empty() {
        out.push_str("no AHCI controller\n");
    }
    out
}
