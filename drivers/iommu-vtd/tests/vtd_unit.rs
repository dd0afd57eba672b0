//! The unit driver against the simulated unit: bring-up, attach, map/unmap with real device
//! accesses, invalidation (strict, deferred, caching mode), faults, views, teardown.

mod vtd_common;

use std::sync::{Arc, Mutex};

use dma::{PhysAddr, PhysMemory};
use iommu_vtd::fault::FaultReason;
use iommu_vtd::regs::{self, VtdRegisters, gcmd};
use iommu_vtd::sim::{SimConfig, SimDmaError, SimUnit};
use iommu_vtd::{AccessKind, DomainError, Perms, SourceId, Unit, UnitConfig, UnitError, UnmapPolicy, view};
use vtd_common::{FOUR_GIB, MIB2, Rig};

const NIC: SourceId = SourceId::new(0, 2, 0);
const DISK: SourceId = SourceId::new(0, 0x1f, 2);

fn fault_of(e: SimDmaError) -> iommu_vtd::FaultRecord {
    match e {
        SimDmaError::Fault(r) => r,
        other => panic!("expected a fault, got {other}"),
    }
}

#[test]
fn bring_up_follows_the_spec_sequence() {
    let rig = Rig::new(SimConfig::default());
    let info = rig.unit.info();
    assert_eq!((info.levels, info.width), (4, 48));
    assert!(info.queued && info.translation);
    assert_eq!(rig.sim.root_table(), Some(rig.unit.root_table().0));
    assert!(rig.sim.translation_enabled());
    // GCMD rule: enabling TE after QIE kept QIE on.
    let gsts = rig.sim.read32(regs::GSTS);
    assert_eq!(gsts & (gcmd::TE | gcmd::QIE), gcmd::TE | gcmd::QIE, "gsts {gsts:#x}");
    let s = rig.sim.stats();
    assert_eq!(s.context_invalidations[0], 1, "global context-cache invalidation at bring-up");
    assert_eq!(s.iotlb_invalidations[0], 1, "global IOTLB invalidation at bring-up");
    assert!(s.descriptors >= 4, "invalidations went through the queue");
    rig.assert_no_violations();
}

#[test]
fn qemu_caching_mode_unit_gets_three_levels() {
    let rig = Rig::new(SimConfig::qemu_caching_mode());
    let info = rig.unit.info();
    assert_eq!((info.levels, info.width), (3, 39));
    assert!(info.cap.caching_mode());
    rig.assert_no_violations();
}

#[test]
fn register_only_unit_uses_register_invalidation() {
    let rig = Rig::new(SimConfig::register_only());
    assert!(!rig.unit.info().queued);
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    let pa = rig.buffer(1, 4096, 0x5a);
    let iova = d.map(None, pa, 4096, Perms::READ_WRITE, u64::MAX).unwrap();
    let mut b = [0u8; 8];
    rig.sim.dma_read(NIC, iova, &mut b).unwrap();
    assert_eq!(b, [0x5a; 8]);
    d.unmap(iova, 4096).unwrap();
    assert!(rig.sim.dma_read(NIC, iova, &mut b).is_err());
    let st = rig.unit.invalidation_stats();
    assert!(st.write_buffer_flushes >= 2, "RWBF unit flushes its write buffer after table changes");
    assert_eq!(st.waits, 0);
    assert_eq!(rig.sim.stats().descriptors, 0);
    rig.assert_no_violations();
}

#[test]
fn unsupported_table_depth_is_refused() {
    let mem = dma::sim::SimMemory::low_and_high(4 << 20, 4 << 20);
    let phys: Arc<dyn PhysMemory> = mem;
    let sim = SimUnit::new(phys.clone(), SimConfig { sagaw: regs::SAGAW_57, ..SimConfig::default() });
    let err = Unit::bring_up("dmar9", sim, phys, UnitConfig::default()).err().unwrap();
    assert_eq!(err, UnitError::UnsupportedWidth { sagaw: regs::SAGAW_57 });
    assert!(err.to_string().contains("57"));
}

