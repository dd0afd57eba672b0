//! The capability list: optional features a function announces (MSI programming is in `msi`).
//!
//! PCI Local Bus Spec 3.0, §6.7 "Capabilities List". If Status bit 4 is set, the byte at `0x34`
//! (`0x14` in a CardBus header) points at the first capability. Each capability starts with
//! an ID byte and a next-pointer byte; the low two bits of every pointer are reserved and must
//! be masked, a pointer of 0 ends the list, and every capability lives in the device-specific
//! area `0x40..0x100`. That area holds at most 48 dword-aligned entries, so a longer walk, a
//! pointer back into the header, or a revisited entry means the list is corrupt: the walk
//! stops there and says so.
//!
//! IDs come from the PCI Code and ID Assignment Spec 1.11, §2 "Capability IDs".

use alloc::vec::Vec;
use core::fmt;

use log::warn;
use pci_types::HeaderType;

use crate::access::{CheckedConfigAccess, FunctionConfig, STATUS_CAPABILITIES_LIST, reg};
use crate::view::Bdf;

/// Capability ID: PCI Power Management Interface.
pub const CAP_POWER_MANAGEMENT: u8 = 0x01;
/// Capability ID: Message Signaled Interrupts.
pub const CAP_MSI: u8 = 0x05;
/// Capability ID: Vendor Specific.
pub const CAP_VENDOR_SPECIFIC: u8 = 0x09;
/// Capability ID: PCI Express.
pub const CAP_PCI_EXPRESS: u8 = 0x10;
/// Capability ID: MSI-X.
pub const CAP_MSIX: u8 = 0x11;
/// Capability ID: SATA Data/Index Configuration.
pub const CAP_SATA: u8 = 0x12;

/// The most capabilities the area `0x40..0x100` can hold (one per dword).
pub const MAX_CAPABILITIES: usize = 48;

/// The first offset a capability may live at; below it is the header.
const CAPABILITY_AREA_START: u8 = 0x40;

/// The name of a capability ID (PCI Code and ID Assignment Spec 1.11, §2, Table 2-1).
pub fn capability_name(id: u8) -> &'static str {
    match id {
        0x00 => "Null",
        0x01 => "Power Management",
        0x02 => "AGP",
        0x03 => "Vital Product Data",
        0x04 => "Slot Identification",
        0x05 => "MSI",
        0x06 => "CompactPCI Hot Swap",
        0x07 => "PCI-X",
        0x08 => "HyperTransport",
        0x09 => "Vendor Specific",
        0x0A => "Debug Port",
        0x0B => "CompactPCI Central Resource Control",
        0x0C => "PCI Hot-Plug",
        0x0D => "Bridge Subsystem Vendor ID",
        0x0E => "AGP 8x",
        0x0F => "Secure Device",
        0x10 => "PCI Express",
        0x11 => "MSI-X",
        0x12 => "SATA Data/Index Configuration",
        0x13 => "Advanced Features",
        0x14 => "Enhanced Allocation",
        0x15 => "Flattening Portal Bridge",
        _ => "Unknown",
    }
}

/// One entry of the capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Where the capability starts in configuration space.
    pub offset: u8,
    /// The capability ID.
    pub id: u8,
    /// What this crate decoded from it.
    pub kind: CapabilityKind,
}

impl Capability {
    /// The name of the capability's ID.
    pub fn name(&self) -> &'static str {
        capability_name(self.id)
    }
}

/// A decoded capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapabilityKind {
    /// ID 0x01.
    PowerManagement(PowerManagementCapability),
    /// ID 0x05.
    Msi(MsiCapability),
    /// ID 0x11.
    MsiX(MsixCapability),
    /// ID 0x10.
    PciExpress(PcieCapability),
    /// ID 0x09: contents are the vendor's; only the length byte is standard.
    VendorSpecific {
        /// The capability's length byte (offset 2), in bytes.
        length: u8,
    },
    /// Any other ID: recognised by [`capability_name`] only.
    Other,
}

/// Power states, PCI Bus Power Management Interface Spec 1.2, §3.2.4 (PMCSR bits 1:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Fully on: the only state in which the function does its work.
    D0,
    /// Light sleep (optional for a function to support).
    D1,
    /// Deeper sleep (optional for a function to support).
    D2,
    /// Off with power still applied; configuration space stays reachable.
    D3Hot,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::D0 => "D0",
            Self::D1 => "D1",
            Self::D2 => "D2",
            Self::D3Hot => "D3hot",
        })
    }
}

