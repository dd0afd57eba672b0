//! The `iommu:units` and `iommu:faults` text views.
//!
//! Views are plain text a shell can `cat` and a test can grep: one block per unit, one line
//! per fact, numbers in the units the spec uses.

use alloc::string::String;
use alloc::sync::Arc;
use core::fmt::Write as _;

use super::unit::Unit;

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
