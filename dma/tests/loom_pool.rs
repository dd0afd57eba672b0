//! A `loom` model of a DMA pool shared by two owners: one with a per-owner cache (a magazine
//! whose refills and give-backs trade with the pool under its lock), one allocating from the
//! pool directly. loom runs every interleaving of their lock operations.
//!
//! Checked after each interleaving: no block is held by two owners at once (each owner stamps
//! its block and finds its stamp intact before freeing it), and the pool's books balance once
//! both are done: no block in use, none counted as cached, one cache created and dropped.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p dma --release --test loom_pool` (also part
//! of `cargo xtask test --host-only`). Without `--cfg loom` this file compiles to nothing.
#![cfg(loom)]

use std::sync::Arc;

use dma::mapper::Direct;
use dma::sim::SimMemory;
use dma::{DmaDevice, DmaPool, PhysMemory, PoolBlock};

/// Allocate/free rounds per owner. Two make the cached owner refill, free into its stack,
/// and give back; more only multiply the interleavings.
const ROUNDS: u64 = 2;

fn stamped(block: &mut PoolBlock, owner: u64, round: u64) -> u64 {
    let stamp = owner << 32 | round;
    block.write(0, stamp).unwrap();
    stamp
}

#[test]
fn a_cached_owner_and_a_direct_owner_never_share_a_block() {
    loom::model(|| {
        let sim = SimMemory::low_and_high(1 << 20, 1 << 20);
        let phys: Arc<dyn PhysMemory> = sim.clone();
        let dev = DmaDevice::new("00:0a.0 loom-pool", phys.clone(), Arc::new(Direct::new(phys)));
        // 64-byte blocks: one page holds 64 of them, so the pool grows once, before the model.
        let pool = Arc::new(DmaPool::create("loom", &dev, 64, 8, 0).unwrap());
        drop(pool.alloc().unwrap());

        let cached = {
            let pool = pool.clone();
            loom::thread::spawn(move || {
                // Capacity 2: trades of one block, so refill and give-back both happen.
                let mut cache = pool.cache(2);
                for round in 0..ROUNDS {
                    let mut a = cache.alloc().unwrap();
                    let mut b = cache.alloc().unwrap();
                    let (sa, sb) = (stamped(&mut a, 1, round), stamped(&mut b, 1, round + 100));
                    loom::thread::yield_now();
                    assert_eq!(a.read::<u64>(0).unwrap(), sa, "the cached owner's block was handed out twice");
                    assert_eq!(b.read::<u64>(0).unwrap(), sb, "the cached owner's block was handed out twice");
                    cache.free(a);
                    cache.free(b);
                }
            })
        };
        for round in 0..ROUNDS {
            let mut c = pool.alloc().unwrap();
            let sc = stamped(&mut c, 2, round);
            loom::thread::yield_now();
            assert_eq!(c.read::<u64>(0).unwrap(), sc, "the direct owner's block was handed out twice");
        }
        cached.join().unwrap();

        let stats = pool.stats();
        assert_eq!(stats.blocks_in_use, 0, "a block never came back: {stats:?}");
        assert_eq!(stats.free_blocks, stats.total_blocks, "{stats:?}");
        assert_eq!((stats.caches, stats.cached), (0, 0), "cache bookkeeping out of balance: {stats:?}");
    });
}