/// The Power Management capability, PCI Bus Power Management Interface Spec 1.2, §3.2.3
/// (PMC register at +2) and §3.2.4 (PMCSR register at +4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerManagementCapability {
    /// PMC bits 2:0, the spec revision (3 = 1.2).
    pub version: u8,
    /// PMC bit 9: D1 supported.
    pub d1: bool,
    /// PMC bit 10: D2 supported.
    pub d2: bool,
    /// PMC bits 15:11: the states PME# may be asserted from (bit 0 = D0 .. bit 4 = D3cold).
    pub pme_support: u8,
    /// PMCSR bits 1:0: the current power state.
    pub power_state: PowerState,
}

/// The MSI capability, PCI Local Bus Spec 3.0, §6.8.1 "MSI Capability Structure".
///
/// Message Control (at +2): bit 0 enable, bits 3:1 Multiple Message Capable, bits 6:4
/// Multiple Message Enable (both log2 of a vector count), bit 7 64-bit address capable, bit 8
/// per-vector masking capable. The register layout after that depends on bits 7 and 8, so the
/// offsets are decoded here once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiCapability {
    /// Where the capability starts.
    pub offset: u8,
    /// Message Control bit 0.
    pub enabled: bool,
    /// Message Control bit 7: the Message Upper Address register exists.
    pub is_64bit: bool,
    /// Message Control bit 8: Mask Bits and Pending Bits registers exist.
    pub per_vector_masking: bool,
    /// Message Control bits 3:1: log2 of the vectors the function can use (0..=5).
    pub multiple_message_capable: u8,
    /// Message Control bits 6:4: log2 of the vectors software granted.
    pub multiple_message_enable: u8,
    /// Message Address register (low 32 bits).
    pub address_offset: u16,
    /// Message Upper Address register, if 64-bit capable.
    pub upper_address_offset: Option<u16>,
    /// Message Data register (16 bits).
    pub data_offset: u16,
    /// Mask Bits register, if per-vector masking capable.
    pub mask_offset: Option<u16>,
    /// Pending Bits register, if per-vector masking capable.
    pub pending_offset: Option<u16>,
}

impl MsiCapability {
    /// Decodes an MSI capability from its Message Control register.
    fn decode(offset: u8, control: u16) -> Self {
        let is_64bit = control & (1 << 7) != 0;
        let per_vector_masking = control & (1 << 8) != 0;
        let base = u16::from(offset);
        let data_offset = if is_64bit { base + 0x0C } else { base + 0x08 };
        Self {
            offset,
            enabled: control & 1 != 0,
            is_64bit,
            per_vector_masking,
            multiple_message_capable: ((control >> 1) & 0x7) as u8,
            multiple_message_enable: ((control >> 4) & 0x7) as u8,
            address_offset: base + 0x04,
            upper_address_offset: is_64bit.then_some(base + 0x08),
            data_offset,
            mask_offset: per_vector_masking.then_some(data_offset + 0x04),
            pending_offset: per_vector_masking.then_some(data_offset + 0x08),
        }
    }

    /// The Message Control register offset.
    pub fn control_offset(&self) -> u16 {
        u16::from(self.offset) + 2
    }

    /// How many vectors the function asks for (1, 2, 4, 8, 16 or 32; encodings 6 and 7 are
    /// reserved and reported as 32).
    pub fn vectors_capable(&self) -> u8 {
        1 << self.multiple_message_capable.min(5)
    }
}

/// The MSI-X capability, PCI Local Bus Spec 3.0, §6.8.2 "MSI-X Capability and Table
/// Structure": Message Control at +2 (bits 10:0 table size − 1, bit 14 function mask, bit 15
/// enable), Table Offset/BIR at +4 and PBA Offset/BIR at +8 (bits 2:0 the BAR, the rest the
/// offset into it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// Where the capability starts.
    pub offset: u8,
    /// Message Control bit 15.
    pub enabled: bool,
    /// Message Control bit 14: all vectors masked.
    pub function_mask: bool,
    /// Number of table entries (the register holds this minus one).
    pub table_size: u16,
    /// Which BAR holds the vector table (0..=5; 6 and 7 are reserved).
    pub table_bar: u8,
    /// Offset of the vector table inside that BAR.
    pub table_offset: u32,
    /// Which BAR holds the Pending Bit Array.
    pub pba_bar: u8,
    /// Offset of the Pending Bit Array inside that BAR.
    pub pba_offset: u32,
}

