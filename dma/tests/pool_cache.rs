//! Per-owner pool caches (`DmaPool::cache`): batching, going home to the right pool, statistics,
//! poisoning, failure, and the thread-safety markers.

mod common;

use std::sync::Arc;

use common::{Machine, reported};
use dma::mapper::Direct;
use dma::pool::{POOL_POISON_ALLOCATED, POOL_POISON_FREED, PoolCache, render_pools};
use dma::sim::{SimMemory, SimRegion};
use dma::{AllocError, BusAddr, DmaDevice, DmaPool, PhysMemory};

#[test]
fn the_cache_trades_with_the_pool_in_batches() {
    let m = Machine::direct("00:0b.0 cache-batch", 32, 0);
    let p = DmaPool::create("batch", &m.dev, 64, 8, 0).unwrap();
    let mut cache = p.cache(8);
    assert_eq!((cache.capacity(), cache.len()), (8, 0));

    // The first allocation takes half the capacity under one lock and hands out one block.
    let first = cache.alloc().unwrap();
    assert_eq!(cache.len(), 3);
    assert_eq!(p.stats().blocks_in_use, 4);
    assert_eq!(p.stats().cached, 4, "published at the refill, before the first block left");

    // The next three come from the stack: the pool sees nothing.
    let more: Vec<_> = (0..3).map(|_| cache.alloc().unwrap()).collect();
    assert!(cache.is_empty());
    assert_eq!(p.stats().blocks_in_use, 4);

    // Frees go onto the stack until it is full...
    let extra: Vec<_> = (0..4).map(|_| p.alloc().unwrap()).collect();
    cache.free(first);
    for b in more.into_iter().chain(extra) {
        cache.free(b);
    }
    assert_eq!(cache.len(), 8);
    assert_eq!(p.stats().blocks_in_use, 8);
    // ...and the ninth free gives half of them back first.
    cache.free(p.alloc().unwrap());
    assert_eq!(cache.len(), 5);
    assert_eq!(p.stats().blocks_in_use, 5);
    assert_eq!(p.stats().cached, 4, "published at the trade, before the ninth block arrived");

    cache.flush();
    assert!(cache.is_empty());
    assert_eq!((p.stats().blocks_in_use, p.stats().cached), (0, 0));
    // Still usable after a flush.
    drop(cache.alloc().unwrap());
    drop(cache);
    let st = p.stats();
    assert_eq!((st.blocks_in_use, st.caches, st.cached), (0, 0, 0));
    assert_eq!(st.free_blocks, st.total_blocks);
    p.destroy().unwrap();
}

#[test]
fn the_cache_is_lifo_so_the_warmest_block_comes_back_first() {
    let m = Machine::direct("00:0b.1 cache-lifo", 32, 0);
    let p = DmaPool::create("lifo", &m.dev, 32, 8, 0).unwrap();
    let mut cache = p.cache(16);
    let a = cache.alloc().unwrap();
    let b = cache.alloc().unwrap();
    let (bus_a, bus_b) = (a.bus_addr(), b.bus_addr());
    cache.free(a);
    cache.free(b);
    assert_eq!(cache.alloc().unwrap().bus_addr(), bus_b);
    // (That block was dropped, so it went to the shared pool, not the cache.)
    assert_eq!(cache.alloc().unwrap().bus_addr(), bus_a);
}

#[test]
fn the_refill_hands_out_the_pools_most_recently_freed_block_first() {
    let m = Machine::direct("00:0b.2 cache-warm", 32, 0);
    let p = DmaPool::create("warm", &m.dev, 32, 8, 0).unwrap();
    let warm = p.alloc().unwrap().bus_addr(); // dropped at once: the free list's head
    let mut cache = p.cache(8);
    assert_eq!(cache.alloc().unwrap().bus_addr(), warm);
}

#[test]
fn a_block_freed_into_another_pools_cache_goes_back_to_its_own_pool() {
    let m = Machine::direct("00:0b.3 cache-foreign", 32, 0);
    let mine = DmaPool::create("mine", &m.dev, 64, 8, 0).unwrap();
    let theirs = DmaPool::create("theirs", &m.dev, 64, 8, 0).unwrap();
    let mut cache = mine.cache(8);
    let own = cache.alloc().unwrap();
    let len = cache.len();
    let foreign = theirs.alloc().unwrap();
    let foreign_bus = foreign.bus_addr();
    assert_eq!(theirs.stats().blocks_in_use, 1);

    cache.free(foreign);
    assert_eq!(cache.len(), len, "the foreign block must not join this cache");
    assert_eq!(theirs.stats().blocks_in_use, 0, "it went back to its own pool");
    assert_eq!(theirs.alloc().unwrap().bus_addr(), foreign_bus, "and that pool reuses it");
    cache.free(own);
    assert_eq!(cache.len(), len + 1);
    drop(cache);
    mine.destroy().unwrap();
    theirs.destroy().unwrap();
}

