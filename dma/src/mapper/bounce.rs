//! Bounce buffering (Linux's swiotlb): copy data through memory the device can reach.
//!
//! A 32-bit device cannot reach a buffer above 4 GiB. Without an IOMMU the only way to serve it
//! is to copy: at map time the data goes into a slot below the device's limit, the device works
//! on the slot, and the data is copied back when the CPU takes ownership again. Which copies are
//! needed follows from the direction:
//!
//! | hand-over        | ToDevice      | FromDevice          | Bidirectional |
//! |------------------|---------------|---------------------|---------------|
//! | map              | buffer → slot | buffer → slot (\*)  | buffer → slot |
//! | sync_for_cpu     | —             | slot → buffer       | slot → buffer |
//! | sync_for_device  | buffer → slot | —                   | buffer → slot |
//! | unmap            | —             | slot → buffer       | slot → buffer |
//!
//! (\*) A FromDevice slot is filled from the buffer too. A device may write less than the whole
//! mapping; whatever it leaves untouched is copied back at unmap. If the slot still held an
//! earlier user's data, that data would leak into this buffer (Linux fixed exactly this in 2022,
//! CVE-2022-0854). Initialising from the buffer also keeps the untouched bytes unchanged.
//!
//! Invariants of [`BounceArea`]: a slot run is handed to at most one mapping at a time (the
//! bitmap bit of every slot in it is set while it is); slot runs are contiguous; the whole area
//! lies at or below `last_addr()`.
//!
//! # Example
//! The table above, watched through the area's counters with a [`Bounce`] mapper (every
//! mapping bounces). `ToDevice` copies in at map and nothing back; `FromDevice` copies in at
//! map (so the slot holds no stale data) and back at `sync_for_cpu` and at unmap. When no run
//! of free slots is large enough, the map fails instead of waiting.
//! ```
//! # use std::sync::Arc;
//! # use dma::sim::{SimDevice, SimMemory};
//! # use dma::{DmaDevice, FromDevice, MapError, PageBuffer, PhysMemory, ToDevice};
//! use dma::mapper::{Bounce, BounceArea};
//! # let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(1 << 20, 1 << 20);
//! let area = BounceArea::new(phys.clone(), 0xffff_ffff, 16 * 1024).unwrap(); // 8 slots
//! let dev = DmaDevice::new("00:04.1 bounce-demo", phys.clone(), Arc::new(Bounce::new(phys.clone(), area.clone())));
//! let hw = SimDevice::new(&dev);
//! let copies = || (area.stats().copies_to_slot, area.stats().copies_from_slot);
//!
//! let mut buf = PageBuffer::alloc(&phys, 100, u64::MAX).unwrap();
//! buf[..2].copy_from_slice(b"tx");
//! let tx = dev.map(buf, ToDevice).unwrap();
//! let mut seen = [0u8; 2];
//! hw.read(tx.bus_addr(), &mut seen).unwrap(); // the device reads the slot's copy
//! assert_eq!(&seen, b"tx");
//! let buf = tx.unmap();
//! assert_eq!(copies(), (1, 0));
//!
//! let mut rx = dev.map(buf, FromDevice).unwrap();
//! hw.write(rx.bus_addr(), b"rx").unwrap();
//! assert_eq!(&rx.sync_for_cpu().as_slice()[..2], b"rx"); // slot -> buffer
//! let _buf = rx.unmap(); // slot -> buffer again, slot released
//! assert_eq!(copies(), (2, 2));
//! assert_eq!(area.stats().slots_used, 0);
//!
//! let big = PageBuffer::alloc(&phys, 20 * 1024, u64::MAX).unwrap(); // 10 slots' worth
//! let err = dev.map(big, ToDevice).unwrap_err().error;
//! assert_eq!(err, MapError::BounceExhausted { len: 20 * 1024 });
//! ```

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{CoherentRegion, DeviceLimits, DmaMapper, Mapped};
use crate::direction::DmaDirection;
use crate::error::{AllocError, MapError, MaskUnsupported};
use crate::phys::{BusAddr, FrameRequest, PAGE_SIZE, PhysAddr, PhysMemory, frames_for};

/// Size of one bounce slot (Linux's IO_TLB_SIZE): mappings take whole runs of slots.
pub const BOUNCE_SLOT_SIZE: usize = 2048;

