//! Coherent and non-coherent memory, masks and device limits.

mod common;

use std::sync::Arc;

use common::Machine;
use dma::mapper::{BounceArea, Direct};
use dma::sim::{SimMemory, SimRegion};
use dma::{AllocError, Bidirectional, DmaDevice, DmaSafe, FromDevice, LimitError, MaskError, PhysMemory, ToDevice};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Descriptor {
    addr: u64,
    len: u16,
    status: u8,
    errors: u8,
    special: u32,
}
// SAFETY: repr(C), integer fields, no padding (8 + 2 + 1 + 1 + 4 = 16).
unsafe impl DmaSafe for Descriptor {}

#[test]
fn coherent_memory_is_within_the_mask_zeroed_and_freed_on_drop() {
    let m = Machine::direct("00:04.0 coherent", 32, 0);
    let before = m.sim.frames_in_use();
    // The simulated allocator prefers high memory; the mask must still win.
    let c = m.dev.alloc_coherent::<[u64; 512]>().unwrap();
    assert!(c.bus_addr().as_u64() + 4095 <= 0xffff_ffff);
    assert!(c.read().iter().all(|&w| w == 0));
    assert_eq!(m.sim.frames_in_use(), before + 1);
    drop(c);
    assert_eq!(m.sim.frames_in_use(), before);

    let m64 = Machine::direct("00:04.1 coherent64", 64, 0);
    let c = m64.dev.alloc_coherent::<u32>().unwrap();
    assert!(c.bus_addr().as_u64() >= common::FOUR_GIB);
}

#[test]
fn coherent_is_shared_with_the_device_at_all_times() {
    let m = Machine::direct("00:04.2 mailbox", 32, 0);
    let mut word = m.dev.alloc_coherent::<u32>().unwrap();
    word.write(0xdead_beef);
    let mut seen = [0u8; 4];
    m.hw.read(word.bus_addr(), &mut seen).unwrap();
    assert_eq!(u32::from_le_bytes(seen), 0xdead_beef);
    m.hw.write(word.bus_addr(), &1u32.to_le_bytes()).unwrap();
    assert_eq!(word.read(), 1);
    word.update(|v| v + 1);
    assert_eq!(word.read(), 2);
}

#[test]
fn descriptor_ring_in_a_coherent_slice() {
    let m = Machine::direct("00:04.3 ring", 32, 0);
    let mut ring = m.dev.alloc_coherent_slice::<Descriptor>(256).unwrap();
    assert_eq!(ring.len(), 256);
    let d = Descriptor { addr: 0x1234_5678, len: 1514, status: 0, errors: 0, special: 0 };
    ring.write(3, d).unwrap();
    // The device marks descriptor 3 done (status byte at offset 10).
    let status_bus = ring.bus_addr_of(3).unwrap().as_u64() + 10;
    m.hw.write(dma::BusAddr(status_bus), &[1]).unwrap();
    assert_eq!(ring.read(3).unwrap().status, 1);
    assert_eq!(ring.read(3).unwrap().addr, 0x1234_5678);
    assert_eq!(ring.read(256), None);
    assert!(ring.write(256, d).is_err());
    assert!(ring.bus_addr_of(256).is_none());
    let mut out = [d; 2];
    ring.read_into(254, &mut out).unwrap();
    assert_eq!(out[0].len, 0);
    assert!(ring.read_into(255, &mut out).is_err());
    ring.write_from(0, &[d, d]).unwrap();
    assert!(ring.write_from(255, &[d, d]).is_err());
}

#[test]
fn allocation_failure_is_an_error() {
    let m = Machine::direct("00:04.4 oom", 32, 0);
    let err = m.dev.alloc_coherent_slice::<u8>(64 << 20).unwrap_err();
    assert!(matches!(err, AllocError::OutOfMemory { .. }));
    assert!(err.to_string().contains("mask"));
    let err = m.dev.alloc_coherent_slice::<u64>(usize::MAX / 2).unwrap_err();
    assert!(matches!(err, AllocError::TooLarge { .. }));
}

#[test]
fn masks_the_platform_cannot_satisfy_are_refused() {
    let m = Machine::direct("00:04.5 masks", 64, 0);
    assert_eq!(m.dev.set_mask(0), Err(MaskError::OutOfRange { bits: 0 }));
    assert_eq!(m.dev.set_mask(65), Err(MaskError::OutOfRange { bits: 65 }));
    assert_eq!(m.dev.set_mask(8), Err(MaskError::BelowPage { bits: 8 }));
    // RAM goes above 16 MiB and there is no bounce area: a 24-bit ISA-style device cannot be
    // served.
    let err = m.dev.set_mask(24).unwrap_err();
    assert!(matches!(err, MaskError::Unsupported { bits: 24, .. }));
    assert!(err.to_string().contains("bounce"));
    assert_eq!(m.dev.mask(), u64::MAX, "a refused mask leaves the old one");
    m.dev.set_mask(32).unwrap();
    assert_eq!(m.dev.mask(), 0xffff_ffff);
}

