//! Translation structures, the software walker, the IOVA allocator, invalidation encodings and
//! register decoders, each on its own.

use std::sync::Arc;

use dma::sim::SimMemory;
use dma::{PhysAddr, PhysMemory};
use iommu_vtd::fault::{FaultReason, FaultRecord};
use iommu_vtd::invalidation::{
    ContextScope, IotlbScope, context_descriptor, iotlb_descriptor, page_scope, wait_descriptor,
};
use iommu_vtd::iova::{IovaAllocator, IovaError};
use iommu_vtd::regs::{Cap, Ecap, SAGAW_39, SAGAW_48, Version};
use iommu_vtd::tables::{ContextEntry, ContextTables, PageTable, TableError, TableMemory};
use iommu_vtd::walker::{WalkCaps, translate};
use iommu_vtd::{AccessKind, Perms, SourceId};

const DEV: SourceId = SourceId::new(3, 4, 5);

struct Tables {
    mem: Arc<SimMemory>,
    tm: TableMemory,
    ctx: ContextTables,
    pt: PageTable,
    caps: WalkCaps,
}

fn tables(levels: u8, large: bool) -> Tables {
    let mem = SimMemory::low_and_high(16 << 20, 16 << 20);
    let phys: Arc<dyn PhysMemory> = mem.clone();
    let tm = TableMemory::new(phys, None, u64::MAX);
    let mut ctx = ContextTables::new(&tm).unwrap();
    let pt = PageTable::new(&tm, levels, large, large).unwrap();
    ctx.set(&tm, DEV, ContextEntry { domain_id: 7, table: pt.top(), aw: pt.aw() }).unwrap();
    let caps = WalkCaps {
        mgaw: 48,
        sagaw: SAGAW_39 | SAGAW_48,
        sllps: if large { 3 } else { 0 },
        pass_through: false,
        device_tlb: false,
    };
    Tables { mem, tm, ctx, pt, caps }
}

impl Tables {
    fn tr(&self, iova: u64, a: AccessKind) -> Result<u64, FaultReason> {
        translate(&*self.mem, self.ctx.root().0, &self.caps, DEV, iova, a).map(|t| t.phys.0)
    }
    fn poke(&self, pa: u64, v: u64) {
        assert!(self.mem.write_phys(PhysAddr(pa), &v.to_le_bytes()));
    }
}

#[test]
fn source_ids_and_perms() {
    assert_eq!(DEV.to_string(), "03:04.5");
    assert_eq!((DEV.bus(), DEV.device(), DEV.function(), DEV.devfn()), (3, 4, 5, 0x25));
    assert_eq!(SourceId::from_bus_devfn(3, 0x25), DEV);
    assert_eq!(Perms::for_direction(dma::DmaDirection::ToDevice), Perms::READ);
    assert_eq!(Perms::for_direction(dma::DmaDirection::FromDevice), Perms::WRITE);
    assert_eq!(Perms::READ_WRITE.to_string(), "rw");
}

#[test]
fn three_and_four_level_tables_translate() {
    for levels in [3u8, 4] {
        let mut t = tables(levels, false);
        assert_eq!(t.pt.width(), 12 + 9 * levels as u32);
        let iova = (1u64 << (t.pt.width() - 1)) + 0x5000;
        t.pt.map(&t.tm, iova, PhysAddr(0x1234_5000), 0x3000, Perms::READ).unwrap();
        assert_eq!(t.tr(iova + 0x10, AccessKind::Read), Ok(0x1234_5010));
        assert_eq!(t.tr(iova + 0x2fff, AccessKind::Read), Ok(0x1234_7fff));
        assert_eq!(t.tr(iova, AccessKind::Write), Err(FaultReason::WRITE_DENIED));
        assert_eq!(t.tr(iova + 0x3000, AccessKind::Read), Err(FaultReason::READ_DENIED));
        assert_eq!(t.tr(iova - 0x1000, AccessKind::Read), Err(FaultReason::READ_DENIED));
        assert_eq!(t.tr(1 << t.pt.width(), AccessKind::Read), Err(FaultReason::BEYOND_AGAW));
        let r = t.pt.unmap(&t.tm, iova, 0x3000).unwrap();
        assert_eq!(r.leaves, 3);
        assert_eq!(t.tr(iova, AccessKind::Read), Err(FaultReason::READ_DENIED));
    }
}