#[test]
fn translation_left_on_by_firmware_is_restarted() {
    let mem = dma::sim::SimMemory::low_and_high(4 << 20, 4 << 20);
    let phys: Arc<dyn PhysMemory> = mem;
    let sim = SimUnit::new(phys.clone(), SimConfig::default());
    // "Firmware": a root table at 0x200000 and translation on.
    sim.write64(regs::RTADDR, 0x20_0000);
    sim.write32(regs::GCMD, gcmd::SRTP);
    sim.write32(regs::GCMD, gcmd::TE);
    let unit = Unit::bring_up("dmar0", sim.clone(), phys, UnitConfig::default()).unwrap();
    assert_eq!(sim.root_table(), Some(unit.root_table().0));
    assert!(sim.translation_enabled());
    assert!(sim.violations().is_empty());
}

#[test]
fn deferred_enable_lets_devices_attach_first() {
    let rig = Rig::with(SimConfig::default(), UnitConfig { enable_translation: false, ..UnitConfig::default() });
    assert!(!rig.sim.translation_enabled());
    let mut b = [0u8; 4];
    rig.sim.dma_read(NIC, 0x10_0000, &mut b).unwrap(); // untranslated while off
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    rig.unit.enable_translation().unwrap();
    assert!(rig.sim.translation_enabled());
    assert!(rig.sim.dma_read(NIC, 0x10_0000, &mut b).is_err());
    rig.assert_no_violations();
}

#[test]
fn unattached_device_is_blocked_with_context_fault() {
    let rig = Rig::new(SimConfig::default());
    let victim = rig.buffer(1, 4096, 0x11);
    let err = rig.sim.dma_write(DISK, victim.0, &[0xee; 16]).unwrap_err();
    let rec = fault_of(err);
    assert_eq!(rec.reason, FaultReason::ROOT_NOT_PRESENT);
    assert_eq!(rig.read(victim, 16), vec![0x11; 16], "blocked DMA must not touch memory");

    // Once another device on bus 0 is attached, the root entry exists and the reason is the
    // context entry.
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    let rec = fault_of(rig.sim.dma_read(DISK, 0x5000, &mut [0u8; 4]).unwrap_err());
    assert_eq!(rec.reason, FaultReason::CONTEXT_NOT_PRESENT);

    let faults = rig.unit.poll_faults();
    assert_eq!(faults.len(), 2);
    assert_eq!(faults[0].source, DISK);
    assert_eq!(faults[0].access, AccessKind::Write);
    assert_eq!(faults[0].address, victim.0 & !0xfff);
    assert_eq!(faults[1].reason, FaultReason::CONTEXT_NOT_PRESENT);
    assert_eq!(faults[1].access, AccessKind::Read);
    assert!(rig.unit.poll_faults().is_empty(), "records are cleared after reading");
    assert_eq!(rig.sim.read32(regs::FSTS) & regs::fsts::PPF, 0);
}

