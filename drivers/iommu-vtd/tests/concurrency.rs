//! Many threads through one IOMMU domain: the mapper and its IOVA allocator must keep every
//! mapping apart and give every IOVA back, whichever CPU maps or unmaps. Bounded counts; the
//! invariants are checked after the run: each device access through the simulated unit's
//! translation saw its own thread's data, no IOVA is left allocated or pending, and the
//! simulated unit saw no spec violation (invalidation order, register use).

mod vtd_common;

use dma::mapper::DmaMapper;
use dma::{DmaDevice, FromDevice, PageBuffer, ToDevice};
use iommu_vtd::sim::SimConfig;
use iommu_vtd::{Iommu, SourceId, UnmapPolicy};
use std::sync::Arc;
use vtd_common::Rig;

const NIC: SourceId = SourceId::new(0, 2, 0);
const THREADS: usize = 4;
const ROUNDS: usize = 300;

fn stamp(thread: usize, seq: usize) -> [u8; 8] {
    (((thread as u64) << 48) | seq as u64).to_le_bytes()
}

fn rig_and_device(policy: UnmapPolicy, isolate: bool) -> (Rig, DmaDevice, Arc<iommu_vtd::Domain>) {
    let rig = Rig::new(SimConfig::qemu_caching_mode());
    let domain = rig.unit.create_domain(policy).unwrap();
    domain.attach(NIC).unwrap();
    let mapper: Arc<dyn DmaMapper> = Arc::new(Iommu::new(domain.clone(), rig.phys.clone(), isolate, policy));
    let dev = DmaDevice::new("00:02.0 stress", rig.phys.clone(), mapper);
    (rig, dev, domain)
}

fn hammer(rig: &Rig, dev: &DmaDevice) {
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for seq in 0..ROUNDS {
                    let mark = stamp(t, seq);
                    // Sub-page buffers of varied sizes: isolation pads and places them.
                    let len = 64 + 200 * (seq % 20);
                    let mut buf = PageBuffer::alloc(&rig.phys, len, u64::MAX).unwrap();
                    buf[..8].copy_from_slice(&mark);
                    let tx = dev.map(buf, ToDevice).expect("the domain has room");
                    let mut seen = [0u8; 8];
                    rig.sim.dma_read(NIC, tx.bus_addr().as_u64(), &mut seen).expect("a live mapping translates");
                    assert_eq!(seen, mark, "the device read another thread's mapping");
                    tx.unmap();

                    let rx = dev.map(PageBuffer::alloc(&rig.phys, 128, u64::MAX).unwrap(), FromDevice).unwrap();
                    rig.sim.dma_write(NIC, rx.bus_addr().as_u64(), &mark).expect("a live mapping translates");
                    assert_eq!(rx.unmap()[..8], mark, "a received buffer got another thread's data");
                }
            });
        }
    });
}

#[test]
fn strict_mapper_shared_by_threads_keeps_mappings_apart_and_leaks_no_iova() {
    let (rig, dev, domain) = rig_and_device(UnmapPolicy::Strict, true);
    hammer(&rig, &dev);
    let iova = domain.iova_stats();
    assert_eq!((iova.live, iova.live_pages, iova.pending), (0, 0, 0), "IOVAs left behind: {iova:?}");
    rig.assert_no_violations();
}

#[test]
fn deferred_mapper_shared_by_threads_returns_every_iova_after_the_flush() {
    let (rig, dev, domain) = rig_and_device(UnmapPolicy::Deferred { batch: 64 }, false);
    hammer(&rig, &dev);
    domain.flush().unwrap();
    let iova = domain.iova_stats();
    assert_eq!((iova.live, iova.live_pages, iova.pending), (0, 0, 0), "IOVAs left behind: {iova:?}");
    rig.assert_no_violations();
}