#[test]
fn superpages_are_chosen_and_walked() {
    let mut t = tables(4, true);
    let m2 = 1u64 << 21;
    let g1 = 1u64 << 30;
    // 1 GiB + 2 MiB + 8 KiB, all aligned: one 1 GiB leaf, one 2 MiB leaf, two 4 KiB leaves.
    let r = t.pt.map(&t.tm, 4 * g1, PhysAddr(8 * g1), g1 + m2 + 0x2000, Perms::READ_WRITE).unwrap();
    assert_eq!((r.pages_1g, r.pages_2m, r.pages_4k), (1, 1, 2));
    assert_eq!(t.tr(4 * g1 + 0x1234_5678, AccessKind::Write), Ok(8 * g1 + 0x1234_5678));
    assert_eq!(t.tr(5 * g1 + 0x1_2345, AccessKind::Read), Ok(9 * g1 + 0x1_2345));
    assert_eq!(t.tr(5 * g1 + m2 + 0x1fff, AccessKind::Read), Ok(9 * g1 + m2 + 0x1fff));
    assert_eq!(t.pt.leaf(&t.tm, 4 * g1 + 5).map(|l| l.1), Some(g1));
    // Cutting a large page in two is refused, and changes nothing.
    assert_eq!(t.pt.unmap(&t.tm, 5 * g1, 0x1000), Err(TableError::SplitsLargePage { iova: 5 * g1 }));
    assert_eq!(t.tr(5 * g1, AccessKind::Read), Ok(9 * g1));
    // Misaligned physical address: no large pages.
    let r = t.pt.map(&t.tm, 16 * g1, PhysAddr(0x20_1000), 2 * m2, Perms::READ).unwrap();
    assert_eq!((r.pages_2m, r.pages_4k), (0, 1024));
    // The walker refuses a large page the unit does not support.
    let t2 = tables(4, false);
    let mut caps = t.caps;
    caps.sllps = 1; // 2 MiB only
    assert_eq!(
        translate(&*t.mem, t.ctx.root().0, &caps, DEV, 4 * g1, AccessKind::Read),
        Err(FaultReason::PAGING_RESERVED)
    );
    drop(t2);
}

#[test]
fn overlapping_map_is_refused_and_rolled_back() {
    let mut t = tables(3, false);
    t.pt.map(&t.tm, 0x10_0000, PhysAddr(0x50_0000), 0x1000, Perms::READ).unwrap();
    let e = t.pt.map(&t.tm, 0xf_e000, PhysAddr(0x60_0000), 0x4000, Perms::WRITE).unwrap_err();
    assert_eq!(e, TableError::AlreadyMapped { iova: 0x10_0000 });
    assert_eq!(t.tr(0xf_e000, AccessKind::Write), Err(FaultReason::WRITE_DENIED), "rolled back");
    assert_eq!(t.tr(0xf_f000, AccessKind::Write), Err(FaultReason::WRITE_DENIED), "rolled back");
    assert_eq!(t.tr(0x10_0000, AccessKind::Read), Ok(0x50_0000), "the old mapping is intact");
    assert!(matches!(t.pt.map(&t.tm, 0x123, PhysAddr(0), 0x1000, Perms::READ), Err(TableError::Unaligned { .. })));
    assert!(matches!(t.pt.map(&t.tm, 1 << 39, PhysAddr(0), 0x1000, Perms::READ), Err(TableError::BeyondWidth { .. })));
    assert!(matches!(t.pt.map(&t.tm, 0, PhysAddr(1 << 60), 0x1000, Perms::READ), Err(TableError::PhysTooHigh { .. })));
    assert_eq!(
        t.pt.map(&t.tm, 0, PhysAddr(0x1234), 0x1000, Perms::READ),
        Err(TableError::PhysUnaligned { phys: 0x1234 })
    );
}

