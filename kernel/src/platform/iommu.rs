//! Intel VT-d in the kernel: find the units the DMAR table describes, give every PCI function a
//! domain of its own, and make the IOMMU mapper the DMA service's default.
//!
//! All the VT-d logic lives in the `iommu-vtd` crate; this module supplies the machine (register mappings,
//! PCI topology, the fault interrupt) and the policy:
//! * **one domain per device**, except devices behind a PCIe-to-PCI bridge: their requests carry
//!   the bridge's requester id, so the unit cannot tell them apart and they share one domain;
//! * **RMRR** regions stay identity-mapped for the devices that firmware lists;
//! * **devices without a domain are blocked** (their context entry is not present), never passed
//!   through;
//! * **strict unmap** (invalidate before `unmap` returns) and **sub-page isolation** on;
//! * a malformed DMAR table, or a unit that fails to come up, leaves the Direct mapper in charge
//!   with a log line saying why;
//! * **fail-safe**: a unit that cannot turn translation on gives its devices back to the Direct
//!   mapper, each named in the log, so no device ever programs an IOVA that nothing translates;
//! * a unit that names no device and lacks INCLUDE_PCI_ALL is skipped;
//! * **interrupt remapping** on every unit that offers it (ECAP.IR; QEMU `intremap=on`): every
//!   MSI, MSI-X and I/O APIC entry the kernel programs afterwards goes through an IRTE that
//!   only its own requester id may use ([`remap_msi`], [`remap_gsi`]), and compatibility-format
//!   messages are blocked. See "Interrupt remapping" in `docs/guide/05-the-iommu.md`.

use crate::mm::memory::paging;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use dma::PhysMemory;
use dma::mapper::DmaMapper;
use iommu_vtd::Iommu;
use iommu_vtd::regs::MmioRegisters;
use iommu_vtd::{Domain, SourceId, Unit, UnitConfig, UnmapPolicy};
use pci::{Bdf, PciAddress, PciFunction};
use spin::{Mutex, Once};

/// The running IOMMU: units and each function's mapper.
pub struct IommuState {
    /// Every unit brought up.
    pub units: Vec<Arc<Unit>>,
    /// The mapper of each PCI function (shared by functions in one domain).
    mappers: BTreeMap<PciAddress, Arc<Iommu>>,
    /// Each I/O APIC (by its MADT id) named in a DRHD's device scope: the requester id its
    /// interrupt messages carry, and the unit that remaps them (§8.3.1, scope type 3).
    io_apics: Vec<(u8, SourceId, Arc<Unit>)>,
}

static STATE: Once<Option<IommuState>> = Once::new();

/// Fault interrupts seen (the handler only counts; faults are read outside interrupt context).
static FAULT_INTERRUPTS: AtomicU64 = AtomicU64::new(0);

/// Unmap policy for new domains.
pub const POLICY: UnmapPolicy = UnmapPolicy::Strict;

/// The IOMMU, if one is running.
pub fn state() -> Option<&'static IommuState> {
    STATE.get().and_then(Option::as_ref)
}

/// The IOMMU mapper for `function`, if translation is on and it has a domain.
pub fn mapper_for(function: &PciFunction) -> Option<Arc<dyn DmaMapper>> {
    let mapper = state()?.mappers.get(&function.address)?.clone();
    Some(mapper)
}

/// Turns translation on, unless the test runner asked the kernel to pretend the unit refuses
/// (`-fw_cfg name=opt/dma-kernel/inject,string=iommu-enable-fails`, test builds only): the
/// fail-safe path above then runs on a machine whose unit would have worked.
fn enable_translation(unit: &Unit) -> Result<(), alloc::string::String> {
    #[cfg(feature = "test-support")]
    if crate::firmware::fw_cfg::fault_injected("iommu-enable-fails") {
        return Err("translation left off by the injected fault `iommu-enable-fails`".into());
    }
    unit.enable_translation().map_err(|e| alloc::format!("{e}"))
}

/// The domain `function` is attached to.
pub fn domain_of(function: &PciFunction) -> Option<Arc<Domain>> {
    Some(state()?.mappers.get(&function.address)?.domain().clone())
}