#[test]
fn mapped_access_reaches_the_right_bytes_and_permissions_hold() {
    let rig = Rig::new(SimConfig::default());
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    let tx = rig.buffer(2, 4096, 0);
    rig.mem.write_phys(tx, b"hello from the CPU");
    rig.mem.write_phys(PhysAddr(tx.0 + 4096), b"second page");
    let iova = d.map(None, tx, 8192, Perms::READ, u64::MAX).unwrap();
    assert_ne!(iova, tx.0, "an IOVA, not the physical address");
    let mut got = [0u8; 18];
    rig.sim.dma_read(NIC, iova, &mut got).unwrap();
    assert_eq!(&got, b"hello from the CPU");
    let mut got = [0u8; 11];
    rig.sim.dma_read(NIC, iova + 4096, &mut got).unwrap();
    assert_eq!(&got, b"second page");
    assert_eq!(d.translate(iova + 4100, AccessKind::Read).unwrap().phys.0, tx.0 + 4100);

    // ToDevice mapping: the device may not write it.
    let rec = fault_of(rig.sim.dma_write(NIC, iova + 16, b"overwrite").unwrap_err());
    assert_eq!(rec.reason, FaultReason::WRITE_DENIED);
    assert_eq!(rec.address, iova);
    assert_eq!(rec.reason.text(), "PTE write access is not set");
    assert_eq!(&rig.read(tx, 18), b"hello from the CPU");

    // FromDevice mapping: the device writes, and may not read.
    let rx = rig.buffer(1, 4096, 0);
    let riova = d.map(None, rx, 4096, Perms::WRITE, u64::MAX).unwrap();
    rig.sim.dma_write(NIC, riova + 100, b"packet").unwrap();
    assert_eq!(&rig.read(PhysAddr(rx.0 + 100), 6), b"packet");
    assert_eq!(fault_of(rig.sim.dma_read(NIC, riova, &mut [0u8; 1]).unwrap_err()).reason, FaultReason::READ_DENIED);

    // An access that straddles into an unmapped page faults as a whole, moving nothing.
    let before = rig.read(rx, 4096);
    let rec = fault_of(rig.sim.dma_write(NIC, riova + 4090, &[0xab; 12]).unwrap_err());
    assert_eq!(rec.address, riova + 4096);
    assert_eq!(rig.read(rx, 4096), before);

    // Another device, not attached, cannot use the same IOVA.
    assert!(rig.sim.dma_read(DISK, iova, &mut [0u8; 1]).is_err());
    rig.assert_no_violations();
}

#[test]
fn unmapped_iova_faults_with_source_and_address() {
    let rig = Rig::new(SimConfig::default());
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    let rec = fault_of(rig.sim.dma_read(NIC, 0xdead_b000, &mut [0u8; 4]).unwrap_err());
    assert_eq!((rec.source, rec.address, rec.reason), (NIC, 0xdead_b000, FaultReason::READ_DENIED));
    let rec = fault_of(rig.sim.dma_write(NIC, 1 << 50, &[1]).unwrap_err());
    assert_eq!(rec.reason, FaultReason::BEYOND_AGAW);
    let polled = rig.unit.poll_faults();
    assert_eq!(polled.len(), 2);
    assert!(polled[0].to_string().contains("00:02.0"), "{}", polled[0]);
    let v = view::render_faults(std::slice::from_ref(&rig.unit));
    assert!(v.contains("00:02.0: 2"), "{v}");
    assert!(v.contains("PTE read access is not set"), "{v}");
}

#[test]
fn strict_unmap_leaves_no_stale_translation() {
    for cfg in [SimConfig::default(), SimConfig::qemu_caching_mode(), SimConfig::register_only()] {
        let rig = Rig::new(cfg);
        let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
        d.attach(NIC).unwrap();
        let pa = rig.buffer(4, 4096, 0x77);
        let iova = d.map(None, pa, 4 * 4096, Perms::READ_WRITE, u64::MAX).unwrap();
        for p in 0..4 {
            rig.sim.dma_read(NIC, iova + p * 4096, &mut [0u8; 4]).unwrap();
            rig.sim.dma_read(NIC, iova + p * 4096, &mut [0u8; 4]).unwrap();
        }
        assert!(rig.sim.stats().iotlb_hits >= 4, "the simulated IOTLB caches translations");
        d.unmap(iova, 4 * 4096).unwrap();
        for p in 0..4 {
            let rec = fault_of(rig.sim.dma_write(NIC, iova + p * 4096, &[9]).unwrap_err());
            assert_eq!(rec.reason, FaultReason::WRITE_DENIED, "{cfg:?}");
        }
        assert_eq!(rig.read(pa, 4 * 4096), vec![0x77; 4 * 4096]);
        rig.assert_no_violations();
    }
}

