//! [`PoolCache`]: a per-owner magazine of free blocks (see "Per-owner caches" in the module
//! documentation of [`crate::pool`]).

use alloc::boxed::Box;
use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use super::free_list::{BlockAddrs, LINK_BYTES, PoolInner, PoolState, decode};
use super::{POOL_POISON_ALLOCATED, POOL_POISON_FREED, PoolBlock};
use crate::debug::ReportKind;
use crate::error::AllocError;
use crate::phys::BusAddr;
use crate::trace::{self, EventKind};

/// A per-owner stack of free blocks of one pool, from [`DmaPool::cache`](super::DmaPool::cache): a
/// magazine (see "Per-owner caches" in the module documentation).
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
    pub(super) fn new(pool: &'pool PoolInner, capacity: usize) -> PoolCache<'pool> {
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
        // Tracing sends every operation down the slow path too (it records there), so the fast
        // path pays one load and no more for it.
        if self.len <= self.alloc_floor || trace::enabled() {
            self.prepare_pop(false)?;
        }
        Ok(self.pop())
    }

    /// A zeroed block, from the cache's stack (as [`PoolCache::alloc`]).
    #[inline]
    pub fn zalloc(&mut self) -> Result<PoolBlock, AllocError> {
        if self.len <= self.alloc_floor || trace::enabled() {
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
            unsafe { free_to_its_own_pool(pool, at.unit, at.index, at.cpu, at.bus) };
            return;
        }
        if self.len >= self.free_limit || trace::enabled() {
            self.prepare_push(at.cpu, at.bus);
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

    /// Most blocks the stack holds (what [`DmaPool::cache`](super::DmaPool::cache) was asked for,
    /// at least 2).
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
        if trace::enabled() {
            let top = self.slots[self.len - 1];
            self.pool.trace_block(EventKind::PoolAlloc, top.cpu.as_ptr(), top.bus);
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
    fn prepare_push(&mut self, cpu: NonNull<u8>, bus: BusAddr) {
        if trace::enabled() {
            self.pool.trace_block(EventKind::PoolFree, cpu.as_ptr(), bus);
        }
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
unsafe fn free_to_its_own_pool(pool: NonNull<PoolInner>, unit: u32, index: u32, cpu: NonNull<u8>, bus: BusAddr) {
    if trace::enabled() {
        // SAFETY: the caller's guarantee: the pool is live while the block is allocated.
        unsafe { pool.as_ref() }.trace_block(EventKind::PoolFree, cpu.as_ptr(), bus);
    }
    // SAFETY: the caller's guarantee.
    unsafe { PoolInner::free_handle(pool, unit, index, cpu) };
}

impl Drop for PoolCache<'_> {
    fn drop(&mut self) {
        self.give_back(self.len);
        self.pool.state.lock().caches -= 1;
    }
}
