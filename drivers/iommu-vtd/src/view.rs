//! The `iommu:units`, `iommu:faults` and `iommu:irte` text views.
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
        let _ = writeln!(
            out,
            "  interrupt remapping: {}",
            match u.irte_table() {
                Some((rows, _)) => alloc::format!("on, {} entries in use, compatibility format blocked", rows.len()),
                None if i.ecap.ir() => String::from("off"),
                None => String::from("off (not supported: ECAP.IR clear)"),
            }
        );
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
/// (after reading any pending ones from the hardware), then the invalidation queue errors
/// (FSTS.IQE) the unit recovered from, the last 8.
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
        for q in u.queue_errors() {
            let _ = writeln!(out, "  {q}");
        }
    }
    out
}

/// Renders `iommu:irte`: per unit, every interrupt remapping table entry in use, read back from
/// the table the unit reads: index, present, vector, destination APIC id, trigger and delivery
/// mode, source-id validation (SVT/SQ/SID) and the device it was set up for.
///
/// # Example
/// ```
/// # use std::sync::Arc;
/// # use dma::{sim::SimMemory, PhysMemory};
/// use iommu_vtd::interrupt_remap::Irte;
/// use iommu_vtd::sim::{SimConfig, SimUnit};
/// use iommu_vtd::{SourceId, Unit, UnitConfig, view};
/// let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
/// let sim = SimUnit::new(phys.clone(), SimConfig::default());
/// let units = [Unit::bring_up("dmar0", sim.clone(), phys.clone(), UnitConfig::default()).unwrap()];
/// assert!(view::render_irte(&units).contains("dmar0: interrupt remapping off"));
/// units[0].enable_interrupt_remapping().unwrap();
/// units[0].allocate_irte(Irte::remapped(0x41, 0, false, SourceId::new(0, 0x1f, 2)), "00:1f.2 ahci").unwrap();
/// let text = view::render_irte(&units);
/// assert!(text.contains("   0  P  0x41  apic 0  edge  fixed  SVT=01 SQ=00 SID=00:1f.2  00:1f.2 ahci"), "{text}");
/// ```
pub fn render_irte(units: &[Arc<Unit>]) -> String {
    let mut out = String::new();
    if units.is_empty() {
        out.push_str("no VT-d units (no DMAR table, or VT-d disabled)\n");
    }
    for u in units {
        let Some((rows, iec)) = u.irte_table() else {
            let _ = writeln!(
                out,
                "{}: interrupt remapping off{}",
                u.name(),
                if u.ecap().ir() { "" } else { " (ECAP.IR clear: the unit cannot remap interrupts)" }
            );
            continue;
        };
        let _ = writeln!(
            out,
            "{}: interrupt remapping on, table at {:#x}, {} of {} entries in use, {iec} IEC invalidations",
            u.name(),
            u.interrupt_table().map_or(0, |t| t.0),
            rows.len(),
            crate::interrupt_remap::TABLE_ENTRIES
        );
        out.push_str("  idx  P  vec   dest    trig  mode   source check  device\n");
        for r in &rows {
            let e = r.entry;
            let _ = writeln!(
                out,
                "  {:>3}  {}  {:#04x}  apic {}  {}  {}  {}  {}",
                r.index,
                if e.present { "P" } else { "-" },
                e.vector,
                e.destination,
                if e.level { "level" } else { "edge" },
                crate::interrupt_remap::delivery_mode_name(e.delivery_mode),
                e.validation,
                r.owner
            );
        }
    }
    out
}
