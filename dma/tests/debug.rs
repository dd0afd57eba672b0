//! The raw, Linux-shaped layer and the DMA-API debug tracker.

mod common;

use common::{Machine, reported};
use dma::debug::MappingKind;
use dma::{BusAddr, DmaBuf, DmaDirection, ReportKind, ToDevice};

const TO: DmaDirection = DmaDirection::ToDevice;
const FROM: DmaDirection = DmaDirection::FromDevice;

#[test]
fn raw_map_and_unmap_round_trip() {
    let m = Machine::direct("00:07.0 raw", 32, 64 * 1024);
    let mut buf = m.high_buffer(64);
    buf[..2].copy_from_slice(b"hi");
    // SAFETY: `buf` outlives the mapping and is not touched until it is unmapped.
    let bus = unsafe { m.dev.map_single_raw(buf.dma_ptr(), 64, TO) }.unwrap();
    let mut seen = [0u8; 2];
    m.hw.read(bus, &mut seen).unwrap();
    assert_eq!(&seen, b"hi");
    assert_eq!(m.dev.live_mappings()[0].kind, MappingKind::Raw);
    m.dev.unmap_single_raw(bus, 64, TO).unwrap();
    assert!(m.dev.live_mappings().is_empty());
    assert_eq!(m.stats().slots_used, 0);
    assert_eq!(m.dev.report_count(), 0);
}

#[test]
fn every_bad_unmap_is_reported_refused_and_changes_nothing() {
    let name = "00:07.1 raw-bad";
    let m = Machine::direct(name, 32, 64 * 1024);
    let buf = m.high_buffer(64);
    // SAFETY: `buf` outlives the mapping.
    let bus = unsafe { m.dev.map_single_raw(buf.dma_ptr(), 64, FROM) }.unwrap();
    let live = m.dev.live_mappings();
    let slots = m.stats().slots_used;

    let r = m.dev.unmap_single_raw(BusAddr(0x1234_5000), 64, FROM).unwrap_err();
    assert_eq!(r.device, name);
    assert!(matches!(r.kind, ReportKind::UnknownAddress { .. }));

    let r = m.dev.unmap_single_raw(bus, 32, FROM).unwrap_err();
    assert_eq!(r.kind, ReportKind::SizeMismatch { bus, mapped_len: 64, unmap_len: 32 });
    assert!(r.to_string().contains(name));
    assert!(r.to_string().contains("different size"));

    let r = m.dev.unmap_single_raw(bus, 64, TO).unwrap_err();
    assert_eq!(r.kind, ReportKind::DirectionMismatch { bus, mapped: FROM, given: TO });

    assert_eq!(m.dev.report_count(), 3);
    assert_eq!(m.dev.live_mappings(), live, "tracker unchanged");
    assert_eq!(m.stats().slots_used, slots, "nothing freed");

    m.dev.unmap_single_raw(bus, 64, FROM).unwrap();
    let r = m.dev.unmap_single_raw(bus, 64, FROM).unwrap_err();
    assert!(matches!(r.kind, ReportKind::DoubleUnmap { .. }));
    assert_eq!(m.dev.report_count(), 4);
    assert!(reported(name, "frees DMA memory twice"));
    assert!(reported(name, "different direction"));
    drop(buf);
}

#[test]
fn syncs_are_checked() {
    let name = "00:07.2 raw-sync";
    let m = Machine::direct(name, 32, 64 * 1024);
    let buf = m.high_buffer(64);
    // SAFETY: `buf` outlives the mapping and is only read through the sync below.
    let bus = unsafe { m.dev.map_single_raw(buf.dma_ptr(), 64, FROM) }.unwrap();
    m.hw.write(bus, b"xyz").unwrap();
    m.dev.sync_single_raw_for_cpu(bus, 64, FROM).unwrap();
    assert_eq!(&buf[..3], b"xyz");
    m.dev.sync_single_range_raw_for_cpu(bus, 8, 8, FROM).unwrap();

    let r = m.dev.sync_single_raw_for_device(bus, 64, TO).unwrap_err();
    assert!(matches!(r.kind, ReportKind::SyncDirectionMismatch { for_cpu: false, .. }));
    let r = m.dev.sync_single_range_raw_for_cpu(bus, 60, 8, FROM).unwrap_err();
    assert!(matches!(r.kind, ReportKind::SyncOutOfRange { .. }));
    let r = m.dev.sync_single_raw_for_cpu(BusAddr(8), 8, FROM).unwrap_err();
    assert!(matches!(r.kind, ReportKind::UnknownAddress { .. }));
    assert_eq!(m.dev.report_count(), 3);
    m.dev.sync_single_range_raw_for_device(bus, 0, 8, FROM).unwrap();
    m.dev.unmap_single_raw(bus, 64, FROM).unwrap();
}

#[test]
fn teardown_reports_live_mappings_and_keeps_them() {
    let name = "00:07.3 teardown";
    let m = Machine::direct(name, 32, 64 * 1024);
    let typed = m.dev.map(m.high_buffer(32), ToDevice).unwrap();
    let buf = m.low_buffer(16);
    // SAFETY: `buf` outlives the mapping.
    let bus = unsafe { m.dev.map_single_raw(buf.dma_ptr(), 16, TO) }.unwrap();
    let view = dma::view("dma:mappings").unwrap();
    assert!(view.contains(name));
    assert!(view.contains("raw"));
    assert!(view.contains("bounced"));

    let err = m.dev.teardown().unwrap_err();
    assert_eq!(err.device, name);
    assert_eq!(err.live.len(), 2);
    assert!(err.to_string().contains("still live"));
    assert!(reported(name, "torn down with 2 DMA mappings"));
    assert_eq!(m.dev.live_mappings().len(), 2, "left in place");

    typed.unmap();
    m.dev.unmap_single_raw(bus, 16, TO).unwrap();
    m.dev.teardown().unwrap();
}

#[test]
fn typed_tracking_can_be_switched_off() {
    let m = Machine::direct("00:07.4 nodebug", 64, 0);
    m.dev.set_debug(false);
    let map = m.dev.map(m.high_buffer(32), ToDevice).unwrap();
    assert!(m.dev.live_mappings().is_empty());
    map.unmap();
    m.dev.set_debug(true);
    assert!(m.dev.debug_enabled());
}

#[test]
fn the_errors_view_names_devices() {
    let name = "00:07.5 errors-view";
    let m = Machine::direct(name, 64, 0);
    let _ = m.dev.unmap_single_raw(BusAddr(0x9000), 4, TO);
    let view = dma::view("dma:errors").unwrap();
    assert!(view.starts_with("dma errors:"));
    assert!(dma::debug::total_reports() >= 1);
    // Other tests may push this one out of the ring only if they report 64 times; they do not.
    assert!(view.contains(name));
    assert!(dma::view("dma:nothing").is_none());
}
