//! Graded check for exercise 2 of `docs/exercises/` ("a DMA-debug check for overlapping
//! mappings"), the IOMMU half: behind a VT-d domain every mapping gets its own IOVA, so two raw
//! mappings of overlapping memory have different, disjoint bus addresses. A check that compares
//! bus addresses misses the overlap; one that compares the CPU buffers' physical ranges finds it.
//!
//! Ignored in the ordinary run because it fails on the tree as shipped:
//! `cargo test -p iommu-vtd --test exercises -- --ignored`. `cargo xtask test` runs it against
//! the shipped tree (it must fail) and with docs/exercises/answers/02-dma-debug-overlap.patch
//! applied (it must pass).

mod vtd_common;

use std::sync::Arc;

use dma::mapper::DmaMapper;
use dma::{DmaBuf, DmaDevice, DmaDirection, PageBuffer};
use iommu_vtd::sim::SimConfig;
use iommu_vtd::{Iommu, SourceId, UnmapPolicy};
use vtd_common::Rig;

const NIC: SourceId = SourceId::new(0, 2, 0);

#[test]
#[ignore = "graded: exercise 2 (docs/exercises/02-dma-debug-overlap.md)"]
fn exercise2_graded_overlap_through_iovas_is_reported() {
    for isolate in [false, true] {
        let rig = Rig::new(SimConfig::qemu_caching_mode());
        let domain = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
        domain.attach(NIC).unwrap();
        let mapper: Arc<dyn DmaMapper> = Arc::new(Iommu::new(domain, rig.phys.clone(), isolate, UnmapPolicy::Strict));
        let name = if isolate { "00:02.0 ex2-iova-isolated" } else { "00:02.0 ex2-iova" };
        let dev = DmaDevice::new(name, rig.phys.clone(), mapper);
        let buf = PageBuffer::alloc(&rig.phys, 8192, u64::MAX).unwrap();
        let before = dev.report_count();
        // SAFETY: `buf` outlives both mappings and the CPU does not touch it meanwhile.
        let a = unsafe { dev.map_single_raw(buf.dma_ptr(), 4096, DmaDirection::FromDevice) }.unwrap();
        // SAFETY: as above.
        let b = unsafe { dev.map_single_raw(buf.dma_ptr().wrapping_add(2048), 4096, DmaDirection::ToDevice) }.unwrap();
        let disjoint = a.as_u64() + 4096 <= b.as_u64() || b.as_u64() + 4096 <= a.as_u64();
        assert!(disjoint, "the premise: two IOVAs, disjoint on the bus ({a} and {b})");
        let overlap_text =
            dma::debug::recent_reports().iter().any(|r| r.device == name && r.to_string().contains("overlap"));
        assert_eq!(dev.report_count(), before + 1, "isolation {isolate}: overlap through IOVAs was not reported");
        assert!(overlap_text, "isolation {isolate}: the report does not say \"overlap\"");
        dev.unmap_single_raw(b, 4096, DmaDirection::ToDevice).unwrap();
        dev.unmap_single_raw(a, 4096, DmaDirection::FromDevice).unwrap();
        assert!(dev.live_mappings().is_empty());
        rig.assert_no_violations();
    }
}
