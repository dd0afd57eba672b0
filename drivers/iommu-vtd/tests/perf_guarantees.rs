//! The guarantees the fast paths (issue 13) must keep, checked on the simulated unit:
//! - after a strict completion, the software walker (and the device) find no translation for
//!   any page of the caller's buffers;
//! - 2 MiB / 1 GiB second-level entries carry the permissions asked for, and are split or
//!   removed correctly;
//! - a recycled IOVA is never handed out before the invalidation that removed its old mapping
//!   completed;
//! - an I/O arena is mapped with 2 MiB pages for its own device only, and unmapped strictly
//!   when it goes.

mod vtd_common;

use std::sync::Arc;

use dma::arena::DmaArena;
use dma::mapper::DmaMapper;
use dma::sim::SimMemory;
use dma::{DmaDevice, FromDevice, PageBuffer, PhysAddr, PhysMemory};
use iommu_vtd::sim::SimConfig;
use iommu_vtd::tables::{PTE_PS, PTE_R, PTE_W, PageTable, TableMemory};
use iommu_vtd::{AccessKind, Domain, Iommu, Perms, SourceId, UnmapPolicy};
use vtd_common::Rig;

const DISK: SourceId = SourceId::new(0, 0x1f, 2);
const OTHER: SourceId = SourceId::new(0, 3, 0);

fn device(rig: &Rig, policy: UnmapPolicy) -> (DmaDevice, Arc<Domain>) {
    let domain = rig.unit.create_domain(policy).unwrap();
    domain.attach(DISK).unwrap();
    let mapper: Arc<dyn DmaMapper> = Arc::new(Iommu::new(domain.clone(), rig.phys.clone(), true, policy));
    let dev = DmaDevice::new("00:1f.2 ahci", rig.phys.clone(), mapper);
    dev.set_mask(64).unwrap();
    dev.set_max_segment_size(4 << 20).unwrap();
    (dev, domain)
}

#[test]
fn after_a_strict_completion_no_page_of_the_callers_buffers_translates() {
    for cfg in [SimConfig::default(), SimConfig::qemu_caching_mode()] {
        let rig = Rig::new(cfg);
        let (dev, domain) = device(&rig, UnmapPolicy::Strict);
        // A request of three buffers: whole pages mapped in place, a sub-page heap buffer
        // (isolated in a page of its own), and a 64 KiB page run.
        let a = PageBuffer::alloc(&rig.phys, 3 * 4096, u64::MAX).unwrap();
        let b = PageBuffer::alloc(&rig.phys, 64 << 10, u64::MAX).unwrap();
        let request = vec![a, b];
        let mut rx = dev.map_sg(request, FromDevice).unwrap();
        let pages: Vec<u64> = rx
            .segments()
            .iter()
            .flat_map(|s| (0..s.len.div_ceil(4096)).map(move |i| (s.bus.as_u64() & !0xfff) + i as u64 * 4096))
            .collect();
        assert_eq!(pages.len(), 3 + 16);
        // The device fills every page (so the unit's IOTLB caches every translation).
        for &p in &pages {
            rig.sim.dma_write(DISK, p, b"data").unwrap();
            assert!(domain.translate(p, AccessKind::Write).is_ok());
        }
        let _ = rx.sync_for_cpu();
        let back = rx.unmap(); // the completion
        assert!(back.iter().all(|b| &b[..4] == b"data"));
        for &p in &pages {
            assert!(domain.translate(p, AccessKind::Read).is_err(), "{p:#x} still translates (read)");
            assert!(domain.translate(p, AccessKind::Write).is_err(), "{p:#x} still translates (write)");
            assert!(rig.sim.dma_write(DISK, p, b"late").is_err(), "the device still reaches {p:#x}");
        }
        assert!(back.iter().all(|b| &b[..4] == b"data"), "a late write landed");
        rig.assert_no_violations();
    }
}

fn large_tables(levels: u8) -> (Arc<SimMemory>, TableMemory, PageTable) {
    let mem = SimMemory::low_and_high(16 << 20, 16 << 20);
    let phys: Arc<dyn PhysMemory> = mem.clone();
    let tm = TableMemory::new(phys, None, u64::MAX);
    let pt = PageTable::new(&tm, levels, true, true).unwrap();
    (mem, tm, pt)
}

#[test]
fn superpage_entries_carry_the_permissions_asked_for() {
    let (_mem, tm, mut pt) = large_tables(4);
    let m2 = 2u64 << 20;
    for (i, (perms, bits)) in
        [(Perms::READ, PTE_R), (Perms::WRITE, PTE_W), (Perms::READ_WRITE, PTE_R | PTE_W)].into_iter().enumerate()
    {
        let iova = (8 + 2 * i as u64) * m2;
        let r = pt.map(&tm, iova, PhysAddr(0x4000_0000 + i as u64 * m2), m2, perms).unwrap();
        assert_eq!((r.pages_2m, r.pages_4k), (1, 0));
        let (base, size, e) = pt.leaf(&tm, iova + 0x1234).unwrap();
        assert_eq!((base, size), (iova, m2));
        assert_eq!(e & (PTE_R | PTE_W | PTE_PS), bits | PTE_PS, "perms {perms}");
    }
    let g1 = 1u64 << 30;
    let r = pt.map(&tm, 4 * g1, PhysAddr(2 * g1), g1, Perms::READ).unwrap();
    assert_eq!(r.pages_1g, 1);
    assert_eq!(pt.leaf(&tm, 4 * g1 + 7).unwrap().2 & (PTE_R | PTE_W | PTE_PS), PTE_R | PTE_PS);
}