/// The requester id a device's DMA carries: its own BDF, or (secondary bus, 0, 0) of the
/// PCIe-to-PCI bridge it sits behind (PCIe-to-PCI Bridge spec 1.0 §2.3: the bridge takes
/// ownership of conventional PCI transactions it forwards).
pub fn requester_id(function: &PciFunction) -> SourceId {
    let own = SourceId::new(function.address.bus(), function.address.device(), function.address.function());
    let Some(bridge) = function.pcie_to_pci_bridge() else { return own };
    crate::platform::pci::functions()
        .iter()
        .find(|f| f.address == bridge)
        .and_then(|b| b.bridge_buses)
        .map(|buses| SourceId::new(buses.secondary, 0, 0))
        .unwrap_or(own)
}

/// Number of fault-event interrupts taken.
pub fn fault_interrupts() -> u64 {
    FAULT_INTERRUPTS.load(Ordering::Relaxed)
}

fn fault_interrupt(_context: usize) {
    FAULT_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
}

/// Brings the IOMMU up from the DMAR table, if there is one. Call after PCI enumeration and
/// before any driver asks for a DMA handle.
pub fn init(memory: Arc<dyn PhysMemory>) {
    STATE.call_once(|| bring_up(memory));
    crate::registry::scheme::register("iommu:units", "VT-d units: capabilities and state", || match state() {
        Some(s) => {
            let mut out = iommu_vtd::view::render_units(&s.units);
            // One line per domain (devices behind one bridge share theirs), in id order.
            let mut domains: alloc::vec::Vec<(String, Arc<Domain>)> = alloc::vec::Vec::new();
            for (address, mapper) in &s.mappers {
                let d = mapper.domain();
                match domains.iter_mut().find(|(_, e)| e.id() == d.id()) {
                    Some((name, _)) => *name = alloc::format!("{name} {}", pci::Bdf(*address)),
                    None => domains.push((alloc::format!("{}", pci::Bdf(*address)), d.clone())),
                }
            }
            domains.sort_by_key(|(_, d)| d.id());
            out.push_str(&iommu_vtd::view::render_domains(&domains));
            out
        }
        None => String::from(
            "no VT-d unit in use (no DMAR table, it was rejected, or no unit could translate; DMA is Direct)\n",
        ),
    });
    crate::registry::scheme::register("iommu:faults", "VT-d fault records, per device", || match state() {
        Some(s) => iommu_vtd::view::render_faults(&s.units),
        None => String::from("no VT-d unit in use\n"),
    });
    crate::registry::scheme::register("iommu:irte", "VT-d interrupt remapping table entries", || match state() {
        Some(s) => iommu_vtd::view::render_irte(&s.units),
        None => String::from("no VT-d unit in use (interrupts are not remapped)\n"),
    });
}

