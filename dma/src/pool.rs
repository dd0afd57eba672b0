//! DMA pools: many small blocks of coherent memory (Linux's `dma_pool`, `mm/dmapool.c`).
//!
//! Coherent allocations come in whole pages, but devices often want many small structures
//! (command headers, 32-byte descriptors, status words). Carving them out of a kernel heap object
//! is wrong twice over: the heap is not guaranteed to be below the device's mask, and a small
//! DMA buffer sharing a cache line with unrelated CPU data can corrupt that data on platforms
//! whose caches are not snooped. A pool carves fixed-size blocks out of coherent pages that
//! belong to it alone.
//!
//! # Rules (`DmaPool::create(name, dev, size, align, boundary)`)
//! - `size` is at least 1 and is rounded up to at least 8 bytes (the free-list link lives in
//!   the free block) and to a multiple of `align`; blocks are never bigger than
//!   [`MAX_POOL_BLOCK`].
//! - `align` is a power of two (0 means 1, as in Linux); every block's bus address is a multiple.
//! - `boundary` (0 for none) is a power of two, at least the block size; no block crosses a
//!   multiple of it (for devices whose address counters do not carry into high bits).
//! - Memory comes in *units*: one page, or the block size rounded up to a power of two for blocks
//!   bigger than a page. Units are added lazily, when the free list is empty.
//!
//! # Data structure and invariants
//! - `PoolState::units[i]` describes unit `i` (region, CPU address); its index never changes.
//!   Per-block state lives in two flat bitmaps, `allocated` and `raw` (blocks handed out
//!   through [`DmaPool::alloc_raw`]).
//! - The free list is intrusive, as in `dmapool.c`: the first 8 bytes of every free block hold
//!   the (unit index, block index) of the next free block, `NIL` ending the list. `alloc` pops,
//!   `free` pushes: O(1) however many blocks are live. A [`PoolBlock`] carries its unit and block
//!   index, so freeing it finds its metadata in O(1); the raw API looks the unit up by bus address
//!   (O(log units)).
//! - The pool outlives every allocated block: a [`PoolBlock`] points at it without a reference
//!   count, and a pool destroyed with blocks out keeps one reference to itself
//!   (`PoolState::orphaned`) until the last of them is freed.
//! - A block is on the free list exactly when its `allocated` bit is clear. Links read from
//!   memory are checked against that before use: a device writing into a free block can damage
//!   the list, and that is reported (`PoolFreeListCorrupt`), never followed.
//! - `in_use ==` the number of set `allocated` bits, `free_blocks + in_use == units × blocks_per_unit` (until a
//!   corrupt free list is abandoned).
//! - A block held in a [`PoolCache`] is *allocated* as far as the pool knows: its bit is set and
//!   it counts in `in_use`. `PoolState::cached` is the sum, over live caches, of the blocks each
//!   held when it last exchanged blocks with the pool (see "Per-owner caches" below).
//!
//! # Per-owner caches (magazines)
//! The shared pool is shareable because of its spin lock, and the lock is most of what an
//! alloc+free pair costs: two lock round-trips, each an atomic read-modify-write on a cache line
//! that every CPU using the pool writes. With one CPU that is about 5 ns each (`BENCHMARKS.md`);
//! with two CPUs taking turns the line moves between their caches on every call, which costs far
//! more.
//! Bonwick and Adams met the same wall in the Solaris slab allocator ("Magazines and Vmem",
//! USENIX 2001). Their answer was the *magazine*: each CPU keeps a small stack of free objects of
//! its own, and goes to the shared layer only to trade a whole batch. Linux's slab allocators keep
//! per-CPU caches for the same reason.
//!
//! [`DmaPool::cache`] hands one owner (a queue of a driver, a CPU) such a stack, a [`PoolCache`].
//! Its `alloc` pops from the stack and its `free` pushes onto it: no lock, no atomic instruction,
//! no bitmap, no allocation. When the stack is empty it takes half its capacity from the pool
//! under one lock; when it is full it gives half back under one lock. A driver that allocates and
//! frees in bursts then pays one lock round-trip per batch instead of two per block.
//!
//! The fast path can skip the shared path's checks because the types already rule out what
//! those checks look for:
//! - **Double free**: [`PoolCache::free`] takes the [`PoolBlock`] by value, and a `PoolBlock`
//!   exists only while its block is allocated to it. There is no second handle to free again.
//! - **Wrong pool**: a `PoolBlock` knows its pool. `free` compares that pointer with its own
//!   pool; a block of another pool is freed into *that* pool, never pushed onto this stack.
//! - **Sharing the stack**: every operation takes `&mut PoolCache`, and `PoolCache` is not
//!   `Sync`, so one owner at a time uses it and the stack needs no lock. (It is `Send`: the
//!   owner may move it to another thread.)
//! - **Destroying the pool under a cache**: a `PoolCache` borrows its `DmaPool`, and
//!   [`DmaPool::destroy`] takes the pool by value, so the borrow checker refuses to destroy a pool
//!   while any cache of it exists. Dropping the cache gives every block back.
//!
//! Blocks returned by a cache are ordinary `PoolBlock`s: dropping one anywhere frees it to the
//! shared pool. Poisoning works through the cache too. A cache of a poisoned pool sends every
//! operation down its slow path, which fills a freed block with [`POOL_POISON_FREED`] and checks
//! it before handing it out again. So the fast path has no poisoning test at all; it only
//! compares the stack's length with two bounds, and a poisoned pool sets those bounds so that
//! the comparison always fails.
//!
//! What a cache costs: memory. Up to `capacity` blocks sit idle in it, counted as in use. The
//! statistics say how many (`PoolStats::cached`, `cached=N` in `dma:pools`), with one caveat:
//! a cache publishes its size only when it trades with the pool (the price of not touching shared
//! memory on the fast path), so the figure may be out of date by up to one capacity per cache.
//! [`PoolCache::len`] is always exact, and [`PoolCache::flush`] gives every block back.
//!
//! # Debugging
//! With poisoning on ([`DmaPool::create_poisoned`], Linux's DMAPOOL_DEBUG) freed blocks are
//! filled with [`POOL_POISON_FREED`] and checked at the next allocation; a damaged byte is
//! reported as a write after free, naming the pool and the offset of the first bad byte.
//!
//! # Destroying
//! [`DmaPool::destroy`] with blocks still allocated does not free their units: a device may
//! still write into them. It returns [`PoolBusy`] listing them, records a report, and keeps
//! those units quarantined for good. Dropping a `DmaPool` destroys it the same way.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt::{self, Write as _};
use core::marker::PhantomData;
use core::mem::{ManuallyDrop, MaybeUninit, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::coherent::DmaSafe;
use crate::debug::{BadFree, DebugReport, ReportKind};
use crate::device::DmaDevice;
use crate::error::{AllocError, OutOfBounds, check_range};
use crate::mapper::CoherentRegion;
use crate::phys::{BusAddr, PAGE_SIZE};

/// Largest block a pool serves (bigger objects: use `alloc_coherent`).
pub const MAX_POOL_BLOCK: usize = 128 * 1024;
/// Byte written over freed blocks when poisoning (Linux's POOL_POISON_FREED).
pub const POOL_POISON_FREED: u8 = 0xa7;
/// Byte written over freshly allocated blocks when poisoning (Linux's POOL_POISON_ALLOCATED).
pub const POOL_POISON_ALLOCATED: u8 = 0xa9;

const LINK_BYTES: usize = 8;
const NIL: u64 = u64::MAX;

/// Why a pool could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// Blocks of zero bytes are meaningless.
    ZeroSize,
    /// The alignment is not a power of two.
    AlignNotPowerOfTwo {
        /// The alignment asked for.
        align: usize,
    },
    /// The boundary is not a power of two.
    BoundaryNotPowerOfTwo {
        /// The boundary asked for.
        boundary: usize,
    },
    /// A block would not fit between two boundary lines.
    BoundaryTooSmall {
        /// The boundary asked for.
        boundary: usize,
        /// The block size after rounding.
        size: usize,
    },
    /// The block (after rounding to the alignment) is bigger than a pool unit can be.
    BlockTooLarge {
        /// The block size after rounding.
        size: usize,
        /// [`MAX_POOL_BLOCK`].
        max: usize,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PoolError::ZeroSize => f.write_str("DMA pool block size must be at least 1 byte"),
            PoolError::AlignNotPowerOfTwo { align } => {
                write!(f, "DMA pool alignment {align} is not a power of two (use 1, 2, 4, 8, ...)")
            }
            PoolError::BoundaryNotPowerOfTwo { boundary } => {
                write!(f, "DMA pool boundary {boundary:#x} is not a power of two (use 0 for none)")
            }
            PoolError::BoundaryTooSmall { boundary, size } => write!(
                f,
                "DMA pool boundary {boundary:#x} is smaller than the {size}-byte block; a block could never fit between two boundaries"
            ),
            PoolError::BlockTooLarge { size, max } => write!(
                f,
                "DMA pool block of {size} bytes exceeds the {max}-byte maximum; use alloc_coherent for large buffers"
            ),
        }
    }
}

