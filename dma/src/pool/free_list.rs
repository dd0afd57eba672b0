//! The shared pool behind a [`DmaPool`](super::DmaPool): its units, the per-block bitmaps, the
//! intrusive free list (validated before every use), growth, the raw API's bookkeeping, and
//! destruction with quarantine. The rules and invariants are in the module documentation of
//! [`crate::pool`].

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use super::{POOL_POISON_FREED, PoolBusy, PoolStats};
use crate::debug::{BadFree, ReportKind};
use crate::device::DmaDevice;
use crate::error::AllocError;
use crate::mapper::CoherentRegion;
use crate::phys::BusAddr;
use crate::trace::{self, EventKind};

/// Bytes at the start of a free block that hold the free-list link.
pub(super) const LINK_BYTES: usize = 8;
/// The link that ends the free list.
pub(super) const NIL: u64 = u64::MAX;

/// Cold per-unit facts, read when the pool grows, is destroyed, or checks a raw free.
pub(super) struct Unit {
    region: CoherentRegion,
    cpu: *mut u8,
    released: bool,
    quarantined: bool,
}

pub(super) struct PoolState {
    pub(super) units: Vec<Unit>,
    /// One bit per block, `words_per_unit` words per unit: set while allocated. Flat, so a free
    /// touches one word and no other per-unit data even with 100,000 units; per-unit counts are
    /// computed from it when needed (destroy).
    pub(super) allocated: Vec<u64>,
    /// One bit per block: set while handed out through the raw API. Never set for a block held by a
    /// [`PoolBlock`](super::PoolBlock) or a cache, so allocating and freeing through a handle touch
    /// only `allocated`: one bitmap word per operation, not two on two cache lines.
    pub(super) raw: Vec<u64>,
    pub(super) free_head: u64,
    pub(super) free_blocks: usize,
    pub(super) in_use: usize,
    /// Live caches, and the blocks they held at their last trade with the pool.
    pub(super) caches: usize,
    pub(super) cached: usize,
    pub(super) destroyed: bool,
    /// The `DmaPool` is gone while blocks are still out: the pool holds one extra strong
    /// reference to itself, released by the free that brings `in_use` to zero.
    pub(super) orphaned: bool,
    pub(super) by_bus: BTreeMap<u64, u32>,
}

// SAFETY: the raw CPU pointers name memory owned by the pool; all access is under the lock.
unsafe impl Send for PoolState {}

pub(crate) struct PoolInner {
    pub(super) name: String,
    pub(super) dev: DmaDevice,
    pub(super) block: usize,
    pub(super) boundary: usize,
    pub(super) unit: usize,
    pub(super) per_window: u32,
    pub(super) blocks_per_unit: u32,
    pub(super) words_per_unit: usize,
    pub(super) poison: bool,
    pub(super) poison_failures: AtomicU64,
    pub(super) state: crate::sync::Mutex<PoolState>,
}

pub(super) static POOLS: spin::Mutex<Vec<Weak<PoolInner>>> = spin::Mutex::new(Vec::new());

const fn encode(page: u32, block: u32) -> u64 {
    ((page as u64) << 32) | block as u64
}
pub(super) const fn decode(link: u64) -> (u32, u32) {
    ((link >> 32) as u32, link as u32)
}

