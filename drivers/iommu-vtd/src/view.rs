//! The `iommu:units` and `iommu:faults` text views.
//!
//! Views are plain text a shell can `cat` and a test can grep: one block per unit, one line
//! per fact, numbers in the units the spec uses.
//!
//! # Example
//! What `cat iommu:units` and `cat iommu:faults` show for a simulated unit with one attached
//! NIC, after the NIC wrote to an IOVA nobody mapped.
//! ```
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, PhysMemory};
//! use iommu_vtd::sim::{SimConfig, SimUnit};
//! use iommu_vtd::{SourceId, Unit, UnitConfig, UnmapPolicy, view};
//! let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
//! let sim = SimUnit::new(phys.clone(), SimConfig::default());
//! let units = [Unit::bring_up("dmar0", sim.clone(), phys.clone(), UnitConfig::default()).unwrap()];
//! let domain = units[0].create_domain(UnmapPolicy::Strict).unwrap();
//! domain.attach(SourceId::new(0, 2, 0)).unwrap();
//!
//! let text = view::render_units(&units);
//! assert!(text.starts_with("dmar0: VT-d 1.0, translation on, queued invalidation"));
//! assert!(text.contains(&format!("devices: 00:02.0->{}", domain.id())));
//!
//! assert!(sim.dma_write(SourceId::new(0, 2, 0), 0x7000, b"?").is_err());
//! let faults = view::render_faults(&units);
//! assert!(faults.contains("dmar0: 1 faults"));
//! assert!(faults.contains("DMA write fault from 00:02.0 at IOVA 0x7000"));
//! ```

use alloc::string::String;
use alloc::sync::Arc;
use core::fmt::Write as _;

use super::unit::{Domain, Unit};

/// Renders `iommu:units`: per unit, the version, decoded CAP/ECAP, table depth, invalidation
/// interface, caching mode, whether translation is on, domains and attached devices, and
/// invalidation counters.
pub fn render_units(units: &[Arc<Unit>]) -> String {
    let mut out = String::new();
    if units.is_empty() {
        out.push_str("no VT-d units (no DMAR table, or VT-d disabled)\n");
    }
    for u in units {
        let i = u.info();
        let _ = writeln!(
            out,
            "{}: VT-d {}, translation {}, {} invalidation{}",
            i.name,
            i.version,
            if i.translation { "on" } else { "off" },
            if i.queued { "queued" } else { "register" },
            if i.cap.caching_mode() { ", caching mode" } else { "" }
        );
        let _ = writeln!(out, "  agaw: {}-level tables, {}-bit IOVAs", i.levels, i.width);
        let _ = writeln!(out, "  cap:  {:#018x} {}", i.cap.0, i.cap);
        let _ = writeln!(out, "  ecap: {:#018x} {}", i.ecap.0, i.ecap);
        let _ = write!(out, "  domains: {}, devices:", i.domains);
        if i.attached.is_empty() {
            out.push_str(" none");
        }
        for (s, d) in &i.attached {
            let _ = write!(out, " {s}->{d}");
        }
        out.push('\n');
        let v = i.invalidations;
        let _ = writeln!(
            out,
            "  invalidations: context global {} domain {} device {}; iotlb global {} domain {} page {}; waits {}; wbf {}",
            v.context_global,
            v.context_domain,
            v.context_device,
            v.iotlb_global,
            v.iotlb_domain,
            v.iotlb_pages,
            v.waits,
            v.write_buffer_flushes
        );
        let _ = writeln!(out, "  faults: {} recorded, {} overflows", i.faults_total, i.fault_overflows);
    }
    out
}

/// Renders the domains part of `iommu:units`: per domain, its devices, maps and unmaps, the
/// superpages (2 MiB / 1 GiB second-level leaves) in use and the IOTLB invalidations it asked
/// for. `names` labels each domain (the kernel passes the device's PCI address and driver).
pub fn render_domains(domains: &[(String, Arc<Domain>)]) -> String {
    let mut out = String::new();
    for (name, d) in domains {
        let s = d.stats();
        let _ = writeln!(
            out,
            "  domain {} ({name}): maps {} unmaps {}, superpages in use {} (2M written {}, 1G written {}), \
             invalidations {}",
            d.id(),
            s.maps,
            s.unmaps,
            s.superpages_live,
            s.pages_2m,
            s.pages_1g,
            s.invalidations
        );
    }
    out
}

/// Renders `iommu:faults`: per unit, counts per source device and the recent fault records
/// (after reading any pending ones from the hardware).
pub fn render_faults(units: &[Arc<Unit>]) -> String {
    let mut out = String::new();
    for u in units {
        u.poll_faults();
        let (recent, per_source, overflows) = u.fault_history();
        let total: u64 = per_source.iter().map(|(_, n)| n).sum();
        let _ = writeln!(out, "{}: {total} faults, {overflows} overflows", u.name());
        for (s, n) in &per_source {
            let _ = writeln!(out, "  {s}: {n}");
        }
        for r in &recent {
            let _ = writeln!(out, "  {r}");
        }
    }
    out
}
