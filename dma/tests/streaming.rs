//! Streaming mappings: data really flows, bounce copies happen exactly when they must.

mod common;

use common::{Machine, reported};
use dma::{Bidirectional, BusAddr, FromDevice, MapError, ToDevice};

#[test]
fn direct_to_device_the_device_reads_what_the_cpu_wrote() {
    let m = Machine::direct("00:01.0 tx", 64, 0);
    let mut buf = m.high_buffer(256);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = i as u8;
    }
    let phys = buf.phys();
    let tx = m.dev.map(buf, ToDevice).unwrap();
    assert!(!tx.is_bounced());
    assert_eq!(tx.bus_addr().as_u64(), phys.as_u64(), "Direct: bus = phys");
    let mut seen = [0u8; 256];
    m.hw.read(tx.bus_addr(), &mut seen).unwrap();
    assert!(seen.iter().enumerate().all(|(i, &b)| b == i as u8));
    let buf = tx.unmap();
    assert_eq!(buf[255], 255);
}

#[test]
fn direct_from_device_the_cpu_sees_what_the_device_wrote() {
    let m = Machine::direct("00:01.0 rx", 64, 0);
    let buf = m.high_buffer(100);
    let mut rx = m.dev.map(buf, FromDevice).unwrap();
    m.hw.write(rx.bus_addr(), b"packet").unwrap();
    assert_eq!(&rx.sync_for_cpu().as_slice()[..6], b"packet");
    rx.sync_for_device();
    m.hw.write(rx.bus_addr(), b"second").unwrap();
    let buf = rx.unmap();
    assert_eq!(&buf[..6], b"second");
}

#[test]
fn bidirectional_both_ways() {
    let m = Machine::direct("00:01.0 bidi", 64, 0);
    let mut map = m.dev.map(m.high_buffer(32), Bidirectional).unwrap();
    {
        let mut view = map.sync_for_cpu();
        view.as_mut_slice()[..3].copy_from_slice(b"cmd");
    }
    map.sync_for_device();
    let mut seen = [0u8; 3];
    m.hw.read(map.bus_addr(), &mut seen).unwrap();
    assert_eq!(&seen, b"cmd");
    m.hw.write(map.bus_addr(), b"ack").unwrap();
    assert_eq!(&map.sync_for_cpu().as_slice()[..3], b"ack");
    assert_eq!(&map.unmap()[..3], b"ack");
}

#[test]
fn bounce_to_device_copies_once_at_map_and_never_back() {
    let m = Machine::direct("00:02.0 bounce-tx", 32, 64 * 1024);
    let mut buf = m.high_buffer(300);
    buf[..4].copy_from_slice(b"data");
    let tx = m.dev.map(buf, ToDevice).unwrap();
    assert!(tx.is_bounced());
    assert!(tx.bus_addr().as_u64() <= 0xffff_ffff);
    let s = m.stats();
    assert_eq!((s.copies_to_slot, s.copies_from_slot), (1, 0));
    assert_eq!(s.bytes_to_slot, 300);
    let mut seen = [0u8; 4];
    m.hw.read(tx.bus_addr(), &mut seen).unwrap();
    assert_eq!(&seen, b"data");
    tx.unmap();
    let s = m.stats();
    assert_eq!((s.copies_to_slot, s.copies_from_slot), (1, 0));
    assert_eq!(s.slots_used, 0);
}

#[test]
fn bounce_from_device_copies_back_at_sync_and_unmap() {
    let m = Machine::direct("00:02.0 bounce-rx", 32, 64 * 1024);
    let mut rx = m.dev.map(m.high_buffer(64), FromDevice).unwrap();
    // Filled from the buffer at map time (no stale data), nothing copied back yet.
    assert_eq!((m.stats().copies_to_slot, m.stats().copies_from_slot), (1, 0));
    m.hw.write(rx.bus_addr(), b"frame-1").unwrap();
    assert_eq!(&rx.sync_for_cpu().as_slice()[..7], b"frame-1");
    assert_eq!(m.stats().copies_from_slot, 1);
    // sync_for_device of a FromDevice mapping has nothing to push.
    rx.sync_for_device();
    assert_eq!(m.stats().copies_to_slot, 1);
    m.hw.write(rx.bus_addr(), b"frame-2").unwrap();
    let buf = rx.unmap();
    assert_eq!(&buf[..7], b"frame-2");
    assert_eq!(m.stats().copies_from_slot, 2);
}

