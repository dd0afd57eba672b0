//! In-kernel checks of the watching tools: `iommu walk` prints the walk the real unit makes.
//!
//! The probe device (see [`super::iommu`]) reads and writes through its domain while the test
//! walks the same IOVAs with `iommu_vtd::walker::walk` over the unit's live tables: a mapped
//! page the device reaches must walk to the page's physical address, and an unmapped IOVA the
//! device faults on must walk to the fault reason the unit recorded.

use super::iommu::{NO_VTD, descriptor_done, frame_buffer, iommu_expected, probe, transmit_ring};
use super::{KernelTest, TestResult};
use crate::check;
use alloc::format;
use dma::{Bidirectional, ToDevice};
use iommu_vtd::walker::walk;
use iommu_vtd::{AccessKind, FaultReason};

pub static TESTS: &[KernelTest] = &[
    KernelTest { name: "iommu::walk_matches_the_unit", run: walk_matches_the_unit },
    KernelTest { name: "block::trace_sees_one_disk_read", run: trace_sees_one_disk_read },
];

/// One sector read from the scratch disk, traced twice, once down each path the block layer has.
///
/// * Arena off, the caller's buffer is mapped: the AHCI controller's map, then unmap at the same
///   bus and physical address (`DMA_FROM_DEVICE`), the bounce copies if the buffer was bounced
///   (into the slot after the map, back before the unmap), and with VT-d the page-selective IOTLB
///   invalidation of the strict unmap, at the mapping's page.
/// * Arena on (the default): an `arena-alloc` and an `arena-free` of the same pre-mapped buffer
///   (after a `coh-alloc` of a 2 MiB chunk if the arena had to grow), and no streaming map or
///   unmap at all: that absence is what makes the arena fast.
fn trace_sees_one_disk_read() -> TestResult {
    use crate::services::block;
    let disk = block::disks().iter().copied().find(|d| d.port() == 1 && !d.read_only());
    let disk = disk.ok_or("no scratch disk on port 1")?;
    let arena_was_on = block::arena_on();
    block::set_arena(false);
    let mapped = traced_read(disk);
    block::set_arena(true);
    let arena = traced_read(disk);
    block::set_arena(arena_was_on);
    check_mapped_read(mapped?)?;
    check_arena_read(arena?)
}

/// The trace's events while `disk` reads sector 0.
fn traced_read(
    disk: crate::services::block::Disk,
) -> Result<alloc::vec::Vec<dma::trace::Event>, alloc::string::String> {
    use dma::trace;
    let was_on = trace::enabled();
    trace::enable(None);
    let mark = trace::mark();
    let read = disk.read(0, 1);
    let events = trace::since(mark);
    if !was_on {
        trace::disable();
    }
    read.map_err(|e| format!("{e}"))?;
    Ok(events)
}

fn ahci_events(events: &[dma::trace::Event]) -> alloc::vec::Vec<&dma::trace::Event> {
    events.iter().filter(|e| e.device.as_str().ends_with(" ahci")).collect()
}

fn check_mapped_read(events: alloc::vec::Vec<dma::trace::Event>) -> TestResult {
    use dma::trace::{Detail, EventKind, Granularity};
    let ahci = ahci_events(&events);
    let (Some(&first), Some(&last)) = (ahci.first(), ahci.last()) else {
        return Err("arena off: no event from the AHCI controller".into());
    };
    check!(first.kind == EventKind::Map && last.kind == EventKind::Unmap, "arena off, AHCI events: {ahci:#?}");
    check!(
        (first.bus, first.phys, first.size, first.dir)
            == (last.bus, last.phys, 512, Some(dma::DmaDirection::FromDevice)),
        "map {first:?} and unmap {last:?} disagree"
    );
    let bounces: alloc::vec::Vec<_> = ahci.iter().filter(|e| e.kind == EventKind::BounceCopy).collect();
    if let [into, back] = bounces[..] {
        check!(
            matches!(into.detail, Detail::Bounce { to_slot: true, .. })
                && matches!(back.detail, Detail::Bounce { to_slot: false, .. }),
            "bounce copies in the wrong order: {bounces:#?}"
        );
    } else {
        check!(bounces.is_empty(), "unexpected bounce copies: {bounces:#?}");
    }
    if iommu_expected() {
        let map_at = events.iter().position(|e| e == first).unwrap_or(0);
        let unmap_at = events.iter().position(|e| e == last).unwrap_or(0);
        let invalidated = events[map_at..unmap_at].iter().any(|e| {
            e.kind == EventKind::Invalidate
                && e.bus == first.bus & !0xfff
                && matches!(e.detail, Detail::Invalidation { granularity: Granularity::Page, .. })
        });
        check!(invalidated, "no page-selective invalidation of {:#x} between map and unmap: {events:#?}", first.bus);
    }
    Ok(())
}

