//! Scatter-gather mappings: merging, splitting, data flow, failure clean-up.

mod common;

use common::Machine;
use dma::mapper::DeviceLimits;
use dma::sg::build_segments;
use dma::{BusAddr, BusSegment, FromDevice, MapError, ToDevice};

fn limits(max: usize, boundary: u64) -> DeviceLimits {
    DeviceLimits { mask: u64::MAX, max_segment_size: max, segment_boundary: boundary }
}

fn seg(bus: u64, len: usize) -> BusSegment {
    BusSegment { bus: BusAddr(bus), len }
}

#[test]
fn adjacent_pieces_merge_and_others_do_not() {
    let pieces = [(BusAddr(0x10000), 4096), (BusAddr(0x11000), 4096), (BusAddr(0x20000), 100), (BusAddr(0x20064), 28)];
    assert_eq!(build_segments(&pieces, &limits(1 << 20, 1 << 32)), vec![seg(0x10000, 8192), seg(0x20000, 128)]);
}

#[test]
fn segments_respect_the_maximum_size() {
    let pieces = [(BusAddr(0x10000), 4096), (BusAddr(0x11000), 8192)];
    let segs = build_segments(&pieces, &limits(5000, 1 << 32));
    assert_eq!(segs, vec![seg(0x10000, 5000), seg(0x10000 + 5000, 5000), seg(0x10000 + 10000, 2288)]);
    assert!(segs.iter().all(|s| s.len <= 5000));
    assert_eq!(segs.iter().map(|s| s.len).sum::<usize>(), 12288);
}

#[test]
fn segments_never_cross_the_boundary() {
    // 0x1f00..0x2100 crosses 0x2000.
    let pieces = [(BusAddr(0x1f00), 0x200), (BusAddr(0x2100), 0x100)];
    let segs = build_segments(&pieces, &limits(1 << 20, 0x1000));
    assert_eq!(segs, vec![seg(0x1f00, 0x100), seg(0x2000, 0x200)]);
    for s in &segs {
        assert_eq!(s.bus.0 / 0x1000, (s.bus.0 + s.len as u64 - 1) / 0x1000);
    }
}

#[test]
fn data_scatters_and_gathers_across_buffers() {
    let m = Machine::direct("00:06.0 sg", 64, 0);
    let bufs: Vec<_> = (0..3).map(|_| m.high_buffer(4096)).collect();
    let mut rx = m.dev.map_sg(bufs, FromDevice).unwrap();
    let segs = rx.segments().to_vec();
    let data: Vec<u8> = (0..3 * 4096).map(|i| (i / 7) as u8).collect();
    assert_eq!(m.hw.write_segments(&segs, &data).unwrap(), data.len());
    {
        let mut view = rx.sync_for_cpu();
        assert_eq!(view.buffer(1).unwrap().as_slice()[0], data[4096]);
        assert!(view.buffer(3).is_none());
    }
    let bufs = rx.unmap();
    let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
    assert_eq!(joined, data);
}

#[test]
fn physically_adjacent_buffers_become_one_segment() {
    let m = Machine::direct("00:06.1 sg-merge", 64, 0);
    let a = m.high_buffer(4096);
    let b = m.high_buffer(4096);
    // The simulated allocator goes top-down: b sits right below a.
    assert_eq!(b.phys().as_u64() + 4096, a.phys().as_u64());
    let tx = m.dev.map_sg(vec![b, a], ToDevice).unwrap();
    assert_eq!(tx.segments().len(), 1);
    assert_eq!(tx.segments()[0].len, 8192);
    tx.unmap();
}

#[test]
fn device_limits_split_mapped_segments() {
    let m = Machine::direct("00:06.2 sg-limits", 64, 0);
    m.dev.set_max_segment_size(6000).unwrap();
    // Allocated top-down; reversed, they are ascending and adjacent.
    let mut bufs: Vec<_> = (0..3).map(|_| m.high_buffer(4096)).collect();
    bufs.reverse();
    let tx = m.dev.map_sg(bufs, ToDevice).unwrap();
    assert_eq!(tx.segments().iter().map(|s| s.len).collect::<Vec<_>>(), vec![6000, 6000, 288]);
    drop(tx.unmap());
    m.dev.set_max_segment_size(1 << 20).unwrap();
    m.dev.set_segment_boundary(4096).unwrap();
    let mut bufs: Vec<_> = (0..2).map(|_| m.high_buffer(4096)).collect();
    bufs.reverse();
    let tx = m.dev.map_sg(bufs, ToDevice).unwrap();
    assert_eq!(tx.segments().len(), 2, "no merge across a 4 KiB boundary");
    tx.unmap();
}

#[test]
fn sg_bounces_buffers_beyond_the_mask() {
    let m = Machine::direct("00:06.3 sg-bounce", 32, 64 * 1024);
    let mut bufs: Vec<_> = (0..2).map(|_| m.high_buffer(100)).collect();
    bufs[0][..3].copy_from_slice(b"abc");
    bufs[1][..3].copy_from_slice(b"def");
    let tx = m.dev.map_sg(bufs, ToDevice).unwrap();
    let gathered = m.hw.read_segments(tx.segments()).unwrap();
    assert_eq!(&gathered[..3], b"abc");
    assert_eq!(&gathered[100..103], b"def");
    assert_eq!(m.stats().copies_to_slot, 2);
    tx.unmap();
    assert_eq!(m.stats().slots_used, 0);
}

#[test]
fn a_failed_sg_map_unmaps_what_it_mapped_and_returns_every_buffer() {
    let m = Machine::direct("00:06.4 sg-fail", 32, 8192);
    let bufs: Vec<_> = (0..3).map(|_| m.high_buffer(4096)).collect();
    let err = m.dev.map_sg(bufs, ToDevice).unwrap_err();
    assert!(matches!(err.error, MapError::BounceExhausted { .. }));
    assert_eq!(err.buffer.len(), 3);
    assert_eq!(m.stats().slots_used, 0, "partial work undone");
    let err = m.dev.map_sg(Vec::<Vec<u8>>::new(), ToDevice).unwrap_err();
    assert_eq!(err.error, MapError::ZeroLength);
}
