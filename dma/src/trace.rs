//! The DMA event trace: watch DMA while it happens.
//!
//! Every streaming map, unmap and sync, every bounce copy, every pool and coherent allocation
//! and free, every IOTLB invalidation and every IOMMU fault can be recorded here, each as one
//! [`Event`]: when, which device, which direction, the bus address the device uses and the
//! physical address it reaches, how many bytes, and through which mapper. The shell's
//! `trace on|off|show [N]` and the `dma:trace` view read it; Linux has the same idea in its
//! `dma` trace events (Linux 6.8 include/trace/events/dma.h: `dma_map_page`, `dma_unmap_page`,
//! `dma_alloc`, `dma_free`, `dma_sync_single_for_cpu`, …), read through tracefs.
//!
//! # Rules of use
//! - **Off by default, and free when off.** Every hook is [`hook`]`(|| event)`: one relaxed
//!   atomic load of [`enabled`] and a branch. The closure that builds the event runs only when
//!   the trace is on.
//! - **No allocation, no lock on the recording path.** The ring is a static array of
//!   [`CAPACITY`] slots. A writer claims a ticket with one `fetch_add`; its slot is
//!   `ticket % CAPACITY`. Each slot is a small sequence lock made of atomics only: the writer
//!   marks the slot busy (odd sequence), stores the words, and publishes (even sequence = ticket
//!   × 2 + 2); a reader copies the words and keeps them only if the sequence was the same,
//!   even and expected before and after. So recording is safe from any CPU and from an
//!   interrupt handler that interrupts a writer or a reader: nobody ever waits.
//! - **Bounded, newest wins.** When the ring is full the oldest records are overwritten. A writer
//!   that finds its slot busy (another writer a whole lap behind) drops its record and counts
//!   it in [`dropped`] rather than wait.
//! - **Time** comes from the clock the kernel installs with [`set_clock`] (microseconds since
//!   boot from the TSC); without one (host tests) it is a counter that ticks once per event.
//!
//! # Example
//! ```
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, mapper::Direct, DmaDevice, PhysMemory, PageBuffer, ToDevice};
//! # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
//! # let phys: Arc<dyn PhysMemory> = mem.clone();
//! use dma::trace::{self, EventKind};
//! let dev = DmaDevice::new("00:09.0 trace-doc", phys.clone(), Arc::new(Direct::new(phys.clone())));
//! trace::enable(Some("00:09.0"));
//! let mark = trace::mark();
//! let buf = PageBuffer::alloc(&phys, 64, 0xffff_ffff).unwrap();
//! let tx = dev.map(buf, ToDevice).unwrap();
//! let _buf = tx.unmap();
//! let events = trace::since(mark);
//! let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
//! assert_eq!(kinds, [EventKind::Map, EventKind::Unmap]);
//! assert_eq!(events[0].bus, events[1].bus);
//! assert_eq!(events[0].device.as_str(), "00:09.0 trace-doc");
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use crate::device::DmaDevice;
use crate::direction::DmaDirection;
use crate::mapper::{CoherentRegion, Mapped};
use crate::phys::{BusAddr, PAGE_SIZE, PhysAddr};

/// How many events the ring holds; older ones are overwritten.
pub const CAPACITY: usize = 1024;
/// Bytes of a device name kept in an event (longer names are cut at a character boundary).
pub const NAME_BYTES: usize = 24;
/// Words of one encoded event.
const WORDS: usize = 9;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A streaming mapping was made (`dma_map_single`/`dma_map_page`/one `map_sg` segment).
    Map,
    /// A streaming mapping ended.
    Unmap,
    /// (Part of) a mapping was given to the CPU.
    SyncForCpu,
    /// (Part of) a mapping was given back to the device.
    SyncForDevice,
    /// Data was copied between a buffer and its bounce slot (see [`Detail::Bounce`]).
    BounceCopy,
    /// A DMA pool block was handed out.
    PoolAlloc,
    /// A DMA pool block came back.
    PoolFree,
    /// A coherent region was allocated.
    CoherentAlloc,
    /// A coherent region was freed.
    CoherentFree,
    /// An IOTLB invalidation was sent to an IOMMU (see [`Detail::Invalidation`]).
    Invalidate,
    /// An IOMMU blocked a device access (see [`Detail::Fault`]).
    Fault,
    /// A buffer was taken from a device's pre-mapped I/O arena ([`crate::DmaArena`]): no
    /// mapping is made and nothing is invalidated, the pages were mapped when the arena grew.
    ArenaAlloc,
    /// An arena buffer came back to its arena. Its device can still reach it (see the arena's
    /// documentation); nothing is unmapped.
    ArenaFree,
}