fn bring_up(memory: Arc<dyn PhysMemory>) -> Option<IommuState> {
    let bytes = crate::firmware::acpi::info().dmar.as_ref()?;
    let dmar = match iommu_vtd::dmar::Dmar::parse(bytes) {
        Ok(d) => d,
        Err(e) => {
            log::error!("iommu: DMAR table rejected: {e}; DMA stays Direct (no isolation)");
            return None;
        }
    };
    let functions = crate::platform::pci::functions();
    let secondary_bus = |bus: u8, dev: u8, func: u8| {
        functions
            .iter()
            .find(|f| f.address.bus() == bus && f.address.device() == dev && f.address.function() == func)
            .and_then(|f| f.bridge_buses.map(|b| b.secondary))
    };
    let bus_range = |bus: u8, dev: u8, func: u8| {
        functions
            .iter()
            .find(|f| f.address.bus() == bus && f.address.device() == dev && f.address.function() == func)
            .and_then(|f| f.bridge_buses.map(|b| (b.secondary, b.subordinate)))
    };

    // Units, with translation still off.
    let mut units: Vec<(u64, Arc<Unit>)> = Vec::new();
    for (i, drhd) in dmar.units.iter().enumerate() {
        if !drhd.translates_anything() {
            log::warn!(
                "iommu: unit at {:#x} names no device and lacks INCLUDE_PCI_ALL: it translates nothing; skipped",
                drhd.register_base
            );
            continue;
        }
        let size = drhd.register_size();
        let base = match paging::map_mmio(drhd.register_base, size as u64) {
            Ok(base) => base,
            Err(e) => {
                log::error!("iommu: cannot map unit registers at {:#x}: {e}", drhd.register_base);
                continue;
            }
        };
        // SAFETY: `base` maps the unit's register set uncached for `size` bytes, for the kernel's
        // lifetime, and only this unit's driver touches it.
        let regs = unsafe { MmioRegisters::new(base, size) };
        let config = UnitConfig {
            host_address_width: dmar.host_address_width,
            enable_translation: false,
            ..UnitConfig::default()
        };
        match Unit::bring_up(&alloc::format!("dmar{i}"), regs, memory.clone(), config) {
            Ok(unit) => units.push((drhd.register_base, unit)),
            Err(e) => log::error!("iommu: unit at {:#x} failed to come up: {e}", drhd.register_base),
        }
    }
    if units.is_empty() {
        log::error!("iommu: no usable VT-d unit; DMA stays Direct");
        return None;
    }

    // One domain per requester id: a function's own, or its PCIe-to-PCI bridge's.
    let mut domains: BTreeMap<(u64, PciAddress), Arc<Iommu>> = BTreeMap::new();
    let mut mappers = BTreeMap::new();
    for f in functions.iter().filter(|f| !f.is_bridge()) {
        let source = SourceId::new(f.address.bus(), f.address.device(), f.address.function());
        let Some(drhd) = dmar.unit_for_in_hierarchy(f.address.segment(), source, secondary_bus, bus_range) else {
            log::warn!("iommu: {} is in no unit's scope; it is not translated by any IOMMU", Bdf(f.address));
            continue;
        };
        let Some((_, unit)) = units.iter().find(|(base, _)| *base == drhd.register_base) else { continue };
        let bridge = f.pcie_to_pci_bridge();
        let key = (drhd.register_base, bridge.unwrap_or(f.address));
        let mapper = match domains.get(&key) {
            Some(m) => m.clone(),
            None => {
                let domain = match unit.create_domain(POLICY) {
                    Ok(d) => d,
                    Err(e) => {
                        log::error!("iommu: no domain for {}: {e}; the device stays blocked", Bdf(f.address));
                        continue;
                    }
                };
                let mapper = Arc::new(Iommu::new(domain, memory.clone(), true, POLICY));
                domains.insert(key, mapper.clone());
                mapper
            }
        };
        let mut sources = alloc::vec![source];
        if let Some(b) = bridge
            && let Some(alias) = secondary_bus(b.bus(), b.device(), b.function())
        {
            // Conventional PCI requests forwarded by the bridge carry (secondary bus, 0, 0).
            sources.push(SourceId::new(alias, 0, 0));
        }
        for s in sources {
            match mapper.domain().attach(s) {
                Ok(()) | Err(iommu_vtd::DomainError::AlreadyAttached { .. }) => {}
                Err(e) => log::error!("iommu: cannot attach {}: {e}", Bdf(f.address)),
            }
        }
        mappers.insert(f.address, mapper);
    }

    // Firmware-owned DMA regions stay identity-mapped for the devices listed.
    for rmrr in &dmar.rmrrs {
        for scope in &rmrr.scopes {
            let Ok(id) = scope.resolve(secondary_bus) else { continue };
            let Some(f) = functions
                .iter()
                .find(|f| SourceId::new(f.address.bus(), f.address.device(), f.address.function()) == id)
            else {
                continue;
            };
            if let Some(m) = mappers.get(&f.address) {
                let len = rmrr.limit + 1 - rmrr.base;
                match m.domain().map_identity(rmrr.base, len) {
                    Ok(()) => log::info!(
                        "iommu: RMRR {:#x}..={:#x} identity-mapped for {}",
                        rmrr.base,
                        rmrr.limit,
                        Bdf(f.address)
                    ),
                    Err(e) => log::error!("iommu: RMRR {:#x} for {}: {e}", rmrr.base, Bdf(f.address)),
                }
            }
        }
    }

    // Translation on, unit by unit. A unit that cannot enable it translates nothing, so the
    // devices behind it must never be given IOVAs: their DMA would reach physical memory at
    // the IOVA's address. They fall back to the Direct mapper (with its bounce area for 32-bit
    // devices), and the log names each one: no isolation for them, but correct DMA.
    let mut failed: Vec<u64> = Vec::new();
    for (base, unit) in &units {
        if let Ok(vector) = crate::arch::interrupts::allocate_vector(fault_interrupt, 0) {
            let (address, data) = crate::arch::apic::msi_message(vector);
            unit.configure_fault_interrupt(address, u32::from(data));
        }
        match enable_translation(unit) {
            Ok(()) => {}
            Err(e) => {
                log::error!("iommu: {}: cannot enable translation: {e}", unit.name());
                failed.push(*base);
            }
        }
    }
    // A mapper's domain knows its unit (`Domain::unit`): the devices to give back are those whose
    // domain sits on a failed unit.
    let on_failed_unit = |mapper: &Iommu| {
        units.iter().any(|(base, unit)| failed.contains(base) && Arc::ptr_eq(mapper.domain().unit(), unit))
    };
    mappers.retain(|address, mapper| {
        let keep = !on_failed_unit(mapper);
        if !keep {
            log::warn!(
                "iommu: {}: its unit does not translate; the device uses Direct DMA (bounce buffers below 4 GiB), \
                 never IOVAs, and is not isolated",
                Bdf(*address)
            );
        }
        keep
    });
    domains.retain(|_, mapper| !on_failed_unit(mapper));
    units.retain(|(base, _)| !failed.contains(base));
    if units.is_empty() {
        log::error!("iommu: translation could not be enabled on any unit; DMA stays Direct (no isolation)");
        return None;
    }
    // Interrupt remapping, unit by unit, once translation works (a unit that failed above
    // is gone, and its devices' interrupts stay in compatibility format).
    let mut io_apics = Vec::new();
    for (base, unit) in &units {
        match unit.enable_interrupt_remapping() {
            Ok(()) => {}
            Err(iommu_vtd::unit::InterruptRemapError::NotSupported) => {
                log::warn!(
                    "iommu: {}: no interrupt remapping (ECAP.IR clear): a device can raise any vector",
                    unit.name()
                )
            }
            Err(e) => log::error!("iommu: {}: interrupt remapping stays off: {e}", unit.name()),
        }
        let Some(drhd) = dmar.units.iter().find(|d| d.register_base == *base) else { continue };
        for scope in drhd.scopes.iter().filter(|s| s.kind == iommu_vtd::dmar::ScopeKind::IoApic) {
            match scope.resolve(secondary_bus) {
                Ok(sid) => {
                    log::info!("iommu: I/O APIC {} requests as {sid} under {}", scope.enumeration_id, unit.name());
                    io_apics.push((scope.enumeration_id, sid, unit.clone()));
                }
                Err(e) => log::error!("iommu: I/O APIC {} scope: {e}", scope.enumeration_id),
            }
        }
    }
    let units: Vec<Arc<Unit>> = units.into_iter().map(|(_, u)| u).collect();
    log::info!(
        "iommu: {} unit(s), translation on, {} domain(s) for {} device(s); strict unmap, sub-page isolation",
        units.len(),
        domains.len(),
        mappers.len()
    );
    Some(IommuState { units, mappers, io_apics })
}