#[test]
fn superpages_split_and_are_removed_correctly() {
    let (_mem, tm, mut pt) = large_tables(4);
    let (m2, g1) = (2u64 << 20, 1u64 << 30);
    // A 1 GiB read-only leaf; remove 8 KiB from the middle of its second 2 MiB.
    let (iova, phys) = (4 * g1, 2 * g1);
    pt.map(&tm, iova, PhysAddr(phys), g1, Perms::READ).unwrap();
    let hole = iova + m2 + 0x5000;
    let tables = pt.table_frames();
    let r = pt.unmap_splitting(&tm, hole, 0x2000).unwrap();
    // 1 GiB → 512 × 2 MiB, then the second 2 MiB → 512 × 4 KiB: two splits, two new tables.
    assert_eq!((r.splits, r.leaves, r.large_leaves), (2, 2, 0));
    assert_eq!(pt.table_frames(), tables + 2);
    // The hole is gone; everything else translates as before, with the same permission.
    assert!(pt.leaf(&tm, hole).is_none() && pt.leaf(&tm, hole + 0x1fff).is_none());
    for probe in [iova, iova + m2 - 1, iova + m2, hole - 1, hole + 0x2000, iova + 3 * m2 + 5, iova + g1 - 1] {
        let (base, size, e) = pt.leaf(&tm, probe).unwrap_or_else(|| panic!("{probe:#x} lost its mapping"));
        let want = phys + (probe - iova);
        let got = (e & 0x000f_ffff_ffff_f000 & !(size - 1)) + (probe - base);
        assert_eq!(got, want, "{probe:#x} translates to the wrong place");
        assert_eq!(e & (PTE_R | PTE_W), PTE_R, "{probe:#x} changed permission");
        let expected_size = if (iova + m2..iova + 2 * m2).contains(&probe) { 4096 } else { m2 };
        assert_eq!(size, expected_size, "{probe:#x}");
        assert_eq!(e & PTE_PS != 0, size > 4096);
    }
    // Removing a whole 2 MiB leaf needs no split; removing the whole rest unlinks the tables.
    let r = pt.unmap_splitting(&tm, iova + 4 * m2, m2).unwrap();
    assert_eq!((r.splits, r.leaves, r.large_leaves), (0, 1, 1));
    assert!(pt.leaf(&tm, iova + 4 * m2).is_none());
    let r = pt.unmap_splitting(&tm, iova, g1).unwrap();
    assert_eq!(r.splits, 0);
    assert_eq!(r.leaves, 511 - 1 + 510, "510 other 2 MiB leaves and 510 remaining 4 KiB leaves");
    assert!(!r.freed_tables.is_empty());
    assert!((0..512).all(|i| pt.leaf(&tm, iova + i * m2).is_none()));
    // Plain unmap still refuses to cut a large page (domains only unmap whole mappings).
    pt.map(&tm, iova, PhysAddr(phys), m2, Perms::READ).unwrap();
    assert!(pt.unmap(&tm, iova, 0x1000).is_err());
}

#[test]
fn a_recycled_iova_is_never_handed_out_before_its_invalidation_completed() {
    // Every policy. Before each unmap the device touches the buffer, so the unit's IOTLB
    // holds the translation; whenever an IOVA comes back from the allocator, the device must
    // see the *new* buffer there. A recycled IOVA whose old translation was still cached would
    // show the old one.
    for policy in [UnmapPolicy::Strict, UnmapPolicy::Deferred { batch: 7 }] {
        for cfg in [SimConfig::default(), SimConfig::qemu_caching_mode()] {
            let rig = Rig::new(cfg);
            let domain = rig.unit.create_domain(policy).unwrap();
            domain.attach(DISK).unwrap();
            let mut live: Vec<(u64, u8)> = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut recycled = 0;
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            for round in 0..600u32 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if live.len() > 3 && (rng % 3 == 0 || live.len() > 24) {
                    let (iova, _) = live.remove((rng as usize / 3) % live.len());
                    domain.unmap(iova, 4096).unwrap();
                    if matches!(policy, UnmapPolicy::Deferred { .. }) {
                        // Until the flush, the unmapped IOVA stays out of the allocator.
                        assert!(domain.is_pending(iova) || domain.stats().flushes > 0);
                    }
                    continue;
                }
                let fill = (round % 251) as u8;
                let page = rig.buffer(1, 4096, fill);
                let iova = domain.map(None, page, 4096, Perms::READ, u64::MAX).unwrap();
                assert!(!domain.is_pending(iova), "{iova:#x} handed out while its invalidation is pending");
                if !seen.insert(iova) {
                    recycled += 1;
                }
                let mut got = [0u8; 1];
                rig.sim.dma_read(DISK, iova, &mut got).unwrap();
                assert_eq!(got[0], fill, "{policy:?}: IOVA {iova:#x} still reached an old buffer");
                live.push((iova, fill));
            }
            assert!(recycled > 50, "{policy:?}: too few IOVAs recycled ({recycled}) to prove anything");
            rig.assert_no_violations();
        }
    }
}

