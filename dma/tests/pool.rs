//! DMA pools: parameters, layout, raw misuse, destruction, poisoning, views.

mod common;

use std::sync::Arc;

use common::{Machine, reported};
use dma::mapper::Direct;
use dma::pool::{MAX_POOL_BLOCK, render_pools};
use dma::sim::{SimMemory, SimRegion};
use dma::{AllocError, DmaDevice, DmaPool, PhysMemory, PoolError, ReportKind};

#[test]
fn invalid_parameters_each_have_their_error() {
    let m = Machine::direct("00:08.0 pool-params", 32, 0);
    let d = &m.dev;
    assert_eq!(DmaPool::create("p", d, 0, 8, 0).unwrap_err(), PoolError::ZeroSize);
    assert_eq!(DmaPool::create("p", d, 64, 24, 0).unwrap_err(), PoolError::AlignNotPowerOfTwo { align: 24 });
    assert_eq!(DmaPool::create("p", d, 64, 8, 3000).unwrap_err(), PoolError::BoundaryNotPowerOfTwo { boundary: 3000 });
    assert_eq!(
        DmaPool::create("p", d, 100, 4, 64).unwrap_err(),
        PoolError::BoundaryTooSmall { boundary: 64, size: 100 }
    );
    // The boundary check uses the size after rounding to the alignment.
    assert_eq!(
        DmaPool::create("p", d, 40, 64, 32).unwrap_err(),
        PoolError::BoundaryTooSmall { boundary: 32, size: 64 }
    );
    assert_eq!(
        DmaPool::create("p", d, MAX_POOL_BLOCK + 1, 8, 0).unwrap_err(),
        PoolError::BlockTooLarge { size: MAX_POOL_BLOCK + 1, max: MAX_POOL_BLOCK }
    );
    for e in [
        PoolError::ZeroSize,
        PoolError::AlignNotPowerOfTwo { align: 24 },
        PoolError::BoundaryNotPowerOfTwo { boundary: 3000 },
        PoolError::BoundaryTooSmall { boundary: 64, size: 100 },
        PoolError::BlockTooLarge { size: 1, max: 0 },
    ] {
        assert!(e.to_string().starts_with("DMA pool"));
    }
}

#[test]
fn sizes_round_up_and_blocks_respect_align_and_boundary() {
    let m = Machine::direct("00:08.1 pool-layout", 32, 0);
    assert_eq!(DmaPool::create("a", &m.dev, 5, 4, 0).unwrap().block_size(), 8);
    assert_eq!(DmaPool::create("b", &m.dev, 24, 16, 0).unwrap().block_size(), 32);
    // 48-byte blocks, 64-byte boundary: one block per 64-byte window.
    let p = DmaPool::create("c", &m.dev, 48, 16, 64).unwrap();
    let blocks: Vec<_> = (0..200).map(|_| p.alloc().unwrap()).collect();
    for b in &blocks {
        let start = b.bus_addr().as_u64();
        assert_eq!(start % 16, 0);
        assert_eq!(start / 64, (start + 47) / 64, "no block crosses the boundary");
        assert!(start + 47 <= 0xffff_ffff, "within the mask");
    }
    assert_eq!(p.stats().total_blocks, 64 * 4);
    assert_eq!(p.stats().pages, 4);
}

#[test]
fn units_are_added_lazily_and_large_blocks_get_large_units() {
    let m = Machine::direct("00:08.2 pool-lazy", 32, 0);
    let p = DmaPool::create("big", &m.dev, 5000, 8, 0).unwrap();
    assert_eq!(p.stats().pages, 0);
    assert_eq!(p.unit_size(), 8192);
    let a = p.alloc().unwrap();
    let b = p.alloc().unwrap();
    assert_eq!(p.stats().pages, 2);
    assert_eq!(a.len(), 5000);
    assert_ne!(a.bus_addr(), b.bus_addr());
}

#[test]
fn zalloc_is_zero_and_block_access_is_bounded() {
    let m = Machine::direct("00:08.3 pool-zero", 32, 0);
    let p = DmaPool::create("z", &m.dev, 64, 8, 0).unwrap();
    let mut b = p.alloc().unwrap();
    b.write_bytes(0, &[0xff; 64]).unwrap();
    b.write::<u32>(3, 0x0a0b_0c0d).unwrap();
    assert_eq!(b.read::<u32>(3).unwrap(), 0x0a0b_0c0d);
    assert!(b.write::<u64>(60, 1).is_err());
    assert!(b.read::<u64>(57).is_err());
    let mut out = [0u8; 2];
    assert!(b.read_bytes(63, &mut out).is_err());
    drop(b);
    let z = p.zalloc().unwrap();
    let mut all = [1u8; 64];
    z.read_bytes(0, &mut all).unwrap();
    assert_eq!(all, [0; 64]);
    // The device sees the block at its bus address.
    let mut seen = [1u8; 8];
    m.hw.read(z.bus_addr(), &mut seen).unwrap();
    assert_eq!(seen, [0; 8]);
}