impl MsixCapability {
    /// Whether both BAR indicators name a BAR that can exist (0..=5).
    pub fn bars_valid(&self) -> bool {
        self.table_bar <= 5 && self.pba_bar <= 5
    }
}

/// The PCI Express capability's first register, PCIe Base Spec 3.0, §7.8.2 "PCI Express
/// Capabilities Register": bits 3:0 version, 7:4 device/port type, bit 8 slot implemented,
/// 13:9 interrupt message number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieCapability {
    /// Where the capability starts.
    pub offset: u8,
    /// Capability structure version (1 or 2).
    pub version: u8,
    /// What kind of PCIe component this function is.
    pub port_type: PciePortType,
    /// A slot is connected to this port (root and downstream ports only).
    pub slot_implemented: bool,
    /// The MSI/MSI-X vector used for this capability's own events.
    pub interrupt_message_number: u8,
}

/// Device/Port Type, PCIe Base Spec 3.0, §7.8.2, bits 7:4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciePortType {
    /// 0000b: PCI Express Endpoint.
    Endpoint,
    /// 0001b: Legacy PCI Express Endpoint.
    LegacyEndpoint,
    /// 0100b: Root Port of a Root Complex.
    RootPort,
    /// 0101b: Upstream Port of a Switch.
    UpstreamSwitchPort,
    /// 0110b: Downstream Port of a Switch.
    DownstreamSwitchPort,
    /// 0111b: PCI Express to PCI/PCI-X Bridge. Devices behind it share its requester ID for DMA.
    PcieToPciBridge,
    /// 1000b: PCI/PCI-X to PCI Express Bridge.
    PciToPcieBridge,
    /// 1001b: Root Complex Integrated Endpoint.
    RootComplexIntegratedEndpoint,
    /// 1010b: Root Complex Event Collector.
    RootComplexEventCollector,
    /// A reserved encoding.
    Reserved(u8),
}

impl PciePortType {
    /// Decodes the 4-bit Device/Port Type field.
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0xF {
            0x0 => Self::Endpoint,
            0x1 => Self::LegacyEndpoint,
            0x4 => Self::RootPort,
            0x5 => Self::UpstreamSwitchPort,
            0x6 => Self::DownstreamSwitchPort,
            0x7 => Self::PcieToPciBridge,
            0x8 => Self::PciToPcieBridge,
            0x9 => Self::RootComplexIntegratedEndpoint,
            0xA => Self::RootComplexEventCollector,
            other => Self::Reserved(other),
        }
    }

    /// The 4-bit Device/Port Type encoding.
    pub fn bits(&self) -> u8 {
        match *self {
            Self::Endpoint => 0x0,
            Self::LegacyEndpoint => 0x1,
            Self::RootPort => 0x4,
            Self::UpstreamSwitchPort => 0x5,
            Self::DownstreamSwitchPort => 0x6,
            Self::PcieToPciBridge => 0x7,
            Self::PciToPcieBridge => 0x8,
            Self::RootComplexIntegratedEndpoint => 0x9,
            Self::RootComplexEventCollector => 0xA,
            Self::Reserved(bits) => bits & 0xF,
        }
    }

    /// A short name for views and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Endpoint => "Endpoint",
            Self::LegacyEndpoint => "Legacy Endpoint",
            Self::RootPort => "Root Port",
            Self::UpstreamSwitchPort => "Upstream Switch Port",
            Self::DownstreamSwitchPort => "Downstream Switch Port",
            Self::PcieToPciBridge => "PCIe-to-PCI Bridge",
            Self::PciToPcieBridge => "PCI-to-PCIe Bridge",
            Self::RootComplexIntegratedEndpoint => "Root Complex Integrated Endpoint",
            Self::RootComplexEventCollector => "Root Complex Event Collector",
            Self::Reserved(_) => "Reserved type",
        }
    }
}