#[test]
fn an_arena_is_mapped_in_2m_pages_for_its_device_only_and_unmapped_strictly() {
    let rig = Rig::new(SimConfig::qemu_caching_mode());
    let (dev, domain) = device(&rig, UnmapPolicy::Strict);
    let arena = DmaArena::new(&dev, "ahci-io", 4 << 20);
    let mut a = arena.alloc(1 << 20).unwrap();
    let b = arena.alloc(512).unwrap();
    assert_eq!(domain.stats().superpages_live, 1, "one chunk, one 2 MiB leaf");
    let t = domain.translate(a.bus_addr().as_u64(), AccessKind::Write).unwrap();
    assert_eq!((t.page_size, t.phys), (2 << 20, a.phys()));
    assert_eq!(t.perms, Perms::READ_WRITE);
    // The device reaches its arena buffers, another device does not.
    rig.sim.dma_write(DISK, b.bus_addr().as_u64(), b"sector").unwrap();
    assert_eq!(&b[..6], b"sector");
    assert!(rig.sim.dma_read(OTHER, a.bus_addr().as_u64(), &mut [0; 4]).is_err());
    a[..4].copy_from_slice(b"abcd");
    let mut seen = [0u8; 4];
    rig.sim.dma_read(DISK, a.bus_addr().as_u64(), &mut seen).unwrap();
    assert_eq!(&seen, b"abcd");
    // No map or invalidation per buffer: the counters do not move while buffers come and go.
    let before = domain.stats();
    for _ in 0..100 {
        drop(arena.alloc(4096).unwrap());
    }
    assert_eq!(domain.stats(), before);
    // The arena goes: strict unmap (the IOTLB entry the device just used is invalidated).
    let bus = a.bus_addr().as_u64();
    drop((a, b, arena));
    assert!(domain.translate(bus, AccessKind::Read).is_err());
    assert!(rig.sim.dma_read(DISK, bus, &mut seen).is_err());
    assert_eq!(domain.stats().superpages_live, 0);
    rig.assert_no_violations();
}

#[test]
fn a_scatter_gather_completion_waits_once_and_still_leaves_nothing_mapped() {
    for cfg in [SimConfig::default(), SimConfig::qemu_caching_mode()] {
        let rig = Rig::new(cfg);
        let (dev, domain) = device(&rig, UnmapPolicy::Strict);
        // Five buffers: four page runs mapped in place, one sub-page buffer isolated.
        let pages: Vec<PageBuffer> =
            (0..4).map(|i| PageBuffer::alloc(&rig.phys, (i + 1) * 4096, u64::MAX).unwrap()).collect();
        let mut small = PageBuffer::alloc(&rig.phys, 100, u64::MAX).unwrap();
        small.fill(7);
        let request = vec![small];
        let rx_pages = dev.map_sg(pages, FromDevice).unwrap();
        let rx_small = dev.map_sg(request, FromDevice).unwrap();
        let iovas: Vec<u64> = rx_pages.segments().iter().map(|s| s.bus.as_u64()).collect();
        assert_eq!(iovas.len(), 4);
        for &i in &iovas {
            rig.sim.dma_write(DISK, i, b"x").unwrap(); // cached in the IOTLB now
        }
        let before = rig.unit.invalidation_stats();
        let back = rx_pages.unmap();
        let after = rig.unit.invalidation_stats();
        assert_eq!(after.waits - before.waits, 1, "one wait for the whole list");
        assert_eq!(after.iotlb_pages - before.iotlb_pages, 4, "one page-selective invalidation per range");
        for &i in &iovas {
            assert!(domain.translate(i, AccessKind::Write).is_err());
            assert!(rig.sim.dma_write(DISK, i, b"late").is_err(), "{i:#x} still reachable");
        }
        assert!(back.iter().all(|b| b[0] == b'x'));
        // The isolated one comes back through the batch path too, with its copy-back.
        let small_iova = rx_small.segments()[0].bus.as_u64();
        rig.sim.dma_write(DISK, small_iova, b"yz").unwrap();
        let small = rx_small.unmap();
        assert_eq!(&small[0][..3], b"yz\x07");
        assert!(rig.sim.dma_read(DISK, small_iova, &mut [0; 1]).is_err());
        rig.assert_no_violations();
    }
}