/// Counters of a bounce area, so tests and views can see exactly when data was copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceStats {
    /// Slots in the area.
    pub slots_total: usize,
    /// Slots in use now.
    pub slots_used: usize,
    /// Copies from a CPU buffer into a slot (map, sync_for_device).
    pub copies_to_slot: u64,
    /// Copies from a slot back into a CPU buffer (sync_for_cpu, unmap).
    pub copies_from_slot: u64,
    /// Bytes copied into slots.
    pub bytes_to_slot: u64,
    /// Bytes copied out of slots.
    pub bytes_from_slot: u64,
    /// Map attempts refused because no slot run was free.
    pub exhausted: u64,
}

struct SlotMap {
    /// One bit per slot, set while the slot belongs to a mapping.
    used: Vec<u64>,
    /// Where the next search starts (next-fit keeps searches short).
    cursor: usize,
    in_use: usize,
}

/// A fixed pool of bounce slots below an address limit, shareable by mappers and devices.
pub struct BounceArea {
    memory: Arc<dyn PhysMemory>,
    base: PhysAddr,
    frames: usize,
    slots: usize,
    slot_map: crate::sync::Mutex<SlotMap>,
    copies_to: AtomicU64,
    copies_from: AtomicU64,
    bytes_to: AtomicU64,
    bytes_from: AtomicU64,
    exhausted: AtomicU64,
}

impl BounceArea {
    /// Allocates `bytes` (rounded up to whole pages) of bounce slots at or below `limit`
    /// (`0xffff_ffff` to serve 32-bit devices).
    pub fn new(memory: Arc<dyn PhysMemory>, limit: u64, bytes: usize) -> Result<Arc<BounceArea>, AllocError> {
        let frames = frames_for(bytes);
        let phys = memory
            .alloc_frames(FrameRequest { count: frames, max_addr: limit, align: PAGE_SIZE as u64 })
            .ok_or(AllocError::OutOfMemory { bytes, limit })?;
        let size = frames * PAGE_SIZE;
        if phys.0.checked_add(size as u64 - 1).is_none_or(|last| last > limit) {
            // SAFETY: just allocated with this count, unused.
            unsafe { memory.free_frames(phys, frames) };
            return Err(AllocError::BadFrames { phys });
        }
        let slots = size / BOUNCE_SLOT_SIZE;
        log::info!("dma: bounce area of {} slots at {} (limit {:#x})", slots, phys, limit);
        Ok(Arc::new(BounceArea {
            memory,
            base: phys,
            frames,
            slots,
            slot_map: crate::sync::Mutex::new(SlotMap { used: vec![0; slots.div_ceil(64)], cursor: 0, in_use: 0 }),
            copies_to: AtomicU64::new(0),
            copies_from: AtomicU64::new(0),
            bytes_to: AtomicU64::new(0),
            bytes_from: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        }))
    }

    /// Physical address of the first slot.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// Highest physical address inside the area.
    pub fn last_addr(&self) -> u64 {
        self.base.0 + (self.frames * PAGE_SIZE) as u64 - 1
    }

    /// The area's counters.
    pub fn stats(&self) -> BounceStats {
        BounceStats {
            slots_total: self.slots,
            slots_used: self.slot_map.lock().in_use,
            copies_to_slot: self.copies_to.load(Ordering::Relaxed),
            copies_from_slot: self.copies_from.load(Ordering::Relaxed),
            bytes_to_slot: self.bytes_to.load(Ordering::Relaxed),
            bytes_from_slot: self.bytes_from.load(Ordering::Relaxed),
            exhausted: self.exhausted.load(Ordering::Relaxed),
        }
    }

    fn alloc_slots(&self, count: usize) -> Option<usize> {
        if count == 0 || count > self.slots {
            return None;
        }
        let mut map = self.slot_map.lock();
        let is_used = |m: &SlotMap, i: usize| m.used[i / 64] & (1 << (i % 64)) != 0;
        let starts = (map.cursor..self.slots).chain(0..map.cursor);
        let mut found = None;
        for start in starts {
            if start + count > self.slots {
                continue;
            }
            if (start..start + count).all(|i| !is_used(&map, i)) {
                found = Some(start);
                break;
            }
        }
        let start = found?;
        for i in start..start + count {
            map.used[i / 64] |= 1 << (i % 64);
        }
        map.in_use += count;
        map.cursor = (start + count) % self.slots;
        Some(start)
    }