#[test]
fn deferred_unmap_has_a_window_until_flush_and_never_reuses_the_iova() {
    let rig = Rig::new(SimConfig::default());
    let d = rig.unit.create_domain(UnmapPolicy::Deferred { batch: 1000 }).unwrap();
    d.attach(NIC).unwrap();
    let pa = rig.buffer(1, 4096, 0x42);
    let iova = d.map(None, pa, 4096, Perms::READ_WRITE, u64::MAX).unwrap();
    rig.sim.dma_read(NIC, iova, &mut [0u8; 1]).unwrap(); // now cached in the IOTLB
    d.unmap(iova, 4096).unwrap();
    assert!(d.is_pending(iova));

    // The documented window: the stale IOTLB entry still lets the device in.
    rig.sim.dma_write(NIC, iova, &[0x66]).expect("deferred mode leaves a window until the flush");
    assert_eq!(rig.read(pa, 1), [0x66]);

    // The IOVA is not handed out again while pending.
    let other = rig.buffer(1, 4096, 0);
    let mut seen = Vec::new();
    for _ in 0..64 {
        let i = d.map(None, other, 4096, Perms::READ, u64::MAX).unwrap();
        assert_ne!(i, iova, "pending IOVA reused before its invalidation");
        seen.push(i);
    }
    for i in seen {
        d.unmap(i, 4096).unwrap();
    }

    d.flush().unwrap();
    assert!(!d.is_pending(iova));
    assert!(rig.sim.dma_write(NIC, iova, &[0x67]).is_err(), "closed after the flush");
    assert_eq!(rig.read(pa, 1), [0x66]);
    // Now it is free: top-down allocation hands the same (highest) range out again.
    assert_eq!(d.map(None, other, 4096, Perms::READ, u64::MAX).unwrap(), iova);
    assert!(d.stats().flushes >= 1);
    rig.assert_no_violations();
}

#[test]
fn deferred_unmap_flushes_every_batch() {
    let rig = Rig::new(SimConfig::default());
    let d = rig.unit.create_domain(UnmapPolicy::Deferred { batch: 8 }).unwrap();
    d.attach(NIC).unwrap();
    let pa = rig.buffer(1, 4096, 0);
    let before = rig.sim.stats().iotlb_invalidations;
    for _ in 0..20 {
        let i = d.map(None, pa, 4096, Perms::READ, u64::MAX).unwrap();
        d.unmap(i, 4096).unwrap();
    }
    let after = rig.sim.stats().iotlb_invalidations;
    assert_eq!(after[1] - before[1], 2, "domain-selective flush after every 8 unmaps");
    assert_eq!(after[2], before[2], "no page-selective invalidations in deferred mode");
    assert_eq!(d.iova_stats().pending, 4);
}

#[test]
fn dma_mask_bounds_iovas() {
    let rig = Rig::new(SimConfig::default());
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    let pa = rig.buffer(16, 4096, 0);
    let high = d.map(None, pa, 16 * 4096, Perms::READ, u64::MAX).unwrap();
    assert!(high >= FOUR_GIB, "without a mask constraint the allocator goes top-down");
    for _ in 0..200 {
        let i = d.map(None, pa, 16 * 4096, Perms::READ, 0xffff_ffff).unwrap();
        assert!(i + 16 * 4096 - 1 <= 0xffff_ffff);
        assert_ne!(i, 0);
    }
    let tiny = d.map(None, pa, 4096, Perms::READ, 0x1fff).unwrap();
    assert_eq!(tiny, 0x1000, "IOVA 0 is never handed out");
    assert!(matches!(d.map(None, pa, 4096, Perms::READ, 0x1fff), Err(DomainError::Iova(_))));
    assert!(matches!(d.map(Some(0), PhysAddr(0), 4096, Perms::READ, u64::MAX), Err(DomainError::Iova(_))));
}