fn check_arena_read(events: alloc::vec::Vec<dma::trace::Event>) -> TestResult {
    use dma::trace::EventKind;
    // The arena may grow for this read: a 2 MiB coherent chunk first, mapped once.
    let ahci: alloc::vec::Vec<_> = ahci_events(&events)
        .into_iter()
        .skip_while(|e| e.kind == EventKind::CoherentAlloc && e.size == dma::arena::CHUNK_BYTES as u64)
        .collect();
    let (Some(&first), Some(&last)) = (ahci.first(), ahci.last()) else {
        return Err("arena on: no event from the AHCI controller".into());
    };
    check!(
        first.kind == EventKind::ArenaAlloc && last.kind == EventKind::ArenaFree,
        "arena on, AHCI events: {ahci:#?}"
    );
    check!(
        (first.bus, first.phys, first.size) == (last.bus, last.phys, 512) && first.phys != 0,
        "arena alloc {first:?} and free {last:?} disagree"
    );
    // From the buffer's allocation on (a growing arena's chunk is mapped, and invalidated under
    // caching mode, before it), the read itself maps and invalidates nothing.
    let from = events.iter().position(|e| e == first).unwrap_or(0);
    let mapping =
        events[from..].iter().find(|e| matches!(e.kind, EventKind::Map | EventKind::Unmap | EventKind::Invalidate));
    check!(mapping.is_none(), "an arena read mapped or invalidated: {mapping:?}");
    Ok(())
}

fn walk_matches_the_unit() -> TestResult {
    if !iommu_expected() {
        return super::skip(NO_VTD);
    }
    let _serial = crate::platform::iommu::FAULT_TEST_LOCK.lock();
    let p = probe()?;
    let domain = crate::platform::iommu::domain_of(p.function).ok_or("the probe has no domain")?;
    let unit = domain.unit().clone();
    let memory = crate::services::dma_service::memory();
    let walk_of = |iova: u64, access: AccessKind| {
        walk(&*memory, unit.root_table().as_u64(), &unit.walk_caps(), p.source(), iova, access)
    };
    p.reset();
    let frame = frame_buffer()?;
    let frame_phys = frame.phys().as_u64();
    let tx = p.dev.map(frame, ToDevice).map_err(|e| format!("{}", e.error))?;
    let ring = transmit_ring(tx.bus_addr().as_u64())?;
    let ring_phys = ring.phys().as_u64();
    let mut ring = p.dev.map(ring, Bidirectional).map_err(|e| format!("{}", e.error))?;
    let (frame_iova, ring_iova) = (tx.bus_addr().as_u64(), ring.bus_addr().as_u64());

    // What the walk says about the two mappings, before the device uses them.
    let (trail, ring_rw) = walk_of(ring_iova + 12, AccessKind::Write);
    let (_, frame_r) = walk_of(frame_iova, AccessKind::Read);
    let (_, frame_w) = walk_of(frame_iova, AccessKind::Write);
    p.transmit_one(ring_iova);
    let done = crate::arch::time::poll_until(500_000, || descriptor_done(ring.sync_for_cpu().as_slice()));
    p.stop();
    let _ = ring.unmap();
    let _ = tx.unmap();
    check!(done, "the probe did not complete its transmit through the mappings");
    let ring_rw = ring_rw.map_err(|r| format!("the ring walks to fault {r:?}, yet the device wrote it"))?;
    check!(ring_rw.phys.as_u64() == ring_phys + 12, "the ring walks to {:?}, it is at {ring_phys:#x}", ring_rw.phys);
    check!(trail.root.is_some() && trail.context.is_some(), "the walk shows no root or context entry");
    let levels = trail.levels();
    check!(!levels.is_empty() && levels.last().is_some_and(|l| l.leaf() && l.read() && l.write()), "{levels:?}");
    let frame_r = frame_r.map_err(|r| format!("the frame walks to fault {r:?}, yet the device read it"))?;
    check!(frame_r.phys.as_u64() == frame_phys, "the frame walks to {:?}, it is at {frame_phys:#x}", frame_r.phys);
    check!(frame_w == Err(FaultReason::WRITE_DENIED), "a write to the ToDevice frame walks to {frame_w:?}");

    // An unmapped IOVA: the walk's fault reason is the one the unit records for the device.
    let unmapped = 0x0dea_d000u64;
    let (_, predicted) = walk_of(unmapped, AccessKind::Read);
    p.transmit_one(unmapped);
    let fault = p.wait_fault();
    p.stop();
    let fault = fault.ok_or("the probe read an unmapped IOVA and no fault was recorded")?;
    check!(
        predicted == Err(fault.reason),
        "the walk predicts {predicted:?} for {unmapped:#x}; the unit recorded {}",
        fault
    );
    let text = crate::services::watch::walk_text(p.source(), unmapped, AccessKind::Read);
    check!(text.contains(&format!("FAULT reason {:#04x}", fault.reason.0)), "`iommu walk` printed:\n{text}");
    Ok(())
}