#[test]
fn raw_free_detects_double_free_wrong_pool_and_bad_addresses() {
    let name = "00:08.4 pool-raw";
    let m = Machine::direct(name, 32, 0);
    let p = DmaPool::create("rawpool", &m.dev, 64, 8, 0).unwrap();
    let other = DmaPool::create("otherpool", &m.dev, 64, 8, 0).unwrap();
    let (cpu, bus) = p.alloc_raw().unwrap();
    let (ocpu, obus) = other.alloc_raw().unwrap();
    let handle = p.alloc().unwrap();
    let before = p.stats();

    let r = p.free_raw(ocpu.as_ptr(), obus).unwrap_err();
    assert!(matches!(r.kind, ReportKind::PoolBadFree { .. }));
    assert!(r.to_string().contains("rawpool"));
    assert!(r.to_string().contains("not in this pool"));

    let r = p.free_raw(cpu.as_ptr().wrapping_add(4), dma::BusAddr(bus.as_u64() + 4)).unwrap_err();
    assert!(r.to_string().contains("not the start of a block"));

    let r = p.free_raw(handle.as_ptr(), bus).unwrap_err();
    assert!(r.to_string().contains("different blocks"));

    let r = p.free_raw(handle.as_ptr(), handle.bus_addr()).unwrap_err();
    assert!(r.to_string().contains("PoolBlock handle"));

    assert_eq!(p.stats(), before, "state intact after refused frees");

    p.free_raw(cpu.as_ptr(), bus).unwrap();
    let r = p.free_raw(cpu.as_ptr(), bus).unwrap_err();
    assert_eq!(r.kind, ReportKind::PoolDoubleFree { pool: "rawpool".into(), bus });
    assert_eq!(r.device, name);
    assert_eq!(p.stats().blocks_in_use, 1);
    assert_eq!(m.dev.report_count(), 5);
    assert!(reported(name, "freed twice"));

    // A handle converted to raw is freed raw.
    let (hc, hb) = handle.into_raw();
    p.free_raw(hc.as_ptr(), hb).unwrap();
    assert_eq!(p.stats().blocks_in_use, 0);
    other.free_raw(ocpu.as_ptr(), obus).unwrap();
}

#[test]
fn destroying_a_busy_pool_reports_and_frees_nothing_in_use() {
    let name = "00:08.5 pool-busy";
    let m = Machine::direct(name, 32, 0);
    let base = m.sim.frames_in_use();
    let p = DmaPool::create("busy", &m.dev, 2048, 8, 0).unwrap();
    let blocks: Vec<_> = (0..4).map(|_| p.alloc().unwrap()).collect(); // units 0 and 1
    let (_, raw_bus) = p.alloc_raw().unwrap(); // unit 2
    drop(blocks); // units 0 and 1 are empty again
    let keep = p.alloc().unwrap(); // reuses the last freed block: unit 1 (0 stays empty)
    assert_eq!(m.sim.frames_in_use(), base + 3);
    let err = p.destroy().unwrap_err();
    assert_eq!(err.pool, "busy");
    assert_eq!(err.device, name);
    assert_eq!(err.live.len(), 2);
    assert!(err.live.contains(&raw_bus));
    assert!(err.live.contains(&keep.bus_addr()));
    assert!(err.to_string().contains("quarantined"));
    assert!(reported(name, "destroyed with 2 blocks"));
    // Only the empty unit was freed; a device may still write the others.
    assert_eq!(m.sim.frames_in_use(), base + 2);
    m.hw.write(raw_bus, b"late write").unwrap();
    drop(keep);
    assert_eq!(m.sim.frames_in_use(), base + 2, "quarantined for good");
    assert!(!render_pools().contains("busy "));
}

#[test]
fn destroying_an_idle_pool_frees_everything() {
    let m = Machine::direct("00:08.6 pool-idle", 32, 0);
    let base = m.sim.frames_in_use();
    let p = DmaPool::create("idle", &m.dev, 128, 8, 0).unwrap();
    let blocks: Vec<_> = (0..100).map(|_| p.zalloc().unwrap()).collect();
    assert!(m.sim.frames_in_use() > base);
    drop(blocks);
    p.destroy().unwrap();
    assert_eq!(m.sim.frames_in_use(), base);
}

#[test]
fn poisoning_catches_a_write_after_free() {
    let name = "00:08.7 pool-poison";
    let m = Machine::direct(name, 32, 0);
    let p = DmaPool::create_poisoned("poisoned", &m.dev, 64, 8, 0).unwrap();
    let b = p.alloc().unwrap();
    let bus = b.bus_addr();
    assert_eq!(b.read::<u8>(20).unwrap(), dma::pool::POOL_POISON_ALLOCATED);
    drop(b);
    // The device writes into the freed block (it was not told to stop).
    m.hw.write(dma::BusAddr(bus.as_u64() + 20), &[0x42]).unwrap();
    let again = p.alloc().unwrap();
    assert_eq!(again.bus_addr(), bus, "LIFO reuse");
    assert_eq!(p.stats().poison_failures, 1);
    assert!(reported(name, "dma_pool poisoned: block"));
    assert!(reported(name, "byte 20 is 0x42"));
    // A clean reuse reports nothing.
    drop(again);
    let _ = p.alloc().unwrap();
    assert_eq!(p.stats().poison_failures, 1);
}