#[test]
fn superpages_for_aligned_buffers() {
    for cfg in [SimConfig::default(), SimConfig::qemu_caching_mode()] {
        let rig = Rig::new(cfg);
        let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
        d.attach(NIC).unwrap();
        let pa = rig.buffer(1024, MIB2, 0);
        rig.mem.write_phys(PhysAddr(pa.0 + 0x1f_fff0), b"end of first 2M");
        rig.mem.write_phys(PhysAddr(pa.0 + MIB2 + 0x1234), b"second");
        let iova = d.map(None, pa, 4 << 20, Perms::READ_WRITE, u64::MAX).unwrap();
        assert_eq!(iova % MIB2, 0);
        assert_eq!(d.stats().pages_2m, 2);
        let t = d.translate(iova + MIB2 + 0x1234, AccessKind::Read).unwrap();
        assert_eq!((t.page_size, t.phys.0), (MIB2, pa.0 + MIB2 + 0x1234));
        let mut got = [0u8; 15];
        rig.sim.dma_read(NIC, iova + 0x1f_fff0, &mut got).unwrap();
        assert_eq!(&got, b"end of first 2M");
        let mut got = [0u8; 6];
        rig.sim.dma_read(NIC, iova + MIB2 + 0x1234, &mut got).unwrap();
        assert_eq!(&got, b"second");
        d.unmap(iova, 4 << 20).unwrap();
        assert!(rig.sim.dma_read(NIC, iova + MIB2 + 0x1234, &mut got).is_err());

        // Not 2 MiB aligned in physical memory: 4 KiB pages only.
        let odd = PhysAddr(pa.0 + 4096);
        let iova = d.map(None, odd, 2 << 20, Perms::READ, u64::MAX).unwrap();
        assert_eq!(d.stats().pages_2m, 2);
        assert_eq!(d.translate(iova, AccessKind::Read).unwrap().page_size, 4096);
        d.unmap(iova, 2 << 20).unwrap();
        rig.assert_no_violations();
    }
}

#[test]
fn no_superpages_when_the_unit_lacks_them() {
    let rig = Rig::new(SimConfig { sllps: 0, ..SimConfig::default() });
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    let pa = rig.buffer(512, MIB2, 0);
    let iova = d.map(None, pa, 2 << 20, Perms::READ, u64::MAX).unwrap();
    assert_eq!(d.stats().pages_2m, 0);
    assert_eq!(d.translate(iova + 8192, AccessKind::Read).unwrap().page_size, 4096);
}

#[test]
fn caching_mode_needs_invalidation_on_not_present_to_present() {
    let rig = Rig::new(SimConfig::qemu_caching_mode());
    let other = SourceId::new(0, 3, 0);
    let d0 = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d0.attach(other).unwrap(); // bus 0's context table exists now
    // The NIC does DMA before it is attached: the unit caches the not-present context entry.
    assert!(rig.sim.dma_read(NIC, 0x40_0000, &mut [0u8; 1]).is_err());
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    // ... and touches an IOVA before it is mapped: the unit caches the not-present PTE.
    let iova = 0x40_0000;
    assert!(rig.sim.dma_read(NIC, iova, &mut [0u8; 1]).is_err());
    let pa = rig.buffer(1, 4096, 0x31);
    assert_eq!(d.map(Some(iova), pa, 4096, Perms::READ, u64::MAX).unwrap(), iova);
    let mut b = [0u8; 1];
    rig.sim.dma_read(NIC, iova, &mut b).expect("the driver invalidated the cached not-present entries");
    assert_eq!(b, [0x31]);
    let s = rig.unit.invalidation_stats();
    assert!(s.context_device >= 2 && s.iotlb_pages >= 1, "{s:?}");
    rig.assert_no_violations();
}