#[test]
fn blocks_from_a_cache_are_ordinary_handles() {
    let m = Machine::direct("00:0b.4 cache-handles", 32, 0);
    let base = m.sim.frames_in_use();
    let p = DmaPool::create("handles", &m.dev, 128, 16, 0).unwrap();
    let mut cache = p.cache(4);
    let mut b = cache.zalloc().unwrap();
    b.write::<u32>(4, 0x1234_5678).unwrap();
    let mut seen = [0u8; 4];
    m.hw.read(BusAddr(b.bus_addr().as_u64() + 4), &mut seen).unwrap();
    assert_eq!(u32::from_le_bytes(seen), 0x1234_5678, "the device sees the block");
    let outlives_cache = cache.alloc().unwrap();
    drop(cache); // the stack goes back; the two handles stay allocated
    assert_eq!(p.stats().blocks_in_use, 2);
    drop(b); // dropped anywhere, a handle frees itself into the shared pool
    assert_eq!(p.stats().blocks_in_use, 1);
    let (cpu, bus) = outlives_cache.into_raw();
    p.free_raw(cpu.as_ptr(), bus).unwrap();
    assert_eq!(p.stats().blocks_in_use, 0);
    p.destroy().unwrap();
    assert_eq!(m.sim.frames_in_use(), base, "every unit freed");
}

#[test]
fn zalloc_through_the_cache_zeroes_a_reused_block() {
    let m = Machine::direct("00:0b.5 cache-zero", 32, 0);
    let p = DmaPool::create("zero", &m.dev, 48, 16, 0).unwrap();
    let mut cache = p.cache(4);
    let mut b = cache.alloc().unwrap();
    b.write_bytes(0, &[0xff; 48]).unwrap();
    cache.free(b);
    let z = cache.zalloc().unwrap();
    let mut bytes = [1u8; 48];
    z.read_bytes(0, &mut bytes).unwrap();
    assert_eq!(bytes, [0; 48]);
}

#[test]
fn poisoning_works_through_the_cache() {
    let name = "00:0b.6 cache-poison";
    let m = Machine::direct(name, 32, 0);
    let p = DmaPool::create_poisoned("cpoison", &m.dev, 64, 8, 0).unwrap();
    let mut cache = p.cache(8);

    // A fresh block from a refill: poisoned as allocated, and its link bytes are not reported.
    let b = cache.alloc().unwrap();
    assert_eq!(b.read::<u8>(0).unwrap(), POOL_POISON_ALLOCATED);
    assert_eq!(b.read::<u8>(63).unwrap(), POOL_POISON_ALLOCATED);
    assert_eq!(p.stats().poison_failures, 0);

    // Freed into the cache: poisoned as freed, the whole block.
    let bus = b.bus_addr();
    cache.free(b);
    let mut seen = [0u8; 64];
    m.hw.read(bus, &mut seen).unwrap();
    assert_eq!(seen, [POOL_POISON_FREED; 64]);

    // The device writes into the freed block; the next allocation from the cache catches it,
    // even in the first bytes (in the cache they hold no link).
    m.hw.write(BusAddr(bus.as_u64() + 3), &[0x42]).unwrap();
    let again = cache.alloc().unwrap();
    assert_eq!(again.bus_addr(), bus, "LIFO reuse");
    assert_eq!(p.stats().poison_failures, 1);
    assert!(reported(name, "dma_pool cpoison: block"));
    assert!(reported(name, "byte 3 is 0x42"));

    // zalloc checks the poison too, before it zeroes the block.
    let next = cache.alloc().unwrap();
    let next_bus = next.bus_addr();
    cache.free(next);
    m.hw.write(BusAddr(next_bus.as_u64() + 60), &[0x17]).unwrap();
    let z = cache.zalloc().unwrap();
    assert_eq!(z.bus_addr(), next_bus);
    assert_eq!(p.stats().poison_failures, 2);
    assert!(reported(name, "byte 60 is 0x17"));
    let mut bytes = [1u8; 64];
    z.read_bytes(0, &mut bytes).unwrap();
    assert_eq!(bytes, [0; 64], "zalloc still zeroes a poisoned pool's block");

    // Clean reuse reports nothing; blocks given back to the pool are poisoned there as usual.
    drop(again);
    cache.free(z);
    let _ = cache.alloc().unwrap();
    drop(cache);
    let _ = p.alloc().unwrap();
    assert_eq!(p.stats().poison_failures, 2);
}