    fn free_slots(&self, start: usize, count: usize) {
        let mut map = self.slot_map.lock();
        for i in start..(start + count).min(self.slots) {
            if map.used[i / 64] & (1 << (i % 64)) != 0 {
                map.used[i / 64] &= !(1 << (i % 64));
                map.in_use -= 1;
            }
        }
    }

    fn slot_index(&self, slot: PhysAddr) -> usize {
        ((slot.0 - self.base.0) as usize) / BOUNCE_SLOT_SIZE
    }

    /// Copies `len` bytes between two physical ranges this memory knows.
    ///
    /// # Safety
    /// Both ranges must be allocated memory of `self.memory`, not overlapping, and nobody may
    /// hold a Rust reference to the destination.
    unsafe fn copy(&self, from: PhysAddr, to: PhysAddr, len: usize) {
        let src = self.memory.phys_to_virt(from);
        let dst = self.memory.phys_to_virt(to);
        if src.is_null() || dst.is_null() {
            return;
        }
        // SAFETY: the caller guarantees both ranges are live memory mapped by `phys_to_virt`
        // and distinct (a slot is never the buffer it bounces).
        unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
    }

    fn count_to(&self, len: usize) {
        self.copies_to.fetch_add(1, Ordering::Relaxed);
        self.bytes_to.fetch_add(len as u64, Ordering::Relaxed);
    }