#[test]
fn non_coherent_unit_gets_every_table_write_flushed() {
    let flushed: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let f = flushed.clone();
    let hook: iommu_vtd::tables::CacheFlush = Arc::new(move |p: *const u8, n: usize| {
        f.lock().unwrap().push((p as usize, n));
    });
    let rig = Rig::with(
        SimConfig { coherent: false, ..SimConfig::default() },
        UnitConfig { flush_cache: Some(hook), ..UnitConfig::default() },
    );
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    let pa = rig.buffer(1, 4096, 0);
    let iova = d.map(None, pa, 4096, Perms::READ, u64::MAX).unwrap();
    // Walk the tables by hand and check every entry on the path was flushed.
    let covered = |pa: u64| {
        let va = rig.phys.phys_to_virt(PhysAddr(pa)) as usize;
        flushed.lock().unwrap().iter().any(|&(p, n)| va >= p && va + 8 <= p + n)
    };
    let read = |pa: u64| u64::from_le_bytes(rig.read(PhysAddr(pa), 8).try_into().unwrap());
    let root = rig.unit.root_table().0;
    let root_slot = root + NIC.bus() as u64 * 16;
    assert!(covered(root_slot));
    let ctx_slot = (read(root_slot) & !0xfff) + NIC.devfn() as u64 * 16;
    assert!(covered(ctx_slot) && covered(ctx_slot + 8));
    let mut table = read(ctx_slot) & !0xfff;
    for level in (1..=4u32).rev() {
        let slot = table + ((iova >> (12 + 9 * (level - 1))) & 511) * 8;
        assert!(covered(slot), "level {level} entry not flushed");
        table = read(slot) & 0x000f_ffff_ffff_f000;
    }
    assert_eq!(table, pa.0);
}

#[test]
fn page_selective_fallbacks() {
    // No PSI: unmap invalidates the whole domain.
    let rig = Rig::new(SimConfig { psi: false, ..SimConfig::default() });
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    let pa = rig.buffer(1, 4096, 0);
    let i = d.map(None, pa, 4096, Perms::READ, u64::MAX).unwrap();
    let before = rig.sim.stats().iotlb_invalidations;
    d.unmap(i, 4096).unwrap();
    let after = rig.sim.stats().iotlb_invalidations;
    assert_eq!((after[1] - before[1], after[2] - before[2]), (1, 0));

    // Small MAMV: a 64-page range needs mask 6 > 2, so domain-selective; 4 pages fit.
    let rig = Rig::new(SimConfig { mamv: 2, ..SimConfig::default() });
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    let pa = rig.buffer(64, 4096, 0);
    let big = d.map(None, pa, 64 * 4096, Perms::READ, u64::MAX).unwrap();
    let small = d.map(None, pa, 4 * 4096, Perms::READ, u64::MAX).unwrap();
    let before = rig.sim.stats().iotlb_invalidations;
    d.unmap(big, 64 * 4096).unwrap();
    d.unmap(small, 4 * 4096).unwrap();
    let after = rig.sim.stats().iotlb_invalidations;
    assert_eq!((after[1] - before[1], after[2] - before[2]), (1, 1));
    rig.assert_no_violations();
}

#[test]
fn unaligned_buffers_keep_their_offset() {
    let rig = Rig::new(SimConfig::default());
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    let pa = rig.buffer(2, 4096, 0);
    let buf = PhysAddr(pa.0 + 4000);
    rig.mem.write_phys(buf, &[7u8; 200]);
    let iova = d.map(None, buf, 200, Perms::READ, u64::MAX).unwrap();
    assert_eq!(iova % 4096, 4000);
    let mut got = [0u8; 200];
    rig.sim.dma_read(NIC, iova, &mut got).unwrap();
    assert_eq!(got, [7u8; 200]);
    assert!(matches!(d.unmap(iova, 5000), Err(DomainError::LengthMismatch { .. })));
    d.unmap(iova, 200).unwrap();
    assert_eq!(d.unmap(iova, 200), Err(DomainError::NotMapped { iova }));
    assert!(d.unmap(iova, 200).unwrap_err().to_string().contains("double unmap"));
    assert_eq!(d.map(None, buf, 0, Perms::READ, u64::MAX), Err(DomainError::ZeroLength));
    assert_eq!(d.map(None, buf, 1, Perms { read: false, write: false }, u64::MAX), Err(DomainError::NoPermissions));
}

