//! Property tests: random sequences of map and unmap on a domain, checked against a model by
//! the software walker and by simulated device accesses.

mod vtd_common;

use std::collections::BTreeMap;

use dma::PhysAddr;
use iommu_vtd::sim::SimConfig;
use iommu_vtd::{AccessKind, Perms, SourceId, UnmapPolicy};
use proptest::prelude::*;
use vtd_common::{MIB2, Rig};

const DEV: SourceId = SourceId::new(0, 5, 0);
/// Pages of RAM the mappings point into.
const POOL_PAGES: u64 = 2048;

#[derive(Clone, Debug)]
enum Op {
    Map { pages: u64, phys_page: u64, offset: u64, big_aligned: bool, perms: u8, mask32: bool },
    Unmap(usize),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1u64..700, 0..POOL_PAGES, 0u64..4096, any::<bool>(), 1u8..4, any::<bool>()).prop_map(
            |(pages, phys_page, offset, big_aligned, perms, mask32)| Op::Map { pages, phys_page, offset, big_aligned, perms, mask32 }
        ),
        4 => any::<usize>().prop_map(Op::Unmap),
        1 => Just(Op::Flush),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Live {
    phys: u64,
    len: u64,
    perms: Perms,
}

fn perms(p: u8) -> Perms {
    Perms { read: p & 1 != 0, write: p & 2 != 0 }
}

fn check_live(rig: &Rig, d: &iommu_vtd::Domain, iova: u64, l: &Live) -> Result<(), TestCaseError> {
    let last = iova + l.len - 1;
    for probe in [iova, last, iova + l.len / 2] {
        let expect = l.phys + (probe - iova);
        for (a, ok) in [(AccessKind::Read, l.perms.read), (AccessKind::Write, l.perms.write)] {
            let t = d.translate(probe, a);
            if ok {
                prop_assert_eq!(t.map(|t| t.phys.0), Ok(expect), "walker at {:#x}", probe);
            } else {
                prop_assert!(t.is_err(), "permission {:?} must be refused at {:#x}", a, probe);
            }
        }
        if l.perms.read {
            let pa = rig.sim.translate(DEV, probe, AccessKind::Read).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(pa, expect);
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>, cfg: SimConfig, policy: UnmapPolicy) -> Result<(), TestCaseError> {
    let rig = Rig::new(cfg);
    let d = rig.unit.create_domain(policy).unwrap();
    d.attach(DEV).unwrap();
    let pool = rig.buffer(POOL_PAGES as usize, MIB2, 0);
    let mut live: BTreeMap<u64, Live> = BTreeMap::new();
    let mut unmapped: Vec<u64> = Vec::new();
    for op in ops {
        match op {
            Op::Map { pages, phys_page, offset, big_aligned, perms: p, mask32 } => {
                let phys_page = if big_aligned { phys_page / 512 * 512 } else { phys_page };
                let pages = pages.min(POOL_PAGES - phys_page);
                let offset = if big_aligned { 0 } else { offset };
                let len = (pages * 4096).saturating_sub(offset).max(1);
                let phys = pool.0 + phys_page * 4096 + offset;
                let limit = if mask32 { 0xffff_ffff } else { u64::MAX };
                let iova = d.map(None, PhysAddr(phys), len as usize, perms(p), limit).unwrap();
                prop_assert!(iova != 0);
                prop_assert_eq!(iova % 4096, phys % 4096);
                prop_assert!(iova + len - 1 <= limit);
                // Never overlapping a live mapping (page granular).
                let (s, e) = (iova & !0xfff, (iova + len - 1) | 0xfff);
                for (&li, l) in &live {
                    let (ls, le) = (li & !0xfff, (li + l.len - 1) | 0xfff);
                    prop_assert!(e < ls || s > le, "{:#x}..{:#x} overlaps {:#x}..{:#x}", s, e, ls, le);
                }
                let l = Live { phys, len, perms: perms(p) };
                check_live(&rig, &d, iova, &l)?;
                live.insert(iova, l);
            }
            Op::Unmap(i) => {
                if live.is_empty() {
                    continue;
                }
                let iova = *live.keys().nth(i % live.len()).unwrap();
                let l = live.remove(&iova).unwrap();
                d.unmap(iova, l.len as usize).unwrap();
                prop_assert!(d.translate(iova, AccessKind::Read).is_err());
                prop_assert!(d.translate(iova + l.len - 1, AccessKind::Write).is_err());
                if policy == UnmapPolicy::Strict {
                    prop_assert!(
                        rig.sim.translate(DEV, iova, AccessKind::Read).is_err(),
                        "stale IOTLB after strict unmap"
                    );
                    prop_assert!(rig.sim.translate(DEV, iova + l.len - 1, AccessKind::Write).is_err());
                }
                unmapped.push(iova);
            }
            Op::Flush => d.flush().unwrap(),
        }
        for (&iova, l) in &live {
            check_live(&rig, &d, iova, l)?;
        }
    }
    for (iova, l) in std::mem::take(&mut live) {
        d.unmap(iova, l.len as usize).unwrap();
        unmapped.push(iova);
    }
    d.flush().unwrap();
    for iova in unmapped {
        prop_assert!(d.translate(iova, AccessKind::Read).is_err());
        prop_assert!(rig.sim.translate(DEV, iova, AccessKind::Read).is_err(), "IOVA {:#x} still reachable", iova);
        prop_assert!(rig.sim.translate(DEV, iova, AccessKind::Write).is_err());
    }
    prop_assert_eq!(d.iova_stats().live, 0);
    prop_assert_eq!(d.iova_stats().pending, 0);
    rig.unit.poll_faults();
    rig.assert_no_violations();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn strict_domain_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, SimConfig::default(), UnmapPolicy::Strict)?;
    }

    #[test]
    fn caching_mode_domain_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, SimConfig::qemu_caching_mode(), UnmapPolicy::Strict)?;
    }

    #[test]
    fn deferred_domain_matches_model(ops in proptest::collection::vec(op(), 1..40), batch in 1usize..6) {
        run(ops, SimConfig::default(), UnmapPolicy::Deferred { batch })?;
    }

    #[test]
    fn register_only_domain_matches_model(ops in proptest::collection::vec(op(), 1..30)) {
        run(ops, SimConfig { mamv: 3, ..SimConfig::register_only() }, UnmapPolicy::Strict)?;
    }
}
