//! Per-device I/O arenas: data buffers that are mapped for their device once, so the I/O hot
//! path maps nothing.
//!
//! A streaming mapping costs, per request, page-table writes, an IOTLB invalidation on unmap
//! (and on map, on units with caching mode), and a page walk by the unit for every 4 KiB page
//! the device touches. An arena pays those once: it takes physically contiguous 2 MiB chunks
//! of coherent memory for one device (each mapped with one 2 MiB second-level page where the
//! IOMMU offers them, VT-d §9.8 with `CAP.SLLPS`, §10.4.2), and hands out buffers carved from
//! them ([`ArenaBuf`]). A buffer knows its bus address; a driver programs it into the device
//! without a mapping call and without an invalidation. The arena grows one chunk at a time up
//! to a limit; when it is full, callers fall back to ordinary streaming mappings.
//!
//! # What an arena buffer is visible to
//! - Its **own device** (the arena's [`DmaDevice`]), read and write, for the arena's whole
//!   life: while a request runs, and also after it completed and while the buffer sits with
//!   its caller or on the arena's free list. That is the trade: no unmap, so no invalidation.
//! - **No other device**: the chunks are mapped only in that device's IOMMU domain.
//! - **Never other kernel memory**: the chunks are the arena's alone. Buffers are whole pages
//!   of a chunk, so no byte of anything else shares a page with them (the sub-page isolation
//!   a streaming mapping gets by copying comes for free), and their memory goes back to the
//!   arena when they are dropped, never to the kernel's allocators while it is mapped. Only
//!   when the last buffer and the arena itself are gone are the chunks unmapped (strictly, with
//!   the invalidation completed) and freed.
//!
//! So the strict guarantee of a streaming mapping — once a request completes, the device can
//! no longer reach the caller's memory — holds for memory the caller owns (a `Vec`, a
//! [`PageBuffer`](crate::PageBuffer)): that still goes through a strict mapping. An
//! [`ArenaBuf`] is, by its type, memory the device shares: put nothing in it that the device
//! must not see, and do not trust its contents more than the device.
//!
//! A new buffer holds what its pages last held: zeros (fresh chunks are zeroed) or data the
//! same device transferred before. Never data from elsewhere in the kernel; use
//! [`DmaArena::alloc_zeroed`] when even that must not show.
//!
//! # Example
//! A device gets an arena; a buffer comes with its bus address, already reachable; dropping
//! it returns its pages to the arena, not to the system.
//! ```
//! # use std::sync::Arc;
//! # use dma::{PhysMemory, sim::SimMemory, mapper::Direct};
//! use dma::{DmaDevice, arena::DmaArena};
//! let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(16 << 20, 1 << 20);
//! let dev = DmaDevice::new("00:1f.2 demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
//! let arena = DmaArena::new(&dev, "demo-io", 4 << 20);
//! let mut buf = arena.alloc(1000).unwrap();
//! buf[..5].copy_from_slice(b"hello");
//! assert!(buf.is_for(&dev) && buf.len() == 1000);
//! assert_eq!(dev.mapper().bus_to_phys(buf.bus_addr()).unwrap(), buf.phys());
//! assert_eq!(arena.stats().pages_in_use, 1);
//! drop(buf);
//! assert_eq!(arena.stats().pages_in_use, 0);
//! assert_eq!(arena.stats().chunks, 1); // the chunk stays, mapped, for the next buffer
//! ```

use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt::{self, Write as _};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::buffer::DmaBuf;
use crate::device::DmaDevice;
use crate::error::AllocError;
use crate::mapper::CoherentRegion;
use crate::phys::{BusAddr, PAGE_SIZE, PhysAddr};

/// Bytes per chunk: one 2 MiB second-level page.
pub const CHUNK_BYTES: usize = 2 << 20;
const CHUNK_PAGES: usize = CHUNK_BYTES / PAGE_SIZE;
const WORDS: usize = CHUNK_PAGES / 64;

/// Counters of one arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Chunks mapped (each [`CHUNK_BYTES`]).
    pub chunks: usize,
    /// Chunks the arena may grow to.
    pub max_chunks: usize,
    /// Pages handed out now.
    pub pages_in_use: usize,
    /// Most pages handed out at once.
    pub peak_pages: usize,
    /// Buffers handed out since creation.
    pub allocs: u64,
    /// Requests refused because the arena was full (or too small for them): the caller fell
    /// back to a streaming mapping.
    pub full: u64,
}

