//! Enumeration: walking the bus tree and reading every function's header.
//!
//! A PCI segment is a tree of buses. Bus 0 hangs off the host bridge; each PCI-to-PCI bridge
//! (type 1 header, which includes PCIe root ports, switch ports and PCIe-to-PCI bridges) opens
//! a *secondary* bus below it, and forwards configuration accesses for every bus up to its
//! *subordinate* bus (PCI-to-PCI Bridge Architecture Spec 1.2, §3.2.5.2–§3.2.5.4). Firmware
//! has already numbered the buses; this walk reads those numbers and follows them:
//!
//! 1. Start at bus 0. If function 00:00.0 is multi-function, function N of device 00:00 is
//!    taken to be the host bridge of bus N, so those buses are roots too. (This is the
//!    convention of the classic recursive scan; on machines with several host bridges ACPI's
//!    `_BBN` objects are the real authority.)
//! 2. On each bus probe all 32 devices at function 0. A vendor ID of `0xFFFF` means nothing
//!    answered. If bit 7 of function 0's Header Type is set, probe functions 1–7 as well
//!    (§6.2.1).
//! 3. For each bridge, scan its secondary bus, remembering the bridge in the *bridge path* of
//!    everything found below it.
//!
//! Config space can be wrong (a broken device, a bridge that firmware never configured, a
//! hostile emulator). None of that may crash the kernel: a function whose header makes no
//! sense is logged with its BDF and skipped; a bridge whose secondary bus is not above its own
//! bus, or that leads to a bus already scanned, is logged and not followed. Because every
//! followed bridge leads to a strictly higher bus number and each bus is scanned at most once,
//! the walk ends after at most 256 buses.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use log::{debug, warn};
use pci_types::{HeaderType, PciAddress};

use crate::access::{CheckedConfigAccess, FunctionConfig, reg};
use crate::bar::{Bar, BarError, DecodedBar, bar_slots, probe_bars};
use crate::capability::{
    Capability, CapabilityError, CapabilityKind, MsiCapability, MsiError, MsixCapability, PcieCapability, PciePortType,
    PowerManagementCapability, walk_capabilities,
};
use crate::view::Bdf;

/// Class code: base class, sub-class, programming interface. PCI Local Bus Spec 3.0, §6.2.1
/// and PCI Code and ID Assignment Spec 1.11, §1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassCode {
    /// Base class (register 0x0B), e.g. 0x02 network controller.
    pub base: u8,
    /// Sub-class (register 0x0A), e.g. 0x00 Ethernet.
    pub sub: u8,
    /// Programming interface (register 0x09), e.g. 0x01 AHCI for a SATA controller.
    pub prog_if: u8,
}

impl ClassCode {
    /// A class code from its three bytes.
    pub const fn new(base: u8, sub: u8, prog_if: u8) -> Self {
        Self { base, sub, prog_if }
    }
}

impl fmt::Display for ClassCode {
    /// `bb/ss/pp`, e.g. `01/06/01`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}/{:02x}/{:02x}", self.base, self.sub, self.prog_if)
    }
}

/// Subsystem vendor and device IDs (type 0 header only). PCI Local Bus Spec 3.0, §6.2.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subsystem {
    /// Subsystem vendor ID (register 0x2C).
    pub vendor_id: u16,
    /// Subsystem ID (register 0x2E).
    pub device_id: u16,
}

/// A bridge's bus numbers. PCI-to-PCI Bridge Architecture Spec 1.2, §3.2.5.2–§3.2.5.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeBuses {
    /// The bus the bridge sits on.
    pub primary: u8,
    /// The bus directly below the bridge.
    pub secondary: u8,
    /// The highest bus below the bridge.
    pub subordinate: u8,
}

/// One bridge on the way from the root bus down to a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeHop {
    /// The bridge.
    pub address: PciAddress,
    /// Its PCIe Device/Port Type, or `None` for a conventional PCI bridge (no PCIe capability).
    pub port_type: Option<PciePortType>,
}

/// Why a function that answered was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionError {
    /// Vendor ID 0x0000 is not assigned to anyone.
    InvalidVendorId {
        /// The vendor ID read (0x0000 is not assigned to any vendor).
        vendor_id: u16,
    },
    /// Everything after the ID dword reads as all-ones.
    HeaderReadsAllOnes {
        /// The vendor ID read.
        vendor_id: u16,
        /// The device ID read.
        device_id: u16,
    },
    /// Header Type bits 6:0 name no known layout (PCI 3.0 defines 0, 1 and 2).
    UnknownHeaderType {
        /// The Header Type register's layout field (bits 6:0).
        header_type: u8,
    },
}