#[test]
fn a_bounce_area_below_the_mask_makes_a_narrow_mask_possible() {
    let sim = SimMemory::low_and_high(8 << 20, 8 << 20);
    let phys: Arc<dyn PhysMemory> = sim.clone();
    let area = BounceArea::new(phys.clone(), 0xff_ffff, 16 * 1024).unwrap();
    assert!(area.last_addr() <= 0xff_ffff);
    let dev = DmaDevice::new("00:04.6 isa", phys.clone(), Arc::new(Direct::with_bounce(phys.clone(), area)));
    dev.set_mask(24).unwrap();
    let c = dev.alloc_coherent::<u32>().unwrap();
    assert!(c.bus_addr().as_u64() <= 0xff_ffff);
}

#[test]
fn mask_on_a_machine_without_high_memory() {
    let sim = SimMemory::new(&[SimRegion { base: 0x10_0000, size: 1 << 20 }]);
    let phys: Arc<dyn PhysMemory> = sim.clone();
    let dev = DmaDevice::new("00:04.7 small", phys.clone(), Arc::new(Direct::new(phys)));
    // All RAM is below 2 MiB + 1 MiB: a 24-bit mask covers it.
    dev.set_mask(24).unwrap();
}

#[test]
fn device_limits_are_checked() {
    let m = Machine::direct("00:04.8 limits", 64, 0);
    assert_eq!(m.dev.set_max_segment_size(0), Err(LimitError::ZeroSegmentSize));
    assert_eq!(m.dev.set_segment_boundary(3 * 4096), Err(LimitError::BoundaryNotPowerOfTwo { boundary: 3 * 4096 }));
    assert_eq!(m.dev.set_segment_boundary(2048), Err(LimitError::BoundaryBelowPage { boundary: 2048 }));
    m.dev.set_max_segment_size(4096).unwrap();
    m.dev.set_segment_boundary(1 << 16).unwrap();
    assert_eq!(m.dev.limits().max_segment_size, 4096);
    assert_eq!(m.dev.limits().segment_boundary, 1 << 16);
}

#[test]
fn non_coherent_memory_passes_ownership_explicitly() {
    let m = Machine::direct("00:05.0 noncoherent", 32, 0);
    let mut rx = m.dev.alloc_noncoherent::<[u8; 16], FromDevice>(FromDevice).unwrap();
    assert!(!rx.device_owns());
    rx.sync_for_device();
    assert!(rx.device_owns());
    m.hw.write(rx.bus_addr(), b"from the device!").unwrap();
    assert_eq!(&rx.sync_for_cpu().read(), b"from the device!");
    assert!(!rx.device_owns());

    let mut tx = m.dev.alloc_noncoherent::<u64, ToDevice>(ToDevice).unwrap();
    tx.sync_for_cpu().write(0x0102_0304);
    tx.sync_for_device();
    let mut seen = [0u8; 8];
    m.hw.read(tx.bus_addr(), &mut seen).unwrap();
    assert_eq!(u64::from_le_bytes(seen), 0x0102_0304);

    let mut both = m.dev.alloc_noncoherent::<u32, Bidirectional>(Bidirectional).unwrap();
    {
        let mut v = both.sync_for_cpu();
        v.write(5);
        assert_eq!(v.read(), 5);
    }
    // Non-coherent allocations are tracked like mappings and vanish when freed.
    assert_eq!(m.dev.live_mappings().len(), 3);
    drop((rx, tx, both));
    assert!(m.dev.live_mappings().is_empty());
}

/// A type whose alignment (8 KiB) is more than the page alignment coherent memory has.
#[derive(Clone, Copy)]
#[repr(C, align(8192))]
struct OverAligned {
    word: u64,
}

// SAFETY: a plain integer plus padding: every bit pattern is a valid value.
unsafe impl DmaSafe for OverAligned {}

#[test]
fn an_alignment_above_a_page_is_its_own_error() {
    let m = Machine::direct("00:04.6 align", 64, 0);
    let err = m.dev.alloc_coherent::<OverAligned>().unwrap_err();
    assert_eq!(err, AllocError::UnsupportedAlignment { align: 8192, max: 4096 });
    assert!(err.to_string().contains("alignment of 8192 bytes"), "{err}");
}