#[test]
fn unmap_unlinks_only_tables_it_fully_covers() {
    let mut t = tables(4, false);
    let m2 = 1u64 << 21;
    t.pt.map(&t.tm, 10 * m2, PhysAddr(0), 3 * m2, Perms::READ).unwrap();
    let frames = t.pt.table_frames();
    assert_eq!(frames, 1 + 1 + 1 + 3);
    // Half of the first table: nothing unlinked.
    let r = t.pt.unmap(&t.tm, 10 * m2, m2 / 2).unwrap();
    assert!(r.freed_tables.is_empty());
    // The rest of the first and all of the second: only the second is wholly covered.
    let r = t.pt.unmap(&t.tm, 10 * m2 + m2 / 2, m2 + m2 / 2).unwrap();
    assert_eq!(r.freed_tables.len(), 1);
    assert_eq!(r.leaves, 256 + 512);
    // SAFETY: nothing references the unlinked table, and no unit caches exist in this test.
    unsafe { t.tm.free_table(r.freed_tables[0]) };
    t.pt.tables_freed(1);
    assert_eq!(t.pt.table_frames(), frames - 1);
    assert_eq!(t.tr(12 * m2, AccessKind::Read), Ok(2 * m2));
}

#[test]
fn walker_reports_spec_fault_reasons() {
    let mut t = tables(3, false);
    t.pt.map(&t.tm, 0x4000, PhysAddr(0x9000), 0x1000, Perms::READ).unwrap();
    let root = t.ctx.root().0;
    // Root entry not present for another bus.
    assert_eq!(
        translate(&*t.mem, root, &t.caps, SourceId::new(9, 0, 0), 0x4000, AccessKind::Read),
        Err(FaultReason::ROOT_NOT_PRESENT)
    );
    // Context entry not present for another devfn.
    assert_eq!(
        translate(&*t.mem, root, &t.caps, SourceId::new(3, 0, 0), 0x4000, AccessKind::Read),
        Err(FaultReason::CONTEXT_NOT_PRESENT)
    );
    // Root table not in memory.
    assert_eq!(
        translate(&*t.mem, 0x8000_0000, &t.caps, DEV, 0x4000, AccessKind::Read),
        Err(FaultReason::ROOT_TABLE_ERROR)
    );

    let ctx_tab = {
        let mut b = [0u8; 8];
        t.mem.read_phys(PhysAddr(root + 3 * 16), &mut b);
        u64::from_le_bytes(b) & !0xfff
    };
    let slot = ctx_tab + DEV.devfn() as u64 * 16;
    let (lo, hi) = ContextEntry { domain_id: 7, table: t.pt.top(), aw: 1 }.encode();
    // AW = 2 (48-bit) while SAGAW only has 39: invalid context entry.
    let caps39 = WalkCaps { sagaw: SAGAW_39, ..t.caps };
    t.poke(slot + 8, (hi & !7) | 2);
    assert_eq!(translate(&*t.mem, root, &caps39, DEV, 0x4000, AccessKind::Read), Err(FaultReason::CONTEXT_INVALID));
    // Translation type 11b: invalid.
    t.poke(slot + 8, hi);
    t.poke(slot, lo | (3 << 2));
    assert_eq!(t.tr(0x4000, AccessKind::Read), Err(FaultReason::CONTEXT_INVALID));
    // Reserved bit in the context entry.
    t.poke(slot, lo | (1 << 5));
    assert_eq!(t.tr(0x4000, AccessKind::Read), Err(FaultReason::CONTEXT_RESERVED));
    t.poke(slot, lo);
    assert_eq!(t.tr(0x4000, AccessKind::Read), Ok(0x9000));
    // Beyond MGAW even though the tables are 39-bit.
    let narrow = WalkCaps { mgaw: 32, ..t.caps };
    assert_eq!(translate(&*t.mem, root, &narrow, DEV, 1 << 33, AccessKind::Read), Err(FaultReason::BEYOND_AGAW));
    // A top-level entry pointing at no memory: paging entry error.
    t.poke(t.pt.top().0 + 8 * 5, 0x7000_0000_0000 | 3);
    assert_eq!(t.tr(5 << 30, AccessKind::Read), Err(FaultReason::PAGING_ENTRY_ERROR));
    // Reserved bits in the root entry.
    t.poke(root + 3 * 16 + 8, 1);
    assert_eq!(t.tr(0x4000, AccessKind::Read), Err(FaultReason::ROOT_RESERVED));
    assert_eq!(FaultReason(0x42).text(), "unknown fault reason");
}

