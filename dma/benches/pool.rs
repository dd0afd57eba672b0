//! DMA pool allocation cost against two baselines:
//! - a bare intrusive free list (no locking, no bookkeeping): the lower limit;
//! - the same free list behind a spin lock: the limit for anything shareable between CPUs;
//! - `linked_list_allocator::Heap`, a general-purpose first-fit allocator, serving the same
//!   blocks.
//!
//! Each is measured with 0, 1,000 and 100,000 blocks live. The live set is built by allocating
//! twice as many blocks and freeing every other one, so every allocator starts fragmented.
//! Two patterns:
//! - `churn`: allocate a block and free it again (the cost of one alloc+free pair);
//! - `replace`: free a random live block and allocate a new one (blocks come back in an order
//!   unrelated to allocation, as descriptors complete out of order).
//!
//! Run: `cargo bench -p dma --bench pool`; `dma/BENCHMARKS.md` has the numbers.

use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dma::mapper::Direct;
use dma::sim::{SimMemory, SimRegion};
use dma::{DmaDevice, DmaPool, PhysMemory, PoolBlock};
use linked_list_allocator::Heap;

const SIZES: [usize; 5] = [16, 64, 256, 1024, 4096];
const LIVE: [usize; 3] = [0, 1_000, 100_000];
const ALIGN: usize = 16;

/// The limit: a singly linked list threaded through free blocks of one arena.
struct BareFreeList {
    head: *mut u8,
    bump: *mut u8,
    end: *mut u8,
    size: usize,
    _arena: Vec<u8>,
}

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

    #[inline]
    fn alloc(&mut self) -> Option<NonNull<u8>> {
        if let Some(p) = NonNull::new(self.head) {
            // SAFETY: free blocks hold the next pointer in their first 8 bytes.
            self.head = unsafe { p.as_ptr().cast::<*mut u8>().read() };
            return Some(p);
        }
        if self.bump.wrapping_add(self.size) > self.end {
            return None;
        }
        let p = self.bump;
        self.bump = self.bump.wrapping_add(self.size);
        NonNull::new(p)
    }

    #[inline]
    fn free(&mut self, p: NonNull<u8>) {
        // SAFETY: `p` is a block of the arena, at least 8 bytes and 8-aligned.
        unsafe { p.as_ptr().cast::<*mut u8>().write(self.head) };
        self.head = p.as_ptr();
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

/// Builds `live` live items by allocating twice as many and freeing every other one.
fn fragmented<T>(live: usize, mut alloc: impl FnMut() -> T, mut free: impl FnMut(T)) -> Vec<T> {
    let mut all: Vec<T> = (0..2 * live).map(|_| alloc()).collect();
    let mut kept = Vec::with_capacity(live);
    for (i, item) in all.drain(..).enumerate() {
        if i % 2 == 1 {
            free(item);
        } else {
            kept.push(item);
        }
    }
    kept
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
        let mut blocks: Vec<PoolBlock> = fragmented(live, || pool.alloc().unwrap(), drop);
        c.benchmark_group(format!("churn/{size}"))
            .bench_function(BenchmarkId::new("pool", live), |b| b.iter(|| drop(black_box(pool.alloc().unwrap()))));
        if live > 0 {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            c.benchmark_group(format!("replace/{size}")).bench_function(BenchmarkId::new("pool", live), |b| {
                b.iter(|| {
                    let i = rng.below(blocks.len());
                    let new = pool.alloc().unwrap();
                    drop(black_box(std::mem::replace(&mut blocks[i], new)));
                })
            });
        }
        drop(blocks);
        pool.destroy().unwrap();
    }
}

fn bench_bare(c: &mut Criterion, size: usize) {
    for &live in &LIVE {
        let mut list = BareFreeList::new(size, 2 * live + 8);
        let mut blocks = {
            let l = &mut list as *mut BareFreeList;
            // SAFETY: the two closures use the list one after the other, never at once.
            fragmented(live, || unsafe { (*l).alloc().unwrap() }, |p| unsafe { (*l).free(p) })
        };
        c.benchmark_group(format!("churn/{size}")).bench_function(BenchmarkId::new("bare", live), |b| {
            b.iter(|| {
                let p = list.alloc().unwrap();
                list.free(black_box(p));
            })
        });
        let locked = spin::Mutex::new(list);
        c.benchmark_group(format!("churn/{size}")).bench_function(BenchmarkId::new("bare-locked", live), |b| {
            b.iter(|| {
                let p = locked.lock().alloc().unwrap();
                locked.lock().free(black_box(p));
            })
        });
        let mut list = locked.into_inner();
        if live > 0 {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            c.benchmark_group(format!("replace/{size}")).bench_function(BenchmarkId::new("bare", live), |b| {
                b.iter(|| {
                    let i = rng.below(blocks.len());
                    let new = list.alloc().unwrap();
                    let old = std::mem::replace(&mut blocks[i], new);
                    list.free(black_box(old));
                })
            });
        }
    }
}

fn bench_lla(c: &mut Criterion, size: usize) {
    let layout = Layout::from_size_align(size, ALIGN).unwrap();
    for &live in &LIVE {
        let bytes = (2 * live + 64) * size + 4096;
        let mut arena = vec![0u8; bytes];
        let mut heap = Heap::empty();
        // SAFETY: the arena outlives the heap and is used by nothing else.
        unsafe { heap.init(arena.as_mut_ptr(), bytes) };
        let mut blocks = {
            let h = &mut heap as *mut Heap;
            // SAFETY: the two closures use the heap one after the other, never at once.
            fragmented(
                live,
                || unsafe { (*h).allocate_first_fit(layout).unwrap() },
                |p| unsafe { (*h).deallocate(p, layout) },
            )
        };
        c.benchmark_group(format!("churn/{size}")).bench_function(
            BenchmarkId::new("linked_list_allocator", live),
            |b| {
                b.iter(|| {
                    let p = heap.allocate_first_fit(layout).unwrap();
                    // SAFETY: just allocated with this layout.
                    unsafe { heap.deallocate(black_box(p), layout) };
                })
            },
        );
        if live > 0 {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            c.benchmark_group(format!("replace/{size}")).bench_function(
                BenchmarkId::new("linked_list_allocator", live),
                |b| {
                    b.iter(|| {
                        let i = rng.below(blocks.len());
                        let new = heap.allocate_first_fit(layout).unwrap();
                        let old = std::mem::replace(&mut blocks[i], new);
                        // SAFETY: `old` was allocated from this heap with this layout.
                        unsafe { heap.deallocate(black_box(old), layout) };
                    })
                },
            );
        }
        drop(blocks);
        drop(arena);
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