    fn count_from(&self, len: usize) {
        self.copies_from.fetch_add(1, Ordering::Relaxed);
        self.bytes_from.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Takes a slot run for `len` bytes at `phys` and fills it from the buffer (for every
    /// direction, see the module doc).
    pub(crate) fn bounce_in(&self, phys: PhysAddr, len: usize, _dir: DmaDirection) -> Result<PhysAddr, MapError> {
        let count = len.div_ceil(BOUNCE_SLOT_SIZE);
        let Some(start) = self.alloc_slots(count) else {
            self.exhausted.fetch_add(1, Ordering::Relaxed);
            log::warn!("dma: bounce area exhausted mapping {len} bytes");
            return Err(MapError::BounceExhausted { len });
        };
        let slot = PhysAddr(self.base.0 + (start * BOUNCE_SLOT_SIZE) as u64);
        // SAFETY: the slot run was just reserved for this mapping; the buffer is owned by the
        // caller's mapping and is live memory of this `PhysMemory` (it was translated from it).
        unsafe { self.copy(phys, slot, len) };
        self.count_to(len);
        Ok(slot)
    }

    /// Brings device data back (FromDevice/Bidirectional) and releases the slot run.
    ///
    /// # Safety
    /// `mapped` must be a live mapping whose slot came from `bounce_in` of this area.
    pub(crate) unsafe fn bounce_out(&self, mapped: &Mapped, dir: DmaDirection) {
        let Some(slot) = mapped.bounce else { return };
        if dir.device_writes() {
            // SAFETY: the slot run is reserved for this mapping; its buffer is live (caller).
            unsafe { self.copy(slot, mapped.phys, mapped.len) };
            self.count_from(mapped.len);
        }
        self.free_slots(self.slot_index(slot), mapped.len.div_ceil(BOUNCE_SLOT_SIZE));
    }

    /// # Safety
    /// As for `bounce_out`, and `offset + len <= mapped.len`.
    pub(crate) unsafe fn sync_for_cpu(&self, mapped: &Mapped, offset: usize, len: usize, dir: DmaDirection) {
        let Some(slot) = mapped.bounce else { return };
        if dir.device_writes() && len > 0 {
            let off = offset as u64;
            // SAFETY: the range lies inside the live mapping (caller).
            unsafe { self.copy(PhysAddr(slot.0 + off), PhysAddr(mapped.phys.0 + off), len) };
            self.count_from(len);
        }
    }

    /// # Safety
    /// As for `bounce_out`, and `offset + len <= mapped.len`.
    pub(crate) unsafe fn sync_for_device(&self, mapped: &Mapped, offset: usize, len: usize, dir: DmaDirection) {
        let Some(slot) = mapped.bounce else { return };
        if dir.device_reads() && len > 0 {
            let off = offset as u64;
            // SAFETY: the range lies inside the live mapping (caller).
            unsafe { self.copy(PhysAddr(mapped.phys.0 + off), PhysAddr(slot.0 + off), len) };
            self.count_to(len);
        }
    }
}

impl Drop for BounceArea {
    fn drop(&mut self) {
        if self.slot_map.get_mut().in_use != 0 {
            // A device may still be writing into a slot: keep the frames (quarantine).
            log::error!(
                "dma: bounce area at {} dropped with {} slots in use; frames quarantined",
                self.base,
                self.slot_map.get_mut().in_use
            );
            return;
        }
        // SAFETY: the run came from `alloc_frames` with this count and no slot is in use.
        unsafe { self.memory.free_frames(self.base, self.frames) };
    }
}

/// A mapper that bounces every streaming mapping (Linux's `swiotlb=force`), whether the device
/// could reach the buffer or not. Useful to isolate devices from the rest of memory at a copy's
/// cost, and to test bounce paths. Coherent memory is allocated directly below the mask.
pub struct Bounce {
    memory: Arc<dyn PhysMemory>,
    area: Arc<BounceArea>,
}

impl Bounce {
    /// A mapper bouncing everything through `area`.
    pub fn new(memory: Arc<dyn PhysMemory>, area: Arc<BounceArea>) -> Bounce {
        Bounce { memory, area }
    }

    /// The bounce area.
    pub fn area(&self) -> &Arc<BounceArea> {
        &self.area
    }
}

impl DmaMapper for Bounce {
    fn kind(&self) -> &'static str {
        "bounce"
    }

    fn check_mask(&self, mask: u64) -> Result<(), MaskUnsupported> {
        if self.area.last_addr() <= mask { Ok(()) } else { Err(MaskUnsupported::BounceAreaAboveMask) }
    }

    fn map(&self, limits: &DeviceLimits, phys: PhysAddr, len: usize, dir: DmaDirection) -> Result<Mapped, MapError> {
        if len == 0 {
            return Err(MapError::ZeroLength);
        }
        if self.area.last_addr() > limits.mask {
            return Err(MapError::BeyondMask { phys: self.area.base(), len, mask: limits.mask });
        }
        let slot = self.area.bounce_in(phys, len, dir)?;
        Ok(Mapped { bus: BusAddr(slot.0), phys, len, bounce: Some(slot) })
    }

    unsafe fn unmap(&self, mapped: &Mapped, dir: DmaDirection) {
        // SAFETY: forwarded caller guarantee: `mapped` came from this mapper and is live.
        unsafe { self.area.bounce_out(mapped, dir) };
    }

    unsafe fn sync_for_cpu(&self, mapped: &Mapped, offset: usize, len: usize, dir: DmaDirection) {
        // SAFETY: forwarded caller guarantee.
        unsafe { self.area.sync_for_cpu(mapped, offset, len, dir) };
        core::sync::atomic::fence(Ordering::SeqCst);
    }

    unsafe fn sync_for_device(&self, mapped: &Mapped, offset: usize, len: usize, dir: DmaDirection) {
        core::sync::atomic::fence(Ordering::SeqCst);
        // SAFETY: forwarded caller guarantee.
        unsafe { self.area.sync_for_device(mapped, offset, len, dir) };
    }

    fn alloc_coherent(&self, limits: &DeviceLimits, bytes: usize) -> Result<CoherentRegion, AllocError> {
        super::direct::alloc_low_coherent(&*self.memory, limits.mask, bytes)
    }

    unsafe fn free_coherent(&self, region: &CoherentRegion) {
        // SAFETY: the caller guarantees the region came from `alloc_coherent` (thus from
        // `alloc_frames` with this count) and is unused.
        unsafe { self.memory.free_frames(region.phys, region.frames) };
    }

    fn bus_to_phys(&self, bus: BusAddr) -> Option<PhysAddr> {
        Some(PhysAddr(bus.0))
    }

    fn bounce_stats(&self) -> Option<BounceStats> {
        Some(self.area.stats())
    }
}
