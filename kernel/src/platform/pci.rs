//! PCI in the kernel: choose how to reach configuration space, enumerate once, publish views.
//!
//! The logic (bus walk, BAR sizing, capabilities) lives in the `pci` crate; this module gives it
//! hardware: ECAM windows from ACPI MCFG mapped uncached, or the legacy 0xCF8/0xCFC ports when
//! the firmware has no MCFG.

use crate::mm::memory::paging;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
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
    NoMemoryBar { slot: u8 },
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