/// Why an arena could not hand out a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArenaError {
    /// More than one chunk: arena buffers are at most [`CHUNK_BYTES`].
    TooLarge {
        /// Bytes asked for.
        bytes: usize,
    },
    /// Every chunk is in use and the arena is at its limit.
    Full {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A new chunk could not be allocated or mapped.
    Grow(AllocError),
    /// Zero bytes asked for.
    ZeroLength,
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArenaError::TooLarge { bytes } => write!(f, "{bytes} bytes is more than one arena chunk ({CHUNK_BYTES})"),
            ArenaError::Full { bytes } => write!(f, "the arena has no free run of {bytes} bytes and is at its limit"),
            ArenaError::Grow(e) => write!(f, "the arena could not grow: {e}"),
            ArenaError::ZeroLength => f.write_str("zero-length arena buffer"),
        }
    }
}

struct Chunk {
    region: CoherentRegion,
    /// Kernel virtual address of the chunk (as usize: the chunk is the arena's alone).
    virt: usize,
    /// Bit per page: in use.
    used: [u64; WORDS],
}

impl Chunk {
    fn is_used(&self, page: usize) -> bool {
        self.used[page / 64] & (1 << (page % 64)) != 0
    }

    fn set(&mut self, first: usize, pages: usize, on: bool) {
        for p in first..first + pages {
            if on {
                self.used[p / 64] |= 1 << (p % 64);
            } else {
                self.used[p / 64] &= !(1 << (p % 64));
            }
        }
    }

    /// First free run of `pages` pages (first fit).
    fn find(&self, pages: usize) -> Option<usize> {
        let mut run = 0;
        for p in 0..CHUNK_PAGES {
            if self.used[p / 64] == u64::MAX {
                run = 0;
                continue;
            }
            if self.is_used(p) {
                run = 0;
            } else {
                run += 1;
                if run == pages {
                    return Some(p + 1 - pages);
                }
            }
        }
        None
    }
}

struct ArenaState {
    chunks: Vec<Chunk>,
    stats: ArenaStats,
}

struct ArenaInner {
    dev: DmaDevice,
    name: String,
    state: spin::Mutex<ArenaState>,
}

static ARENAS: spin::Mutex<Vec<Weak<ArenaInner>>> = spin::Mutex::new(Vec::new());

/// A device's I/O arena. See the module documentation. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct DmaArena {
    inner: Arc<ArenaInner>,
}

impl fmt::Debug for DmaArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaArena").field("name", &self.inner.name).field("stats", &self.stats()).finish()
    }
}