#[test]
fn bounce_to_device_resync_pushes_new_cpu_data() {
    let m = Machine::direct("00:02.0 bounce-resync", 32, 64 * 1024);
    let mut tx = m.dev.map(m.high_buffer(16), ToDevice).unwrap();
    tx.sync_for_cpu().write_at(0, b"v2").unwrap();
    assert_eq!(m.stats().copies_from_slot, 0, "ToDevice: nothing comes back");
    tx.sync_for_device();
    assert_eq!(m.stats().copies_to_slot, 2);
    let mut seen = [0u8; 2];
    m.hw.read(tx.bus_addr(), &mut seen).unwrap();
    assert_eq!(&seen, b"v2");
    tx.unmap();
}

#[test]
fn low_buffer_is_not_bounced() {
    let m = Machine::direct("00:02.0 low", 32, 64 * 1024);
    let tx = m.dev.map(m.low_buffer(64), Bidirectional).unwrap();
    assert!(!tx.is_bounced());
    tx.unmap();
    let s = m.stats();
    assert_eq!((s.copies_to_slot, s.copies_from_slot), (0, 0));
}

#[test]
fn forced_bounce_bounces_even_reachable_buffers() {
    let m = Machine::forced_bounce("00:02.1 forced", 64 * 1024);
    let mut buf = m.low_buffer(10);
    buf.copy_from_slice(b"0123456789");
    let tx = m.dev.map(buf, ToDevice).unwrap();
    assert!(tx.is_bounced());
    let mut seen = [0u8; 10];
    m.hw.read(tx.bus_addr(), &mut seen).unwrap();
    assert_eq!(&seen, b"0123456789");
    tx.unmap();
    assert_eq!(m.stats().copies_to_slot, 1);
}

#[test]
fn partial_sync_copies_only_the_range() {
    let m = Machine::direct("00:02.0 partial", 32, 64 * 1024);
    let mut rx = m.dev.map(m.high_buffer(64), FromDevice).unwrap();
    m.hw.write(rx.bus_addr(), &[0x55; 64]).unwrap();
    {
        let view = rx.sync_range_for_cpu(16, 8).unwrap();
        assert_eq!(view.len(), 8);
        assert_eq!(view.as_slice(), &[0x55; 8]);
    }
    assert_eq!(m.stats().bytes_from_slot, 8);
    assert!(rx.sync_range_for_cpu(60, 8).is_err());
    assert!(rx.sync_range_for_device(usize::MAX, 2).is_err());
    rx.sync_range_for_device(0, 64).unwrap();
    rx.unmap();
}

#[test]
fn reused_from_device_slot_never_shows_the_previous_users_data() {
    // One 4 KiB area: two slots of 2 KiB, so the second mapping must reuse the first's slot.
    let m = Machine::direct("00:02.0 stale", 32, 4096);
    let first = m.dev.map(m.high_buffer(4096), FromDevice).unwrap();
    let slot = first.bus_addr();
    m.hw.write(slot, &[0x5e; 4096]).unwrap(); // the previous user's secret
    let secret = first.unmap();
    assert_eq!(secret[0], 0x5e);

    let mut fresh = m.high_buffer(4096);
    fresh[..5].copy_from_slice(b"mine!");
    let second = m.dev.map(fresh, FromDevice).unwrap();
    assert_eq!(second.bus_addr(), slot, "the slot is reused");
    let mut seen = vec![0u8; 4096];
    m.hw.read(slot, &mut seen).unwrap();
    assert!(!seen.contains(&0x5e), "device sees no stale data");
    assert_eq!(&seen[..5], b"mine!");
    // The device writes nothing; unmap copies the slot back: the buffer must be its own.
    let back = second.unmap();
    assert_eq!(&back[..5], b"mine!");
    assert!(!back.contains(&0x5e));
}