#[test]
fn attach_detach_and_domain_teardown() {
    let rig = Rig::new(SimConfig::default());
    let baseline = rig.mem.frames_in_use();
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    let id = d.id();
    assert_ne!(id, 0, "domain id 0 is reserved");
    d.attach(NIC).unwrap();
    let d2 = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    assert_eq!(d2.attach(NIC), Err(DomainError::AlreadyAttached { source: NIC, domain: id }));
    assert_eq!(d2.detach(NIC), Err(DomainError::NotAttached { source: NIC }));
    drop(d2);
    let pa = rig.buffer(1, 4096, 0);
    let iova = d.map(None, pa, 4096, Perms::READ, u64::MAX).unwrap();
    rig.sim.dma_read(NIC, iova, &mut [0u8; 1]).unwrap();
    let units = view::render_units(std::slice::from_ref(&rig.unit));
    assert!(units.contains("dmar0: VT-d 1.0, translation on, queued invalidation"), "{units}");
    assert!(units.contains(&format!("00:02.0->{id}")), "{units}");
    assert!(units.contains("4-level tables, 48-bit IOVAs"), "{units}");

    d.detach(NIC).unwrap();
    assert_eq!(
        fault_of(rig.sim.dma_read(NIC, iova, &mut [0u8; 1]).unwrap_err()).reason,
        FaultReason::CONTEXT_NOT_PRESENT
    );
    d.attach(NIC).unwrap();
    rig.sim.dma_read(NIC, iova, &mut [0u8; 1]).unwrap();

    // Dropping a domain with a device still attached detaches it, then frees the tables.
    drop(d);
    assert!(rig.sim.dma_read(NIC, iova, &mut [0u8; 1]).is_err());
    // SAFETY: `pa` came from alloc_frames, its mapping is gone and the domain was torn down.
    unsafe { rig.phys.free_frames(pa, 1) };
    // What stays: the context table for bus 0.
    assert_eq!(rig.mem.frames_in_use(), baseline + 1);
    let d3 = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    assert_eq!(d3.id(), id, "the domain id was released");
    assert_eq!(rig.unit.info().domains, 1);
    rig.assert_no_violations();
}

#[test]
fn page_table_frames_are_freed_after_unmap() {
    let rig = Rig::new(SimConfig { sllps: 0, ..SimConfig::default() });
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    let pa = rig.buffer(1024, 4096, 0);
    let baseline = rig.mem.frames_in_use();
    let iova = d.map(None, pa, 4 << 20, Perms::READ, u64::MAX).unwrap();
    assert!(rig.mem.frames_in_use() >= baseline + 2, "two last-level tables");
    d.unmap(iova, 4 << 20).unwrap();
    assert_eq!(rig.mem.frames_in_use(), baseline + 2, "last-level tables freed; levels 3 and 2 stay");

    let dd = rig.unit.create_domain(UnmapPolicy::Deferred { batch: 100 }).unwrap();
    let base2 = rig.mem.frames_in_use();
    let iova = dd.map(None, pa, 4 << 20, Perms::READ, u64::MAX).unwrap();
    let mapped = rig.mem.frames_in_use();
    dd.unmap(iova, 4 << 20).unwrap();
    assert_eq!(rig.mem.frames_in_use(), mapped, "deferred: tables wait for the flush");
    dd.flush().unwrap();
    assert_eq!(rig.mem.frames_in_use(), base2 + 2);
}

