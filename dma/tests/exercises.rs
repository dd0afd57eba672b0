//! Checking tests for the exercises in `docs/exercises/`. Each one states an invariant that must
//! hold both before and after a correct solution, so it passes on the code as shipped and fails
//! for a solution that breaks what the exercise must preserve. The tests that prove a solution's
//! *new* behaviour are given in the exercise pages for the student to add.

mod common;

use common::Machine;
use dma::sim::SimDevice;
use dma::{DmaBuf, DmaDirection, DmaPool};

const TO: DmaDirection = DmaDirection::ToDevice;
const FROM: DmaDirection = DmaDirection::FromDevice;
const BIDI: DmaDirection = DmaDirection::Bidirectional;

// ----- Exercise 2: a DMA-debug check for overlapping mappings -----------------------------------

/// Legal uses of the raw layer must never be reported, whatever new check is added: mappings of
/// disjoint ranges (even in one page, even adjacent), and overlapping mappings that the device
/// only reads.
#[test]
fn exercise2_legal_raw_mappings_are_never_reported() {
    let m = Machine::direct("00:0e.0 ex2-legal", 64, 0);
    let buf = m.low_buffer(4096);
    let base = buf.dma_ptr();
    let before = m.dev.report_count();
    // SAFETY: `buf` outlives every mapping below and the CPU does not touch it meanwhile.
    let (a, b, c, d) = unsafe {
        (
            m.dev.map_single_raw(base, 64, FROM).unwrap(),
            m.dev.map_single_raw(base.add(64), 64, FROM).unwrap(),
            m.dev.map_single_raw(base.add(128), 256, TO).unwrap(),
            m.dev.map_single_raw(base.add(128), 256, TO).unwrap(),
        )
    };
    let other = m.low_buffer(4096);
    // SAFETY: as above.
    let e = unsafe { m.dev.map_single_raw(other.dma_ptr(), 4096, BIDI) }.unwrap();
    // The data really goes where the mappings say.
    m.hw.write(a, &[1; 64]).unwrap();
    m.hw.write(b, &[2; 64]).unwrap();
    m.dev.sync_single_raw_for_cpu(a, 64, FROM).unwrap();
    m.dev.sync_single_raw_for_cpu(b, 64, FROM).unwrap();
    assert_eq!(&buf[..64], &[1; 64]);
    assert_eq!(&buf[64..128], &[2; 64]);
    for (bus, len, dir) in [(a, 64, FROM), (b, 64, FROM), (c, 256, TO), (d, 256, TO), (e, 4096, BIDI)] {
        m.dev.unmap_single_raw(bus, len, dir).unwrap();
    }
    assert_eq!(m.dev.report_count(), before, "legal mappings were reported");
    assert!(m.dev.live_mappings().is_empty());
}

/// Overlapping mappings the device may write: a solution may report them and go on (as Linux's
/// dma-debug does) or refuse the second map — but the tracker must stay consistent either way:
/// every successful map can be unmapped exactly once, and nothing stays live afterwards.
#[test]
fn exercise2_overlapping_writable_mappings_leave_the_tracker_consistent() {
    let m = Machine::direct("00:0e.1 ex2-overlap", 32, 64 * 1024);
    for (first, second) in [(FROM, FROM), (FROM, TO), (TO, FROM), (BIDI, BIDI)] {
        let buf = m.low_buffer(4096);
        let base = buf.dma_ptr();
        // SAFETY: `buf` outlives both mappings and the CPU does not touch it meanwhile.
        let a = unsafe { m.dev.map_single_raw(base, 512, first) }.expect("the first map is legal");
        // SAFETY: as above.
        let b = unsafe { m.dev.map_single_raw(base.add(256), 512, second) };
        m.dev.unmap_single_raw(a, 512, first).unwrap();
        if let Ok(b) = b {
            m.dev.unmap_single_raw(b, 512, second).unwrap();
            assert!(m.dev.unmap_single_raw(b, 512, second).is_err(), "a second unmap must still be refused");
        }
        assert!(m.dev.live_mappings().is_empty(), "{first:?} then {second:?}: mappings left live");
    }
    // And high buffers that bounce: no slot may be leaked by the new check.
    let high = m.high_buffer(4096);
    // SAFETY: `high` outlives both mappings.
    let a = unsafe { m.dev.map_single_raw(high.dma_ptr(), 1024, FROM) }.unwrap();
    // SAFETY: as above.
    let b = unsafe { m.dev.map_single_raw(high.dma_ptr().add(512), 1024, FROM) };
    m.dev.unmap_single_raw(a, 1024, FROM).unwrap();
    if let Ok(b) = b {
        m.dev.unmap_single_raw(b, 1024, FROM).unwrap();
    }
    assert_eq!(m.stats().slots_used, 0, "bounce slots leaked");
}