#[test]
fn a_damaged_free_list_is_reported_not_followed() {
    let name = "00:08.8 pool-corrupt";
    let m = Machine::direct(name, 32, 0);
    let p = DmaPool::create("fragile", &m.dev, 64, 8, 0).unwrap();
    let a = p.alloc().unwrap();
    let bus = a.bus_addr();
    drop(a);
    // A device scribbles over the free block's link.
    m.hw.write(bus, &[0xee; 8]).unwrap();
    let first = p.alloc().unwrap();
    assert_eq!(first.bus_addr(), bus);
    let second = p.alloc().unwrap();
    assert_ne!(second.bus_addr(), bus);
    assert!(reported(name, "free list damaged"));
}

/// A device that zeroes a stale buffer writes zeros over a free block's link, and zero is a
/// well-formed link: block 0 of unit 0. Here that block is allocated, so following the link would
/// hand it out a second time. Both ways of popping (one allocation, a cache's batch refill) must
/// refuse it, report the damage and carry on with fresh memory.
#[test]
fn a_free_list_link_to_a_live_block_is_not_followed() {
    for (name, through_cache) in [("00:09.2 pool-zeroed-link", false), ("00:09.3 pool-zeroed-link-cache", true)] {
        let m = Machine::direct(name, 32, 0);
        let p = DmaPool::create("zeroed", &m.dev, 64, 8, 0).unwrap();
        let a = p.alloc().unwrap(); // block 0 of unit 0
        let b = p.alloc().unwrap();
        let b_bus = b.bus_addr();
        drop(b); // now the head of the free list
        m.hw.write(b_bus, &[0; 8]).unwrap();
        let mut cache = p.cache(8);
        let got: Vec<_> = (0..3).map(|_| if through_cache { cache.alloc() } else { p.alloc() }.unwrap()).collect();
        assert_eq!(got[0].bus_addr(), b_bus, "the damaged block itself is still good");
        for (i, g) in got.iter().enumerate() {
            assert_ne!(g.bus_addr(), a.bus_addr(), "a live block was handed out again");
            assert!(got[..i].iter().all(|h| h.bus_addr() != g.bus_addr()), "a block was handed out twice");
        }
        assert!(reported(name, "free list damaged"));
        assert_eq!(p.stats().pages, 2, "the abandoned list was replaced by a new unit");
        drop(got);
        drop(cache);
        assert_eq!(p.stats().blocks_in_use, 1);
        drop(a);
        assert_eq!(p.stats().blocks_in_use, 0);
    }
}

#[test]
fn allocation_failure_is_an_error() {
    let sim = SimMemory::new(&[SimRegion { base: 0x10_0000, size: 8192 }]);
    let phys: Arc<dyn PhysMemory> = sim.clone();
    let dev = DmaDevice::new("00:08.9 pool-oom", phys.clone(), Arc::new(Direct::new(phys)));
    let p = DmaPool::create("tiny", &dev, 4096, 4096, 0).unwrap();
    let a = p.alloc().unwrap();
    let b = p.alloc().unwrap();
    assert!(matches!(p.alloc(), Err(AllocError::OutOfMemory { .. })));
    drop(a);
    let _c = p.alloc().unwrap();
    drop(b);
}

#[test]
fn the_pools_view_has_linux_columns() {
    let name = "00:09.0 pool-view";
    let m = Machine::direct(name, 32, 0);
    let p = DmaPool::create("viewpool", &m.dev, 100, 4, 0).unwrap();
    let _blocks: Vec<_> = (0..3).map(|_| p.alloc().unwrap()).collect();
    let view = dma::view("dma:pools").unwrap();
    assert!(view.starts_with("poolinfo - 0.1\n"));
    let line = view.lines().find(|l| l.starts_with("viewpool")).unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    // name, in use, total, size, pages, device
    assert_eq!(&cols[..5], &["viewpool", "3", "40", "100", "1"]);
    assert!(line.ends_with(name));
}

#[test]
fn blocks_outliving_their_pool_still_free_safely() {
    let m = Machine::direct("00:09.1 pool-orphan", 32, 0);
    let p = DmaPool::create("orphan", &m.dev, 32, 8, 0).unwrap();
    let mut a = p.alloc().unwrap();
    let b = p.alloc().unwrap();
    assert!(p.destroy().is_err());
    a.write::<u32>(0, 5).unwrap();
    assert_eq!(a.read::<u32>(0).unwrap(), 5);
    drop(a);
    drop(b); // the last block releases the pool's reference to itself
    assert!(!render_pools().contains("orphan "));
}