impl EventKind {
    const ALL: [EventKind; 13] = [
        EventKind::Map,
        EventKind::Unmap,
        EventKind::SyncForCpu,
        EventKind::SyncForDevice,
        EventKind::BounceCopy,
        EventKind::PoolAlloc,
        EventKind::PoolFree,
        EventKind::CoherentAlloc,
        EventKind::CoherentFree,
        EventKind::Invalidate,
        EventKind::Fault,
        EventKind::ArenaAlloc,
        EventKind::ArenaFree,
    ];

    /// The word the views use.
    pub const fn text(self) -> &'static str {
        match self {
            EventKind::Map => "map",
            EventKind::Unmap => "unmap",
            EventKind::SyncForCpu => "sync-cpu",
            EventKind::SyncForDevice => "sync-dev",
            EventKind::BounceCopy => "bounce",
            EventKind::PoolAlloc => "pool-alloc",
            EventKind::PoolFree => "pool-free",
            EventKind::CoherentAlloc => "coh-alloc",
            EventKind::CoherentFree => "coh-free",
            EventKind::Invalidate => "iotlb-inv",
            EventKind::Fault => "FAULT",
            EventKind::ArenaAlloc => "arena-alloc",
            EventKind::ArenaFree => "arena-free",
        }
    }
}

/// Which mapper turned the physical address into the bus address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapperKind {
    /// Not about a mapper (an IOMMU's own invalidation record names the unit instead).
    None,
    /// Bus address = physical address.
    Direct,
    /// Through a bounce area (swiotlb).
    Bounce,
    /// Through an IOMMU's translation tables.
    Iommu,
}

impl MapperKind {
    /// From a mapper's [`kind`](crate::mapper::DmaMapper::kind) name.
    pub fn from_name(name: &str) -> MapperKind {
        match name {
            "direct" | "direct+bounce" => MapperKind::Direct,
            "bounce" => MapperKind::Bounce,
            "iommu" | "iommu+isolation" => MapperKind::Iommu,
            _ => MapperKind::None,
        }
    }

    /// The word the views use.
    pub const fn text(self) -> &'static str {
        match self {
            MapperKind::None => "-",
            MapperKind::Direct => "direct",
            MapperKind::Bounce => "bounce",
            MapperKind::Iommu => "iommu",
        }
    }
}

/// How much of an IOTLB one invalidation drops (VT-d spec §6.5.1, IIRG/IAIG granularities).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// Every cached translation of the unit.
    Global,
    /// Every cached translation of one domain.
    Domain,
    /// Page-selective: 2^am pages at one IOVA of one domain.
    Page,
}

/// What only some kinds of event carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Nothing more.
    None,
    /// A bounce copy: which way the bytes went, and the slot's physical address.
    Bounce {
        /// `true`: buffer → slot (the device will read); `false`: slot → buffer.
        to_slot: bool,
        /// Physical address of the bounce slot's bytes.
        slot: u64,
    },
    /// An IOTLB invalidation (the event's `bus` is the first IOVA for page-selective ones).
    Invalidation {
        /// Global, domain or page-selective.
        granularity: Granularity,
        /// The domain id (0 for global).
        domain: u16,
        /// Address mask: log2 of the pages covered (page-selective only).
        am: u8,
    },
    /// An IOMMU fault (the event's `bus` is the faulting page's IOVA).
    Fault {
        /// The fault reason code the unit recorded (VT-d spec Appendix A).
        reason: u8,
        /// Write (`true`) or read request.
        write: bool,
    },
}

