//! In-kernel benchmarks, run by `cargo xtask bench` through the shell (`bench iommu`).
//!
//! Numbers are TSC-timed under QEMU's TCG, so only ratios within one run mean anything: every
//! table has its baseline (the Direct mapper) measured in the same boot.

use crate::println;
use alloc::sync::Arc;
use alloc::vec::Vec;
use dma::mapper::{DeviceLimits, DmaMapper};
use dma::{DmaDirection, PhysAddr};
use iommu_vtd::{Iommu, UnmapPolicy};

/// Shell commands this module adds.
pub static COMMANDS: &[crate::registry::commands::Command] = &[crate::registry::commands::Command {
    name: "bench",
    usage: "bench iommu",
    about: "map+unmap cost: Direct vs IOMMU strict vs deferred, with 10/1000/100000 live",
    run: bench,
}];

fn bench(args: &[&str]) {
    match args {
        ["iommu"] => iommu(),
        _ => println!("usage: bench iommu"),
    }
}

/// Median TSC ticks of `op` over `rounds` runs (after a warm-up run).
fn median_ticks(rounds: usize, mut op: impl FnMut()) -> u64 {
    op();
    let mut samples: Vec<u64> = (0..rounds)
        .map(|_| {
            let t = crate::arch::time::tsc();
            op();
            crate::arch::time::tsc() - t
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn iommu() {
    let Some(state) = crate::platform::iommu::state() else {
        println!("bench: no IOMMU running (boot with VT-d)");
        return;
    };
    let Some(unit) = state.units.first() else { return };
    let memory = crate::services::dma_service::memory();
    let limits = DeviceLimits { mask: u64::MAX >> 16, max_segment_size: usize::MAX, segment_boundary: u64::MAX };
    let direct: Arc<dyn DmaMapper> = Arc::new(dma::mapper::Direct::new(memory.clone()));
    let mut mappers: Vec<(&str, Arc<dyn DmaMapper>)> = Vec::new();
    mappers.push(("direct", direct));
    for (name, policy) in
        [("iommu-strict", UnmapPolicy::Strict), ("iommu-deferred", UnmapPolicy::Deferred { batch: 256 })]
    {
        match unit.create_domain(policy) {
            Ok(domain) => mappers.push((name, Arc::new(Iommu::new(domain, memory.clone(), false, policy)))),
            Err(e) => println!("bench: no domain: {e}"),
        }
    }
    // One 2 MiB-aligned buffer serves every size: mapping reads no data, so it can be shared.
    let Some(buffer) =
        crate::mm::memory::allocate_frames(dma::FrameRequest { count: 512, max_addr: u64::MAX, align: 2 << 20 })
    else {
        println!("bench: no 2 MiB buffer");
        return;
    };
    println!("bench iommu: median cycles per map+unmap pair (TSC, TCG), ratio to direct");
    println!("{:<16} {:>8} {:>8} {:>12} {:>8}", "mapper", "size", "live", "cycles", "ratio");
    for live in [10usize, 1000, 100_000] {
        for size in [4096usize, 64 << 10, 2 << 20] {
            let mut base = 0u64;
            for (name, mapper) in &mappers {
                // `live` other mappings stay in place while we measure.
                let held: Vec<_> = (0..live)
                    .filter_map(|_| mapper.map(&limits, PhysAddr(buffer.0), 4096, DmaDirection::ToDevice).ok())
                    .collect();
                let ticks = median_ticks(31, || {
                    if let Ok(m) = mapper.map(&limits, PhysAddr(buffer.0), size, DmaDirection::FromDevice) {
                        // SAFETY: mapped just above, by this mapper, not used by any device.
                        unsafe { mapper.unmap(&m, DmaDirection::FromDevice) };
                    }
                });
                for m in &held {
                    // SAFETY: as above.
                    unsafe { mapper.unmap(m, DmaDirection::ToDevice) };
                }
                if *name == "direct" {
                    base = ticks.max(1);
                }
                println!("{name:<16} {size:>8} {live:>8} {ticks:>12} {:>7.1}x", ticks as f64 / base as f64);
            }
        }
    }
    let _ = crate::mm::memory::free_frames(buffer, 512);
    println!("bench iommu: done");
}
