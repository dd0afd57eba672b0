//! Interrupt remapping on the simulated unit: enabling, entries, and every way a message is
//! blocked and recorded (VT-d §5.1.4, fault reasons 21h, 22h, 25h, 26h).

use std::sync::Arc;

use dma::PhysMemory;
use dma::sim::SimMemory;
use iommu_vtd::interrupt_remap::{Irte, msi_message};
use iommu_vtd::sim::{SimConfig, SimUnit};
use iommu_vtd::{FaultKind, FaultReason, SourceId, Unit, UnitConfig, view};

const DISK: SourceId = SourceId::new(0, 0x1f, 2);
const PROBE: SourceId = SourceId::new(0, 4, 0);

fn unit() -> (Arc<SimUnit>, Arc<Unit>) {
    let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
    let sim = SimUnit::new(phys.clone(), SimConfig::default());
    let unit = Unit::bring_up("dmar0", sim.clone(), phys, UnitConfig::default()).unwrap();
    (sim, unit)
}

#[test]
fn enabling_sets_the_table_invalidates_and_blocks_compatibility_format() {
    let (sim, unit) = unit();
    // Before: a forged compatibility-format message goes straight to the CPU.
    assert_eq!(sim.interrupt(PROBE, 0xFEE0_0000, 0x41), Ok((0x41, 0)));
    unit.enable_interrupt_remapping().unwrap();
    assert!(sim.interrupt_remapping_enabled() && unit.interrupt_remapping());
    assert_eq!(sim.stats().iec_invalidations, 1, "a global IEC invalidation before IRE");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    // After: blocked, recorded as 25h.
    let f = sim.interrupt(PROBE, 0xFEE0_0000, 0x41).unwrap_err();
    assert_eq!((f.reason, f.source), (FaultReason::IR_COMPATIBILITY_BLOCKED, PROBE));
    let seen = unit.poll_faults();
    assert_eq!(seen.len(), 1);
    assert!(matches!(seen[0].kind(), FaultKind::Interrupt { .. }));
    // Enabling twice is harmless.
    unit.enable_interrupt_remapping().unwrap();
    assert_eq!(sim.stats().iec_invalidations, 1);
}

#[test]
fn an_entry_delivers_only_for_its_own_device() {
    let (sim, unit) = unit();
    unit.enable_interrupt_remapping().unwrap();
    let index = unit.allocate_irte(Irte::remapped(0x52, 0, false, DISK), "00:1f.2 ahci").unwrap();
    assert_eq!(sim.stats().iec_invalidations, 2, "index-selective IEC after the write");
    let (address, data) = msi_message(index);
    assert_eq!(sim.interrupt(DISK, address, data), Ok((0x52, 0)));

    // The probe uses the disk's handle: source-id validation fails (26h), nothing delivered.
    let f = sim.interrupt(PROBE, address, data).unwrap_err();
    assert_eq!(f.reason, FaultReason::IR_SOURCE_ID);
    let rec = unit.poll_faults().pop().unwrap();
    assert_eq!((rec.source, rec.kind()), (PROBE, FaultKind::Interrupt { index }));
    let faults = view::render_faults(std::slice::from_ref(&unit));
    assert!(faults.contains(&format!("interrupt remapping fault from 00:04.0, IRTE index {index}: reason 0x26")));

    // A handle nobody was given (22h), one beyond the table (21h).
    let (a, d) = msi_message(index + 1);
    assert_eq!(sim.interrupt(DISK, a, d).unwrap_err().reason, FaultReason::IR_ENTRY_NOT_PRESENT);
    let (a, d) = msi_message(300);
    let f = sim.interrupt(DISK, a, d).unwrap_err();
    assert_eq!(f.reason, FaultReason::IR_INDEX_BEYOND_TABLE);
    assert_eq!(f.kind(), FaultKind::Interrupt { index: 300 });

    // Freed: the entry no longer delivers, and its index is handed out again.
    unit.free_irte(index).unwrap();
    assert_eq!(sim.interrupt(DISK, address, data).unwrap_err().reason, FaultReason::IR_ENTRY_NOT_PRESENT);
    assert!(unit.free_irte(index).is_err(), "double free refused");
    assert_eq!(unit.allocate_irte(Irte::remapped(0x53, 0, true, DISK), "again").unwrap(), index);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

#[test]
fn register_only_units_and_units_without_ir_keep_it_off() {
    let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
    let sim = SimUnit::new(phys.clone(), SimConfig::register_only());
    let unit = Unit::bring_up("dmar0", sim.clone(), phys, UnitConfig::default()).unwrap();
    assert_eq!(unit.enable_interrupt_remapping(), Err(iommu_vtd::unit::InterruptRemapError::NeedsQueuedInvalidation));
    assert!(!sim.interrupt_remapping_enabled());
    assert!(unit.allocate_irte(Irte::remapped(1, 0, false, DISK), "x").is_err());
}