#[test]
fn context_entries_set_and_clear() {
    let mut t = tables(4, false);
    assert_eq!(t.ctx.get(&t.tm, DEV).unwrap().domain_id, 7);
    let old = t.ctx.set(&t.tm, DEV, ContextEntry { domain_id: 9, table: t.pt.top(), aw: 2 }).unwrap();
    assert_eq!(old.map(|e| e.domain_id), Some(7));
    assert_eq!(t.ctx.clear(&t.tm, DEV).map(|e| e.domain_id), Some(9));
    assert_eq!(t.ctx.get(&t.tm, DEV), None);
    assert_eq!(t.tr(0, AccessKind::Read), Err(FaultReason::CONTEXT_NOT_PRESENT));
    assert_eq!(t.ctx.frames(), 2);
}

#[test]
fn fault_records_encode_and_decode() {
    let r =
        FaultRecord { source: DEV, address: 0xabc_d000, access: AccessKind::Read, reason: FaultReason::READ_DENIED };
    let (lo, hi) = r.encode();
    assert_eq!(hi >> (127 - 64), 1, "F bit");
    assert_eq!((hi >> 62) & 1, 1, "T bit: read");
    assert_eq!((hi >> 32) as u8, 6);
    assert_eq!(hi as u16, DEV.0);
    assert_eq!(FaultRecord::decode(lo, hi), Some(r));
    assert_eq!(FaultRecord::decode(lo, hi & !(1 << 63)), None);
    assert_eq!(
        r.to_string(),
        "DMA read fault from 03:04.5 at IOVA 0xabcd000: reason 0x06 (PTE read access is not set)"
    );
}

#[test]
fn capability_registers_decode() {
    // What Linux prints for QEMU's intel-iommu with caching mode: "cap 12008c22260286 ecap f00f5e".
    let cap = Cap(0x0012_008c_2226_0286);
    let ecap = Ecap(0x00f0_0f5e);
    assert_eq!(cap.domains(), 65536);
    assert!(cap.caching_mode() && cap.psi() && !cap.rwbf());
    assert_eq!(cap.sagaw(), SAGAW_39);
    assert_eq!(cap.mgaw(), 39);
    assert_eq!(cap.fault_recording_offset(), 0x220);
    assert_eq!(cap.fault_records(), 1);
    assert_eq!(cap.mamv(), 18);
    assert!(cap.supports_2m() && cap.supports_1g());
    assert!(!cap.zlr());
    assert!(ecap.qi() && ecap.dt() && ecap.ir() && ecap.eim() && ecap.pt());
    assert!(!ecap.coherent() && !ecap.sc());
    assert_eq!(ecap.iotlb_offset(), 0xf0);
    assert_eq!(ecap.mhmv(), 15);
    assert_eq!(Version(0x10).to_string(), "1.0");
    let s = cap.to_string();
    assert!(
        s.contains("sagaw=39 mgaw=39") && s.contains("sllps=2M,1G") && s.contains("CM") && s.contains("PSI"),
        "{s}"
    );
    assert!(ecap.to_string().contains("QI"), "{ecap}");
}

#[test]
fn invalidation_descriptors_and_masks() {
    assert_eq!(context_descriptor(ContextScope::Global), [0x11, 0]);
    assert_eq!(
        context_descriptor(ContextScope::Device { domain: 5, source: DEV }),
        [0x31 | (5 << 16) | ((DEV.0 as u64) << 32), 0]
    );
    assert_eq!(iotlb_descriptor(IotlbScope::Domain(3), true, true), [0x22 | (3 << 16) | 0xc0, 0]);
    assert_eq!(
        iotlb_descriptor(IotlbScope::Pages { domain: 1, iova: 0x40_0000, am: 9, leaf_only: true }, false, false),
        [0x32 | (1 << 16), 0x40_0000 | (1 << 6) | 9]
    );
    assert_eq!(wait_descriptor(PhysAddr(0x1000), 7), [0x65 | (7 << 32), 0x1000]);

    let ps = |iova, len| match page_scope(1, iova, len, 18, false) {
        Some(IotlbScope::Pages { iova, am, .. }) => Some((iova, am)),
        _ => None,
    };
    assert_eq!(ps(0x5000, 0x1000), Some((0x5000, 0)));
    assert_eq!(ps(0x4000, 0x2000), Some((0x4000, 1)));
    // Two pages straddling an 8-page boundary need a 16-page block... aligned to 16 pages.
    assert_eq!(ps(0x7000, 0x2000), Some((0x0, 4)));
    assert_eq!(ps(0x20_0000, 0x20_0000), Some((0x20_0000, 9)));
    assert_eq!(ps(0x1000, 1), Some((0x1000, 0)));
    assert_eq!(page_scope(1, 0, 1 << 40, 18, false), None, "mask above MAMV");
}