impl fmt::Display for PciePortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reserved(bits) => write!(f, "Reserved type {bits:#x}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Why a capability walk stopped before the end of the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapabilityError {
    /// A pointer pointed into the header (below 0x40).
    PointerIntoHeader {
        /// The offending next-capability pointer.
        pointer: u8,
    },
    /// A pointer led back to a capability already visited: the list loops.
    Loop {
        /// The pointer that led back to a visited capability.
        pointer: u8,
    },
    /// More entries than the capability area can hold.
    TooMany,
    /// A capability header read as all-ones: the function stopped answering.
    ReadsAllOnes {
        /// Offset of the capability that read as all-ones.
        pointer: u8,
    },
}

impl fmt::Display for CapabilityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::PointerIntoHeader { pointer } => write!(
                f,
                "capability pointer {pointer:#04x} points into the header (below 0x40); \
                 list is corrupt, capabilities after it are ignored"
            ),
            Self::Loop { pointer } => write!(
                f,
                "capability list loops back to {pointer:#04x}; capabilities after the loop \
                 are ignored"
            ),
            Self::TooMany => {
                write!(f, "capability list has more than {MAX_CAPABILITIES} entries; the rest are ignored")
            }
            Self::ReadsAllOnes { pointer } => write!(
                f,
                "capability at {pointer:#04x} reads as all-ones; the function may have been \
                 removed; the rest of the list is ignored"
            ),
        }
    }
}

/// The result of walking a capability list: what was found, and why the walk stopped early
/// if it did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilityList {
    /// Capabilities in list order.
    pub capabilities: Vec<Capability>,
    /// Set if the list was corrupt; `capabilities` holds what came before the problem.
    pub error: Option<CapabilityError>,
}

/// Walks a function's capability list (PCI Local Bus Spec 3.0, §6.7), decoding what it knows.
///
/// Returns an empty list if Status bit 4 is clear or the header layout has no capability
/// pointer. A corrupt list is logged with the function's BDF and cut short.
pub fn walk_capabilities<A: CheckedConfigAccess + ?Sized>(
    config: &FunctionConfig<'_, A>,
    header_type: HeaderType,
) -> CapabilityList {
    let mut list = CapabilityList::default();
    if config.status() & STATUS_CAPABILITIES_LIST == 0 {
        return list;
    }
    let pointer_register = match header_type {
        HeaderType::Endpoint | HeaderType::PciPciBridge => reg::CAPABILITIES_POINTER,
        HeaderType::CardBusBridge => reg::CARDBUS_CAPABILITIES_POINTER,
        _ => return list,
    };

    // One bit per dword of configuration space below 0x100: entries already visited.
    let mut visited: u64 = 0;
    let mut pointer = config.read_u8(pointer_register) & 0xFC;
    while pointer != 0 {
        let error = if pointer < CAPABILITY_AREA_START {
            Some(CapabilityError::PointerIntoHeader { pointer })
        } else if visited & (1 << (pointer / 4)) != 0 {
            Some(CapabilityError::Loop { pointer })
        } else if list.capabilities.len() >= MAX_CAPABILITIES {
            Some(CapabilityError::TooMany)
        } else {
            None
        };
        if let Some(error) = error {
            warn!("pci {}: {error}", Bdf(config.address()));
            list.error = Some(error);
            break;
        }
        visited |= 1 << (pointer / 4);

        let header = config.read_u32(u16::from(pointer));
        if header == u32::MAX {
            let error = CapabilityError::ReadsAllOnes { pointer };
            warn!("pci {}: {error}", Bdf(config.address()));
            list.error = Some(error);
            break;
        }
        let id = header as u8;
        let upper = (header >> 16) as u16;
        list.capabilities.push(Capability { offset: pointer, id, kind: decode(config, pointer, id, upper) });
        pointer = (header >> 8) as u8 & 0xFC;
    }
    list
}

