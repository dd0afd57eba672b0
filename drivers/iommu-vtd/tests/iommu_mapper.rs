//! The IOMMU mapper end to end on the simulated machine: a `DmaDevice` whose mapper is a VT-d
//! domain, and a simulated device whose every access goes through the simulated unit's
//! translation (root → context → page tables, permissions, IOTLB). What the driver-facing API
//! promises must hold for what the device can and cannot reach.

mod vtd_common;

use dma::mapper::DmaMapper;
use dma::{Bidirectional, DmaDevice, DmaPool, FromDevice, PageBuffer, ToDevice};
use iommu_vtd::Iommu;
use iommu_vtd::sim::{SimConfig, SimUnit};
use iommu_vtd::{SourceId, UnmapPolicy};
use std::sync::Arc;
use vtd_common::{FOUR_GIB, Rig};

const NIC: SourceId = SourceId::new(0, 2, 0);
const OTHER: SourceId = SourceId::new(0, 3, 0);

struct Machine {
    rig: Rig,
    dev: DmaDevice,
}

impl Machine {
    fn new(isolate: bool, policy: UnmapPolicy) -> Machine {
        let rig = Rig::new(SimConfig::qemu_caching_mode());
        let domain = rig.unit.create_domain(policy).unwrap();
        domain.attach(NIC).unwrap();
        let mapper: Arc<dyn DmaMapper> = Arc::new(Iommu::new(domain, rig.phys.clone(), isolate, policy));
        let dev = DmaDevice::new("00:02.0 e1000", rig.phys.clone(), mapper);
        Machine { rig, dev }
    }

    fn sim(&self) -> &Arc<SimUnit> {
        &self.rig.sim
    }
}

fn page_buffer(m: &Machine, len: usize, fill: &[u8]) -> PageBuffer {
    let mut b = PageBuffer::alloc(&m.rig.phys, len, u64::MAX).unwrap();
    b[..fill.len()].copy_from_slice(fill);
    b
}

#[test]
fn to_device_data_reaches_the_device_and_is_read_only() {
    let m = Machine::new(true, UnmapPolicy::Strict);
    let buf = page_buffer(&m, 8192, b"payload");
    let tx = m.dev.map(buf, ToDevice).unwrap();
    let mut seen = [0u8; 7];
    m.sim().dma_read(NIC, tx.bus_addr().as_u64(), &mut seen).unwrap();
    assert_eq!(&seen, b"payload");
    // The device may not write a ToDevice buffer (VT-d fault reason 5: write not permitted).
    assert!(m.sim().dma_write(NIC, tx.bus_addr().as_u64(), b"evil").is_err());
    let faults = m.rig.unit.poll_faults();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].source, NIC);
    let back = tx.unmap();
    assert_eq!(&back[..7], b"payload", "the failed write changed memory");
    m.rig.assert_no_violations();
}

#[test]
fn from_device_data_comes_back_and_the_mapping_dies_with_unmap() {
    let m = Machine::new(true, UnmapPolicy::Strict);
    let buf = page_buffer(&m, 4096, &[]);
    let mut rx = m.dev.map(buf, FromDevice).unwrap();
    let iova = rx.bus_addr().as_u64();
    m.sim().dma_write(NIC, iova, b"frame").unwrap();
    assert_eq!(&rx.sync_for_cpu().as_slice()[..5], b"frame");
    let back = rx.unmap();
    assert_eq!(&back[..5], b"frame");
    // Strict unmap: the translation is gone from the IOTLB when unmap returns.
    assert!(m.sim().dma_write(NIC, iova, b"late!").is_err(), "device still reaches an unmapped buffer");
    assert_eq!(&back[..5], b"frame");
    m.rig.assert_no_violations();
}