/// A pool was destroyed while blocks were still allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolBusy {
    /// The pool's name.
    pub pool: String,
    /// The device's name.
    pub device: String,
    /// Bus addresses of the blocks still allocated.
    pub live: Vec<BusAddr>,
}

impl fmt::Display for PoolBusy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: dma_pool {} destroyed with {} blocks in use; their memory is quarantined:",
            self.device,
            self.pool,
            self.live.len()
        )?;
        for b in &self.live {
            write!(f, " {b}")?;
        }
        Ok(())
    }
}

/// Counters of one pool (the columns of Linux's `pools` file, and more).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Pool name.
    pub name: String,
    /// Blocks allocated now, including the blocks held in per-owner caches (`cached`).
    pub blocks_in_use: usize,
    /// Blocks in all units.
    pub total_blocks: usize,
    /// Blocks on the free list.
    pub free_blocks: usize,
    /// Block size (after rounding).
    pub block_size: usize,
    /// Units ("pages") held.
    pub pages: usize,
    /// Size of one unit in bytes.
    pub unit_size: usize,
    /// Write-after-free detections (poisoning).
    pub poison_failures: u64,
    /// Live [`PoolCache`]s of this pool.
    pub caches: usize,
    /// Blocks held in those caches, counted in `blocks_in_use` but used by nobody yet. Each cache
    /// publishes its size when it trades blocks with the pool, so this may be behind by up to
    /// one capacity per cache; it is exact when no cache is live.
    pub cached: usize,
}

/// Cold per-unit facts, read when the pool grows, is destroyed, or checks a raw free.
struct Unit {
    region: CoherentRegion,
    cpu: *mut u8,
    released: bool,
    quarantined: bool,
}

struct PoolState {
    units: Vec<Unit>,
    /// One bit per block, `words_per_unit` words per unit: set while allocated. Flat, so a free
    /// touches one word and no other per-unit data even with 100,000 units; per-unit counts are
    /// computed from it when needed (destroy).
    allocated: Vec<u64>,
    /// One bit per block: set while handed out through the raw API. Never set for a block held
    /// by a [`PoolBlock`] or a cache, so allocating and freeing through a handle touch only
    /// `allocated`: one bitmap word per operation, not two on two cache lines.
    raw: Vec<u64>,
    free_head: u64,
    free_blocks: usize,
    in_use: usize,
    /// Live caches, and the blocks they held at their last trade with the pool.
    caches: usize,
    cached: usize,
    destroyed: bool,
    /// The `DmaPool` is gone while blocks are still out: the pool holds one extra strong
    /// reference to itself, released by the free that brings `in_use` to zero.
    orphaned: bool,
    by_bus: BTreeMap<u64, u32>,
}

// SAFETY: the raw CPU pointers name memory owned by the pool; all access is under the lock.
unsafe impl Send for PoolState {}

pub(crate) struct PoolInner {
    name: String,
    dev: DmaDevice,
    block: usize,
    boundary: usize,
    unit: usize,
    per_window: u32,
    blocks_per_unit: u32,
    words_per_unit: usize,
    poison: bool,
    poison_failures: AtomicU64,
    state: spin::Mutex<PoolState>,
}

static POOLS: spin::Mutex<Vec<Weak<PoolInner>>> = spin::Mutex::new(Vec::new());

const fn encode(page: u32, block: u32) -> u64 {
    ((page as u64) << 32) | block as u64
}
const fn decode(link: u64) -> (u32, u32) {
    ((link >> 32) as u32, link as u32)
}

/// Where one allocated block is: its unit and index (for the bitmaps and the free list) and its
/// CPU and bus addresses (for its user). A [`PoolBlock`] is this plus its pool; a [`PoolCache`]
/// keeps one of these for each block on its stack.
#[derive(Clone, Copy)]
struct BlockAddrs {
    unit: u32,
    index: u32,
    cpu: NonNull<u8>,
    bus: BusAddr,
}

impl PoolInner {
    /// Byte offset of block `block` in its unit.
    ///
    /// Every allocation computes this. A pool without a boundary has one window per unit, so every
    /// block is below `per_window` and the offset is one multiplication. Only pools with a
    /// boundary pay a 32-bit division (tens of cycles), in a function of its own so that the
    /// allocation, which is inlined into its callers, stays small enough to be inlined.
    #[inline]
    fn offset_of(&self, block: u32) -> usize {
        if block < self.per_window { block as usize * self.block } else { self.offset_in_window(block) }
    }

    /// [`PoolInner::offset_of`] for a block past the first boundary window.
    #[inline(never)]
    fn offset_in_window(&self, block: u32) -> usize {
        (block / self.per_window) as usize * self.boundary + (block % self.per_window) as usize * self.block
    }

    fn block_at(&self, offset: usize) -> Option<u32> {
        let window = offset / self.boundary;
        let rest = offset % self.boundary;
        if !rest.is_multiple_of(self.block) {
            return None;
        }
        let idx = (rest / self.block) as u32;
        if idx >= self.per_window {
            return None;
        }
        let b = window as u32 * self.per_window + idx;
        (b < self.blocks_per_unit).then_some(b)
    }

    /// Word index and bit mask of block `b` of unit `p` in the flat bitmaps.
    #[inline]
    fn bit_of(&self, p: u32, b: u32) -> (usize, u64) {
        (p as usize * self.words_per_unit + (b / 64) as usize, 1 << (b % 64))
    }

    fn grow(&self, st: &mut PoolState) -> Result<(), AllocError> {
        if st.units.len() >= (u32::MAX - 1) as usize {
            return Err(AllocError::TooLarge { bytes: self.unit });
        }
        let mapper = self.dev.mapper();
        let region = mapper.alloc_coherent(&self.dev.limits(), self.unit)?;
        let cpu = self.dev.memory().phys_to_virt(region.phys);
        if cpu.is_null() || !region.bus.0.is_multiple_of(self.unit as u64) {
            // SAFETY: just allocated from this mapper, never used.
            unsafe { mapper.free_coherent(&region) };
            return Err(AllocError::BadFrames { phys: region.phys });
        }
        if self.poison {
            // SAFETY: the unit is ours and `unit` bytes long.
            unsafe { core::ptr::write_bytes(cpu, POOL_POISON_FREED, self.unit) };
        }
        let p = st.units.len() as u32;
        st.units.push(Unit { region, cpu, released: false, quarantined: false });
        st.allocated.resize(st.allocated.len() + self.words_per_unit, 0);
        st.raw.resize(st.raw.len() + self.words_per_unit, 0);
        st.by_bus.insert(region.bus.0, p);
        for b in (0..self.blocks_per_unit).rev() {
            // SAFETY: block `b` lies inside the new unit and is free; the link may be
            // unaligned when blocks are smaller than 8-aligned.
            unsafe { cpu.add(self.offset_of(b)).cast::<u64>().write_unaligned(st.free_head) };
            st.free_head = encode(p, b);
        }
        st.free_blocks += self.blocks_per_unit as usize;
        log::debug!("{}: dma_pool {} grew to {} units", self.dev.name(), self.name, st.units.len());
        Ok(())
    }