/// Reads and logs every pending fault record of every unit; returns them.
pub fn poll_faults() -> Vec<iommu_vtd::FaultRecord> {
    state().map(|s| s.units.iter().flat_map(|u| u.poll_faults()).collect()).unwrap_or_default()
}

/// Serialises tests that provoke faults.
pub static FAULT_TEST_LOCK: Mutex<()> = Mutex::new(());

// ----- Interrupt remapping ---------------------------------------------------------------------

/// What an interrupt remapping entry routes: a PCI function's MSI/MSI-X message, or an I/O APIC
/// input (by GSI). A source holds at most one entry; routing it again frees the old one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum IrqSource {
    /// MSI or MSI-X of this function (entry 0).
    Pci(PciAddress),
    /// This global system interrupt's I/O APIC input.
    Gsi(u32),
}

/// The entries in use: (unit, handle) per source.
static HANDLES: Mutex<BTreeMap<IrqSource, (Arc<Unit>, u16)>> = Mutex::new(BTreeMap::new());

/// Allocates an IRTE on `unit` for `source` (replacing the one it had), delivering `vector`
/// to this CPU, fixed, edge or level, raised only by `sid`.
fn allocate(
    source: IrqSource,
    unit: &Arc<Unit>,
    irte: iommu_vtd::interrupt_remap::Irte,
    owner: &str,
) -> Result<u16, &'static str> {
    release(source);
    let handle = unit.allocate_irte(irte, owner).map_err(|e| {
        log::error!("iommu: {}: no interrupt remapping entry for {owner}: {e}", unit.name());
        "no interrupt remapping entry (table full or the unit does not answer)"
    })?;
    HANDLES.lock().insert(source, (unit.clone(), handle));
    Ok(handle)
}

