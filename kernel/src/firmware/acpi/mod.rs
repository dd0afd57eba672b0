//! ACPI: what the firmware tells us about the machine.
//!
//! Three things matter to this kernel:
//! * **MCFG** — where PCI Express configuration space is memory-mapped (ECAM), per segment and
//!   bus range (PCI Firmware Spec 3.2 §4.1.2);
//! * **FADT** — the PM1a control port, for powering off (ACPI 6.5 §5.2.9);
//! * **DMAR** — the Intel VT-d units and their device scopes (VT-d spec §8). The `acpi` crate finds
//!   it but does not parse it, so we keep a copy of its bytes for the IOMMU code.
//!
//! Every table is first checked by [`tables::AcpiInventory::walk`]; only then does the `acpi`
//! crate parse MCFG and FADT. Malformed tables are logged and skipped, and the boot goes on
//! (without MCFG, PCI falls back to port I/O; without DMAR, DMA uses the Direct mapper).

pub mod tables;

#[cfg(test)]
mod fixture_tests;

use alloc::vec::Vec;
use core::ptr::NonNull;
use spin::Once;
use tables::{AcpiInventory, PhysBytes};

/// One ECAM window from MCFG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamWindow {
    /// Physical base address of bus `bus_start`'s configuration space.
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub bus_start: u8,
    /// Last bus decoded.
    pub bus_end: u8,
}

/// What ACPI told us.
#[derive(Debug, Default)]
pub struct AcpiInfo {
    /// Every table and every problem found.
    pub inventory: AcpiInventory,
    /// ECAM windows (empty without a usable MCFG).
    pub ecam: Vec<EcamWindow>,
    /// FADT's PM1a control block, when it is an I/O port.
    pub pm1a_control_port: Option<u16>,
    /// FADT's power-management timer (3.579545 MHz, 24 or 32 bits), when it is an I/O port.
    pub pm_timer_port: Option<u16>,
    /// A copy of the DMAR table, header included.
    pub dmar: Option<Vec<u8>>,
    /// Interrupt controllers from the MADT, when it could be parsed.
    pub apic: Option<ApicInfo>,
}

/// The interrupt controllers the MADT describes (ACPI 6.5 §5.2.12).
#[derive(Clone, Debug, Default)]
pub struct ApicInfo {
    /// Physical address of the local APIC registers.
    pub local_apic: u64,
    /// I/O APICs: (id, physical address, first GSI).
    pub io_apics: Vec<(u8, u64, u32)>,
    /// ISA IRQ overrides: (ISA IRQ, GSI, active low, level triggered).
    pub overrides: Vec<(u8, u32, bool, bool)>,
    /// The machine also has 8259 PICs, which must be masked.
    pub legacy_pics: bool,
}

static INFO: Once<AcpiInfo> = Once::new();
static DIRECT_MAP: Once<DirectMap> = Once::new();

/// The bounded direct-map reader ACPI was walked with.
pub fn direct_map() -> Option<DirectMap> {
    DIRECT_MAP.get().copied()
}

/// The ACPI facts, or empty ones before [`init`].
pub fn info() -> &'static AcpiInfo {
    INFO.call_once(AcpiInfo::default)
}

/// Physical memory through the bootloader's direct map, bounded by what it maps.
#[derive(Clone, Copy)]
pub struct DirectMap {
    /// Virtual address of physical address 0.
    pub offset: u64,
    /// End (exclusive) of the physical range the direct map covers.
    pub limit: u64,
}

impl PhysBytes for DirectMap {
    fn read(&self, pa: u64, len: usize) -> Option<&[u8]> {
        let end = pa.checked_add(len as u64)?;
        if end > self.limit {
            return None;
        }
        // SAFETY: [pa, end) lies inside the direct map, which maps all of it readable for the
        // kernel's whole life; firmware tables are never written while we hold the slice.
        Some(unsafe { core::slice::from_raw_parts((self.offset + pa) as *const u8, len) })
    }
}

/// The `acpi` crate's window onto physical memory: the direct map again.
#[derive(Clone, Copy)]
struct DirectMapHandler(DirectMap);