    /// Pops the head of the free list if it is a valid free block, marking it allocated (and
    /// raw, for the raw API). `None` if the list is empty or its head is not a valid free block;
    /// the caller then goes to the slow path ([`PoolInner::make_head_valid`]), which grows the
    /// pool or abandons a damaged list, and tries again.
    ///
    /// This is all the work an allocation does under the lock, so it is written for the common
    /// case: inlined into the caller, no loop, no error value, one bitmap word read and written.
    /// The link read from memory is validated before it is used, as the module invariants
    /// require: a unit that exists and is not released, a block index inside the unit, and an
    /// `allocated` bit that is clear. The empty list needs no test of its own: `NIL` decodes to
    /// unit `u32::MAX`, which never exists (`grow` stops below it).
    #[inline]
    fn pop_head(&self, st: &mut PoolState, raw: bool) -> Option<BlockAddrs> {
        let (p, b) = decode(st.free_head);
        let unit = st.units.get(p as usize)?;
        if b >= self.blocks_per_unit || unit.released {
            return None;
        }
        let (w, m) = self.bit_of(p, b);
        debug_assert!(w < st.allocated.len() && w < st.raw.len());
        // SAFETY: `p < units.len()` and `b < blocks_per_unit`, so `w < units.len() ×
        // words_per_unit`, the length of both bitmaps (`grow` extends them with every unit).
        let word = unsafe { st.allocated.get_unchecked_mut(w) };
        if *word & m != 0 {
            return None;
        }
        *word |= m;
        if raw {
            // SAFETY: as above.
            unsafe { *st.raw.get_unchecked_mut(w) |= m };
        }
        let off = self.offset_of(b);
        // SAFETY: `off` is the offset of block `b < blocks_per_unit`, inside unit `p`, which is
        // live (not released).
        let cpu = unsafe { unit.cpu.add(off) };
        let bus = BusAddr(unit.region.bus.0 + off as u64);
        // SAFETY: the block is free and ours; any 8 bytes are a valid u64, and the value is
        // validated before it is used, on the next pop. The link may be unaligned.
        st.free_head = unsafe { cpu.cast::<u64>().read_unaligned() };
        st.free_blocks -= 1;
        st.in_use += 1;
        // SAFETY: `cpu` is inside a unit, whose pointer is non-null (checked in `grow`).
        let cpu = unsafe { NonNull::new_unchecked(cpu) };
        Some(BlockAddrs { unit: p, index: b, cpu, bus })
    }

    /// The slow side of a pop: leaves a valid free block at the head of the list, or fails. An
    /// empty list grows the pool by a unit; a head that fails validation means a device wrote
    /// into a free block and damaged its link, so the rest of the list is abandoned (those
    /// blocks leak) rather than followed, and `corrupt` is set for the caller to report after
    /// unlocking.
    fn make_head_valid(&self, st: &mut PoolState, corrupt: &mut bool) -> Result<(), AllocError> {
        loop {
            if st.free_head == NIL {
                // A new unit's blocks are all free and correctly linked.
                return self.grow(st);
            }
            let (p, b) = decode(st.free_head);
            let valid =
                (p as usize) < st.units.len() && b < self.blocks_per_unit && !st.units[p as usize].released && {
                    let (w, m) = self.bit_of(p, b);
                    st.allocated[w] & m == 0
                };
            if valid {
                return Ok(());
            }
            st.free_head = NIL;
            st.free_blocks = 0;
            *corrupt = true;
        }
    }

    /// Pops a block under a lock the caller holds, growing the pool or abandoning a damaged list
    /// as needed (see [`PoolInner::make_head_valid`]; the caller reports `corrupt`). For batch
    /// pops ([`PoolCache`]'s refill); single allocations use [`PoolInner::alloc`].
    fn pop_locked(&self, st: &mut PoolState, raw: bool, corrupt: &mut bool) -> Result<BlockAddrs, AllocError> {
        loop {
            if let Some(at) = self.pop_head(st, raw) {
                return Ok(at);
            }
            self.make_head_valid(st, corrupt)?;
        }
    }

    /// The slow side of [`PoolInner::alloc`]: takes the lock, makes the list's head valid
    /// ([`PoolInner::make_head_valid`]), and reports a damaged list or a failure to grow.
    ///
    /// It returns no block; `alloc` pops again. Handing a block back through the return value
    /// would make the compiler merge that value, which lives in memory, with the fast path's
    /// registers and send every block through the stack (as `PoolCache::prepare_pop` explains).
    /// Another CPU may take the new head before `alloc` relocks; `alloc` then comes back here.
    #[cold]
    #[inline(never)]
    fn refill_head(&self) -> Result<(), AllocError> {
        let mut corrupt = false;
        let result = self.make_head_valid(&mut self.state.lock(), &mut corrupt);
        if corrupt {
            self.dev.report(ReportKind::PoolFreeListCorrupt { pool: self.name.clone() });
        }
        if let Err(e) = &result {
            log::warn!("{}: dma_pool {} cannot grow: {}", self.dev.name(), self.name, e);
        }
        result
    }

    /// One allocation through the shared path: [`DmaPool::alloc`], `zalloc` and `alloc_raw`.
    ///
    /// Inlined, with everything rare out of line: the common case is one lock round-trip around
    /// [`PoolInner::pop_head`], and the block's addresses stay in registers from the pop to the
    /// caller's `PoolBlock`. The first version went through three nested calls (`DmaPool::alloc`,
    /// `alloc`, and a `pop_locked` with the pool's growth inlined into a large stack frame),
    /// each handing a 32-byte `Result` back through memory, and some reads of it (an 8-byte load
    /// of two 4-byte stores, 16-byte loads of two 8-byte stores) could not be forwarded from the
    /// stores that wrote it. That structure cost about 10 of the 27 ns of a pair (`BENCHMARKS.md`).
    #[inline]
    fn alloc(&self, raw: bool, zero: bool) -> Result<BlockAddrs, AllocError> {
        let at = loop {
            // The guard is a temporary: the lock is released at the end of this statement.
            let popped = self.pop_head(&mut self.state.lock(), raw);
            match popped {
                Some(at) => break at,
                None => self.refill_head()?,
            }
        };
        if self.poison {
            self.poison_on_alloc(at.cpu, at.bus, zero);
        }
        if zero {
            // SAFETY: the block is `block` bytes of our memory, now allocated to the caller.
            unsafe { core::ptr::write_bytes(at.cpu.as_ptr(), 0, self.block) };
        }
        Ok(at)
    }

    /// Poisoning, at allocation: checks the freed poison of the block at `cpu` (all but the
    /// free-list link) and, unless the caller zeroes it, fills it with
    /// [`POOL_POISON_ALLOCATED`]. Out of line, and given scalars, so that the fast path keeps the
    /// block in registers and carries only a flag test.
    #[cold]
    #[inline(never)]
    fn poison_on_alloc(&self, cpu: NonNull<u8>, bus: BusAddr, zero: bool) {
        // The first bytes hold the free-list link, not poison.
        self.check_freed_poison(cpu, bus, LINK_BYTES);
        if !zero {
            // SAFETY: the block is `block` bytes of our memory, now allocated to the caller.
            unsafe { core::ptr::write_bytes(cpu.as_ptr(), POOL_POISON_ALLOCATED, self.block) };
        }
    }

