//! What one DMA pool alloc+free pair costs, beside the limits it is measured against.
//!
//! Allocators (each serves blocks of one size, aligned to 16):
//! - `pool-cache`: a [`PoolCache`] of capacity 64 (twice a burst) on the pool: the per-owner fast
//!   path, with no lock unless it trades a batch with the pool;
//! - `pool-cache16`: the same with capacity 16, smaller than a burst (burst pattern only): what
//!   happens when a cache is sized below what its owner has in flight;
//! - `pool-shared`: `DmaPool::alloc`, and dropping the `PoolBlock`: one lock each way, plus the
//!   bitmaps that catch double and wrong-pool frees;
//! - `bare`: an intrusive free list in one arena, no lock, no checks: the real lower limit;
//! - `bare-locked`: the same list behind a `spin::Mutex`, one lock each way: the limit for anything
//!   that several CPUs share;
//! - `linked_list_allocator`: `linked_list_allocator::Heap` 0.10, first fit over an address-sorted
//!   hole list, driven through `&mut` with no lock.
//!
//! Patterns, each with 0, 1,000 and 100,000 blocks live:
//! - `churn`: allocate a block and free it;
//! - `burst`: allocate 32 blocks (an NCQ queue's worth), then free them in allocation order; the
//!   time reported is for all 32 pairs (`dma/scripts/bench_table.py` divides by 32);
//! - `replace`: free a random live block and allocate a new one in its place (descriptors that
//!   complete out of order); not run with 0 live.
//!
//! Keeping the measurement honest: every allocator runs the same generic pattern code (the
//! [`BlockSource`] trait) and the live set is built the same way for each. Every iteration passes
//! the allocator and each block's address through `black_box`. Without that, the optimiser sees
//! that the bare list's push undoes its pop and deletes both, and the "limit" measures an empty
//! loop. `black_box` also tells the compiler that any memory may have changed, so neither the
//! pop nor the push can be skipped. Only the block's *address* goes through it, not the whole
//! handle (8 bytes for the bare list, 32 for a `PoolBlock`). Forcing the handle through memory
//! between an allocation and the free right after it measures the CPU's store-to-load
//! forwarding of a 32-byte copy, not the allocator; `dma/BENCHMARKS.md` gives that figure too.
//! A burst keeps its blocks in a slot array, as an NCQ driver keeps one per command slot.
//!
//! Run: `cargo bench -p dma --bench pool`; `dma/BENCHMARKS.md` has the numbers.

use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dma::mapper::Direct;
use dma::pool::PoolCache;
use dma::sim::{SimMemory, SimRegion};
use dma::{DmaDevice, DmaPool, PhysMemory, PoolBlock};
use linked_list_allocator::Heap;

const SIZES: [usize; 5] = [16, 64, 256, 1024, 4096];
const LIVE: [usize; 3] = [0, 1_000, 100_000];
const ALIGN: usize = 16;
/// Blocks per burst: one per NCQ command slot.
const BURST: usize = 32;
/// The cache size `DmaPool::cache` recommends for this owner: twice what it has in flight.
const CACHE: usize = 2 * BURST;
/// A cache too small for the burst.
const SMALL_CACHE: usize = BURST / 2;

/// Anything that hands out and takes back equal-sized blocks; the patterns are written once
/// against this, so every allocator runs the same code around its own two calls.
trait BlockSource {
    type Block;
    fn get(&mut self) -> Self::Block;
    fn put(&mut self, block: Self::Block);
    /// Where the block's memory is (what a caller would write through).
    fn addr(block: &Self::Block) -> *mut u8;
}

/// The limit: a singly linked list threaded through the free blocks of one arena, with a bump
/// pointer for blocks never handed out yet.
struct BareFreeList {
    head: *mut u8,
    bump: *mut u8,
    end: *mut u8,
    size: usize,
    _arena: Vec<u8>,
}

// SAFETY: the list owns its arena; the raw pointers point into it.
unsafe impl Send for BareFreeList {}

impl BareFreeList {
    fn new(size: usize, blocks: usize) -> BareFreeList {
        let mut arena = vec![0u8; size * blocks + ALIGN];
        let start = arena.as_mut_ptr().wrapping_add(arena.as_ptr().align_offset(ALIGN));
        BareFreeList {
            head: std::ptr::null_mut(),
            bump: start,
            end: start.wrapping_add(size * blocks),
            size,
            _arena: arena,
        }
    }
}