#[test]
fn another_device_reaches_nothing() {
    let m = Machine::new(true, UnmapPolicy::Strict);
    let rx = m.dev.map(page_buffer(&m, 4096, &[]), FromDevice).unwrap();
    assert!(m.sim().dma_write(OTHER, rx.bus_addr().as_u64(), b"x").is_err(), "an unattached device got through");
    let _ = rx.unmap();
}

#[test]
fn sub_page_buffers_are_isolated_in_pages_of_their_own() {
    let m = Machine::new(true, UnmapPolicy::Strict);
    // 64 bytes in the middle of a page of other data: the device must see only the 64.
    let mut page_of_data = page_buffer(&m, 4096, &[]);
    page_of_data.fill(0xAA);
    page_of_data[256..320].fill(7);
    let tx = m.dev.map_range(page_of_data, 256, 64, ToDevice).unwrap();
    assert!(tx.is_bounced(), "a 64-byte mapping was not isolated");
    let iova = tx.bus_addr().as_u64();
    let mut page = vec![0u8; 4096];
    m.sim().dma_read(NIC, iova & !0xfff, &mut page).unwrap();
    assert_eq!(&page[..64], &[7; 64]);
    assert!(page[64..].iter().all(|&b| b == 0), "the isolation page shows more than the buffer");
    let back = tx.unmap();
    assert_eq!(back[0], 0xAA);
}

#[test]
fn isolation_off_maps_in_place() {
    let m = Machine::new(false, UnmapPolicy::Strict);
    let tx = m.dev.map_range(page_buffer(&m, 4096, &[1; 64]), 0, 64, ToDevice).unwrap();
    assert!(!tx.is_bounced());
    let _ = tx.unmap();
}

#[test]
fn from_device_isolation_page_starts_as_the_buffer_not_stale_data() {
    let m = Machine::new(true, UnmapPolicy::Strict);
    // First user leaves a secret in whatever page the mapper picks.
    let tx = m.dev.map_range(page_buffer(&m, 4096, &[0x5e; 100]), 0, 100, Bidirectional).unwrap();
    let _ = tx.unmap();
    let rx = m.dev.map_range(page_buffer(&m, 4096, &[0x11; 100]), 0, 100, FromDevice).unwrap();
    let mut seen = vec![0u8; 100];
    m.sim().dma_read(NIC, rx.bus_addr().as_u64(), &mut seen).unwrap_err(); // FromDevice: no reads
    // Read the backing page through the software walk instead.
    let phys = m.dev.mapper().bus_to_phys(rx.bus_addr()).unwrap();
    assert!(m.rig.mem.read_phys(phys, &mut seen));
    assert_eq!(seen, vec![0x11; 100], "the FromDevice page did not start as a copy of the buffer");
    let _ = rx.unmap();
}

#[test]
fn coherent_memory_of_a_32bit_device_can_live_above_4gib() {
    let m = Machine::new(true, UnmapPolicy::Strict);
    m.dev.set_mask(32).unwrap();
    let pool = DmaPool::create("e1000-rx", &m.dev, 2048, 2048, 4096).unwrap();
    let mut blocks = Vec::new();
    for _ in 0..8 {
        let b = pool.zalloc().unwrap();
        assert!(b.bus_addr().as_u64() + 2048 <= FOUR_GIB, "IOVA {:?} beyond a 32-bit mask", b.bus_addr());
        m.sim().dma_write(NIC, b.bus_addr().as_u64(), b"rx").unwrap();
        let mut two = [0u8; 2];
        b.read_bytes(0, &mut two).unwrap();
        assert_eq!(&two, b"rx");
        blocks.push(b);
    }
    drop(blocks);
    pool.destroy().unwrap();
}