impl fmt::Display for FunctionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InvalidVendorId { vendor_id } => {
                write!(f, "vendor id {vendor_id:04x} is not a valid vendor; function skipped")
            }
            Self::HeaderReadsAllOnes { vendor_id, device_id } => write!(
                f,
                "{vendor_id:04x}:{device_id:04x} answers its id but the rest of its header reads \
                 all-ones (powered down, in reset, or removed); function skipped"
            ),
            Self::UnknownHeaderType { header_type } => write!(
                f,
                "header type {header_type:#04x} is not a known layout (0 endpoint, 1 bridge, \
                 2 CardBus); function skipped"
            ),
        }
    }
}

/// Everything enumeration learned about one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Segment, bus, device, function.
    pub address: PciAddress,
    /// Vendor ID (register 0x00).
    pub vendor_id: u16,
    /// Device ID (register 0x02).
    pub device_id: u16,
    /// Class code (registers 0x09–0x0B).
    pub class: ClassCode,
    /// Revision ID (register 0x08).
    pub revision: u8,
    /// Header layout (Header Type bits 6:0).
    pub header_type: HeaderType,
    /// Header Type bit 7 (meaningful on function 0: the device has functions 1–7).
    pub multi_function: bool,
    /// Subsystem IDs, for type 0 headers.
    pub subsystem: Option<Subsystem>,
    /// Interrupt Line (register 0x3C): what firmware routed INTx to.
    pub interrupt_line: u8,
    /// Interrupt Pin (register 0x3D): 0 none, 1..=4 INTA#..INTD#.
    pub interrupt_pin: u8,
    /// Implemented BARs.
    pub bars: Vec<DecodedBar>,
    /// Malformed BARs that were skipped.
    pub bar_errors: Vec<BarError>,
    /// The capability list, in list order.
    pub capabilities: Vec<Capability>,
    /// Set if the capability list was corrupt and cut short.
    pub capability_error: Option<CapabilityError>,
    /// Bus numbers, for PCI-to-PCI bridges (type 1).
    pub bridge_buses: Option<BridgeBuses>,
    /// The bridges between the root bus and this function, nearest the root first. Empty for
    /// functions on a root bus.
    pub bridge_path: Vec<BridgeHop>,
}

impl PciFunction {
    /// This function's configuration space through `access`.
    pub fn config<'a, A: CheckedConfigAccess + ?Sized>(&self, access: &'a A) -> FunctionConfig<'a, A> {
        FunctionConfig::new(access, self.address)
    }

    /// The first capability with `id`.
    pub fn capability(&self, id: u8) -> Option<&Capability> {
        self.capabilities.iter().find(|c| c.id == id)
    }

    /// The MSI capability, if any.
    pub fn msi(&self) -> Option<&MsiCapability> {
        self.capabilities.iter().find_map(|c| match &c.kind {
            CapabilityKind::Msi(msi) => Some(msi),
            _ => None,
        })
    }

    /// The MSI-X capability, if any.
    pub fn msix(&self) -> Option<&MsixCapability> {
        self.capabilities.iter().find_map(|c| match &c.kind {
            CapabilityKind::MsiX(msix) => Some(msix),
            _ => None,
        })
    }

    /// The PCI Express capability, if any (absent on conventional PCI functions).
    pub fn pcie(&self) -> Option<&PcieCapability> {
        self.capabilities.iter().find_map(|c| match &c.kind {
            CapabilityKind::PciExpress(pcie) => Some(pcie),
            _ => None,
        })
    }

    /// The Power Management capability, if any.
    pub fn power_management(&self) -> Option<&PowerManagementCapability> {
        self.capabilities.iter().find_map(|c| match &c.kind {
            CapabilityKind::PowerManagement(pm) => Some(pm),
            _ => None,
        })
    }

    /// The BAR in `slot`, if implemented (for a 64-bit BAR, its first slot).
    pub fn bar(&self, slot: u8) -> Option<Bar> {
        self.bars.iter().find(|b| b.slot == slot).map(|b| b.bar)
    }

    /// Whether this is a PCI-to-PCI bridge (type 1 header).
    pub fn is_bridge(&self) -> bool {
        self.header_type == HeaderType::PciPciBridge
    }

    /// The PCIe-to-PCI bridge nearest the root that this function sits behind, if any.
    ///
    /// Conventional PCI has no requester IDs, so a PCIe-to-PCI bridge forwards the DMA of
    /// every device below it under an ID of its own (PCI Express to PCI/PCI-X Bridge Spec 1.0:
    /// the bridge's secondary bus with device/function 0, or the bridge's own ID). An IOMMU
    /// therefore cannot tell those devices apart: they must share one translation domain,
    /// keyed by this bridge.
    pub fn pcie_to_pci_bridge(&self) -> Option<PciAddress> {
        self.bridge_path.iter().find(|hop| hop.port_type == Some(PciePortType::PcieToPciBridge)).map(|hop| hop.address)
    }

    /// Programs one MSI vector and enables it; see [`MsiCapability::enable`].
    pub fn enable_msi<A: CheckedConfigAccess + ?Sized>(
        &self,
        access: &A,
        address: u64,
        data: u16,
    ) -> Result<(), MsiError> {
        let msi = self.msi().ok_or(MsiError::NoMsiCapability)?;
        msi.enable(&self.config(access), address, data)
    }
}

