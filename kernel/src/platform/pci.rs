//! PCI in the kernel: choose how to reach configuration space, enumerate once, publish views.
//!
//! The logic (bus walk, BAR sizing, capabilities) lives in the `pci` crate; this module gives it
//! hardware: ECAM windows from ACPI MCFG mapped uncached, or the legacy 0xCF8/0xCFC ports when
//! the firmware has no MCFG.
//!
//! It also wires PCI interrupts, once for every driver ([`wire_interrupt`]): the choice between
//! MSI-X, MSI and INTx is made by `pci::interrupt` (host-tested), and programmed here (vector,
//! MSI-X table entry, MSI message, I/O APIC route).

use crate::mm::memory::paging;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use pci::interrupt::{Mechanism, Offers, Polarity, Support, Trigger};
use pci::{CheckedConfigAccess, EcamAccess, EcamRegion, MappedEcamRegion, PciFunction, PortIoAccess};
use spin::Once;

/// How configuration space is reached, chosen once at boot.
pub type ConfigAccess = dyn CheckedConfigAccess + Send + Sync;

static ACCESS: Once<Box<ConfigAccess>> = Once::new();
static FUNCTIONS: Once<Vec<PciFunction>> = Once::new();

/// The configuration access in use. Before [`init`], port I/O.
pub fn access() -> &'static ConfigAccess {
    &**ACCESS.call_once(port_io)
}

fn port_io() -> Box<ConfigAccess> {
    // SAFETY: every PC has configuration mechanism #1 at 0xCF8/0xCFC, and this is the only
    // `PortIoAccess` the kernel creates (ACCESS is initialised once).
    Box::new(unsafe { PortIoAccess::new() })
}

/// Maps the MCFG windows; `None` (with a log line) if any cannot be used.
fn ecam() -> Option<Box<ConfigAccess>> {
    let windows = &crate::firmware::acpi::info().ecam;
    if windows.is_empty() {
        return None;
    }
    let mut mapped = Vec::new();
    for w in windows {
        let region = EcamRegion { phys_base: w.base, segment: w.segment, bus_start: w.bus_start, bus_end: w.bus_end };
        match paging::map_mmio(w.base, region.size() as u64) {
            Ok(virt) => mapped.push(MappedEcamRegion { region, virt_base: virt as usize }),
            Err(e) => {
                log::error!("PCI: cannot map ECAM window at {:#x}: {e}; using port I/O", w.base);
                return None;
            }
        }
    }
    // SAFETY: each window was just mapped uncached at virt_base for region.size() bytes, in the
    // MMIO window, which nothing else uses; mappings are never removed.
    match unsafe { EcamAccess::new(mapped) } {
        Ok(access) => Some(Box::new(access)),
        Err(e) => {
            log::error!("PCI: {e}; using port I/O");
            None
        }
    }
}

/// Chooses the access method and enumerates every bus.
pub fn init() {
    let access = ACCESS.call_once(|| match ecam() {
        Some(ecam) => {
            log::info!("PCI: configuration space through ECAM");
            ecam
        }
        None => {
            log::info!("PCI: configuration space through port I/O (0xCF8/0xCFC)");
            port_io()
        }
    });
    let mut segments: Vec<u16> = crate::firmware::acpi::info().ecam.iter().map(|w| w.segment).collect();
    segments.sort_unstable();
    segments.dedup();
    if segments.is_empty() {
        segments.push(0);
    }
    let found =
        FUNCTIONS.call_once(|| segments.iter().flat_map(|&segment| pci::enumerate(&**access, segment)).collect());
    log::info!("PCI: {} functions", found.len());
    crate::registry::scheme::register("pci:devices", "every PCI function, decoded", || pci::devices_view(functions()));
}

/// Every function found at boot.
pub fn functions() -> &'static [PciFunction] {
    FUNCTIONS.get().map(Vec::as_slice).unwrap_or(&[])
}

/// `lspci` output.
pub fn lspci_text() -> String {
    pci::lspci(functions())
}

/// Why a device's registers could not be reached.
#[derive(Debug)]
pub enum BarError {
    /// The function has no memory BAR in that slot.
    NoMemoryBar {
        /// The BAR's index in the header (0–5).
        slot: u8,
    },
    /// Mapping failed.
    Map(paging::MapError),
}

impl core::fmt::Display for BarError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BarError::NoMemoryBar { slot } => write!(f, "no memory BAR{slot}"),
            BarError::Map(e) => write!(f, "cannot map the BAR: {e}"),
        }
    }
}

