//! `walker::walk` (what the kernel's `iommu walk BDF IOVA` prints) shows the walk the unit
//! really makes: its result is the simulated unit's translation, and its steps are the entries
//! the tables hold at the indices the IOVA selects, for a mapped, a read-only and an unmapped
//! IOVA and for a device that is not attached.

mod vtd_common;

use iommu_vtd::sim::{SimConfig, SimDmaError};
use iommu_vtd::walker::{render_walk, translate, walk};
use iommu_vtd::{AccessKind, FaultReason, Perms, SourceId, UnmapPolicy};
use vtd_common::Rig;

const NIC: SourceId = SourceId::new(0, 2, 0);

/// Walks `iova` for `source` and checks the walk against `translate` and the simulated unit.
fn check(rig: &Rig, source: SourceId, iova: u64, access: AccessKind) -> (String, Result<u64, FaultReason>) {
    let (root, caps) = (rig.unit.root_table().as_u64(), rig.unit.walk_caps());
    let (trail, result) = walk(&*rig.phys, root, &caps, source, iova, access);
    assert_eq!(result, translate(&*rig.phys, root, &caps, source, iova, access));
    let hardware = match rig.sim.translate(source, iova, access) {
        Ok(pa) => Ok(pa),
        Err(SimDmaError::Fault(rec)) => Err(rec.reason),
        Err(e) => panic!("{e:?}"),
    };
    assert_eq!(result.map(|t| t.phys.as_u64()), hardware, "the walk disagrees with the unit");
    // Each level's index is the IOVA's nine bits for that level; each entry points at the next.
    for (i, step) in trail.levels().iter().enumerate() {
        assert_eq!(step.index as u64, (iova >> (12 + 9 * (step.level as u64 - 1))) & 511);
        if let Some(next) = trail.levels().get(i + 1) {
            assert_eq!(step.entry & 0x000f_ffff_ffff_f000, next.table);
        }
    }
    if let (Some(root_entry), Some(ctx)) = (trail.root, trail.context) {
        assert_eq!(root_entry.index, source.bus() as u16);
        assert_eq!(root_entry.lo & !0xfff, ctx.addr - ctx.index as u64 * 16);
    }
    (render_walk(source, iova, access, &trail, &result), hardware)
}

#[test]
fn the_walk_shows_mapped_read_only_and_unmapped_iovas_as_the_unit_translates_them() {
    let rig = Rig::new(SimConfig::default());
    let domain = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    domain.attach(NIC).unwrap();
    let rw = rig.buffer(1, 4096, 0);
    let ro = rig.buffer(1, 4096, 0);
    let iova_rw = domain.map(None, rw, 4096, Perms::READ_WRITE, u64::MAX).unwrap();
    let iova_ro = domain.map(None, ro, 4096, Perms::READ, u64::MAX).unwrap();

    // Mapped: four levels, R=1 W=1 on the leaf, the physical address of the byte.
    let (text, hw) = check(&rig, NIC, iova_rw + 0x123, AccessKind::Write);
    assert_eq!(hw, Ok(rw.as_u64() + 0x123));
    assert_eq!(text.matches("  level ").count(), 4, "{text}");
    assert!(text.contains(&format!("=> phys {:#x}", rw.as_u64() + 0x123)), "{text}");
    assert!(text.contains("root entry") && text.contains(&format!("domain={}", domain.id())), "{text}");

    // Read-only: reading works, writing stops at the leaf with reason 5.
    let (_, hw) = check(&rig, NIC, iova_ro, AccessKind::Read);
    assert_eq!(hw, Ok(ro.as_u64()));
    let (text, hw) = check(&rig, NIC, iova_ro, AccessKind::Write);
    assert_eq!(hw, Err(FaultReason::WRITE_DENIED));
    assert!(text.contains("R=1 W=0") && text.contains("FAULT reason 0x05"), "{text}");

    // Unmapped (after a strict unmap): the leaf is not present, reason 6 for a read.
    domain.unmap(iova_rw, 4096).unwrap();
    let (text, hw) = check(&rig, NIC, iova_rw, AccessKind::Read);
    assert_eq!(hw, Err(FaultReason::READ_DENIED));
    assert!(text.contains("not present") && text.contains("FAULT reason 0x06"), "{text}");

    // A device that was never attached stops at its context entry (reason 2).
    let (text, hw) = check(&rig, SourceId::new(0, 3, 0), iova_ro, AccessKind::Read);
    assert_eq!(hw, Err(FaultReason::CONTEXT_NOT_PRESENT));
    assert!(!text.contains("  level "), "{text}");
    let _ = rig.unit.poll_faults();
}