#[test]
fn iova_allocator_basics() {
    let mut a = IovaAllocator::new(39);
    assert_eq!(a.max_iova(), (1 << 39) - 1);
    let x = a.alloc(0x3000, u64::MAX).unwrap();
    assert_eq!(x % 0x4000, 0, "3 pages round to a naturally aligned 4-page block");
    assert_eq!(x + 0x4000, 1 << 39, "top-down");
    assert_eq!(a.allocation(x), Some(0x3000));
    assert_eq!(a.containing(x + 0x2fff), Some((x, 0x3000)));
    let y = a.alloc(2 << 20, 0xffff_ffff).unwrap();
    assert_eq!((y % (2 << 20), y + (2 << 20)), (0, 1 << 32));
    assert_eq!(a.alloc(0, u64::MAX), Err(IovaError::ZeroLength));
    assert!(matches!(a.alloc(1 << 39, u64::MAX), Err(IovaError::NoSpace { .. })));
    assert_eq!(a.free_invalidated(x + 0x1000), Err(IovaError::NotAllocated { iova: x + 0x1000 }));
    assert_eq!(a.free_invalidated(x), Ok(0x3000));
    assert_eq!(a.free_invalidated(x), Err(IovaError::NotAllocated { iova: x }));
    a.check_invariants().unwrap();

    // Page 0 is never handed out, not even when it is all that fits.
    let mut small = IovaAllocator::new(20);
    let got: Vec<u64> = (0..255).map(|_| small.alloc(4096, u64::MAX).unwrap()).collect();
    assert!(!got.contains(&0));
    assert!(small.alloc(4096, u64::MAX).is_err(), "255 pages is all a 1 MiB space has besides page 0");
    assert_eq!(small.reserve(0, 4096), Err(IovaError::Overlaps { iova: 0 }));
    small.check_invariants().unwrap();
}

#[test]
fn iova_reserve_and_deferred_free() {
    let mut a = IovaAllocator::new(32);
    a.reserve(0xe000_0000, 0x1_3000).unwrap();
    assert!(matches!(a.reserve(0xe001_0000, 0x1000), Err(IovaError::Overlaps { .. })));
    assert!(matches!(a.reserve(0xe000_0100, 0x1000), Err(IovaError::BadRange { .. })));
    a.check_invariants().unwrap();
    let x = a.alloc(0x1000, u64::MAX).unwrap();
    a.free_deferred(x).unwrap();
    assert!(a.is_pending(x));
    for _ in 0..100 {
        assert_ne!(a.alloc(0x1000, u64::MAX).unwrap(), x);
    }
    let g = a.begin_flush();
    // Freed after the flush began: belongs to the next generation.
    let y = a.alloc(0x1000, u64::MAX).unwrap();
    a.free_deferred(y).unwrap();
    assert_eq!(a.flush_completed(g), 1);
    assert!(!a.is_pending(x) && a.is_pending(y));
    assert_eq!(a.stats().pending, 1);
    a.free_invalidated(0xe000_0000).unwrap();
    a.check_invariants().unwrap();
}

#[test]
fn iova_allocator_stays_fast_with_100k_live_ranges() {
    let mut a = IovaAllocator::new(48);
    let mut live = Vec::with_capacity(100_000);
    for i in 0..100_000u64 {
        let len = 0x1000 << (i % 5);
        live.push(a.alloc(len, if i % 3 == 0 { 0xffff_ffff } else { u64::MAX }).unwrap());
    }
    let start = std::time::Instant::now();
    for i in 0..20_000usize {
        let k = (i * 7919) % live.len();
        a.free_invalidated(live[k]).unwrap();
        live[k] = a.alloc(0x2000, u64::MAX).unwrap();
    }
    let took = start.elapsed();
    assert!(took.as_secs_f64() < 5.0, "20k free+alloc with 100k live took {took:?}");
    assert_eq!(a.stats().live, 100_000);
    a.check_invariants().unwrap();
}