/// Reads the function at `address`: `Ok(None)` if nothing answers (vendor ID `0xFFFF`),
/// `Err` if it answers with a header that makes no sense.
///
/// This sizes the function's BARs (see [`probe_bars`]), so run it before a driver uses the
/// function. `bridge_path` is recorded as the function's upstream bridges.
pub fn probe_function<A: CheckedConfigAccess + ?Sized>(
    access: &A,
    address: PciAddress,
    bridge_path: &[BridgeHop],
) -> Result<Option<PciFunction>, FunctionError> {
    let config = FunctionConfig::new(access, address);
    let id = config.read_u32(reg::VENDOR_ID);
    let vendor_id = id as u16;
    let device_id = (id >> 16) as u16;
    if vendor_id == 0xFFFF {
        return Ok(None);
    }
    if vendor_id == 0x0000 {
        return Err(FunctionError::InvalidVendorId { vendor_id });
    }

    let class_revision = config.read_u32(reg::REVISION_ID);
    let header_dword = config.read_u32(reg::HEADER_TYPE);
    if class_revision == u32::MAX && header_dword == u32::MAX {
        return Err(FunctionError::HeaderReadsAllOnes { vendor_id, device_id });
    }
    let raw_header_type = (header_dword >> 16) as u8;
    let header_type = match raw_header_type & 0x7F {
        0 => HeaderType::Endpoint,
        1 => HeaderType::PciPciBridge,
        2 => HeaderType::CardBusBridge,
        _ => return Err(FunctionError::UnknownHeaderType { header_type: raw_header_type }),
    };

    let class = ClassCode {
        base: (class_revision >> 24) as u8,
        sub: (class_revision >> 16) as u8,
        prog_if: (class_revision >> 8) as u8,
    };
    let bars = probe_bars(&config, bar_slots(header_type));
    let capabilities = walk_capabilities(&config, header_type);
    let subsystem = (header_type == HeaderType::Endpoint).then(|| Subsystem {
        vendor_id: config.read_u16(reg::SUBSYSTEM_VENDOR_ID),
        device_id: config.read_u16(reg::SUBSYSTEM_ID),
    });
    let bridge_buses = (header_type == HeaderType::PciPciBridge).then(|| BridgeBuses {
        primary: config.read_u8(reg::PRIMARY_BUS),
        secondary: config.read_u8(reg::SECONDARY_BUS),
        subordinate: config.read_u8(reg::SUBORDINATE_BUS),
    });
    let interrupt = config.read_u32(reg::INTERRUPT_LINE);

    Ok(Some(PciFunction {
        address,
        vendor_id,
        device_id,
        class,
        revision: class_revision as u8,
        header_type,
        multi_function: raw_header_type & 0x80 != 0,
        subsystem,
        interrupt_line: interrupt as u8,
        interrupt_pin: (interrupt >> 8) as u8,
        bars: bars.bars,
        bar_errors: bars.errors,
        capabilities: capabilities.capabilities,
        capability_error: capabilities.error,
        bridge_buses,
        bridge_path: bridge_path.to_vec(),
    }))
}

/// A bus waiting to be scanned: its number, the bridges above it, and the bridge that led
/// to it (`None` for a root bus).
struct PendingBus {
    bus: u8,
    path: Vec<BridgeHop>,
    via: Option<PciAddress>,
}