/// A device name kept inline (no allocation on the recording path).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeviceName {
    bytes: [u8; NAME_BYTES],
    len: u8,
}

impl DeviceName {
    /// `name`, cut to at most [`NAME_BYTES`] bytes at a character boundary.
    pub fn new(name: &str) -> DeviceName {
        let mut len = name.len().min(NAME_BYTES);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; NAME_BYTES];
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        DeviceName { bytes, len: len as u8 }
    }

    /// A name written by `args` (for example a requester id and a unit), cut like
    /// [`DeviceName::new`]; formatting writes into the inline bytes, it does not allocate.
    pub fn from_args(args: fmt::Arguments<'_>) -> DeviceName {
        struct Cut {
            buf: [u8; NAME_BYTES * 2],
            len: usize,
        }
        impl fmt::Write for Cut {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let n = s.len().min(self.buf.len() - self.len);
                self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
                self.len += n;
                Ok(())
            }
        }
        let mut cut = Cut { buf: [0; NAME_BYTES * 2], len: 0 };
        let _ = fmt::write(&mut cut, args);
        // Cut at a byte budget, then back to a character boundary.
        let mut len = cut.len;
        while core::str::from_utf8(&cut.buf[..len]).is_err() {
            len -= 1;
        }
        DeviceName::new(core::str::from_utf8(&cut.buf[..len]).unwrap_or(""))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("?")
    }
}

impl fmt::Debug for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// One recorded event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// When: microseconds since boot in the kernel, a per-event counter on the host (see
    /// [`set_clock`]). Filled in when recorded.
    pub time: u64,
    /// What happened.
    pub kind: EventKind,
    /// The device (for IOMMU invalidations, the unit).
    pub device: DeviceName,
    /// The mapping's direction, if the event has one.
    pub dir: Option<DmaDirection>,
    /// The bus address the device uses (an IOVA behind an IOMMU).
    pub bus: u64,
    /// The physical address that bus address reaches (0 when unknown, as for a fault).
    pub phys: u64,
    /// Bytes (pages × 4096 for an invalidation).
    pub size: u64,
    /// The mapper.
    pub mapper: MapperKind,
    /// What only some kinds carry.
    pub detail: Detail,
}

impl Event {
    /// An event of `kind` for the device called `device` whose mapper's kind name is `mapper`;
    /// the addresses and size start at 0.
    pub fn new(kind: EventKind, device: &str, mapper: &str) -> Event {
        Event {
            time: 0,
            kind,
            device: DeviceName::new(device),
            dir: None,
            bus: 0,
            phys: 0,
            size: 0,
            mapper: MapperKind::from_name(mapper),
            detail: Detail::None,
        }
    }

    /// With a direction.
    pub fn dir(mut self, dir: DmaDirection) -> Event {
        self.dir = Some(dir);
        self
    }

    /// With bus address, physical address and size.
    pub fn at(mut self, bus: u64, phys: u64, size: u64) -> Event {
        (self.bus, self.phys, self.size) = (bus, phys, size);
        self
    }

    /// With a detail.
    pub fn detail(mut self, detail: Detail) -> Event {
        self.detail = detail;
        self
    }