    /// Poisoning: checks that bytes `from..` of the block at `cpu` (bus address `bus`), about to
    /// be handed out, still hold [`POOL_POISON_FREED`], and reports the first byte that does
    /// not (a write after free). Cold: only poisoned pools call it.
    #[cold]
    #[inline(never)]
    fn check_freed_poison(&self, cpu: NonNull<u8>, bus: BusAddr, from: usize) {
        // SAFETY: the block is `block` bytes of our memory, allocated to the caller, who has
        // not seen it yet.
        let bytes = unsafe { core::slice::from_raw_parts(cpu.as_ptr(), self.block) };
        if let Some(i) = bytes[from..].iter().position(|&x| x != POOL_POISON_FREED) {
            self.poison_failures.fetch_add(1, Ordering::Relaxed);
            self.dev.report(ReportKind::PoolWriteAfterFree {
                pool: self.name.clone(),
                bus,
                offset: from + i,
                found: bytes[from + i],
            });
        }
    }

    /// Pushes block `b` of unit `p` at `cpu` back on the free list and clears its `allocated`
    /// bit. The caller has checked that the bit is set, and has cleared the block's `raw` bit if
    /// it was a raw block: handle and cache blocks never have it set, so their frees touch one
    /// bitmap word.
    #[inline]
    fn push(&self, st: &mut PoolState, p: u32, b: u32, cpu: *mut u8) {
        let (w, m) = self.bit_of(p, b);
        debug_assert!(st.raw[w] & m == 0, "raw bit still set on push");
        st.allocated[w] &= !m;
        if self.poison {
            self.poison_freed(cpu);
        }
        // SAFETY: `cpu` is this block, `block` bytes of a live unit; the link may be unaligned.
        unsafe { cpu.cast::<u64>().write_unaligned(st.free_head) };
        st.free_head = encode(p, b);
        st.free_blocks += 1;
        st.in_use -= 1;
    }

    /// Poisoning, at free: fills the block at `cpu` with [`POOL_POISON_FREED`]. Out of line so
    /// that the push carries only the flag test.
    #[cold]
    #[inline(never)]
    fn poison_freed(&self, cpu: *mut u8) {
        // SAFETY: `cpu` is a block being freed, `block` bytes of a live unit, reachable by no one
        // else now.
        unsafe { core::ptr::write_bytes(cpu, POOL_POISON_FREED, self.block) };
    }

    /// Frees a handle's block and, if it was the last block of an orphaned pool, drops the
    /// pool's reference to itself: one lock round-trip, one bitmap word, the link and two
    /// counters; the orphan's release and the poisoning are out of line.
    ///
    /// Deliberately not inlined, and given scalars, which arrive in registers. Every place that
    /// may drop a `PoolBlock` would otherwise carry the lock loop, including places where the
    /// drop never runs, such as overwriting a slot that holds `None`. In a burst through a
    /// [`PoolCache`] that dead copy took registers from the cache's fast path and made it spill
    /// each block to the stack: 9 % slower per pair. Out of line, a shared-path free costs about
    /// 0.5 ns more than inlined (`BENCHMARKS.md`).
    ///
    /// # Safety
    /// `pool` must point to a live `PoolInner` in which block (`p`, `b`) at `cpu` is allocated
    /// to the caller's handle; the caller must not use `pool` afterwards.
    #[inline(never)]
    unsafe fn free_handle(pool: NonNull<PoolInner>, p: u32, b: u32, cpu: NonNull<u8>) {
        // SAFETY: live while the block is allocated (module invariant).
        let this = unsafe { pool.as_ref() };
        let release = {
            let mut st = this.state.lock();
            let (w, m) = this.bit_of(p, b);
            // Always set for a handle's block. Checked rather than trusted: a bug elsewhere must
            // not put a free block on the list twice.
            if st.allocated.get(w).is_some_and(|word| word & m != 0) {
                this.push(&mut st, p, b, cpu.as_ptr());
            }
            // `in_use` was just written, so it is tested first; `orphaned` is read only when
            // the pool has just become empty.
            st.in_use == 0 && st.orphaned
        };
        if release {
            // SAFETY: the pool is orphaned and its last block is gone; nothing here uses the
            // pool any more.
            unsafe { release_orphan(pool) };
        }
    }

    fn free_raw(&self, cpu: *mut u8, bus: BusAddr) -> Result<(), ReportKind> {
        let bad = |reason| ReportKind::PoolBadFree { pool: self.name.clone(), bus, reason };
        let mut st = self.state.lock();
        let Some((&base, &p)) = st.by_bus.range(..=bus.0).next_back() else {
            return Err(bad(BadFree::NotInPool));
        };
        if bus.0 - base >= self.unit as u64 {
            return Err(bad(BadFree::NotInPool));
        }
        let off = (bus.0 - base) as usize;
        let Some(b) = self.block_at(off) else {
            return Err(bad(BadFree::NotBlockStart));
        };
        let block_cpu = st.units[p as usize].cpu.wrapping_add(off);
        if block_cpu != cpu {
            return Err(bad(BadFree::AddressesDisagree));
        }
        let (w, m) = self.bit_of(p, b);
        if st.allocated[w] & m == 0 {
            return Err(ReportKind::PoolDoubleFree { pool: self.name.clone(), bus });
        }
        if st.raw[w] & m == 0 {
            return Err(bad(BadFree::OwnedByHandle));
        }
        st.raw[w] &= !m;
        self.push(&mut st, p, b, block_cpu);
        Ok(())
    }

    fn stats(&self) -> PoolStats {
        let st = self.state.lock();
        let pages = st.units.iter().filter(|u| !u.released).count();
        PoolStats {
            name: self.name.clone(),
            blocks_in_use: st.in_use,
            total_blocks: pages * self.blocks_per_unit as usize,
            free_blocks: st.free_blocks,
            block_size: self.block,
            pages,
            unit_size: self.unit,
            poison_failures: self.poison_failures.load(Ordering::Relaxed),
            caches: st.caches,
            cached: st.cached,
        }
    }

    fn shutdown(self: &Arc<Self>) -> Result<(), PoolBusy> {
        let mut st = self.state.lock();
        if st.destroyed {
            return Ok(());
        }
        st.destroyed = true;
        let mut live = Vec::new();
        let mapper = self.dev.mapper().clone();
        let st = &mut *st;
        for (p, unit) in st.units.iter_mut().enumerate() {
            let words = &st.allocated[p * self.words_per_unit..(p + 1) * self.words_per_unit];
            if words.iter().all(|&w| w == 0) {
                if !unit.released {
                    // SAFETY: the unit came from this mapper; no block in it is allocated, and
                    // the pool is destroyed so none will be.
                    unsafe { mapper.free_coherent(&unit.region) };
                    unit.released = true;
                }
                continue;
            }
            unit.quarantined = true;
            for b in 0..self.blocks_per_unit {
                let (w, m) = self.bit_of(p as u32, b);
                if st.allocated[w] & m != 0 {
                    live.push(BusAddr(unit.region.bus.0 + self.offset_of(b) as u64));
                }
            }
        }
        st.by_bus.clear();
        if st.in_use > 0 {
            // Blocks still out point at this pool: keep it alive for them.
            st.orphaned = true;
            core::mem::forget(Arc::clone(self));
        }
        POOLS.lock().retain(|w| w.strong_count() > 0 && !core::ptr::eq(w.as_ptr(), Arc::as_ptr(self)));
        if live.is_empty() {
            log::debug!("{}: dma_pool {} destroyed", self.dev.name(), self.name);
            return Ok(());
        }
        self.dev.report(ReportKind::PoolDestroyedBusy { pool: self.name.clone(), live: live.len() });
        Err(PoolBusy { pool: self.name.clone(), device: self.dev.name().into(), live })
    }
}