/// Maps memory BAR `slot` of `function` uncached, turns on memory decoding and bus mastering,
/// and returns its registers. This is what a driver's probe starts with.
pub fn map_bar(function: &PciFunction, slot: u8) -> Result<device_io::Mmio, BarError> {
    let bar = function.bar(slot).filter(|b| b.is_memory()).ok_or(BarError::NoMemoryBar { slot })?;
    let base = paging::map_mmio(bar.address(), bar.size()).map_err(BarError::Map)?;
    let config = function.config(access());
    config.enable_memory_space();
    config.enable_bus_mastering();
    let base = core::ptr::NonNull::new(base).ok_or(BarError::NoMemoryBar { slot })?;
    // SAFETY: `base` maps the whole BAR uncached, in the MMIO window, for the kernel's lifetime.
    Ok(unsafe { device_io::Mmio::new(base, bar.size() as usize) })
}

// ----- Interrupt wiring: one path for every driver ---------------------------------------------

/// How a PCI function's interrupts reach the CPU, as [`wire_interrupt`] set them up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqMode {
    /// No interrupts: the driver polls.
    Polling {
        /// Why not interrupts.
        reason: &'static str,
    },
    /// MSI-X: table entry 0 makes the device write `vector` to the local APIC.
    MsiX {
        /// CPU vector.
        vector: u8,
    },
    /// Message-signalled: the device writes `vector` to the local APIC.
    Msi {
        /// CPU vector.
        vector: u8,
    },
    /// INTx routed through the I/O APIC input of an ISA IRQ.
    Intx {
        /// ISA IRQ (and, unless the MADT overrides it, I/O APIC input) from the Interrupt Line
        /// register.
        irq: u8,
        /// CPU vector.
        vector: u8,
        /// Trigger mode programmed (the MADT's override for the IRQ, else the default).
        trigger: Trigger,
        /// Polarity programmed (the MADT's override for the IRQ, else the default).
        polarity: Polarity,
    },
}

impl IrqMode {
    /// True when interrupts are delivered.
    pub fn is_interrupt(&self) -> bool {
        !matches!(self, IrqMode::Polling { .. })
    }
}

impl core::fmt::Display for IrqMode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IrqMode::Polling { reason } => write!(f, "polling ({reason})"),
            IrqMode::MsiX { vector } => write!(f, "MSI-X entry 0 vector {vector:#x}"),
            IrqMode::Msi { vector } => write!(f, "MSI vector {vector:#x}"),
            IrqMode::Intx { irq, vector, trigger, polarity } => {
                write!(f, "INTx IRQ {irq} (I/O APIC, {trigger}, {polarity}) vector {vector:#x}")
            }
        }
    }
}

/// What [`wire_interrupt`] did: the mode, and why each better mechanism was passed over, best
/// first (`("MSI", "the function has no MSI capability")`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wired {
    /// The mode in use.
    pub mode: IrqMode,
    /// Mechanisms not used, with the reason.
    pub passed_over: Vec<(&'static str, &'static str)>,
}

impl Wired {
    /// Why `mechanism` ("MSI-X", "MSI", "INTx") is not in use, if it was passed over.
    pub fn why_not(&self, mechanism: &str) -> Option<&'static str> {
        self.passed_over.iter().find(|(m, _)| *m == mechanism).map(|&(_, why)| why)
    }
}

/// What this kernel can program: every mechanism, once the local APIC runs.
fn interrupt_support() -> Support {
    Support { apic: crate::arch::apic::is_ready() }
}