impl DmaArena {
    /// An empty arena for `dev` that grows in [`CHUNK_BYTES`] chunks up to `max_bytes` (at
    /// least one chunk). Nothing is allocated until the first buffer.
    pub fn new(dev: &DmaDevice, name: &str, max_bytes: usize) -> DmaArena {
        let max_chunks = max_bytes.div_ceil(CHUNK_BYTES).max(1);
        let inner = Arc::new(ArenaInner {
            dev: dev.clone(),
            name: name.into(),
            state: spin::Mutex::new(ArenaState {
                chunks: Vec::new(),
                stats: ArenaStats { max_chunks, ..ArenaStats::default() },
            }),
        });
        let mut all = ARENAS.lock();
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&inner));
        DmaArena { inner }
    }

    /// The device whose domain maps this arena.
    pub fn device(&self) -> &DmaDevice {
        &self.inner.dev
    }

    /// Counters.
    pub fn stats(&self) -> ArenaStats {
        self.inner.state.lock().stats
    }

    /// A buffer of `len` bytes (whole pages of one chunk). Its contents are what those pages
    /// last held (see the module documentation).
    pub fn alloc(&self, len: usize) -> Result<ArenaBuf, ArenaError> {
        if len == 0 {
            return Err(ArenaError::ZeroLength);
        }
        let pages = len.div_ceil(PAGE_SIZE);
        let mut st = self.inner.state.lock();
        if pages > CHUNK_PAGES {
            st.stats.full += 1;
            return Err(ArenaError::TooLarge { bytes: len });
        }
        let found = st.chunks.iter().enumerate().find_map(|(i, c)| c.find(pages).map(|p| (i, p)));
        let (chunk, first) = match found {
            Some(f) => f,
            None if st.chunks.len() < st.stats.max_chunks => {
                let dev = &self.inner.dev;
                let region = dev.mapper().alloc_coherent(&dev.limits(), CHUNK_BYTES).map_err(ArenaError::Grow)?;
                crate::trace::coherent(dev, crate::trace::EventKind::CoherentAlloc, &region);
                let virt = dev.memory().phys_to_virt(region.phys) as usize;
                st.chunks.push(Chunk { region, virt, used: [0; WORDS] });
                st.stats.chunks += 1;
                log::info!("{}: arena {} grew to {} MiB", dev.name(), self.inner.name, st.chunks.len() * 2);
                (st.chunks.len() - 1, 0)
            }
            None => {
                st.stats.full += 1;
                return Err(ArenaError::Full { bytes: len });
            }
        };
        let c = &mut st.chunks[chunk];
        c.set(first, pages, true);
        let offset = first * PAGE_SIZE;
        let bus = BusAddr(c.region.bus.0 + offset as u64);
        let phys = PhysAddr(c.region.phys.0 + offset as u64);
        let ptr = NonNull::new((c.virt + offset) as *mut u8).ok_or(ArenaError::Grow(AllocError::BadFrames { phys }))?;
        st.stats.pages_in_use += pages;
        st.stats.peak_pages = st.stats.peak_pages.max(st.stats.pages_in_use);
        st.stats.allocs += 1;
        drop(st);
        crate::trace::arena(&self.inner.dev, crate::trace::EventKind::ArenaAlloc, bus, phys, len);
        Ok(ArenaBuf { arena: self.inner.clone(), chunk, first, pages, len, ptr, bus, phys })
    }

    /// As [`DmaArena::alloc`], with the bytes zeroed.
    pub fn alloc_zeroed(&self, len: usize) -> Result<ArenaBuf, ArenaError> {
        let mut b = self.alloc(len)?;
        b.fill(0);
        Ok(b)
    }
}

impl Drop for ArenaInner {
    fn drop(&mut self) {
        for c in self.state.get_mut().chunks.drain(..) {
            // SAFETY: every buffer holds an `Arc` of the arena, so none is left; the chunk came
            // from this device's `alloc_coherent`. A strict mapper invalidates before freeing.
            unsafe { self.dev.mapper().free_coherent(&c.region) };
            crate::trace::coherent(&self.dev, crate::trace::EventKind::CoherentFree, &c.region);
        }
    }
}

/// A data buffer carved from a [`DmaArena`]: already mapped for the arena's device, at
/// [`ArenaBuf::bus_addr`]. The CPU uses it as a byte slice. Dropping it returns its pages to
/// the arena (they stay mapped for the same device; see the module documentation).
pub struct ArenaBuf {
    arena: Arc<ArenaInner>,
    chunk: usize,
    first: usize,
    pages: usize,
    len: usize,
    ptr: NonNull<u8>,
    bus: BusAddr,
    phys: PhysAddr,
}

// SAFETY: the buffer's pages are its own until it is dropped (the arena's bitmap says so); the
// raw pointer is only a view of them.
unsafe impl Send for ArenaBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for ArenaBuf {}

impl ArenaBuf {
    /// The device's address of the first byte: program it as is, no mapping needed.
    pub fn bus_addr(&self) -> BusAddr {
        self.bus
    }

    /// Physical address of the first byte.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }

    /// Whether this buffer is mapped for `dev` (comes from one of its arenas). A buffer of
    /// another device's arena is not reachable by `dev` at its bus address.
    pub fn is_for(&self, dev: &DmaDevice) -> bool {
        Arc::ptr_eq(&self.arena.dev.inner, &dev.inner)
    }