#[test]
fn fault_records_overflow_and_are_counted() {
    let rig = Rig::new(SimConfig { fault_records: 4, ..SimConfig::default() });
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    d.attach(DISK).unwrap();
    for i in 0..6u64 {
        let dev = if i % 2 == 0 { NIC } else { DISK };
        assert!(rig.sim.dma_read(dev, 0x100_0000 + i * 4096, &mut [0u8; 1]).is_err());
    }
    assert_ne!(rig.sim.read32(regs::FSTS) & regs::fsts::PFO, 0);
    let f = rig.unit.poll_faults();
    assert_eq!(f.len(), 4);
    assert_eq!(f.iter().map(|r| r.address).collect::<Vec<_>>(), [0x100_0000, 0x100_1000, 0x100_2000, 0x100_3000]);
    assert_eq!(rig.sim.read32(regs::FSTS) & (regs::fsts::PFO | regs::fsts::PPF), 0);
    // After clearing, new faults are recorded again (starting at the next record).
    assert!(rig.sim.dma_write(DISK, 0x200_0000, &[0]).is_err());
    let f = rig.unit.poll_faults();
    assert_eq!((f.len(), f[0].source, f[0].access), (1, DISK, AccessKind::Write));
    let v = view::render_faults(std::slice::from_ref(&rig.unit));
    assert!(v.contains("dmar0: 5 faults, 1 overflows"), "{v}");
    assert!(v.contains("00:02.0: 2") && v.contains("00:1f.2: 3"), "{v}");
}

#[test]
fn views_describe_units() {
    let rig = Rig::new(SimConfig::qemu_caching_mode());
    let v = view::render_units(std::slice::from_ref(&rig.unit));
    assert!(v.contains("caching mode"), "{v}");
    assert!(v.contains("3-level tables, 39-bit IOVAs"), "{v}");
    assert!(v.contains("sagaw=39") && v.contains(" CM"), "{v}");
    assert!(v.contains("ecap:") && v.contains(" QI"), "{v}");
    assert!(v.contains("domains: 0, devices: none"), "{v}");
    assert!(view::render_units(&[]).contains("no VT-d units"));
}

#[test]
fn concurrent_domains_on_threads() {
    let rig = Rig::new(SimConfig::default());
    let mut handles = Vec::new();
    for t in 0..4u8 {
        let unit = rig.unit.clone();
        let phys = rig.phys.clone();
        let sim = rig.sim.clone();
        handles.push(std::thread::spawn(move || {
            let dev = SourceId::new(1, t, 0);
            let d = unit.create_domain(UnmapPolicy::Strict).unwrap();
            d.attach(dev).unwrap();
            let pa = phys.alloc_frames(dma::FrameRequest { count: 1, max_addr: u64::MAX, align: 4096 }).unwrap();
            for _ in 0..200 {
                let i = d.map(None, pa, 4096, Perms::READ_WRITE, u64::MAX).unwrap();
                sim.dma_write(dev, i, &[t]).unwrap();
                d.unmap(i, 4096).unwrap();
                assert!(sim.dma_write(dev, i, &[t]).is_err());
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    rig.unit.poll_faults();
    rig.assert_no_violations();
}

#[test]
fn rmrr_identity_map() {
    let rig = Rig::new(SimConfig::default());
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    let region = rig.buffer(4, 4096, 0x3c);
    d.map_identity(region.0, 4 * 4096).unwrap();
    let mut b = [0u8; 2];
    rig.sim.dma_read(NIC, region.0 + 3 * 4096, &mut b).unwrap();
    assert_eq!(b, [0x3c; 2]);
    assert!(matches!(d.map_identity(region.0, 4096), Err(DomainError::Iova(_))), "already reserved");
    d.unmap(region.0, 4 * 4096).unwrap();
    assert!(rig.sim.dma_read(NIC, region.0, &mut b).is_err());
}