/// The last block of an orphaned pool was freed: drops the reference the pool kept to itself
/// (see `PoolState::orphaned`), which may free the pool. Out of line: it happens once per pool.
///
/// # Safety
/// `pool` is orphaned, has no block allocated, and the caller holds no reference into it.
#[cold]
#[inline(never)]
unsafe fn release_orphan(pool: NonNull<PoolInner>) {
    // SAFETY: the orphan reference was leaked from an `Arc` of this pool in `shutdown`; the
    // caller's guarantee says nothing else uses it.
    unsafe { Arc::decrement_strong_count(pool.as_ptr()) };
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let mapper = self.dev.mapper().clone();
        for unit in self.state.get_mut().units.iter_mut() {
            if !unit.released && !unit.quarantined {
                // SAFETY: the unit came from this mapper and no block handle or pool remains.
                unsafe { mapper.free_coherent(&unit.region) };
                unit.released = true;
            }
        }
    }
}

/// A pool of equal-sized coherent blocks for one device. See the module documentation.
pub struct DmaPool {
    inner: Arc<PoolInner>,
}

impl fmt::Debug for DmaPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaPool").field("name", &self.inner.name).field("block", &self.inner.block).finish()
    }
}

impl DmaPool {
    /// Creates a pool of `size`-byte blocks aligned to `align` that never cross a multiple of
    /// `boundary` (0: none), for `dev` (Linux's `dma_pool_create`). Memory is taken lazily.
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use dma::{sim::{SimDevice, SimMemory}, mapper::Direct, DmaDevice, PhysMemory, PageBuffer};
    /// # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
    /// # let phys: Arc<dyn PhysMemory> = mem.clone();
    /// # let dev = DmaDevice::new("00:02.0 demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
    /// use dma::DmaPool;
    /// // 48-byte command blocks, 16-byte aligned, never crossing a 128-byte line.
    /// let pool = DmaPool::create("demo-cmd", &dev, 48, 16, 128).unwrap();
    /// let mut block = pool.zalloc().unwrap();
    /// block.write::<u32>(0, 0xc0ffee).unwrap();
    /// let bus = block.bus_addr().as_u64();
    /// assert_eq!(bus % 16, 0);
    /// assert_eq!(bus / 128, (bus + 47) / 128);
    /// assert_eq!(pool.stats().total_blocks, 64); // two per 128-byte window, 32 windows per page
    /// drop(block); // back to the pool
    /// pool.destroy().unwrap();
    /// ```
    pub fn create(
        name: &str,
        dev: &DmaDevice,
        size: usize,
        align: usize,
        boundary: usize,
    ) -> Result<DmaPool, PoolError> {
        Self::build(name, dev, size, align, boundary, false)
    }

    /// As [`DmaPool::create`], with poisoning of free blocks (write-after-free detection).
    pub fn create_poisoned(
        name: &str,
        dev: &DmaDevice,
        size: usize,
        align: usize,
        boundary: usize,
    ) -> Result<DmaPool, PoolError> {
        Self::build(name, dev, size, align, boundary, true)
    }

    fn build(
        name: &str,
        dev: &DmaDevice,
        size: usize,
        align: usize,
        boundary: usize,
        poison: bool,
    ) -> Result<DmaPool, PoolError> {
        if size == 0 {
            return Err(PoolError::ZeroSize);
        }
        let align = align.max(1);
        if !align.is_power_of_two() {
            return Err(PoolError::AlignNotPowerOfTwo { align });
        }
        let too_large = PoolError::BlockTooLarge { size, max: MAX_POOL_BLOCK };
        if size > MAX_POOL_BLOCK || align > MAX_POOL_BLOCK {
            return Err(too_large);
        }
        let block = size.max(LINK_BYTES).next_multiple_of(align);
        if block > MAX_POOL_BLOCK {
            return Err(PoolError::BlockTooLarge { size: block, max: MAX_POOL_BLOCK });
        }
        let unit = PAGE_SIZE.max(block.next_power_of_two());
        let boundary = if boundary == 0 {
            unit
        } else if !boundary.is_power_of_two() {
            return Err(PoolError::BoundaryNotPowerOfTwo { boundary });
        } else if boundary < block {
            return Err(PoolError::BoundaryTooSmall { boundary, size: block });
        } else {
            boundary.min(unit)
        };
        let per_window = (boundary / block) as u32;
        let blocks_per_unit = (unit / boundary) as u32 * per_window;
        let inner = Arc::new(PoolInner {
            name: name.into(),
            dev: dev.clone(),
            block,
            boundary,
            unit,
            per_window,
            blocks_per_unit,
            poison,
            poison_failures: AtomicU64::new(0),
            words_per_unit: (blocks_per_unit as usize).div_ceil(64),
            state: spin::Mutex::new(PoolState {
                units: Vec::new(),
                allocated: Vec::new(),
                raw: Vec::new(),
                free_head: NIL,
                free_blocks: 0,
                in_use: 0,
                caches: 0,
                cached: 0,
                destroyed: false,
                orphaned: false,
                by_bus: BTreeMap::new(),
            }),
        });
        let mut pools = POOLS.lock();
        pools.retain(|w| w.strong_count() > 0);
        pools.push(Arc::downgrade(&inner));
        drop(pools);
        log::info!(
            "{}: dma_pool {} created: {} B blocks, {} per {} B unit",
            dev.name(),
            name,
            block,
            blocks_per_unit,
            unit
        );
        Ok(DmaPool { inner })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Block size after rounding.
    pub fn block_size(&self) -> usize {
        self.inner.block
    }

    /// Bytes of one unit (the memory added when the pool grows).
    pub fn unit_size(&self) -> usize {
        self.inner.unit
    }

    /// Counters.
    pub fn stats(&self) -> PoolStats {
        self.inner.stats()
    }

    /// A block with unspecified contents (Linux's `dma_pool_alloc`). O(1), plus a unit
    /// allocation when the pool is empty.
    #[inline]
    pub fn alloc(&self) -> Result<PoolBlock, AllocError> {
        let at = self.inner.alloc(false, false)?;
        Ok(PoolBlock { pool: NonNull::from(&*self.inner), at })
    }

    /// A zeroed block (Linux's `dma_pool_zalloc`).
    #[inline]
    pub fn zalloc(&self) -> Result<PoolBlock, AllocError> {
        let at = self.inner.alloc(false, true)?;
        Ok(PoolBlock { pool: NonNull::from(&*self.inner), at })
    }

    /// A block as bare CPU and bus addresses, to be given back with [`DmaPool::free_raw`]
    /// (the C-shaped API). Nothing frees it automatically.
    pub fn alloc_raw(&self) -> Result<(NonNull<u8>, BusAddr), AllocError> {
        let at = self.inner.alloc(true, false)?;
        Ok((at.cpu, at.bus))
    }

    /// Returns a block obtained from [`DmaPool::alloc_raw`] (Linux's `dma_pool_free`).
    /// An address that is not an allocated raw block of this pool (double free, wrong pool,
    /// mismatched CPU/bus pair, a block owned by a handle) is reported and refused; the pool is
    /// unchanged.
    pub fn free_raw(&self, cpu: *mut u8, bus: BusAddr) -> Result<(), DebugReport> {
        self.inner.free_raw(cpu, bus).map_err(|kind| self.inner.dev.report(kind))
    }

    /// A per-owner cache of this pool's blocks holding up to `capacity` of them (at least 2): a
    /// magazine, see "Per-owner caches" in the module documentation.
    ///
    /// Give one to each owner that allocates and frees often (a queue, a CPU), sized to about
    /// twice what it has in flight at once: then a whole burst allocates and frees without
    /// touching the pool's lock. The cache borrows the pool, so the pool cannot be destroyed
    /// while it exists; dropping it gives its blocks back.
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use dma::{sim::SimMemory, mapper::Direct, DmaDevice, PhysMemory};
    /// # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
    /// # let phys: Arc<dyn PhysMemory> = mem.clone();
    /// # let dev = DmaDevice::new("00:1f.2 demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
    /// use dma::DmaPool;
    /// // One 256-byte command table per NCQ slot; 32 slots in flight at most.
    /// let pool = DmaPool::create("demo-cmd-table", &dev, 256, 128, 0).unwrap();
    /// let mut cache = pool.cache(64);
    /// // The first allocation takes 32 blocks from the pool under one lock; the rest take none.
    /// let tables: Vec<_> = (0..32).map(|_| cache.zalloc().unwrap()).collect();
    /// assert!(cache.is_empty());
    /// for table in tables {
    ///     cache.free(table); // onto the cache's stack, no lock
    /// }
    /// assert_eq!(cache.len(), 32);
    /// // Blocks in the cache are still allocated as far as the pool knows.
    /// assert_eq!(pool.stats().blocks_in_use, 32);
    /// assert_eq!(pool.stats().caches, 1);
    /// drop(cache); // every block goes back
    /// assert_eq!(pool.stats().blocks_in_use, 0);
    /// assert_eq!(pool.stats().cached, 0);
    /// pool.destroy().unwrap();
    /// ```
    pub fn cache(&self, capacity: usize) -> PoolCache<'_> {
        PoolCache::new(&self.inner, capacity)
    }

