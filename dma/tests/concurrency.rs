//! Many threads at once: the `dma` docs promise that every call may be made from any CPU. These
//! stress tests hold the service to it on the host, with bounded counts, and check the
//! invariants after every run:
//! - no two live blocks or bounce slots overlap (each owner stamps its memory and finds its own
//!   stamp still there when it gives the memory back);
//! - every block and every slot comes back (the pool's and the bounce area's counters return to
//!   zero in use).

mod common;

use common::Machine;
use dma::mapper::Direct;
use dma::sim::SimMemory;
use dma::{DmaDevice, DmaPool, FromDevice, PhysMemory, ToDevice};
use std::sync::Arc;

const THREADS: usize = 4;
const ROUNDS: usize = 2_000;
/// Blocks each thread holds at its peak.
const HELD: usize = 24;

/// A stamp no other thread or round writes: thread in the high half, sequence number below.
fn stamp(thread: usize, seq: usize) -> u64 {
    ((thread as u64) << 48) | seq as u64
}

/// A pool with a small, boundary-restricted block layout, so that threads contend for the same
/// units and the free list is busy.
fn shared_pool(name: &str) -> (Machine, DmaPool) {
    let m = Machine::direct(name, 32, 0);
    let pool = DmaPool::create("stress", &m.dev, 48, 16, 256).unwrap();
    (m, pool)
}

#[test]
fn pool_shared_by_threads_never_hands_out_a_block_twice() {
    let (_m, pool) = shared_pool("00:09.0 pool-threads");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let pool = &pool;
            s.spawn(move || {
                let mut held = Vec::with_capacity(HELD);
                for seq in 0..ROUNDS {
                    let mut block = pool.alloc().expect("the pool grows on demand");
                    block.write(0, stamp(t, seq)).unwrap();
                    held.push((block, stamp(t, seq)));
                    // Free in a different order than allocated, to churn the free list.
                    if held.len() == HELD {
                        for (block, expected) in held.drain(..).rev() {
                            assert_eq!(block.read::<u64>(0).unwrap(), expected, "another owner wrote into this block");
                            drop(block);
                        }
                    }
                }
                for (block, expected) in held {
                    assert_eq!(block.read::<u64>(0).unwrap(), expected, "another owner wrote into this block");
                }
            });
        }
    });
    let stats = pool.stats();
    assert_eq!(stats.blocks_in_use, 0, "every block came back: {stats:?}");
    assert_eq!(stats.free_blocks, stats.total_blocks, "{stats:?}");
}

#[test]
fn per_thread_caches_over_one_pool_never_share_a_block() {
    let (_m, pool) = shared_pool("00:09.1 pool-caches");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let pool = &pool;
            s.spawn(move || {
                // Each owner its own magazine; refills and returns go through the shared pool.
                let mut cache = pool.cache(16);
                let mut held = Vec::with_capacity(HELD);
                for seq in 0..ROUNDS {
                    let mut block = cache.alloc().expect("the pool grows on demand");
                    block.write(0, stamp(t, seq)).unwrap();
                    held.push((block, stamp(t, seq)));
                    if held.len() == HELD {
                        for (block, expected) in held.drain(..) {
                            assert_eq!(block.read::<u64>(0).unwrap(), expected, "another owner wrote into this block");
                            cache.free(block);
                        }
                    }
                }
                for (block, expected) in held {
                    assert_eq!(block.read::<u64>(0).unwrap(), expected);
                    cache.free(block);
                }
                cache.flush();
            });
        }
    });
    let stats = pool.stats();
    assert_eq!(stats.blocks_in_use, 0, "every block came back: {stats:?}");
}

#[test]
fn bounce_area_shared_by_threads_keeps_every_mapping_apart() {
    // 32-bit device, buffers above 4 GiB: every mapping takes bounce slots.
    let m = Machine::direct("00:09.2 bounce-threads", 32, 256 * 1024);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let m = &m;
            s.spawn(move || {
                for seq in 0..ROUNDS / 4 {
                    let mark = stamp(t, seq).to_le_bytes();
                    let mut buf = m.high_buffer(512 + 64 * (seq % 8));
                    buf[..8].copy_from_slice(&mark);
                    let tx = m.dev.map(buf, ToDevice).expect("slots are free again after each unmap");
                    assert!(tx.is_bounced());
                    let mut seen = [0u8; 8];
                    m.hw.read(tx.bus_addr(), &mut seen).unwrap();
                    assert_eq!(seen, mark, "the device saw another mapping's data");
                    tx.unmap();

                    let rx = m.dev.map(m.high_buffer(256), FromDevice).unwrap();
                    m.hw.write(rx.bus_addr(), &mark).unwrap();
                    let buf = rx.unmap();
                    assert_eq!(buf[..8], mark, "a received buffer got another mapping's data");
                }
            });
        }
    });
    let stats = m.stats();
    assert_eq!(stats.slots_used, 0, "every slot came back: {stats:?}");
    assert_eq!(stats.copies_to_slot, (THREADS * ROUNDS / 4 * 2) as u64, "{stats:?}");
}

#[test]
fn coherent_allocations_from_threads_are_disjoint() {
    let sim = SimMemory::low_and_high(16 << 20, 4 << 20);
    let phys: Arc<dyn PhysMemory> = sim.clone();
    let dev = DmaDevice::new("00:09.3 coherent-threads", phys.clone(), Arc::new(Direct::new(phys)));
    let ranges = std::sync::Mutex::new(Vec::new());
    // Every buffer stays live until all threads have allocated theirs: only then must they all
    // be disjoint.
    let all_allocated = std::sync::Barrier::new(THREADS);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let (dev, ranges, all_allocated) = (&dev, &ranges, &all_allocated);
            s.spawn(move || {
                let mut live = Vec::new();
                for i in 0..64 {
                    let c = dev.alloc_coherent_slice::<u64>(512 * (1 + i % 3)).expect("16 MiB is enough");
                    let start = c.bus_addr().as_u64();
                    ranges.lock().unwrap().push((start, start + 8 * c.len() as u64));
                    live.push(c);
                }
                all_allocated.wait();
                drop(live);
            });
        }
    });
    let mut ranges = ranges.into_inner().unwrap();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two live coherent buffers overlap: {pair:?}");
    }
}