// ----- Exercise 3: pools, boundaries and the poolinfo columns -----------------------------------

/// The first five columns of every `dma:pools` line stay Linux's (name, blocks in use, total
/// blocks, block size, pages) and agree with `PoolStats`; the device comes after them. A solution
/// may add columns after the five, never before or in between (and `the_pools_view_has_linux_columns`
/// in `pool.rs` keeps the device last).
#[test]
fn exercise3_pools_view_keeps_linux_columns() {
    let device = "00:0e.2 ex3-view";
    let m = Machine::direct(device, 32, 0);
    let pools = [
        DmaPool::create("ex3-a", &m.dev, 48, 16, 128).unwrap(),
        DmaPool::create("ex3-b", &m.dev, 2048, 16, 4096).unwrap(),
        DmaPool::create("ex3-c", &m.dev, 5000, 8, 0).unwrap(),
    ];
    let mut blocks = Vec::new();
    for (i, p) in pools.iter().enumerate() {
        for _ in 0..(3 + 40 * i) {
            blocks.push(p.alloc().unwrap());
        }
    }
    blocks.truncate(blocks.len() / 2);
    let view = dma::view("dma:pools").unwrap();
    assert_eq!(view.lines().next(), Some("poolinfo - 0.1"), "the header line is Linux's");
    for p in &pools {
        let s = p.stats();
        assert_eq!(s.free_blocks + s.blocks_in_use, s.total_blocks, "{}: free + in use != total", s.name);
        let line = view
            .lines()
            .find(|l| l.split_whitespace().next() == Some(p.name()))
            .unwrap_or_else(|| panic!("{} missing from dma:pools:\n{view}", p.name()));
        let cols: Vec<&str> = line.split_whitespace().collect();
        let expected = [
            s.name.clone(),
            s.blocks_in_use.to_string(),
            s.total_blocks.to_string(),
            s.block_size.to_string(),
            s.pages.to_string(),
        ];
        assert!(cols.len() >= 7, "too few columns: `{line}`");
        assert_eq!(&cols[..5], &expected, "Linux's columns changed: `{line}`");
        assert!(
            cols[5..].windows(2).any(|w| w == ["00:0e.2", "ex3-view"]),
            "the device must come after the Linux columns: `{line}`"
        );
    }
}

/// What a boundary costs: 48-byte blocks with a 128-byte boundary fit twice per window, 64 per
/// 4 KiB unit; without a boundary, 85. No block ever crosses a boundary line.
#[test]
fn exercise3_boundary_decides_blocks_per_unit() {
    let m = Machine::direct("00:0e.3 ex3-boundary", 32, 0);
    for (boundary, per_unit) in [(128usize, 64usize), (0, 85), (4096, 85), (64, 64)] {
        let p = DmaPool::create("ex3-boundary", &m.dev, 48, 16, boundary).unwrap();
        let blocks: Vec<_> = (0..per_unit).map(|_| p.alloc().unwrap()).collect();
        let s = p.stats();
        assert_eq!((s.block_size, s.total_blocks, s.pages), (48, per_unit, 1), "boundary {boundary}");
        let line = if boundary == 0 { 4096 } else { boundary as u64 };
        for b in &blocks {
            let bus = b.bus_addr().as_u64();
            assert_eq!(bus % 16, 0);
            assert_eq!(bus / line, (bus + 47) / line, "block at {bus:#x} crosses a {line}-byte boundary");
        }
        drop(blocks);
        p.destroy().unwrap();
    }
    assert!(DmaPool::create("ex3-too-small", &m.dev, 48, 16, 32).is_err(), "a boundary below the block size");
}

/// The device sees exactly what the CPU wrote into a pool block, at the block's bus address.
#[test]
fn exercise3_pool_blocks_are_what_the_device_sees() {
    let m = Machine::direct("00:0e.4 ex3-data", 32, 0);
    let p = DmaPool::create("ex3-data", &m.dev, 48, 16, 128).unwrap();
    let hw = SimDevice::new(&m.dev);
    let mut blocks: Vec<_> = (0..100).map(|_| p.zalloc().unwrap()).collect();
    for (i, b) in blocks.iter_mut().enumerate() {
        b.write_bytes(0, &[i as u8; 48]).unwrap();
    }
    for (i, b) in blocks.iter().enumerate() {
        let mut seen = [0u8; 48];
        hw.read(b.bus_addr(), &mut seen).unwrap();
        assert_eq!(seen, [i as u8; 48], "block {i}");
    }
}

// ----- Graded: fail on the tree as shipped, pass once the exercise is solved ----------------------
// Run with `cargo test -p dma --test exercises -- --ignored`. `cargo xtask test` runs them against
// the shipped tree (each must fail) and with the answer in docs/exercises/answers/ applied (each
// must pass).