/// Wires `function`'s interrupt to `handler(context)`: MSI-X, MSI or INTx, as
/// [`pci::interrupt::choose`] ranks them for this function and kernel, trying each candidate in
/// turn. One vector is allocated and kept for whichever mechanism works.
///
/// `prove` is called once a mechanism is programmed, with the mode it would be; it returns
/// `Err(reason)` if the interrupt does not arrive (a driver that can raise one on demand tests
/// it there), and the next candidate is tried. The device's own interrupt enables are the
/// driver's business.
///
/// INTx goes through the I/O APIC input of the ISA IRQ the Interrupt Line names, level-triggered
/// and active high unless the MADT overrides it: see "Trigger and polarity of a routed INTx" in
/// [`pci::interrupt`]. On q35 that is QEMU's override for IRQs 5, 9, 10 and 11 (level, active
/// high) either way.
pub fn wire_interrupt(
    function: &PciFunction,
    handler: fn(usize),
    context: usize,
    prove: &mut dyn FnMut(IrqMode) -> Result<(), &'static str>,
) -> Wired {
    let mut passed_over = Vec::new();
    let mut vector = None;
    for (name, candidate) in pci::interrupt::choose(&Offers::of(function), &interrupt_support()) {
        let mechanism = match candidate {
            Ok(m) => m,
            Err(why) => {
                passed_over.push((name, why));
                continue;
            }
        };
        let v = match vector {
            Some(v) => v,
            None => match crate::arch::interrupts::allocate_vector(handler, context) {
                Ok(v) => *vector.insert(v),
                Err(_) => {
                    passed_over.push((name, "no free interrupt vector"));
                    break;
                }
            },
        };
        let tried = match mechanism {
            Mechanism::MsiX => enable_msix(function, v).and_then(|()| {
                let mode = IrqMode::MsiX { vector: v };
                prove(mode).map(|()| mode).inspect_err(|_| disable_msix(function))
            }),
            Mechanism::Msi => enable_msi(function, v).and_then(|()| {
                let mode = IrqMode::Msi { vector: v };
                prove(mode).map(|()| mode).inspect_err(|_| disable_msi(function))
            }),
            Mechanism::Intx(_) => route_intx(function, v)
                .and_then(|mode| prove(mode).map(|()| mode).inspect_err(|_| unroute_intx(function, mode))),
        };
        match tried {
            Ok(mode) => return Wired { mode, passed_over },
            Err(why) => passed_over.push((name, why)),
        }
    }
    if let Some(v) = vector {
        crate::arch::interrupts::free_vector(v);
    }
    let reason = passed_over.last().map_or("no interrupt mechanism", |&(_, why)| why);
    Wired { mode: IrqMode::Polling { reason }, passed_over }
}

/// The mapped MSI-X table of a function, as [`pci::MsixTable`] wants it.
struct MappedTable(device_io::Mmio);

impl pci::MsixTable for MappedTable {
    fn read_u32(&self, offset: u32) -> u32 {
        use device_io::Registers;
        self.0.read32(offset as usize)
    }
    fn write_u32(&self, offset: u32, value: u32) {
        use device_io::Registers;
        self.0.write32(offset as usize, value)
    }
}

/// Programs entry 0 of `function`'s MSI-X table to deliver `vector` to this CPU
/// ([`crate::arch::apic::msi_message`]) and enables MSI-X (see [`pci::capability::MsixCapability::enable`]
/// for the order, PCI Local Bus Spec 3.0 §6.8.2). The table is mapped uncached from the BAR its
/// BIR names (only the table's own pages), and memory decoding and bus mastering are turned on:
/// an MSI-X message is a memory write the function masters. On failure MSI-X is left off.
pub fn enable_msix(function: &PciFunction, vector: u8) -> Result<(), &'static str> {
    let (address, data) = msi_message(function, vector)?;
    enable_msix_message(function, address, data)
        .inspect_err(|_| crate::platform::iommu::release(crate::platform::iommu::IrqSource::Pci(function.address)))
}

/// Programs entry 0 of `function`'s MSI-X table with `address` and `data` as given and enables
/// MSI-X: [`enable_msix`] without choosing the message (tests use it to hand a device a message
/// it should not have).
pub fn enable_msix_message(function: &PciFunction, address: u64, data: u32) -> Result<(), &'static str> {
    let msix = function.msix().ok_or("the function has no MSI-X capability")?;
    if !msix.bars_valid() {
        return Err("the MSI-X capability names a reserved BAR (BIR 6 or 7)");
    }
    let bar =
        function.bar(msix.table_bar).filter(|b| b.is_memory()).ok_or("the MSI-X table's BAR is not a memory BAR")?;
    let bytes = u64::from(msix.table_bytes());
    if u64::from(msix.table_offset) + bytes > bar.size() {
        return Err("the MSI-X table does not fit in its BAR");
    }
    let virt = paging::map_mmio(bar.address() + u64::from(msix.table_offset), bytes)
        .map_err(|_| "cannot map the MSI-X table")?;
    let virt = core::ptr::NonNull::new(virt).ok_or("cannot map the MSI-X table")?;
    // SAFETY: `virt` maps exactly the table's `bytes` bytes uncached, in the MMIO window, for the
    // kernel's lifetime; nothing treats it as ordinary memory.
    let table = MappedTable(unsafe { device_io::Mmio::new(virt, bytes as usize) });
    let config = function.config(access());
    config.enable_memory_space();
    config.enable_bus_mastering();
    msix.enable(&config, &table, 0, address, data).map_err(|e| {
        msix.disable(&config);
        match e {
            pci::MsixError::EnableDidNotStick => "the MSI-X capability refused to enable",
            _ => "the MSI-X capability cannot be programmed",
        }
    })
}