    /// Destroys the pool (Linux's `dma_pool_destroy`). With blocks still allocated, their
    /// memory is quarantined (never freed) and reported; see the module documentation.
    pub fn destroy(self) -> Result<(), PoolBusy> {
        self.inner.shutdown()
    }
}

impl Drop for DmaPool {
    fn drop(&mut self) {
        let _ = self.inner.shutdown();
    }
}

/// One block of a pool; returns to its pool when dropped.
///
/// The handle points at its pool without a reference count (an `Arc` per block would double
/// the cost of alloc+free); the pool stays alive while any block is allocated (see
/// `PoolState::orphaned`).
pub struct PoolBlock {
    pool: NonNull<PoolInner>,
    at: BlockAddrs,
}

// SAFETY: the block's memory belongs to this handle alone; the pool is Sync.
unsafe impl Send for PoolBlock {}
// SAFETY: shared access only reads (volatile).
unsafe impl Sync for PoolBlock {}

impl fmt::Debug for PoolBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBlock").field("pool", &self.pool().name).field("bus", &self.at.bus).finish()
    }
}

impl PoolBlock {
    fn pool(&self) -> &PoolInner {
        // SAFETY: the pool outlives every allocated block (module invariant).
        unsafe { self.pool.as_ref() }
    }

    /// The device's address of the block.
    pub fn bus_addr(&self) -> BusAddr {
        self.at.bus
    }

    /// CPU pointer to the block.
    pub fn as_ptr(&self) -> *mut u8 {
        self.at.cpu.as_ptr()
    }

    /// Usable bytes (the pool's block size).
    pub fn len(&self) -> usize {
        self.pool().block
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Volatile read of a `T` at byte `offset` (any alignment).
    pub fn read<T: DmaSafe>(&self, offset: usize) -> Result<T, OutOfBounds> {
        check_range(offset, size_of::<T>(), self.len())?;
        let mut v = MaybeUninit::<T>::uninit();
        let dst = v.as_mut_ptr().cast::<u8>();
        for i in 0..size_of::<T>() {
            // SAFETY: `offset + i` is inside the block (checked); `dst` has room for `T`.
            unsafe { dst.add(i).write(self.as_ptr().add(offset + i).read_volatile()) };
        }
        // SAFETY: every byte was written, and every bit pattern is a valid `T` (`DmaSafe`).
        Ok(unsafe { v.assume_init() })
    }

    /// Volatile write of a `T` at byte `offset` (any alignment).
    pub fn write<T: DmaSafe>(&mut self, offset: usize, value: T) -> Result<(), OutOfBounds> {
        check_range(offset, size_of::<T>(), self.len())?;
        let src = (&raw const value).cast::<u8>();
        for i in 0..size_of::<T>() {
            // SAFETY: inside the block (checked); `src` points to a live `T`.
            unsafe { self.as_ptr().add(offset + i).write_volatile(src.add(i).read()) };
        }
        Ok(())
    }

    /// Volatile copy out of the block.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        check_range(offset, dst.len(), self.len())?;
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: inside the block (checked).
            *d = unsafe { self.as_ptr().add(offset + i).read_volatile() };
        }
        Ok(())
    }

    /// Volatile copy into the block.
    pub fn write_bytes(&mut self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        check_range(offset, src.len(), self.len())?;
        for (i, s) in src.iter().enumerate() {
            // SAFETY: inside the block (checked).
            unsafe { self.as_ptr().add(offset + i).write_volatile(*s) };
        }
        Ok(())
    }

    /// The block as a byte slice.
    ///
    /// # Safety
    /// The device must not access the block while the slice lives.
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the block is `len()` bytes we own; the caller excludes the device.
        unsafe { core::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }

    /// Gives up the handle; the block must be returned with [`DmaPool::free_raw`].
    pub fn into_raw(self) -> (NonNull<u8>, BusAddr) {
        let this = ManuallyDrop::new(self);
        let pool = this.pool();
        let (w, m) = pool.bit_of(this.at.unit, this.at.index);
        pool.state.lock().raw[w] |= m;
        (this.at.cpu, this.at.bus)
    }
}

impl Drop for PoolBlock {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the block is allocated to this handle, which is going away.
        unsafe { PoolInner::free_handle(self.pool, self.at.unit, self.at.index, self.at.cpu) };
    }
}