/// Overlap of two raw mappings of one buffer, `first` then `second`, on machine `m`: whether a
/// new report naming the overlap was made. The mappings are torn down afterwards.
fn overlap_reported(m: &Machine, base: *const u8, first: DmaDirection, second: DmaDirection) -> bool {
    let before = m.dev.report_count();
    // SAFETY: the caller's buffer outlives both mappings and the CPU does not touch it meanwhile.
    let a = unsafe { m.dev.map_single_raw(base, 512, first) }.expect("the first map is legal");
    // SAFETY: as above.
    let b = unsafe { m.dev.map_single_raw(base.wrapping_add(256), 512, second) };
    let reported = m.dev.report_count() == before + 1 && common::reported(m.dev.name(), "overlap");
    m.dev.unmap_single_raw(a, 512, first).unwrap();
    if let Ok(b) = b {
        m.dev.unmap_single_raw(b, 512, second).unwrap();
    }
    reported
}

/// The task: an overlapping raw mapping the device may write is reported, with "overlap" in its
/// text, when bus address = physical address (the Direct mapper).
#[test]
#[ignore = "graded: exercise 2 (docs/exercises/02-dma-debug-overlap.md)"]
fn exercise2_graded_overlapping_writable_mappings_are_reported() {
    let m = Machine::direct("00:0e.2 ex2-graded", 64, 0);
    for (first, second) in [(FROM, TO), (TO, FROM), (FROM, FROM), (BIDI, TO)] {
        let buf = m.low_buffer(4096);
        assert!(overlap_reported(&m, buf.dma_ptr(), first, second), "{first:?} then {second:?}: no overlap report");
    }
    let buf = m.low_buffer(4096);
    assert!(!overlap_reported(&m, buf.dma_ptr(), TO, TO), "read-only overlaps are harmless and must not be reported");
}

/// Adversarial: through bounce slots the two mappings get *different, disjoint bus addresses*
/// for overlapping physical ranges. A solution that compares bus addresses misses it; the check
/// must compare the CPU buffers' physical ranges.
#[test]
#[ignore = "graded: exercise 2 (docs/exercises/02-dma-debug-overlap.md)"]
fn exercise2_graded_overlap_through_bounce_slots_is_reported() {
    let m = Machine::forced_bounce("00:0e.3 ex2-bounce", 64 * 1024);
    let buf = m.low_buffer(4096);
    // SAFETY: `buf` outlives both mappings.
    let a = unsafe { m.dev.map_single_raw(buf.dma_ptr(), 512, FROM) }.unwrap();
    // SAFETY: as above.
    let b = unsafe { m.dev.map_single_raw(buf.dma_ptr().wrapping_add(256), 512, FROM) }.unwrap();
    let (a_end, b_end) = (a.as_u64() + 512, b.as_u64() + 512);
    assert!(a_end <= b.as_u64() || b_end <= a.as_u64(), "the premise: bounce slots do not overlap on the bus");
    m.dev.unmap_single_raw(b, 512, FROM).unwrap();
    m.dev.unmap_single_raw(a, 512, FROM).unwrap();
    let buf = m.low_buffer(4096);
    assert!(overlap_reported(&m, buf.dma_ptr(), FROM, TO), "overlap through bounce slots was not reported");
    assert_eq!(m.stats().slots_used, 0, "bounce slots leaked");
}

/// The task, part B: the high-water mark. 10 blocks allocated, 7 freed, 2 allocated again: the
/// most ever in use at once is 10, printed as `max=10` after Linux's five columns, before the
/// device name.
#[test]
#[ignore = "graded: exercise 3 (docs/exercises/03-pool-boundary-and-high-water.md)"]
fn exercise3_graded_high_water_mark_in_the_view() {
    let m = Machine::direct("00:0e.4 ex3-graded", 64, 0);
    let pool = DmaPool::create("ex3-high-water", &m.dev, 64, 16, 0).unwrap();
    let mut blocks: Vec<_> = (0..10).map(|_| pool.alloc().unwrap()).collect();
    blocks.truncate(3);
    blocks.extend((0..2).map(|_| pool.alloc().unwrap()));
    let view = dma::view("dma:pools").unwrap();
    let line = view.lines().find(|l| l.starts_with("ex3-high-water")).expect("the pool's line");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "5", "blocks in use now: {line}");
    let max = cols.iter().position(|c| *c == "max=10").unwrap_or_else(|| panic!("no max=10 column in {line:?}"));
    assert!(max >= 5, "the high-water mark comes after Linux's five columns: {line}");
    assert!(line.ends_with(m.dev.name()), "the device stays last: {line}");
    drop(blocks);
    let view = dma::view("dma:pools").unwrap();
    let line = view.lines().find(|l| l.starts_with("ex3-high-water")).unwrap();
    assert!(line.split_whitespace().any(|c| c == "max=10"), "the mark stays after frees: {line}");
    pool.destroy().unwrap();
}