/// Enumerates segment `segment`: every function reachable from bus 0, sorted by address.
///
/// With ECAM, call it once per segment ([`crate::EcamAccess::segments`]); with port I/O only
/// segment 0 exists. BARs are sized on the way (decoding is briefly off), so call this at
/// boot before drivers start. Problems are logged, never fatal.
pub fn enumerate<A: CheckedConfigAccess + ?Sized>(access: &A, segment: u16) -> Vec<PciFunction> {
    let mut functions = Vec::new();
    let mut scanned = [false; 256];
    let mut pending = root_buses(access, segment);
    // `pending` is a stack: reverse so bus 0 is scanned first.
    pending.reverse();

    while let Some(PendingBus { bus, path, via }) = pending.pop() {
        if scanned[usize::from(bus)] {
            match via {
                Some(bridge) => warn!(
                    "pci {}: bridge leads to bus {bus:02x}, which was already scanned (two \
                     bridges claim it); not scanned again",
                    Bdf(bridge)
                ),
                None => warn!("pci {:04x}: root bus {bus:02x} was already scanned; not scanned again", segment),
            }
            continue;
        }
        scanned[usize::from(bus)] = true;
        debug!("pci {:04x}: scanning bus {bus:02x}", segment);

        let mut below = scan_bus(access, segment, bus, &path, &mut functions);
        below.reverse();
        pending.append(&mut below);
    }

    functions.sort_by_key(|f| f.address);
    functions
}

/// Bus 0, plus bus N for every function N of a multi-function host bridge 00:00.0.
fn root_buses<A: CheckedConfigAccess + ?Sized>(access: &A, segment: u16) -> Vec<PendingBus> {
    let mut roots = vec![PendingBus { bus: 0, path: Vec::new(), via: None }];
    let host = FunctionConfig::new(access, PciAddress::new(segment, 0, 0, 0));
    if host.read_u16(reg::VENDOR_ID) == 0xFFFF || host.read_u8(reg::HEADER_TYPE) & 0x80 == 0 {
        return roots;
    }
    for function in 1..8 {
        let config = FunctionConfig::new(access, PciAddress::new(segment, 0, 0, function));
        let vendor = config.read_u16(reg::VENDOR_ID);
        if vendor != 0xFFFF && vendor != 0x0000 {
            debug!("pci {}: host bridge function {function} roots bus {function:02x}", Bdf(config.address()));
            roots.push(PendingBus { bus: function, path: Vec::new(), via: None });
        }
    }
    roots
}

/// Probes every device on `bus`, appends what answers to `functions`, and returns the buses
/// behind the bridges found.
fn scan_bus<A: CheckedConfigAccess + ?Sized>(
    access: &A,
    segment: u16,
    bus: u8,
    path: &[BridgeHop],
    functions: &mut Vec<PciFunction>,
) -> Vec<PendingBus> {
    let mut below = Vec::new();
    for device in 0..32 {
        let first = PciAddress::new(segment, bus, device, 0);
        let multi_function = match probe_function(access, first, path) {
            Ok(None) => continue,
            Err(error) => {
                // Without a sane function 0, its multi-function bit cannot be trusted either.
                warn!("pci {}: {error}", Bdf(first));
                continue;
            }
            Ok(Some(function)) => {
                let multi = function.multi_function;
                record(function, bus, path, functions, &mut below);
                multi
            }
        };
        if !multi_function {
            continue;
        }
        for number in 1..8 {
            let address = PciAddress::new(segment, bus, device, number);
            match probe_function(access, address, path) {
                Ok(None) => {}
                Err(error) => warn!("pci {}: {error}", Bdf(address)),
                Ok(Some(function)) => record(function, bus, path, functions, &mut below),
            }
        }
    }
    below
}

/// Adds `function` to the result and, if it is a bridge that can be followed, queues its
/// secondary bus.
fn record(
    function: PciFunction,
    bus: u8,
    path: &[BridgeHop],
    functions: &mut Vec<PciFunction>,
    below: &mut Vec<PendingBus>,
) {
    if let Some(buses) = function.bridge_buses {
        let bdf = Bdf(function.address);
        if buses.secondary <= bus {
            warn!(
                "pci {bdf}: bridge secondary bus {:02x} is not above its own bus {bus:02x} \
                 (unconfigured by firmware, or a loop); buses behind it are not scanned",
                buses.secondary
            );
        } else {
            if buses.primary != bus {
                warn!(
                    "pci {bdf}: bridge says its primary bus is {:02x} but it sits on bus \
                     {bus:02x}; following its secondary bus anyway",
                    buses.primary
                );
            }
            if buses.subordinate < buses.secondary {
                warn!(
                    "pci {bdf}: bridge subordinate bus {:02x} is below its secondary bus {:02x}; \
                     only the secondary bus is reachable",
                    buses.subordinate, buses.secondary
                );
            }
            let mut hops = path.to_vec();
            hops.push(BridgeHop { address: function.address, port_type: function.pcie().map(|p| p.port_type) });
            below.push(PendingBus { bus: buses.secondary, path: hops, via: Some(function.address) });
        }
    }
    functions.push(function);
}