    fn encode(&self) -> [u64; WORDS] {
        let kind = EventKind::ALL.iter().position(|k| *k == self.kind).unwrap_or(0) as u64;
        let dir = match self.dir {
            None => 0,
            Some(DmaDirection::ToDevice) => 1,
            Some(DmaDirection::FromDevice) => 2,
            Some(DmaDirection::Bidirectional) => 3,
        };
        let mapper = self.mapper as u64;
        // Bits 0-7 kind, 8-9 direction, 10-11 mapper, 12-13 detail tag, 16-23 name length,
        // 24-31 am / reason, 32 to-slot / write, 33-34 granularity, 48-63 domain.
        let (tag, aux, small, flag, gran, domain) = match self.detail {
            Detail::None => (0, 0, 0, false, 0, 0),
            Detail::Bounce { to_slot, slot } => (1, slot, 0, to_slot, 0, 0),
            Detail::Invalidation { granularity, domain, am } => (2, 0, am, false, granularity as u64, domain),
            Detail::Fault { reason, write } => (3, 0, reason, write, 0, 0),
        };
        let packed = kind
            | dir << 8
            | mapper << 10
            | tag << 12
            | (self.device.len as u64) << 16
            | (small as u64) << 24
            | (flag as u64) << 32
            | gran << 33
            | (domain as u64) << 48;
        let mut name = [0u64; 3];
        for (i, chunk) in self.device.bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            name[i] = u64::from_le_bytes(word);
        }
        [self.time, self.bus, self.phys, self.size, aux, packed, name[0], name[1], name[2]]
    }

    fn decode(w: &[u64; WORDS]) -> Event {
        let packed = w[5];
        let field = |shift: u32, bits: u32| (packed >> shift) & ((1 << bits) - 1);
        let dir = match field(8, 2) {
            1 => Some(DmaDirection::ToDevice),
            2 => Some(DmaDirection::FromDevice),
            3 => Some(DmaDirection::Bidirectional),
            _ => None,
        };
        let mapper = match field(10, 2) {
            1 => MapperKind::Direct,
            2 => MapperKind::Bounce,
            3 => MapperKind::Iommu,
            _ => MapperKind::None,
        };
        let small = field(24, 8) as u8;
        let flag = field(32, 1) != 0;
        let detail = match field(12, 2) {
            1 => Detail::Bounce { to_slot: flag, slot: w[4] },
            2 => Detail::Invalidation {
                granularity: match field(33, 2) {
                    0 => Granularity::Global,
                    1 => Granularity::Domain,
                    _ => Granularity::Page,
                },
                domain: field(48, 16) as u16,
                am: small,
            },
            3 => Detail::Fault { reason: small, write: flag },
            _ => Detail::None,
        };
        let mut bytes = [0u8; NAME_BYTES];
        for i in 0..3 {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&w[6 + i].to_le_bytes());
        }
        let len = (field(16, 8) as usize).min(NAME_BYTES) as u8;
        Event {
            time: w[0],
            kind: EventKind::ALL[(field(0, 8) as usize).min(EventKind::ALL.len() - 1)],
            device: DeviceName { bytes, len },
            dir,
            bus: w[1],
            phys: w[2],
            size: w[3],
            mapper,
            detail,
        }
    }
}

/// One slot of the ring: a sequence word and the event's words, all atomic, so that a reader
/// racing a writer sees a torn copy it then throws away, never undefined behaviour.
struct Slot {
    /// 0: never written; odd: being written; `2 × ticket + 2`: holds event number `ticket`.
    seq: AtomicU64,
    words: [AtomicU64; WORDS],
}

#[allow(clippy::declare_interior_mutable_const)] // used only to initialise the static array
const EMPTY_SLOT: Slot = Slot { seq: AtomicU64::new(0), words: [const { AtomicU64::new(0) }; WORDS] };

