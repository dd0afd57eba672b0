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
//!
//! # Where the code lives
//! - `mod.rs`: this documentation, the public types ([`DmaPool`], [`PoolError`], [`PoolBusy`],
//!   [`PoolStats`]) and the pool's creation and public methods.
//! - `free_list.rs`: the shared pool: units, the allocation bitmaps, the intrusive free list and
//!   its validation, growth, the raw API's bookkeeping, destruction and quarantine.
//! - `poison.rs`: poisoning (write-after-free detection), kept out of line of the fast paths.
//! - `block.rs`: [`PoolBlock`], the handle that frees its block when dropped.
//! - `cache.rs`: [`PoolCache`], the per-owner magazine.
//! - `view.rs`: the `dma:pools` view ([`render_pools`], [`all_pool_stats`]).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;

use crate::debug::DebugReport;
use crate::device::DmaDevice;
use crate::error::AllocError;
use crate::phys::{BusAddr, PAGE_SIZE};
use crate::trace::{self, EventKind};

mod block;
mod cache;
mod free_list;
mod poison;
mod view;

pub use block::PoolBlock;
pub use cache::PoolCache;
use free_list::{LINK_BYTES, NIL, POOLS, PoolInner, PoolState};
pub use view::{all_pool_stats, render_pools};

/// Largest block a pool serves (bigger objects: use `alloc_coherent`).
pub const MAX_POOL_BLOCK: usize = 128 * 1024;
/// Byte written over freed blocks when poisoning (Linux's POOL_POISON_FREED).
pub const POOL_POISON_FREED: u8 = 0xa7;
/// Byte written over freshly allocated blocks when poisoning (Linux's POOL_POISON_ALLOCATED).
pub const POOL_POISON_ALLOCATED: u8 = 0xa9;

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
            state: crate::sync::Mutex::new(PoolState {
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
        self.inner.free_raw(cpu, bus).map_err(|kind| self.inner.dev.report(kind))?;
        trace::pool(&self.inner.dev, EventKind::PoolFree, cpu, bus, self.inner.block);
        Ok(())
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