/// Decodes the capability `id` at `offset`, whose header dword's upper half is `upper`.
fn decode<A: CheckedConfigAccess + ?Sized>(
    config: &FunctionConfig<'_, A>,
    offset: u8,
    id: u8,
    upper: u16,
) -> CapabilityKind {
    let base = u16::from(offset);
    match id {
        CAP_POWER_MANAGEMENT => {
            let pmcsr = config.read_u16(base + 4);
            CapabilityKind::PowerManagement(PowerManagementCapability {
                version: (upper & 0x7) as u8,
                d1: upper & (1 << 9) != 0,
                d2: upper & (1 << 10) != 0,
                pme_support: (upper >> 11) as u8,
                power_state: match pmcsr & 0x3 {
                    0 => PowerState::D0,
                    1 => PowerState::D1,
                    2 => PowerState::D2,
                    _ => PowerState::D3Hot,
                },
            })
        }
        CAP_MSI => CapabilityKind::Msi(MsiCapability::decode(offset, upper)),
        CAP_MSIX => {
            let table = config.read_u32(base + 4);
            let pba = config.read_u32(base + 8);
            CapabilityKind::MsiX(MsixCapability {
                offset,
                enabled: upper & (1 << 15) != 0,
                function_mask: upper & (1 << 14) != 0,
                table_size: (upper & 0x7FF) + 1,
                table_bar: (table & 0x7) as u8,
                table_offset: table & !0x7,
                pba_bar: (pba & 0x7) as u8,
                pba_offset: pba & !0x7,
            })
        }
        CAP_PCI_EXPRESS => CapabilityKind::PciExpress(PcieCapability {
            offset,
            version: (upper & 0xF) as u8,
            port_type: PciePortType::from_bits((upper >> 4) as u8),
            slot_implemented: upper & (1 << 8) != 0,
            interrupt_message_number: ((upper >> 9) & 0x1F) as u8,
        }),
        CAP_VENDOR_SPECIFIC => CapabilityKind::VendorSpecific { length: upper as u8 },
        _ => CapabilityKind::Other,
    }
}