static RING: [Slot; CAPACITY] = [EMPTY_SLOT; CAPACITY];
/// The next ticket: how many events have been claimed since boot.
static HEAD: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Host clock: one tick per event.
static TICKS: AtomicU64 = AtomicU64::new(0);
/// The kernel's clock and the unit it counts in.
type Clock = (fn() -> u64, &'static str);
static CLOCK: spin::Once<Clock> = spin::Once::new();
/// Optional filter: only devices whose name starts with these bytes (length in `FILTER_LEN`).
static FILTER: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static FILTER_LEN: AtomicU64 = AtomicU64::new(0);

/// Whether the trace records. The one load every hook pays.
#[inline(always)]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Records the event `make` builds, if the trace is on. When it is off this is one relaxed
/// load and a branch: `make` does not run.
#[inline(always)]
pub fn hook(make: impl FnOnce() -> Event) {
    if enabled() {
        record(make());
    }
}

/// Turns the trace on. With `Some(prefix)`, only events of devices whose name starts with
/// `prefix` (for example a BDF, `"00:02.0"`) are kept.
pub fn enable(filter: Option<&str>) {
    let name = DeviceName::new(filter.unwrap_or(""));
    for (i, chunk) in name.bytes.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        FILTER[i].store(u64::from_le_bytes(word), Ordering::Relaxed);
    }
    FILTER_LEN.store(name.len as u64, Ordering::Relaxed);
    ENABLED.store(true, Ordering::Release);
}

/// Turns the trace off; what it recorded stays readable.
pub fn disable() {
    ENABLED.store(false, Ordering::Release);
}

/// Installs the kernel's clock: `now` and the unit it counts in (for the views' header).
/// Only the first call counts.
pub fn set_clock(now: fn() -> u64, unit: &'static str) {
    CLOCK.call_once(|| (now, unit));
}

fn now() -> u64 {
    match CLOCK.get() {
        Some((f, _)) => f(),
        None => TICKS.fetch_add(1, Ordering::Relaxed) + 1,
    }
}

fn passes_filter(name: &DeviceName) -> bool {
    let len = FILTER_LEN.load(Ordering::Relaxed) as usize;
    if len == 0 {
        return true;
    }
    let mut filter = [0u8; NAME_BYTES];
    for (i, word) in FILTER.iter().enumerate() {
        filter[i * 8..i * 8 + 8].copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    let len = len.min(NAME_BYTES);
    name.len as usize >= len && name.bytes[..len] == filter[..len]
}

/// Records `event` now (stamping its time), whether or not the trace is on. Hooks call
/// [`hook`] instead. Never blocks, never allocates.
#[inline(never)]
pub fn record(mut event: Event) {
    if !passes_filter(&event.device) {
        return;
    }
    event.time = now();
    let ticket = HEAD.fetch_add(1, Ordering::Relaxed);
    let slot = &RING[(ticket % CAPACITY as u64) as usize];
    let busy = 2 * ticket + 1;
    let old = slot.seq.load(Ordering::Relaxed);
    // Busy (odd) or already holding a newer event: a writer a lap away owns it; drop ours.
    if old % 2 == 1 || old > busy || slot.seq.compare_exchange(old, busy, Ordering::Acquire, Ordering::Relaxed).is_err()
    {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    fence(Ordering::Release);
    for (word, value) in slot.words.iter().zip(event.encode()) {
        word.store(value, Ordering::Relaxed);
    }
    slot.seq.store(busy + 1, Ordering::Release);
}

/// How many events have been claimed since boot (the next event's number).
pub fn mark() -> u64 {
    HEAD.load(Ordering::Acquire)
}

/// Events dropped because their slot was busy.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn read(ticket: u64) -> Option<Event> {
    let slot = &RING[(ticket % CAPACITY as u64) as usize];
    let want = 2 * ticket + 2;
    if slot.seq.load(Ordering::Acquire) != want {
        return None;
    }
    let mut words = [0u64; WORDS];
    for (out, word) in words.iter_mut().zip(&slot.words) {
        *out = word.load(Ordering::Relaxed);
    }
    fence(Ordering::Acquire);
    (slot.seq.load(Ordering::Relaxed) == want).then(|| Event::decode(&words))
}

/// Every event still in the ring numbered `from` or later, oldest first (events overwritten
/// or still being written are left out).
pub fn since(from: u64) -> Vec<Event> {
    let head = mark();
    let first = from.max(head.saturating_sub(CAPACITY as u64));
    (first..head).filter_map(read).collect()
}

/// The last `n` events, oldest first.
pub fn last(n: usize) -> Vec<Event> {
    since(mark().saturating_sub(n.min(CAPACITY) as u64))
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.dir {
            Some(DmaDirection::ToDevice) => "to-dev",
            Some(DmaDirection::FromDevice) => "from-dev",
            Some(DmaDirection::Bidirectional) => "bidir",
            None => "-",
        };
        write!(
            f,
            "{:>10} {:<20} {:<10} {:<8} {:<6} bus={:#011x} phys={:#011x} size={:<6}",
            self.time,
            self.device.as_str(),
            self.kind.text(),
            dir,
            self.mapper.text(),
            self.bus,
            self.phys,
            self.size
        )?;
        match self.detail {
            Detail::None => Ok(()),
            Detail::Bounce { to_slot, slot } => {
                write!(f, " {} slot={slot:#x}", if to_slot { "buffer->slot" } else { "slot->buffer" })
            }
            Detail::Invalidation { granularity, domain, am } => match granularity {
                Granularity::Global => f.write_str(" global"),
                Granularity::Domain => write!(f, " domain={domain}"),
                Granularity::Page => write!(f, " page-selective domain={domain} am={am} ({} pages)", 1u64 << am),
            },
            Detail::Fault { reason, write } => {
                write!(f, " {} reason={reason:#04x}", if write { "write" } else { "read" })
            }
        }
    }
}