impl acpi::AcpiHandler for DirectMapHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> acpi::PhysicalMapping<Self, T> {
        let virt = (self.0.offset + physical_address as u64) as *mut T;
        // SAFETY: the inventory walk checked that every table the crate will follow lies inside
        // the direct map (we only hand the crate a root table whose pointers all did), and the
        // direct map needs no set-up or tear-down.
        unsafe { acpi::PhysicalMapping::new(physical_address, NonNull::new_unchecked(virt), size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &acpi::PhysicalMapping<Self, T>) {}
}

/// Walks, checks and parses the tables. Logs every problem; never fails.
pub fn init(rsdp: Option<u64>, direct_map: DirectMap) -> &'static AcpiInfo {
    DIRECT_MAP.call_once(|| direct_map);
    let inventory = AcpiInventory::walk(&direct_map, rsdp);
    for problem in &inventory.problems {
        log::error!("ACPI: {problem}");
    }
    for t in &inventory.tables {
        log::debug!(
            "ACPI: {} at {:#x}, {} bytes, rev {}{}",
            t.name(),
            t.address,
            t.length,
            t.revision,
            if t.valid { "" } else { " (INVALID)" }
        );
    }
    let mut info = AcpiInfo { dmar: inventory.copy_table(&direct_map, b"DMAR"), ..AcpiInfo::default() };

    if inventory.root_is_sound() {
        if let Some(rsdp) = rsdp {
            // SAFETY: the walk validated the RSDP at this address and everything it points to.
            match unsafe { acpi::AcpiTables::from_rsdp(DirectMapHandler(direct_map), rsdp as usize) } {
                Ok(tables) => {
                    if inventory.find(b"MCFG").is_some() {
                        match acpi::mcfg::PciConfigRegions::new(&tables) {
                            Ok(regions) => {
                                info.ecam = regions
                                    .iter()
                                    .map(|r| EcamWindow {
                                        base: r.physical_address as u64,
                                        segment: r.segment_group,
                                        bus_start: *r.bus_range.start(),
                                        bus_end: *r.bus_range.end(),
                                    })
                                    .collect()
                            }
                            Err(e) => log::error!("ACPI: MCFG unusable: {e:?}"),
                        }
                    }
                    if inventory.find(b"APIC").is_some() {
                        match tables.platform_info() {
                            Ok(platform) => {
                                if let acpi::InterruptModel::Apic(apic) = platform.interrupt_model {
                                    use acpi::platform::interrupt::{Polarity, TriggerMode};
                                    info.apic = Some(ApicInfo {
                                        local_apic: apic.local_apic_address,
                                        io_apics: apic
                                            .io_apics
                                            .iter()
                                            .map(|i| (i.id, u64::from(i.address), i.global_system_interrupt_base))
                                            .collect(),
                                        overrides: apic
                                            .interrupt_source_overrides
                                            .iter()
                                            .map(|o| {
                                                (
                                                    o.isa_source,
                                                    o.global_system_interrupt,
                                                    o.polarity == Polarity::ActiveLow,
                                                    o.trigger_mode == TriggerMode::Level,
                                                )
                                            })
                                            .collect(),
                                        legacy_pics: apic.also_has_legacy_pics,
                                    });
                                }
                            }
                            Err(e) => log::error!("ACPI: MADT unusable: {e:?}; no interrupts, drivers will poll"),
                        }
                    }
                    if inventory.find(b"FACP").is_some() {
                        if let Ok(Some(timer)) =
                            tables.find_table::<acpi::fadt::Fadt>().and_then(|f| f.pm_timer_block())
                            && timer.address_space == acpi::address::AddressSpace::SystemIo
                        {
                            info.pm_timer_port = u16::try_from(timer.address).ok();
                        }
                        match tables.find_table::<acpi::fadt::Fadt>().and_then(|f| f.pm1a_control_block()) {
                            Ok(block) if block.address_space == acpi::address::AddressSpace::SystemIo => {
                                info.pm1a_control_port = u16::try_from(block.address).ok();
                            }
                            Ok(block) => log::warn!("ACPI: PM1a control block not in I/O space: {block:?}"),
                            Err(e) => log::error!("ACPI: FADT unusable: {e:?}"),
                        }
                    }
                }
                Err(e) => log::error!("ACPI: tables rejected by the acpi crate: {e:?}"),
            }
        }
    } else if rsdp.is_some() {
        log::error!("ACPI: root table unsound; using no ACPI tables (PCI via port I/O, no IOMMU)");
    }
    if info.ecam.is_empty() {
        log::warn!("ACPI: no usable MCFG; PCI configuration space through port I/O (first 256 bytes only)");
    }
    for w in &info.ecam {
        log::info!("ACPI: ECAM segment {} buses {:#04x}-{:#04x} at {:#x}", w.segment, w.bus_start, w.bus_end, w.base);
    }
    log::info!(
        "ACPI: {} tables ({} valid), DMAR {}",
        inventory.tables.len(),
        inventory.tables.iter().filter(|t| t.valid).count(),
        if info.dmar.is_some() { "present" } else { "absent" }
    );
    info.inventory = inventory;
    INFO.call_once(|| info)
}
