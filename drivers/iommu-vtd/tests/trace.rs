//! What a VT-d unit adds to the DMA event trace: the IOTLB invalidation of a strict unmap, with
//! its granularity and address mask, and the fault a late device access causes. Its own test
//! binary, so no other test turns the trace on meanwhile.

mod vtd_common;

use dma::mapper::DmaMapper;
use dma::trace::{self, Detail, EventKind, Granularity, MapperKind};
use dma::{DmaDevice, FromDevice, PageBuffer};
use iommu_vtd::sim::SimConfig;
use iommu_vtd::{Iommu, SourceId, UnmapPolicy};
use std::sync::Arc;
use vtd_common::Rig;

const NIC: SourceId = SourceId::new(0, 2, 0);

#[test]
fn a_strict_unmap_invalidates_one_page_and_a_late_write_faults_in_the_trace() {
    let rig = Rig::new(SimConfig::default());
    let domain = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    domain.attach(NIC).unwrap();
    let domain_id = domain.id();
    let mapper: Arc<dyn DmaMapper> = Arc::new(Iommu::new(domain, rig.phys.clone(), true, UnmapPolicy::Strict));
    let dev = DmaDevice::new("00:02.0 e1000", rig.phys.clone(), mapper);
    let buf = PageBuffer::alloc(&rig.phys, 4096, u64::MAX).unwrap();
    let buf_phys = buf.phys().as_u64();

    trace::enable(None);
    let mark = trace::mark();
    let rx = dev.map(buf, FromDevice).unwrap();
    let iova = rx.bus_addr().as_u64();
    rig.sim.dma_write(NIC, iova, b"frame").unwrap();
    drop(rx.unmap());
    assert!(rig.sim.dma_write(NIC, iova, b"late!").is_err());
    let faults = rig.unit.poll_faults();
    let events = trace::since(mark);
    trace::disable();
    assert_eq!(faults.len(), 1);

    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Map, EventKind::Invalidate, EventKind::Unmap, EventKind::Fault], "{events:#?}");
    let (map, inval, unmap, fault) = (events[0], events[1], events[2], events[3]);
    assert_eq!((map.bus, map.phys, map.size, map.mapper), (iova, buf_phys, 4096, MapperKind::Iommu));
    assert_eq!(map.device.as_str(), "00:02.0 e1000");
    // Strict unmap of one page: a page-selective invalidation of that page in the domain.
    assert_eq!(inval.detail, Detail::Invalidation { granularity: Granularity::Page, domain: domain_id, am: 0 });
    assert_eq!((inval.bus, inval.size), (iova, 4096));
    assert_eq!(inval.device.as_str(), rig.unit.name());
    assert_eq!((unmap.bus, unmap.phys), (iova, buf_phys));
    // The late write: reason 5 (write not permitted: the entry is gone), from the NIC's id.
    assert_eq!(fault.bus, iova);
    assert_eq!(fault.detail, Detail::Fault { reason: faults[0].reason.0, write: true });
    assert!(fault.device.as_str().starts_with("00:02.0"), "{:?}", fault.device);
}