/// A per-owner stack of free blocks of one pool, from [`DmaPool::cache`]: a magazine (see
/// "Per-owner caches" in the module documentation).
///
/// `alloc`, `zalloc` and `free` take `&mut self` and touch only the stack: no lock, no atomic
/// instruction, no bitmap, no allocation. An empty stack is refilled with half the capacity
/// under one lock of the pool; a full one gives half back the same way. Blocks on the stack stay
/// allocated in the pool's bookkeeping, so nothing else can hand them out.
///
/// A cache borrows its pool: the pool cannot be destroyed while a cache of it is alive.
/// ```compile_fail,E0505
/// # use std::sync::Arc;
/// # use dma::{sim::SimMemory, mapper::Direct, DmaDevice, PhysMemory, DmaPool};
/// # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
/// # let phys: Arc<dyn PhysMemory> = mem.clone();
/// # let dev = DmaDevice::new("00:1f.2 demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
/// let pool = DmaPool::create("demo", &dev, 64, 8, 0).unwrap();
/// let mut cache = pool.cache(8);
/// let block = cache.alloc().unwrap();
/// pool.destroy().unwrap(); // error: `pool` is still borrowed by `cache`
/// cache.free(block);
/// ```
///
/// A cache belongs to one owner at a time: it may move to another thread (`Send`) but cannot be
/// shared between threads (it is not `Sync`), which is why its stack needs no lock.
/// ```compile_fail,E0277
/// fn shared_between_threads<T: Sync>() {}
/// shared_between_threads::<dma::pool::PoolCache<'static>>();
/// ```
///
/// `mem::forget` on a cache strands its blocks: they stay allocated, and destroying the pool
/// later reports them as busy and quarantines their units. Nothing unsound happens.
pub struct PoolCache<'pool> {
    pool: &'pool PoolInner,
    /// The stack: `slots[..len]` are the blocks held, the top (freed last, the likeliest to be
    /// in the CPU's cache) at `len - 1`. Entries at `len..` are stale and never read.
    ///
    /// Invariants: `len <= slots.len()`; every entry below `len` is a block of `pool` whose
    /// `allocated` bit is set and which nothing else can reach; `free_limit <= slots.len()`.
    slots: Box<[CachedBlock]>,
    len: usize,
    /// The fast paths' only bounds: `alloc` pops without further thought while
    /// `len > alloc_floor`, and `free` pushes while `len < free_limit`. For an ordinary pool
    /// they are 0 and the capacity. For a poisoned pool they are `usize::MAX` and 0, so every
    /// operation takes the slow path, which fills and checks the poison: the fast path tests
    /// no poison flag.
    alloc_floor: usize,
    free_limit: usize,
    /// How many blocks one trade with the pool moves: half the capacity.
    batch: usize,
    /// `len` when this cache last traded with the pool: its share of `PoolState::cached`.
    published: usize,
    /// The pool's block size, so `zalloc` reads only this struct.
    block_size: usize,
    /// Not `Sync`: the stack is unlocked, so only its one owner may touch it.
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: the blocks on the stack are allocated to this cache and reachable through nothing
// else, so moving the cache to another thread moves sole access to them; the pool it borrows is
// `Sync` (all its state is behind its lock). The cache stays `!Sync` (`_not_sync`).
unsafe impl Send for PoolCache<'_> {}

impl fmt::Debug for PoolCache<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCache")
            .field("pool", &self.pool.name)
            .field("len", &self.len)
            .field("capacity", &self.slots.len())
            .finish()
    }
}