impl BlockSource for BareFreeList {
    type Block = NonNull<u8>;

    #[inline]
    fn get(&mut self) -> NonNull<u8> {
        if let Some(p) = NonNull::new(self.head) {
            // SAFETY: free blocks hold the next pointer in their first 8 bytes.
            self.head = unsafe { p.as_ptr().cast::<*mut u8>().read() };
            return p;
        }
        assert!(self.bump.wrapping_add(self.size) <= self.end, "bench arena too small");
        let p = self.bump;
        self.bump = self.bump.wrapping_add(self.size);
        NonNull::new(p).unwrap()
    }

    #[inline]
    fn put(&mut self, p: NonNull<u8>) {
        // SAFETY: `p` is a block of the arena, at least 16 bytes and 16-aligned.
        unsafe { p.as_ptr().cast::<*mut u8>().write(self.head) };
        self.head = p.as_ptr();
    }

    fn addr(p: &NonNull<u8>) -> *mut u8 {
        p.as_ptr()
    }
}

/// The bare list behind a spin lock, taken once to allocate and once to free.
struct LockedBareList<'a>(&'a spin::Mutex<BareFreeList>);

impl BlockSource for LockedBareList<'_> {
    type Block = NonNull<u8>;

    #[inline]
    fn get(&mut self) -> NonNull<u8> {
        self.0.lock().get()
    }

    #[inline]
    fn put(&mut self, p: NonNull<u8>) {
        self.0.lock().put(p)
    }

    fn addr(p: &NonNull<u8>) -> *mut u8 {
        p.as_ptr()
    }
}

/// The pool's shared path: `DmaPool::alloc`, and dropping the handle.
struct SharedPool<'a>(&'a DmaPool);

impl BlockSource for SharedPool<'_> {
    type Block = PoolBlock;

    #[inline]
    fn get(&mut self) -> PoolBlock {
        self.0.alloc().unwrap()
    }

    #[inline]
    fn put(&mut self, block: PoolBlock) {
        drop(block)
    }

    fn addr(block: &PoolBlock) -> *mut u8 {
        block.as_ptr()
    }
}

impl BlockSource for PoolCache<'_> {
    type Block = PoolBlock;

    #[inline]
    fn get(&mut self) -> PoolBlock {
        self.alloc().unwrap()
    }

    #[inline]
    fn put(&mut self, block: PoolBlock) {
        self.free(block)
    }

    fn addr(block: &PoolBlock) -> *mut u8 {
        block.as_ptr()
    }
}

/// `linked_list_allocator::Heap` over an arena of its own.
struct Lla {
    heap: Heap,
    layout: Layout,
    _arena: Vec<u8>,
}

impl Lla {
    fn new(size: usize, blocks: usize) -> Lla {
        let bytes = blocks * size + 4096;
        let mut arena = vec![0u8; bytes];
        let mut heap = Heap::empty();
        // SAFETY: the arena lives as long as the heap (same struct, never moved out) and is used
        // by nothing else; moving the `Vec` does not move its buffer.
        unsafe { heap.init(arena.as_mut_ptr(), bytes) };
        Lla { heap, layout: Layout::from_size_align(size, ALIGN).unwrap(), _arena: arena }
    }
}

impl BlockSource for Lla {
    type Block = NonNull<u8>;

    #[inline]
    fn get(&mut self) -> NonNull<u8> {
        self.heap.allocate_first_fit(self.layout).unwrap()
    }

    #[inline]
    fn put(&mut self, p: NonNull<u8>) {
        // SAFETY: `p` came from this heap with this layout (every block in the bench does).
        unsafe { self.heap.deallocate(p, self.layout) }
    }

    fn addr(p: &NonNull<u8>) -> *mut u8 {
        p.as_ptr()
    }
}

/// A tiny deterministic random number generator (xorshift64).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Builds `live` live blocks the same way for every allocator: allocate twice as many, then
/// free every other one, so each allocator starts fragmented, with `live` holes between its live
/// blocks. The frees go from the highest index down: linked_list_allocator walks its
/// address-sorted hole list on every free, so freeing upwards would make this set-up quadratic
/// (minutes at 100,000), while downwards each hole goes at the front of its list. The holes are
/// the same either way.
fn fragmented<S: BlockSource>(source: &mut S, live: usize) -> Vec<S::Block> {
    let mut all: Vec<Option<S::Block>> = (0..2 * live).map(|_| Some(source.get())).collect();
    for i in (1..2 * live).step_by(2).rev() {
        source.put(all[i].take().unwrap());
    }
    all.into_iter().flatten().collect()
}