/// Where one allocated block is: its unit and index (for the bitmaps and the free list) and its CPU
/// and bus addresses (for its user). A [`PoolBlock`](super::PoolBlock) is this plus its pool; a
/// [`PoolCache`](super::PoolCache) keeps one of these for each block on its stack.
#[derive(Clone, Copy)]
pub(super) struct BlockAddrs {
    pub(super) unit: u32,
    pub(super) index: u32,
    pub(super) cpu: NonNull<u8>,
    pub(super) bus: BusAddr,
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
    pub(super) fn bit_of(&self, p: u32, b: u32) -> (usize, u64) {
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
        trace::coherent(&self.dev, EventKind::CoherentAlloc, &region);
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

    /// Pops a block under a lock the caller holds, growing the pool or abandoning a damaged list as
    /// needed (see [`PoolInner::make_head_valid`]; the caller reports `corrupt`). For batch pops
    /// ([`PoolCache`](super::PoolCache)'s refill); single allocations use [`PoolInner::alloc`].
    pub(super) fn pop_locked(
        &self,
        st: &mut PoolState,
        raw: bool,
        corrupt: &mut bool,
    ) -> Result<BlockAddrs, AllocError> {
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

    /// One allocation through the shared path: [`DmaPool::alloc`](super::DmaPool::alloc), `zalloc`
    /// and `alloc_raw`.
    ///
    /// Inlined, with everything rare out of line: the common case is one lock round-trip around
    /// [`PoolInner::pop_head`], and the block's addresses stay in registers from the pop to the
    /// caller's `PoolBlock`. The first version went through three nested calls (`DmaPool::alloc`,
    /// `alloc`, and a `pop_locked` with the pool's growth inlined into a large stack frame),
    /// each handing a 32-byte `Result` back through memory, and some reads of it (an 8-byte load
    /// of two 4-byte stores, 16-byte loads of two 8-byte stores) could not be forwarded from the
    /// stores that wrote it. That structure cost about 10 of the 27 ns of a pair (`BENCHMARKS.md`).
    #[inline]
    pub(super) fn alloc(&self, raw: bool, zero: bool) -> Result<BlockAddrs, AllocError> {
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
        if trace::enabled() {
            self.trace_block(EventKind::PoolAlloc, at.cpu.as_ptr(), at.bus);
        }
        Ok(at)
    }

    /// Records a block's allocation or free in the event trace. Out of line and cold, given
    /// scalars, so that the fast paths carry only the trace's one load and branch.
    #[cold]
    #[inline(never)]
    pub(super) fn trace_block(&self, kind: EventKind, cpu: *const u8, bus: BusAddr) {
        trace::record_pool(&self.dev, kind, cpu, bus.0, self.block);
    }

    /// Pushes block `b` of unit `p` at `cpu` back on the free list and clears its `allocated`
    /// bit. The caller has checked that the bit is set, and has cleared the block's `raw` bit if
    /// it was a raw block: handle and cache blocks never have it set, so their frees touch one
    /// bitmap word.
    #[inline]
    pub(super) fn push(&self, st: &mut PoolState, p: u32, b: u32, cpu: *mut u8) {
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

    /// Frees a handle's block and, if it was the last block of an orphaned pool, drops the
    /// pool's reference to itself: one lock round-trip, one bitmap word, the link and two
    /// counters; the orphan's release and the poisoning are out of line.
    ///
    /// Deliberately not inlined, and given scalars, which arrive in registers. Every place that may
    /// drop a `PoolBlock` would otherwise carry the lock loop, including places where the drop
    /// never runs, such as overwriting a slot that holds `None`. In a burst through a
    /// [`PoolCache`](super::PoolCache) that dead copy took registers from the cache's fast path and
    /// made it spill each block to the stack: 9 % slower per pair. Out of line, a shared-path free
    /// costs about 0.5 ns more than inlined (`BENCHMARKS.md`).
    ///
    /// # Safety
    /// `pool` must point to a live `PoolInner` in which block (`p`, `b`) at `cpu` is allocated
    /// to the caller's handle; the caller must not use `pool` afterwards.
    #[inline(never)]
    pub(super) unsafe fn free_handle(pool: NonNull<PoolInner>, p: u32, b: u32, cpu: NonNull<u8>) {
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

    pub(super) fn free_raw(&self, cpu: *mut u8, bus: BusAddr) -> Result<(), ReportKind> {
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

    pub(super) fn stats(&self) -> PoolStats {
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

    pub(super) fn shutdown(self: &Arc<Self>) -> Result<(), PoolBusy> {
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
                    trace::coherent(&self.dev, EventKind::CoherentFree, &unit.region);
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
                trace::coherent(&self.dev, EventKind::CoherentFree, &unit.region);
                unit.released = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::Direct;
    use crate::pool::DmaPool;
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