impl<'pool> PoolCache<'pool> {
    fn new(pool: &'pool PoolInner, capacity: usize) -> PoolCache<'pool> {
        let capacity = capacity.max(2);
        // A placeholder for the slots above `len`, never read as a block.
        let empty = CachedBlock { cpu: NonNull::dangling(), bus: BusAddr(0), unit_and_index: 0 };
        pool.state.lock().caches += 1;
        PoolCache {
            pool,
            slots: alloc::vec![empty; capacity].into_boxed_slice(),
            len: 0,
            alloc_floor: if pool.poison { usize::MAX } else { 0 },
            free_limit: if pool.poison { 0 } else { capacity },
            batch: capacity / 2,
            published: 0,
            block_size: pool.block,
            _not_sync: PhantomData,
        }
    }

    /// A block with unspecified contents, from the cache's stack: no lock unless the stack is
    /// empty and must be refilled from the pool.
    #[inline]
    pub fn alloc(&mut self) -> Result<PoolBlock, AllocError> {
        if self.len <= self.alloc_floor {
            self.prepare_pop(false)?;
        }
        Ok(self.pop())
    }

    /// A zeroed block, from the cache's stack (as [`PoolCache::alloc`]).
    #[inline]
    pub fn zalloc(&mut self) -> Result<PoolBlock, AllocError> {
        if self.len <= self.alloc_floor {
            self.prepare_pop(true)?;
        }
        let block = self.pop();
        // SAFETY: the block is `block_size` bytes of the pool's memory, now allocated to the
        // new handle alone.
        unsafe { core::ptr::write_bytes(block.as_ptr(), 0, self.block_size) };
        Ok(block)
    }

    /// Takes `block` back. A block of this pool goes onto the stack (no lock unless the stack is
    /// full and half of it must go back to the pool); a block of another pool is freed into its
    /// own pool, exactly as dropping it would.
    #[inline]
    pub fn free(&mut self, block: PoolBlock) {
        // From here on the block is freed by hand, not by the handle's `Drop`.
        let block = ManuallyDrop::new(block);
        let (pool, at) = (block.pool, block.at);
        if pool != NonNull::from(self.pool) {
            // SAFETY: the block is allocated to the handle, which this call consumed; `pool` is
            // its pool, alive while the block is allocated (module invariant).
            unsafe { free_to_its_own_pool(pool, at.unit, at.index, at.cpu) };
            return;
        }
        if self.len >= self.free_limit {
            self.prepare_push(at.cpu);
        }
        // SAFETY: `len < slots.len()`: either `len < free_limit <= slots.len()`, or
        // `prepare_push` made room.
        unsafe { *self.slots.get_unchecked_mut(self.len) = CachedBlock::new(at) };
        self.len += 1;
    }

    /// Blocks on the stack now (exact, unlike `PoolStats::cached`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the stack is empty (the next allocation will take the pool's lock).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most blocks the stack holds (what [`DmaPool::cache`] was asked for, at least 2).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Gives every block on the stack back to the pool (one lock), for an owner going idle
    /// that should not keep memory it does not use. The cache stays usable.
    pub fn flush(&mut self) {
        self.give_back(self.len);
    }

    /// Pops the top of the stack as a handle. The caller has made sure the stack is not empty
    /// (`len > alloc_floor >= 0`, or `prepare_pop` succeeded).
    #[inline]
    fn pop(&mut self) -> PoolBlock {
        debug_assert!(self.len > 0);
        self.len -= 1;
        // SAFETY: `len` was at least 1 and at most `slots.len()` (invariant), so the new `len`
        // indexes a held block.
        let entry = unsafe { self.slots.get_unchecked(self.len) };
        PoolBlock { pool: NonNull::from(self.pool), at: entry.load().addrs() }
    }

    /// The slow side of `alloc`: refills an empty stack from the pool, and in a poisoned pool
    /// checks the block about to be popped and poisons it as allocated (unless `zeroing`).
    /// On success the stack is not empty.
    ///
    /// It returns no block: handing one back through its return value would make the compiler
    /// merge that value, which lives in memory, with the fast path's registers, and send every
    /// block through the stack. That costs more than the rest of the fast path together.
    #[cold]
    #[inline(never)]
    fn prepare_pop(&mut self, zeroing: bool) -> Result<(), AllocError> {
        if self.len == 0 {
            self.refill()?;
        }
        if self.pool.poison {
            let top = self.slots[self.len - 1];
            self.pool.check_freed_poison(top.cpu, top.bus, 0);
            if !zeroing {
                // SAFETY: the block is `block_size` bytes of our memory, held by this cache and
                // about to be handed out.
                unsafe { core::ptr::write_bytes(top.cpu.as_ptr(), POOL_POISON_ALLOCATED, self.block_size) };
            }
        }
        Ok(())
    }

    /// The slow side of `free`: gives half a full stack back to the pool, and in a poisoned pool
    /// poisons the block at `cpu` as freed. Afterwards there is room for one more block.
    ///
    /// Takes the block's CPU address as a scalar, in a register: passing the whole
    /// `BlockAddrs` would go through memory, and the compiler would write it there on the fast
    /// path too.
    #[cold]
    #[inline(never)]
    fn prepare_push(&mut self, cpu: NonNull<u8>) {
        if self.len == self.slots.len() {
            self.give_back(self.batch);
        }
        if self.pool.poison {
            // SAFETY: the block is `block_size` bytes of our memory; its handle was just
            // consumed by `free`, so this cache holds it alone.
            unsafe { core::ptr::write_bytes(cpu.as_ptr(), POOL_POISON_FREED, self.block_size) };
        }
    }

    /// The stack is empty: moves up to `batch` blocks from the pool onto it under one lock.
    /// Fails only if the pool has no free block and cannot grow; a partial batch is fine.
    fn refill(&mut self) -> Result<(), AllocError> {
        debug_assert_eq!(self.len, 0);
        let pool = self.pool;
        let mut corrupt = false;
        let mut failure = None;
        {
            let mut st = pool.state.lock();
            while self.len < self.batch {
                match pool.pop_locked(&mut st, false, &mut corrupt) {
                    Ok(at) => {
                        self.slots[self.len] = CachedBlock::new(at);
                        self.len += 1;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            // Pops come hottest first (the free list is LIFO); the stack's top is its end.
            self.slots[..self.len].reverse();
            self.publish(&mut st);
        }
        if corrupt {
            pool.dev.report(ReportKind::PoolFreeListCorrupt { pool: pool.name.clone() });
        }
        if pool.poison {
            // Off the free list, the link bytes are no longer needed: poison them too, so that
            // `alloc` can check the whole block, as for blocks freed into the cache.
            for at in &self.slots[..self.len] {
                // SAFETY: the block is ours (allocated to this cache) and at least 8 bytes.
                unsafe { core::ptr::write_bytes(at.cpu.as_ptr(), POOL_POISON_FREED, LINK_BYTES) };
            }
        }
        match failure {
            Some(e) if self.len == 0 => {
                log::warn!("{}: dma_pool {} cannot grow: {}", pool.dev.name(), pool.name, e);
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// Gives the `count` blocks at the bottom of the stack (freed longest ago, the coldest) back
    /// to the pool under one lock.
    fn give_back(&mut self, count: usize) {
        let pool = self.pool;
        let mut st = pool.state.lock();
        for at in self.slots[..count].iter().map(CachedBlock::addrs) {
            debug_assert!({
                let (w, m) = pool.bit_of(at.unit, at.index);
                st.allocated[w] & m != 0
            });
            pool.push(&mut st, at.unit, at.index, at.cpu.as_ptr());
        }
        self.slots.copy_within(count..self.len, 0);
        self.len -= count;
        self.publish(&mut st);
    }

    /// Brings this cache's share of `PoolState::cached` up to date; called under the lock at
    /// every trade.
    fn publish(&mut self, st: &mut PoolState) {
        st.cached = st.cached - self.published + self.len;
        self.published = self.len;
    }
}

/// One block on a [`PoolCache`]'s stack: its [`BlockAddrs`] as three machine words, written with
/// one 8-byte store each and read back with one 8-byte load each ([`CachedBlock::load`]).
///
/// Why this matters: a free followed by an allocation, the commonest thing a cache sees, reads
/// back the entry that was just written, while the stores are still in the CPU's store buffer.
/// A load is served from there only if a single store covers it. If the compiler reads two
/// fields with one 16-byte load (it likes to, for a plain copy), or if the two 32-bit indices
/// were written with separate 4-byte stores, the load covers several stores and must wait until
/// they reach the cache. On the project's machine that wait made the fast path up to twice as
/// slow (`BENCHMARKS.md`). Uniform words, read one by one, keep stores and loads matched.
#[derive(Clone, Copy)]
struct CachedBlock {
    cpu: NonNull<u8>,
    bus: BusAddr,
    /// `unit << 32 | index`.
    unit_and_index: u64,
}

impl CachedBlock {
    #[inline]
    fn new(at: BlockAddrs) -> CachedBlock {
        CachedBlock { cpu: at.cpu, bus: at.bus, unit_and_index: (at.unit as u64) << 32 | at.index as u64 }
    }

    /// Reads the entry as three separate 8-byte loads that the compiler may not merge into a
    /// wider one. That is all `read_volatile` changes here: the memory is ordinary memory.
    #[inline]
    fn load(&self) -> CachedBlock {
        // SAFETY: each pointer is derived from a reference to a live, initialised
        // `CachedBlock`, so it is valid and aligned for a read of a valid value of its type.
        unsafe {
            CachedBlock {
                cpu: (&raw const self.cpu).read_volatile(),
                bus: (&raw const self.bus).read_volatile(),
                unit_and_index: (&raw const self.unit_and_index).read_volatile(),
            }
        }
    }

    #[inline]
    fn addrs(&self) -> BlockAddrs {
        let (unit, index) = decode(self.unit_and_index);
        BlockAddrs { unit, index, cpu: self.cpu, bus: self.bus }
    }
}

/// `PoolCache::free` of a block of another pool: frees it into its own pool, as dropping its
/// handle would. Out of line, and given scalars rather than the handle, so that the common case
/// keeps the handle in registers.
///
/// # Safety
/// As [`PoolInner::free_handle`]: block (`unit`, `index`) at `cpu` of the live pool `pool` is
/// allocated to a handle the caller consumed.
#[cold]
#[inline(never)]
unsafe fn free_to_its_own_pool(pool: NonNull<PoolInner>, unit: u32, index: u32, cpu: NonNull<u8>) {
    // SAFETY: the caller's guarantee.
    unsafe { PoolInner::free_handle(pool, unit, index, cpu) };
}

impl Drop for PoolCache<'_> {
    fn drop(&mut self) {
        self.give_back(self.len);
        self.pool.state.lock().caches -= 1;
    }
}

/// Statistics of every live pool.
pub fn all_pool_stats() -> Vec<(String, PoolStats)> {
    let pools: Vec<Arc<PoolInner>> = POOLS.lock().iter().filter_map(|w| w.upgrade()).collect();
    pools.iter().map(|p| (String::from(p.dev.name()), p.stats())).collect()
}

/// Renders the `dma:pools` view in the columns of Linux's `pools` file (name, blocks in use,
/// total blocks, block size, pages), followed by the device. A pool with live [`PoolCache`]s
/// has `cached=N` before the device: N of its blocks in use sit unused in those caches (see
/// `PoolStats::cached` for how current N is).
pub fn render_pools() -> String {
    let mut out = String::from("poolinfo - 0.1\n");
    for (device, s) in all_pool_stats() {
        let _ = write!(
            out,
            "{:<16} {:>4} {:>4} {:>4} {:>2} ",
            s.name, s.blocks_in_use, s.total_blocks, s.block_size, s.pages
        );
        if s.caches > 0 {
            let _ = write!(out, "cached={} ", s.cached);
        }
        let _ = writeln!(out, "{device}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::Direct;
    use crate::sim::SimMemory;

    fn pool(size: usize, align: usize, boundary: usize) -> DmaPool {
        let sim = SimMemory::low_and_high(1 << 20, 1 << 20);
        let phys: Arc<dyn crate::PhysMemory> = sim;
        let dev = DmaDevice::new("00:00.0 unit", phys.clone(), Arc::new(Direct::new(phys)));
        DmaPool::create("unit", &dev, size, align, boundary).unwrap()
    }

    #[test]
    fn block_offsets_and_indices_are_inverse() {
        for (size, align, boundary) in [(8, 1, 0), (48, 16, 64), (100, 4, 256), (5000, 8, 0)] {
            let p = pool(size, align, boundary);
            let inner = &p.inner;
            for b in 0..inner.blocks_per_unit {
                let off = inner.offset_of(b);
                assert!(off + inner.block <= inner.unit);
                assert_eq!(off / inner.boundary, (off + inner.block - 1) / inner.boundary);
                assert_eq!(inner.block_at(off), Some(b));
                if inner.block > 1 {
                    assert_eq!(inner.block_at(off + 1), None);
                }
            }
            assert_eq!(inner.block_at(inner.unit), None);
        }
    }

    #[test]
    fn links_encode_and_decode() {
        for (p, b) in [(0, 0), (1, 2), (u32::MAX - 1, u32::MAX - 1)] {
            assert_eq!(decode(encode(p, b)), (p, b));
        }
        assert_ne!(encode(u32::MAX - 1, u32::MAX - 1), NIL);
    }
}