/// Allocates a block and hides its address from the optimiser.
#[inline]
fn get_opaque<S: BlockSource>(source: &mut S) -> S::Block {
    let block = source.get();
    black_box(S::addr(&block));
    block
}

#[inline]
fn churn<S: BlockSource>(source: &mut S) {
    let source = black_box(source);
    let block = get_opaque(source);
    source.put(block);
}

#[inline]
fn burst<S: BlockSource>(source: &mut S, slots: &mut [Option<S::Block>; BURST]) {
    let source = black_box(source);
    for slot in slots.iter_mut() {
        *slot = Some(get_opaque(source));
    }
    for slot in slots.iter_mut() {
        source.put(slot.take().unwrap());
    }
}

#[inline]
fn replace<S: BlockSource>(source: &mut S, live: &mut [S::Block], rng: &mut Rng) {
    let i = rng.below(live.len());
    let source = black_box(source);
    let new = get_opaque(source);
    let old = std::mem::replace(&mut live[i], new);
    source.put(old);
}

/// Runs `pattern` (all three, or only `burst`) on `source` under the name `allocator`.
fn measure<S: BlockSource>(
    c: &mut Criterion,
    size: usize,
    live: usize,
    allocator: &str,
    source: &mut S,
    blocks: &mut [S::Block],
    burst_only: bool,
) {
    let id = BenchmarkId::new(allocator, live);
    if !burst_only {
        c.benchmark_group(format!("churn/{size}")).bench_function(id.clone(), |b| b.iter(|| churn(source)));
    }
    let mut slots: [Option<S::Block>; BURST] = std::array::from_fn(|_| None);
    c.benchmark_group(format!("burst/{size}")).bench_function(id.clone(), |b| b.iter(|| burst(source, &mut slots)));
    if !burst_only && live > 0 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        c.benchmark_group(format!("replace/{size}"))
            .bench_function(id, |b| b.iter(|| replace(source, blocks, &mut rng)));
    }
}

fn machine() -> DmaDevice {
    let sim = SimMemory::new(&[SimRegion { base: 0x1_0000_0000, size: 1 << 30 }]);
    let phys: Arc<dyn PhysMemory> = sim;
    let dev = DmaDevice::new("00:1f.0 bench", phys.clone(), Arc::new(Direct::new(phys)));
    dev.set_mask(64).unwrap();
    dev.set_debug(false);
    dev
}

fn bench_pool(c: &mut Criterion, dev: &DmaDevice, size: usize) {
    for &live in &LIVE {
        let pool = DmaPool::create("bench", dev, size, ALIGN, 0).unwrap();
        // One live set, built through the shared path, serves every pool variant.
        let mut blocks = fragmented(&mut SharedPool(&pool), live);
        measure(c, size, live, "pool-shared", &mut SharedPool(&pool), &mut blocks, false);
        let mut cache = pool.cache(CACHE);
        measure(c, size, live, "pool-cache", &mut cache, &mut blocks, false);
        drop(cache);
        let mut small = pool.cache(SMALL_CACHE);
        measure(c, size, live, "pool-cache16", &mut small, &mut blocks, true);
        drop(small);
        drop(blocks);
        pool.destroy().unwrap();
    }
}

fn bench_bare(c: &mut Criterion, size: usize) {
    for &live in &LIVE {
        let mut list = spin::Mutex::new(BareFreeList::new(size, 2 * live + 4 * BURST));
        let mut blocks = fragmented(list.get_mut(), live);
        measure(c, size, live, "bare", list.get_mut(), &mut blocks, false);
        measure(c, size, live, "bare-locked", &mut LockedBareList(&list), &mut blocks, false);
    }
}

fn bench_lla(c: &mut Criterion, size: usize) {
    for &live in &LIVE {
        let mut heap = Lla::new(size, 2 * live + 4 * BURST);
        let mut blocks = fragmented(&mut heap, live);
        measure(c, size, live, "linked_list_allocator", &mut heap, &mut blocks, false);
    }
}

fn pools(c: &mut Criterion) {
    let dev = machine();
    for &size in &SIZES {
        bench_pool(c, &dev, size);
        bench_bare(c, size);
        bench_lla(c, size);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(700))
        .sample_size(10);
    targets = pools
}
criterion_main!(benches);