#[test]
fn deferred_unmaps_free_pages_only_after_a_flush() {
    let m = Machine::new(true, UnmapPolicy::Deferred { batch: 1000 });
    let before = m.rig.mem.frames_in_use();
    let mut buf = page_buffer(&m, 4096, &[3; 100]);
    let before = before + 1;
    for _ in 0..10 {
        let tx = m.dev.map_range(buf, 0, 100, ToDevice).unwrap();
        buf = tx.unmap();
    }
    // Ten isolation pages wait for the flush: none went back to the allocator yet.
    assert!(m.rig.mem.frames_in_use() >= before + 10, "isolation pages were freed before the IOTLB flush");
    for _ in 0..iommu_vtd::PENDING_PAGES_LIMIT {
        let tx = m.dev.map_range(buf, 0, 100, ToDevice).unwrap();
        buf = tx.unmap();
    }
    assert!(m.rig.mem.frames_in_use() < before + 10 + iommu_vtd::PENDING_PAGES_LIMIT, "pages never released");
}

#[test]
fn scatter_gather_through_the_iommu() {
    let m = Machine::new(true, UnmapPolicy::Strict);
    let pieces = vec![page_buffer(&m, 8192, &[1u8; 8192]), page_buffer(&m, 4096, &[2u8; 4096])];
    let expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    let sg = m.dev.map_sg(pieces, ToDevice).unwrap();
    let mut all = Vec::new();
    for s in sg.segments() {
        let mut part = vec![0u8; s.len];
        m.sim().dma_read(NIC, s.bus.as_u64(), &mut part).unwrap();
        all.extend(part);
    }
    assert_eq!(all, expected);
    assert_eq!(sg.unmap().len(), 2);
}

#[test]
fn domain_failures_reach_the_driver_typed() {
    use dma::{AllocError, IommuError, MapError};
    let m = Machine::new(false, UnmapPolicy::Strict);
    // A 24-bit device has 16 MiB of IOVA space (less IOVA 0): 16 MiB cannot fit.
    m.dev.set_mask(24).unwrap();
    let buf = PageBuffer::alloc(&m.rig.phys, 16 << 20, u64::MAX).unwrap();
    let failed = m.dev.map(buf, ToDevice).unwrap_err();
    assert!(
        matches!(failed.error, MapError::Iommu(IommuError::IovaExhausted { len, limit: 0xff_ffff }) if len >= 16 << 20),
        "{:?}",
        failed.error
    );
    assert!(failed.to_string().contains("no free IOVA range"), "{failed}");
    let err = m.dev.alloc_coherent_slice::<u8>(16 << 20).unwrap_err();
    assert!(matches!(err, AllocError::Iommu(IommuError::IovaExhausted { .. })), "{err:?}");
    assert!(err.to_string().contains("IOMMU"), "{err}");
    m.rig.assert_no_violations();
}

#[test]
fn domain_errors_convert_case_by_case() {
    use dma::IommuError;
    use iommu_vtd::DomainError;
    use iommu_vtd::iova::IovaError;
    use iommu_vtd::tables::TableError;
    let cases = [
        (
            DomainError::Iova(IovaError::NoSpace { len: 4096, limit: 0xffff }),
            IommuError::IovaExhausted { len: 4096, limit: 0xffff },
        ),
        (DomainError::Table(TableError::OutOfMemory), IommuError::TableAllocFailed),
        (
            DomainError::Table(TableError::BeyondWidth { iova: 1 << 40, width: 39 }),
            IommuError::BeyondWidth { iova: 1 << 40, width: 39 },
        ),
        (DomainError::Table(TableError::AlreadyMapped { iova: 0x5000 }), IommuError::AlreadyMapped { iova: 0x5000 }),
        (DomainError::NotMapped { iova: 0x6000 }, IommuError::NotMapped { iova: 0x6000 }),
        (DomainError::NotAttached { source: NIC }, IommuError::DeviceNotAttached { requester: NIC.0 }),
    ];
    for (from, to) in cases {
        assert_eq!(IommuError::from(from), to, "{from}");
    }
    let attached = IommuError::from(DomainError::AlreadyAttached { source: NIC, domain: 3 });
    assert_eq!(attached.to_string(), "00:02.0 is already attached to IOMMU domain 3; detach it first");
}