/// Renders the last `n` events (all the ring holds for `None`) with a header line: the state,
/// the clock's unit, how many were recorded and dropped.
pub fn render(n: Option<usize>) -> String {
    let events = last(n.unwrap_or(CAPACITY));
    let unit = CLOCK.get().map_or("event#", |(_, unit)| unit);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {}: {} events recorded, {} dropped, ring of {CAPACITY}; time in {unit}",
        if enabled() { "on" } else { "off" },
        mark(),
        dropped()
    );
    let _ = writeln!(
        out,
        "{:>10} {:<20} {:<10} {:<8} {:<6} {:<15} {:<16} size",
        "time", "device", "event", "dir", "mapper", "bus", "phys"
    );
    for e in &events {
        let _ = writeln!(out, "{e}");
    }
    out
}

// ----- The hooks the DMA service itself calls ---------------------------------------------

/// A streaming mapping's step (`kind` is `Map`, `Unmap`, `SyncForCpu` or `SyncForDevice`) for
/// `offset..offset+len` of `m`, and the bounce copy that step makes, if the mapping bounces.
#[inline(always)]
pub(crate) fn streaming(dev: &DmaDevice, kind: EventKind, m: &Mapped, dir: DmaDirection, offset: usize, len: usize) {
    if enabled() {
        record_streaming(dev, kind, m, dir, offset, len);
    }
}

#[cold]
#[inline(never)]
fn record_streaming(dev: &DmaDevice, kind: EventKind, m: &Mapped, dir: DmaDirection, offset: usize, len: usize) {
    let off = offset as u64;
    let (bus, phys) = (m.bus.0 + off, m.phys.0 + off);
    let mut event = Event::new(kind, dev.name(), dev.mapper().kind()).dir(dir).at(bus, phys, len as u64);
    // A Direct mapper with a bounce area bounces only what the device cannot reach.
    if m.bounce.is_some() && event.mapper == MapperKind::Direct {
        event.mapper = MapperKind::Bounce;
    }
    // When a bounced mapping copies, by the rule every mapper follows (see `mapper::bounce`):
    // at map always (so a FromDevice slot never shows stale data), back to the buffer at
    // unmap and sync-for-CPU if the device wrote, into the slot at sync-for-device if it reads.
    let copy = match kind {
        EventKind::Map | EventKind::SyncForDevice => (kind == EventKind::Map || dir.device_reads()).then_some(true),
        EventKind::Unmap | EventKind::SyncForCpu => dir.device_writes().then_some(false),
        _ => None,
    };
    let bounce = match (m.bounce, copy) {
        (Some(slot), Some(to_slot)) if len > 0 => {
            Some(Event { kind: EventKind::BounceCopy, ..event }.detail(Detail::Bounce { to_slot, slot: slot.0 + off }))
        }
        _ => None,
    };
    // In the order the data moves: into the slot after the map, out of it before the unmap.
    match (kind, bounce) {
        (EventKind::Unmap | EventKind::SyncForCpu, Some(copy)) => {
            record(copy);
            record(event);
        }
        (_, Some(copy)) => {
            record(event);
            record(copy);
        }
        (_, None) => record(event),
    }
}