#[test]
fn map_errors_are_values_and_return_the_buffer() {
    let m = Machine::direct("00:03.0 errors", 32, 0);
    // A host heap vector is not memory the (simulated) kernel can translate.
    let v = vec![7u8; 16];
    let err = m.dev.map(v, ToDevice).unwrap_err();
    assert_eq!(err.error, MapError::NotDmaMemory);
    assert_eq!(err.buffer, vec![7u8; 16]);
    // Zero length.
    let err = m.dev.map(Vec::<u8>::new(), ToDevice).unwrap_err();
    assert_eq!(err.error, MapError::ZeroLength);
    // Range outside the buffer.
    let err = m.dev.map_range(m.low_buffer(100), 90, 20, ToDevice).unwrap_err();
    assert!(matches!(err.error, MapError::RangeOutOfBounds { .. }));
    // Above the mask with no bounce area.
    let err = m.dev.map(m.high_buffer(100), FromDevice).unwrap_err();
    assert!(matches!(err.error, MapError::BeyondMask { .. }));
    assert!(err.to_string().contains("bounce"));
    assert_eq!(err.buffer.len(), 100);
}

#[test]
fn bounce_exhaustion_is_an_error_and_recovers() {
    let m = Machine::direct("00:03.1 exhaust", 32, 4096);
    let a = m.dev.map(m.high_buffer(4096), ToDevice).unwrap();
    let err = m.dev.map(m.high_buffer(10), ToDevice).unwrap_err();
    assert_eq!(err.error, MapError::BounceExhausted { len: 10 });
    assert_eq!(m.stats().exhausted, 1);
    let buf = err.buffer;
    a.unmap();
    let b = m.dev.map(buf, ToDevice).unwrap();
    assert!(b.is_bounced());
    b.unmap();
}

#[test]
fn map_range_maps_part_of_a_page() {
    let m = Machine::direct("00:03.2 page", 64, 0);
    let buf = m.high_buffer(8192);
    let phys = buf.phys().as_u64();
    let map = m.dev.map_page(buf, 4000, 200, FromDevice).unwrap();
    assert_eq!(map.bus_addr().as_u64(), phys + 4000);
    assert_eq!(map.len(), 200);
    m.hw.write(map.bus_addr(), &[9; 200]).unwrap();
    let buf = map.unmap();
    assert_eq!(buf[3999], 0);
    assert!(buf[4000..4200].iter().all(|&b| b == 9));
    assert_eq!(buf[4200], 0);
}

#[test]
fn dropping_a_live_mapping_unmaps_it_and_reports() {
    let m = Machine::direct("00:03.3 dropper", 32, 64 * 1024);
    let before = m.dev.report_count();
    let map = m.dev.map(m.high_buffer(64), FromDevice).unwrap();
    assert_eq!(m.stats().slots_used, 1);
    assert_eq!(m.dev.live_mappings().len(), 1);
    drop(map);
    assert_eq!(m.stats().slots_used, 0, "bounce slot released");
    assert!(m.dev.live_mappings().is_empty());
    assert_eq!(m.dev.report_count(), before + 1);
    assert!(reported("00:03.3 dropper", "dropped without unmap"));
}

#[test]
fn the_device_cannot_reach_beyond_its_mask() {
    let m = Machine::direct("00:03.4 reach", 32, 0);
    let err = m.hw.write(BusAddr(common::FOUR_GIB), &[1, 2, 3]).unwrap_err();
    assert!(matches!(err, dma::sim::SimFault::BeyondMask { .. }));
}

#[test]
fn pages_are_freed_when_buffers_drop() {
    let m = Machine::direct("00:03.5 frames", 64, 0);
    let before = m.sim.frames_in_use();
    let map = m.dev.map(m.high_buffer(3 * 4096), Bidirectional).unwrap();
    assert_eq!(m.sim.frames_in_use(), before + 3);
    drop(map.unmap());
    assert_eq!(m.sim.frames_in_use(), before);
}
