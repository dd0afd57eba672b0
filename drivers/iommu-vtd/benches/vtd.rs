//! Host-side CPU cost of one VT-d map + unmap pair: IOVA allocation, page-table writes, and
//! the invalidation (queued, page-selective, waited for) against the simulated unit, whose
//! invalidation processing is cheap, so the numbers are the driver's own cost.
//!
//! Buffers of 4 KiB, 64 KiB and 2 MiB (2 MiB-aligned: one superpage), with 10, 1,000 and
//! 100,000 other mappings live in the same domain; the cost should not grow with the live
//! count. A `deferred` group shows the same 4 KiB pair with batched domain-wide flushes.
//!
//! Run: `cargo bench -p iommu-vtd --bench vtd`; `drivers/iommu-vtd/BENCHMARKS.md` has the numbers.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dma::sim::{SimMemory, SimRegion};
use dma::{FrameRequest, PhysAddr, PhysMemory};
use iommu_vtd::sim::{SimConfig, SimUnit};
use iommu_vtd::{Domain, Perms, SourceId, Unit, UnitConfig, UnmapPolicy};

const LIVE: [usize; 3] = [10, 1_000, 100_000];
const SIZES: [(&str, usize); 3] = [("4K", 4096), ("64K", 64 << 10), ("2M", 2 << 20)];

struct Setup {
    _unit: Arc<Unit>,
    domain: Arc<Domain>,
    buf: PhysAddr,
}

fn setup(live: usize, policy: UnmapPolicy) -> Setup {
    let mem = SimMemory::new(&[SimRegion { base: 0x1_0000_0000, size: 64 << 20 }]);
    let phys: Arc<dyn PhysMemory> = mem;
    let sim = SimUnit::new(phys.clone(), SimConfig::default());
    let unit = Unit::bring_up("dmar0", sim, phys.clone(), UnitConfig::default()).unwrap();
    let domain = unit.create_domain(policy).unwrap();
    domain.attach(SourceId::new(0, 2, 0)).unwrap();
    let buf = phys.alloc_frames(FrameRequest { count: 512, max_addr: u64::MAX, align: 2 << 20 }).unwrap();
    // The live set: 4 KiB mappings of one page (an IOMMU may map a frame many times).
    for _ in 0..live {
        domain.map(None, buf, 4096, Perms::READ, u64::MAX).unwrap();
    }
    Setup { _unit: unit, domain, buf }
}

fn map_unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("vtd_map_unmap");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for live in LIVE {
        let s = setup(live, UnmapPolicy::Strict);
        for (name, len) in SIZES {
            g.bench_with_input(BenchmarkId::new(name, live), &len, |b, &len| {
                b.iter(|| {
                    let iova = s.domain.map(None, s.buf, len, Perms::READ_WRITE, u64::MAX).unwrap();
                    s.domain.unmap(black_box(iova), len).unwrap();
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("vtd_map_unmap_deferred");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for live in LIVE {
        let s = setup(live, UnmapPolicy::Deferred { batch: 256 });
        g.bench_with_input(BenchmarkId::new("4K", live), &4096usize, |b, &len| {
            b.iter(|| {
                let iova = s.domain.map(None, s.buf, len, Perms::READ_WRITE, u64::MAX).unwrap();
                s.domain.unmap(black_box(iova), len).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, map_unmap);
criterion_main!(benches);