#[test]
fn refilled_blocks_are_checked_for_writes_while_they_waited_on_the_stack() {
    let name = "00:0b.7 cache-poison-refill";
    let m = Machine::direct(name, 32, 0);
    let p = DmaPool::create_poisoned("crefill", &m.dev, 32, 8, 0).unwrap();
    // Make the pool's free list known: block `last` was freed last, `before` just before it.
    let before = p.alloc().unwrap();
    let last = p.alloc().unwrap();
    let (before_bus, last_bus) = (before.bus_addr(), last.bus_addr());
    drop(before);
    drop(last);
    let mut cache = p.cache(4); // refills two blocks: `last` is handed out, `before` waits
    let handed = cache.alloc().unwrap();
    assert_eq!(handed.bus_addr(), last_bus);
    assert_eq!(cache.len(), 1);
    // A stray write into the link bytes of the waiting block: they were poisoned at the refill.
    m.hw.write(BusAddr(before_bus.as_u64() + 1), &[0x00]).unwrap();
    let waited = cache.alloc().unwrap();
    assert_eq!(waited.bus_addr(), before_bus);
    assert_eq!(p.stats().poison_failures, 1);
    assert!(reported(name, "byte 1 is 0x00"));
}

#[test]
fn stats_and_the_pools_view_show_what_caches_hold() {
    let device = "00:0b.8 cache-view";
    let m = Machine::direct(device, 32, 0);
    let p = DmaPool::create("cacheview", &m.dev, 100, 4, 0).unwrap();
    let line = || {
        let view = dma::view("dma:pools").unwrap();
        view.lines().find(|l| l.starts_with("cacheview")).unwrap().to_string()
    };
    assert!(!line().contains("cached="), "no column without caches: `{}`", line());
    let mut cache = p.cache(10);
    let b = cache.alloc().unwrap(); // takes 5 (published as cached), hands out 1
    let st = p.stats();
    assert_eq!((st.caches, st.cached, st.blocks_in_use), (1, 5, 5));
    assert_eq!(cache.len(), 4, "the exact count");
    let l = line();
    let cols: Vec<&str> = l.split_whitespace().collect();
    assert_eq!(&cols[..6], &["cacheview", "5", "40", "100", "1", "cached=5"], "`{l}`");
    assert!(l.ends_with(device), "the device stays last: `{l}`");
    let second = p.cache(2);
    assert_eq!(p.stats().caches, 2);
    drop(second);
    drop(b);
    drop(cache);
    assert!(!line().contains("cached="));
    assert!(render_pools().contains("cacheview"));
}

#[test]
fn an_empty_pool_that_cannot_grow_fails_through_the_cache_too() {
    let sim = SimMemory::new(&[SimRegion { base: 0x10_0000, size: 8192 }]);
    let phys: Arc<dyn PhysMemory> = sim;
    let dev = DmaDevice::new("00:0b.9 cache-oom", phys.clone(), Arc::new(Direct::new(phys)));
    let p = DmaPool::create("tinycache", &dev, 4096, 4096, 0).unwrap();
    let mut cache = p.cache(8); // a batch of 4 would need 4 pages; the machine has 2
    let a = cache.alloc().unwrap();
    assert_eq!(cache.len(), 1, "a partial batch is enough");
    let b = cache.alloc().unwrap();
    assert!(matches!(cache.alloc(), Err(AllocError::OutOfMemory { .. })));
    cache.free(a);
    let again = cache.alloc().unwrap();
    drop((again, b));
}

#[test]
fn a_cache_can_move_to_another_thread() {
    let m = Machine::direct("00:0c.0 cache-thread", 32, 0);
    let p = DmaPool::create("threads", &m.dev, 64, 8, 0).unwrap();
    let mut cache = p.cache(8);
    let kept = cache.alloc().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            let blocks: Vec<_> = (0..20).map(|_| cache.alloc().unwrap()).collect();
            for b in blocks {
                cache.free(b);
            }
            cache.free(kept);
        });
        // Meanwhile this thread uses the shared pool directly.
        for _ in 0..20 {
            drop(p.alloc().unwrap());
        }
    });
    let st = p.stats();
    assert_eq!((st.blocks_in_use, st.caches, st.cached), (0, 0, 0));
    p.destroy().unwrap();
}

#[test]
fn pools_are_shareable_and_caches_are_movable() {
    fn send_and_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_and_sync::<DmaPool>();
    send::<PoolCache<'static>>();
}