    /// Shortens the buffer to `len` bytes (no-op if it is shorter); the pages stay its own.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Deref for ArenaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` addresses `pages * PAGE_SIZE >= len` bytes of the chunk that the
        // bitmap gives to this buffer alone; chunk memory was zeroed when mapped, so it is
        // initialised.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for ArenaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` is exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl fmt::Debug for ArenaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaBuf")
            .field("arena", &self.arena.name)
            .field("bus", &self.bus)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: the pages belong to the buffer alone (arena bitmap) and do not move with it.
unsafe impl DmaBuf for ArenaBuf {
    fn dma_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn dma_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn dma_len(&self) -> usize {
        self.len
    }
}

impl Drop for ArenaBuf {
    fn drop(&mut self) {
        let mut st = self.arena.state.lock();
        if let Some(c) = st.chunks.get_mut(self.chunk) {
            c.set(self.first, self.pages, false);
        }
        st.stats.pages_in_use = st.stats.pages_in_use.saturating_sub(self.pages);
        drop(st);
        crate::trace::arena(&self.arena.dev, crate::trace::EventKind::ArenaFree, self.bus, self.phys, self.len);
    }
}

/// Appends `dev`'s arenas to a `dma:mappings` rendering.
pub(crate) fn render_for(dev: &DmaDevice, out: &mut String) {
    let arenas: Vec<Arc<ArenaInner>> = ARENAS.lock().iter().filter_map(Weak::upgrade).collect();
    for a in arenas.iter().filter(|a| Arc::ptr_eq(&a.dev.inner, &dev.inner)) {
        let s = a.state.lock().stats;
        let _ = writeln!(
            out,
            "  arena {}: {} of {} chunks ({} MiB mapped, 2 MiB each), {} pages in use, peak {}, {} buffers, {} full",
            a.name,
            s.chunks,
            s.max_chunks,
            (s.chunks * CHUNK_BYTES) >> 20,
            s.pages_in_use,
            s.peak_pages,
            s.allocs,
            s.full
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::Direct;
    use crate::phys::PhysMemory;
    use crate::sim::SimMemory;

    fn device() -> (DmaDevice, Arc<dyn PhysMemory>) {
        let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(16 << 20, 1 << 20);
        (DmaDevice::new("arena-test", phys.clone(), Arc::new(Direct::new(phys.clone()))), phys)
    }

    #[test]
    fn buffers_are_whole_pages_apart_and_come_back() {
        let (dev, _) = device();
        let arena = DmaArena::new(&dev, "t", 2 << 20);
        let a = arena.alloc(512).unwrap();
        let b = arena.alloc(4097).unwrap();
        assert_eq!(b.bus_addr().0 - a.bus_addr().0, PAGE_SIZE as u64);
        assert_eq!(arena.stats().pages_in_use, 3);
        drop(a);
        let c = arena.alloc(4096).unwrap();
        assert_eq!(c.bus_addr().0 % PAGE_SIZE as u64, 0);
        assert_eq!(arena.stats().pages_in_use, 3);
        drop((b, c));
        assert_eq!(arena.stats().pages_in_use, 0);
        assert_eq!(arena.stats().peak_pages, 3);
    }

    #[test]
    fn grows_by_chunks_to_its_limit_then_refuses() {
        let (dev, _) = device();
        let arena = DmaArena::new(&dev, "t", 4 << 20);
        let bufs: Vec<ArenaBuf> = (0..4).map(|_| arena.alloc(1 << 20).unwrap()).collect();
        assert_eq!(arena.stats().chunks, 2);
        assert_eq!(arena.alloc(4096).unwrap_err(), ArenaError::Full { bytes: 4096 });
        assert_eq!(arena.alloc(CHUNK_BYTES + 1).unwrap_err(), ArenaError::TooLarge { bytes: CHUNK_BYTES + 1 });
        assert_eq!(arena.stats().full, 2);
        drop(bufs);
        assert!(arena.alloc(CHUNK_BYTES).is_ok());
    }

    #[test]
    fn buffers_know_their_device() {
        let (dev, phys) = device();
        let other = DmaDevice::new("other", phys.clone(), Arc::new(Direct::new(phys)));
        let arena = DmaArena::new(&dev, "t", 2 << 20);
        let b = arena.alloc(64).unwrap();
        assert!(b.is_for(&dev) && !b.is_for(&other));
        let mut text = String::new();
        render_for(&dev, &mut text);
        assert!(text.contains("arena t: 1 of 1 chunks (2 MiB mapped, 2 MiB each), 1 pages in use"), "{text}");
    }
}