/// Turns `function`'s MSI-X off (Message Control), as after a failed [`enable_msix`] proof,
/// and frees its interrupt remapping entry.
pub fn disable_msix(function: &PciFunction) {
    if let Some(msix) = function.msix() {
        msix.disable(&function.config(access()));
    }
    crate::platform::iommu::release(crate::platform::iommu::IrqSource::Pci(function.address));
}

/// Turns `function`'s MSI off and frees its interrupt remapping entry.
pub fn disable_msi(function: &PciFunction) {
    if let Some(msi) = function.msi() {
        msi.disable(&function.config(access()));
    }
    crate::platform::iommu::release(crate::platform::iommu::IrqSource::Pci(function.address));
}

/// The message that makes `function` deliver `vector` to this CPU: in remappable format through
/// an IRTE of its own when its IOMMU unit remaps interrupts
/// ([`crate::platform::iommu::remap_msi`]), else the compatibility format
/// ([`crate::arch::apic::msi_message`]).
pub fn msi_message(function: &PciFunction, vector: u8) -> Result<(u64, u32), &'static str> {
    match crate::platform::iommu::remap_msi(function, vector) {
        Some(remapped) => remapped,
        None => {
            let (address, data) = crate::arch::apic::msi_message(vector);
            Ok((address, u32::from(data)))
        }
    }
}

/// Programs `function`'s MSI capability to deliver `vector` to this CPU
/// ([`crate::arch::apic::msi_message`]) and enables it.
pub fn enable_msi(function: &PciFunction, vector: u8) -> Result<(), &'static str> {
    if function.msi().is_none() {
        return Err("the function has no MSI capability");
    }
    let (address, data) = msi_message(function, vector)?;
    // Remappable data is a 16-bit subhandle (0); compatibility data is the vector: both fit.
    function.enable_msi(access(), address, data as u16).map_err(|e| {
        crate::platform::iommu::release(crate::platform::iommu::IrqSource::Pci(function.address));
        match e {
            pci::MsiError::NoMsiCapability => "the function has no MSI capability",
            _ => "the MSI capability refused to enable",
        }
    })
}

/// Routes `function`'s INTx to `vector`: the ISA IRQ its Interrupt Line names
/// ([`pci::interrupt::intx_route`] decides which are valid) through the I/O APIC, with the MADT's
/// override for that IRQ if it has one, else level-triggered, active high; then enables INTx in
/// the function's command register. The mode returned says what was programmed.
pub fn route_intx(function: &PciFunction, vector: u8) -> Result<IrqMode, &'static str> {
    let route = pci::interrupt::intx_route(function.interrupt_pin, function.interrupt_line)?;
    let level = route.trigger == Trigger::Level;
    let active_low = route.polarity == Polarity::ActiveLow;
    let (gsi, level, active_low) = crate::arch::apic::isa_irq_input(route.irq, level, active_low);
    let io_apic = crate::arch::apic::io_apic_of_gsi(gsi).ok_or("no I/O APIC input for the IRQ")?;
    // With interrupt remapping the entry is in remappable format, pointing at an IRTE whose
    // source-id check names the I/O APIC (VT-d §5.1.5.1); without, the classic format.
    match crate::platform::iommu::remap_gsi(gsi, io_apic, vector, level, active_low) {
        Some(entry) => {
            if !crate::arch::apic::program_gsi_entry(gsi, entry?) {
                return Err("no I/O APIC input for the IRQ");
            }
        }
        None => {
            if !crate::arch::apic::route_gsi(gsi, vector, level, active_low) {
                return Err("no I/O APIC input for the IRQ");
            }
        }
    }
    function.config(access()).enable_intx();
    Ok(IrqMode::Intx {
        irq: route.irq,
        vector,
        trigger: if level { Trigger::Level } else { Trigger::Edge },
        polarity: if active_low { Polarity::ActiveLow } else { Polarity::ActiveHigh },
    })
}

/// Undoes [`route_intx`]: INTx off in the function, its I/O APIC input masked.
pub fn unroute_intx(function: &PciFunction, mode: IrqMode) {
    if let IrqMode::Intx { irq, .. } = mode {
        function.config(access()).disable_intx();
        crate::arch::apic::mask_isa_irq(irq);
        let (gsi, _, _) = crate::arch::apic::isa_irq_input(irq, false, false);
        crate::platform::iommu::release(crate::platform::iommu::IrqSource::Gsi(gsi));
    }
}