/// A coherent region was allocated or freed.
#[inline(always)]
pub(crate) fn coherent(dev: &DmaDevice, kind: EventKind, r: &CoherentRegion) {
    hook(|| Event::new(kind, dev.name(), dev.mapper().kind()).at(r.bus.0, r.phys.0, (r.frames * PAGE_SIZE) as u64));
}

/// An arena buffer was handed out or came back.
#[inline(always)]
pub(crate) fn arena(dev: &DmaDevice, kind: EventKind, bus: BusAddr, phys: PhysAddr, size: usize) {
    hook(|| Event::new(kind, dev.name(), dev.mapper().kind()).at(bus.0, phys.0, size as u64));
}

/// A pool block of `size` bytes at CPU address `cpu` and bus address `bus` was handed out or
/// came back. The pool's fast paths call this, so the test is all that is inline: the event is
/// built out of line, from scalars, so that it takes no registers from the caller.
#[inline(always)]
pub(crate) fn pool(dev: &DmaDevice, kind: EventKind, cpu: *const u8, bus: BusAddr, size: usize) {
    if enabled() {
        record_pool(dev, kind, cpu, bus.0, size);
    }
}

/// [`pool`]'s out-of-line half, for callers that make the [`enabled`] test themselves.
#[cold]
#[inline(never)]
pub(crate) fn record_pool(dev: &DmaDevice, kind: EventKind, cpu: *const u8, bus: u64, size: usize) {
    let phys = dev.memory().virt_to_phys(cpu).map_or(0, |p| p.0);
    record(Event::new(kind, dev.name(), dev.mapper().kind()).at(bus, phys, size as u64));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_encode_and_decode() {
        let cases = [
            Event::new(EventKind::Map, "00:02.0 e1000", "iommu").dir(DmaDirection::FromDevice).at(0x1000, 0x2345, 64),
            Event::new(EventKind::BounceCopy, "a-very-long-device-name-cut-here", "bounce")
                .detail(Detail::Bounce { to_slot: true, slot: 0xfff0_0000 }),
            Event::new(EventKind::Invalidate, "dmar0", "").at(0x40_0000, 0, 8 * 4096).detail(Detail::Invalidation {
                granularity: Granularity::Page,
                domain: 0xabcd,
                am: 3,
            }),
            Event::new(EventKind::Fault, "00:03.0", "iommu").detail(Detail::Fault { reason: 6, write: false }),
        ];
        for e in cases {
            assert_eq!(Event::decode(&e.encode()), e);
        }
        assert_eq!(DeviceName::new("a-very-long-device-name-cut-here").as_str(), "a-very-long-device-name-");
        assert_eq!(DeviceName::new("ééééééééééééé").as_str().len(), 24);
    }

    #[test]
    fn records_are_read_back_in_order_and_the_ring_wraps() {
        // Other tests in this binary may record too: only this device's events are checked.
        record(Event::new(EventKind::PoolAlloc, "ring-test", "direct").at(1, 1, 1));
        let mark0 = mark();
        for i in 0..(CAPACITY as u64 + 10) {
            record(Event::new(EventKind::PoolAlloc, "ring-test", "direct").at(i, i, 1));
        }
        let mine: Vec<u64> = since(mark0).iter().filter(|e| e.device.as_str() == "ring-test").map(|e| e.bus).collect();
        assert!(mine.len() <= CAPACITY);
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "out of order");
        assert_eq!(mine.last(), Some(&(CAPACITY as u64 + 9)));
        assert!(render(Some(3)).lines().count() == 5);
    }
}