/// Frees the entry `source` holds, if any (after its MSI or I/O APIC input was turned off).
pub fn release(source: IrqSource) {
    let old = HANDLES.lock().remove(&source);
    if let Some((unit, handle)) = old
        && let Err(e) = unit.free_irte(handle)
    {
        log::error!("iommu: {}: cannot free interrupt remapping entry {handle}: {e}", unit.name());
    }
}

/// The interrupt remapping handle `source` holds, if any.
pub fn handle_of(source: IrqSource) -> Option<u16> {
    HANDLES.lock().get(&source).map(|(_, h)| *h)
}

/// The MSI address and data that make `function` deliver `vector` to this CPU through interrupt
/// remapping: a new IRTE with source-id validation on the function's requester id (its own BDF,
/// or the PCIe-to-PCI bridge's alias it sits behind: its requests carry that id, §9.10 and
/// [`requester_id`]), and a remappable-format message naming it (§5.1.5.2). `None` when the
/// function's unit does not remap interrupts: the caller programs a compatibility-format
/// message instead.
pub fn remap_msi(function: &PciFunction, vector: u8) -> Option<Result<(u64, u32), &'static str>> {
    let unit = state()?.mappers.get(&function.address)?.domain().unit().clone();
    if !unit.interrupt_remapping() {
        return None;
    }
    let sid = requester_id(function);
    let irte = iommu_vtd::interrupt_remap::Irte::remapped(vector, crate::arch::apic::local_apic_id(), false, sid);
    let owner = alloc::format!("{} {}", Bdf(function.address), pci::view::class_name(function.class));
    Some(allocate(IrqSource::Pci(function.address), &unit, irte, &owner).map(iommu_vtd::interrupt_remap::msi_message))
}

/// The remappable-format I/O APIC redirection entry (§5.1.5.1) for `gsi` on the I/O APIC with
/// MADT id `io_apic`: a new IRTE delivering `vector` to this CPU, with the trigger mode the input
/// uses, and source-id validation on the I/O APIC's requester id from the DMAR's device scope.
/// `None` when no unit remaps that I/O APIC (the caller programs a compatibility entry).
pub fn remap_gsi(
    gsi: u32,
    io_apic: u8,
    vector: u8,
    level: bool,
    active_low: bool,
) -> Option<Result<u64, &'static str>> {
    let s = state()?;
    let Some((_, sid, unit)) = s.io_apics.iter().find(|(id, _, _)| *id == io_apic) else {
        if s.units.iter().any(|u| u.interrupt_remapping()) {
            log::error!(
                "iommu: I/O APIC {io_apic} is in no unit's DMAR scope; GSI {gsi} stays in compatibility format, \
                 which a remapping unit blocks"
            );
        }
        return None;
    };
    if !unit.interrupt_remapping() {
        return None;
    }
    let irte = iommu_vtd::interrupt_remap::Irte::remapped(vector, crate::arch::apic::local_apic_id(), level, *sid);
    let owner = alloc::format!("I/O APIC {io_apic} GSI {gsi}");
    Some(
        allocate(IrqSource::Gsi(gsi), unit, irte, &owner)
            .map(|h| iommu_vtd::interrupt_remap::ioapic_rte(h, vector, level, active_low, false)),
    )
}