// MSI programming (enable/disable, the x86 message format) lives in `msi.rs`; its error type
// and helpers are re-exported here, where they have always been.
pub use crate::msi::{MsiError, x86_msi_address, x86_msi_data};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enumerate::ClassCode;
    use crate::sim::{SimConfigSpace, SimFunction, bdf, fixtures};
    use alloc::format;
    use alloc::vec;
    use pci_types::CommandRegister;

    const NIC: ClassCode = ClassCode::new(0x02, 0x00, 0x00);

    fn walk(function: SimFunction) -> CapabilityList {
        let sim = SimConfigSpace::new().with(bdf(0, 3, 0), function);
        walk_capabilities(&FunctionConfig::new(&sim, bdf(0, 3, 0)), HeaderType::Endpoint)
    }

    #[test]
    fn ahci_has_msi_then_sata() {
        let list = walk(fixtures::q35_ahci());
        assert_eq!(list.error, None);
        let ids: Vec<_> = list.capabilities.iter().map(|c| (c.offset, c.id)).collect();
        assert_eq!(ids, [(0x80, CAP_MSI), (0xA8, CAP_SATA)]);
        let CapabilityKind::Msi(msi) = list.capabilities[0].kind else { panic!("not MSI") };
        assert!(msi.is_64bit && !msi.per_vector_masking && !msi.enabled);
        assert_eq!(msi.vectors_capable(), 1);
        assert_eq!(
            (msi.address_offset, msi.upper_address_offset, msi.data_offset, msi.mask_offset),
            (0x84, Some(0x88), 0x8C, None)
        );
        assert_eq!(list.capabilities[1].kind, CapabilityKind::Other);
        assert_eq!(list.capabilities[1].name(), "SATA Data/Index Configuration");
    }

    #[test]
    fn msi_register_layout_follows_64bit_and_masking_bits() {
        let list = walk(SimFunction::endpoint(0x8086, 0x1234, NIC).msi(0x50, false, true, 3));
        let CapabilityKind::Msi(msi) = list.capabilities[0].kind else { panic!("not MSI") };
        assert_eq!(msi.multiple_message_capable, 3);
        assert_eq!(msi.vectors_capable(), 8);
        assert_eq!((msi.address_offset, msi.upper_address_offset, msi.data_offset), (0x54, None, 0x58));
        assert_eq!((msi.mask_offset, msi.pending_offset), (Some(0x5C), Some(0x60)));

        let list = walk(SimFunction::endpoint(0x8086, 0x1234, NIC).msi(0x50, true, true, 0));
        let CapabilityKind::Msi(msi) = list.capabilities[0].kind else { panic!("not MSI") };
        assert_eq!((msi.data_offset, msi.mask_offset, msi.pending_offset), (0x5C, Some(0x60), Some(0x64)));
    }

    #[test]
    fn root_port_has_pm_msix_and_pcie() {
        let list = walk(fixtures::root_port(1, 2));
        assert_eq!(list.error, None);
        assert_eq!(list.capabilities.len(), 3);
        let CapabilityKind::PowerManagement(pm) = list.capabilities[0].kind else { panic!() };
        assert_eq!((pm.version, pm.power_state), (3, PowerState::D0));
        let CapabilityKind::MsiX(msix) = list.capabilities[1].kind else { panic!("not MSI-X") };
        assert_eq!(
            msix,
            MsixCapability {
                offset: 0x48,
                enabled: false,
                function_mask: false,
                table_size: 1,
                table_bar: 0,
                table_offset: 0,
                pba_bar: 0,
                pba_offset: 0x800,
            }
        );
        assert!(msix.bars_valid());
        let CapabilityKind::PciExpress(pcie) = list.capabilities[2].kind else { panic!() };
        assert_eq!((pcie.version, pcie.port_type, pcie.slot_implemented), (2, PciePortType::RootPort, true));
    }

    #[test]
    fn pcie_port_types_round_trip_and_have_names() {
        for bits in 0..16u8 {
            assert_eq!(PciePortType::from_bits(bits).bits(), bits);
        }
        assert_eq!(PciePortType::from_bits(7), PciePortType::PcieToPciBridge);
        assert_eq!(PciePortType::from_bits(4).name(), "Root Port");
        assert_eq!(format!("{}", PciePortType::from_bits(0xB)), "Reserved type 0xb");
    }

    #[test]
    fn no_list_when_status_bit_is_clear() {
        // QEMU's e1000: pointer register zero and status bit 4 clear.
        assert_eq!(walk(fixtures::q35_e1000()), CapabilityList::default());
        // A pointer without the status bit is not followed either.
        let function = SimFunction::endpoint(0x8086, 0x1234, NIC).msi(0x50, false, false, 0).status(0);
        assert!(walk(function).capabilities.is_empty());
    }

    #[test]
    fn looping_list_stops_at_the_revisit() {
        let list = walk(fixtures::broken_bars_and_capabilities());
        assert_eq!(list.capabilities.len(), 2);
        assert_eq!(list.error, Some(CapabilityError::Loop { pointer: 0x40 }));
    }

    #[test]
    fn self_loop_and_pointer_into_header_stop_the_walk() {
        let function = SimFunction::endpoint(0x8086, 0x1234, NIC).capability(0x40, 0x09, &[4]).poke(0x41, &[0x40]);
        let list = walk(function);
        assert_eq!((list.capabilities.len(), list.error), (1, Some(CapabilityError::Loop { pointer: 0x40 })));

        let function = SimFunction::endpoint(0x8086, 0x1234, NIC).capability(0x40, 0x09, &[4]).poke(0x41, &[0x20]);
        let list = walk(function);
        assert_eq!(list.error, Some(CapabilityError::PointerIntoHeader { pointer: 0x20 }));
        assert!(format!("{}", list.error.unwrap()).contains("0x20"));
    }

    #[test]
    fn reserved_pointer_bits_are_masked() {
        let function = SimFunction::endpoint(0x8086, 0x1234, NIC)
            .capability(0x40, 0x09, &[4])
            .capability(0x60, 0x01, &[3, 0, 0, 0])
            .poke(0x34, &[0x43])
            .poke(0x41, &[0x63]);
        let list = walk(function);
        let offsets: Vec<_> = list.capabilities.iter().map(|c| c.offset).collect();
        assert_eq!((offsets, list.error), (vec![0x40, 0x60], None));
        assert_eq!(list.capabilities[0].kind, CapabilityKind::VendorSpecific { length: 4 });
    }

    #[test]
    fn capability_reading_all_ones_stops_the_walk() {
        let function = SimFunction::endpoint(0x8086, 0x1234, NIC)
            .capability(0x40, 0x09, &[4])
            .poke(0x41, &[0x80])
            .reads_all_ones_from(0x80);
        let list = walk(function);
        assert_eq!(list.error, Some(CapabilityError::ReadsAllOnes { pointer: 0x80 }));
    }

    #[test]
    fn a_full_list_of_48_is_accepted() {
        let mut function = SimFunction::endpoint(0x8086, 0x1234, NIC);
        for offset in (0x40..=0xFCu8).step_by(4) {
            function = function.capability(offset, 0x09, &[4]);
        }
        let list = walk(function);
        assert_eq!((list.capabilities.len(), list.error), (MAX_CAPABILITIES, None));
    }

    #[test]
    fn capability_names_cover_common_ids() {
        assert_eq!(capability_name(0x01), "Power Management");
        assert_eq!(capability_name(0x05), "MSI");
        assert_eq!(capability_name(0x10), "PCI Express");
        assert_eq!(capability_name(0x11), "MSI-X");
        assert_eq!(capability_name(0x99), "Unknown");
    }

    fn msi_of(sim: &SimConfigSpace) -> MsiCapability {
        let list = walk_capabilities(&FunctionConfig::new(sim, bdf(0, 3, 0)), HeaderType::Endpoint);
        list.capabilities
            .iter()
            .find_map(|c| match c.kind {
                CapabilityKind::Msi(msi) => Some(msi),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn enable_msi_programs_address_data_and_enable() {
        let sim = SimConfigSpace::new().with(bdf(0, 3, 0), fixtures::q35_ahci());
        let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
        let msi = msi_of(&sim);
        msi.enable(&config, x86_msi_address(2), x86_msi_data(0x41)).unwrap();

        assert_eq!(sim.peek_u32(bdf(0, 3, 0), 0x84), 0xFEE0_2000);
        assert_eq!(sim.peek_u32(bdf(0, 3, 0), 0x88), 0);
        assert_eq!(sim.peek_u32(bdf(0, 3, 0), 0x8C), 0x41);
        let after = msi_of(&sim);
        assert!(after.enabled);
        assert_eq!(after.multiple_message_enable, 0);
        assert!(config.command().contains(CommandRegister::INTERRUPT_DISABLE));
        // The capability header (id, next) survived the read-modify-write of Message Control.
        assert_eq!(sim.peek_u32(bdf(0, 3, 0), 0x80) & 0xFFFF, 0xA805);

        msi.disable(&config);
        assert!(!msi_of(&sim).enabled);
    }

    #[test]
    fn enable_msi_unmasks_vector_zero_and_writes_upper_address() {
        let function =
            SimFunction::endpoint(0x8086, 0x1234, NIC).msi(0x50, true, true, 2).poke(0x60, &[0xFF, 0xFF, 0xFF, 0xFF]);
        let sim = SimConfigSpace::new().with(bdf(0, 3, 0), function);
        let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
        msi_of(&sim).enable(&config, 0x1_FEE0_0000, 0x30).unwrap();
        assert_eq!(sim.peek_u32(bdf(0, 3, 0), 0x54), 0xFEE0_0000);
        assert_eq!(sim.peek_u32(bdf(0, 3, 0), 0x58), 0x1);
        assert_eq!(sim.peek_u32(bdf(0, 3, 0), 0x5C), 0x30);
        assert_eq!(sim.peek_u32(bdf(0, 3, 0), 0x60), 0xFFFF_FFFE);
    }

    #[test]
    fn enable_msi_refuses_bad_addresses() {
        let sim = SimConfigSpace::new()
            .with(bdf(0, 3, 0), SimFunction::endpoint(0x8086, 0x1234, NIC).msi(0x50, false, false, 0));
        let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
        let msi = msi_of(&sim);
        assert_eq!(msi.enable(&config, 0x1_0000_0000, 0), Err(MsiError::AddressNeeds64Bit { address: 0x1_0000_0000 }));
        assert_eq!(msi.enable(&config, 0xFEE0_0002, 0), Err(MsiError::AddressNotDwordAligned { address: 0xFEE0_0002 }));
        assert!(sim.writes().is_empty(), "nothing written for a refused request");
    }

    #[test]
    fn enable_msi_reports_an_enable_bit_that_does_not_stick() {
        let function = SimFunction::endpoint(0x8086, 0x1234, NIC).msi(0x50, false, false, 0).writable(0x50, 0);
        let sim = SimConfigSpace::new().with(bdf(0, 3, 0), function);
        let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
        assert_eq!(msi_of(&sim).enable(&config, 0xFEE0_0000, 0x40), Err(MsiError::EnableDidNotStick));
    }
}
