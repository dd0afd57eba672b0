//! Text views for the shell and for tests.
//!
//! - [`lspci`]: one line per function, like `lspci` with IDs and BARs:
//!   `00:02.0 8086:100e class 02/00/00 Ethernet controller  BAR0 mem32 0xfeb80000 [128K] BAR1 io 0xc000 [64]`
//! - [`devices_view`]: the `pci:devices` scheme view, one block per function with every field
//!   enumeration decoded, blocks separated by a blank line.
//!
//! Both are built from `Display` adapters ([`LspciLine`], [`DeviceBlock`]) so the kernel can
//! also stream them to the serial port without allocating.
//!
//! A BDF prints as `bb:dd.f`, with the segment in front (`ssss:bb:dd.f`) only when it is not 0.

use alloc::string::String;
use core::fmt::{self, Write};

use pci_types::{HeaderType, PciAddress};

use crate::bar::{Bar, DecodedBar};
use crate::capability::{Capability, CapabilityKind};
use crate::enumerate::{ClassCode, PciFunction};

/// Displays a [`PciAddress`] as `bb:dd.f`, or `ssss:bb:dd.f` outside segment 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf(pub PciAddress);

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0;
        if a.segment() != 0 {
            write!(f, "{:04x}:", a.segment())?;
        }
        write!(f, "{:02x}:{:02x}.{}", a.bus(), a.device(), a.function())
    }
}

/// A name for a class code, as `lspci` would print it (PCI Code and ID Assignment Spec 1.11,
/// §1 "Class Codes"). Falls back to the base class name, then to "Unknown class".
pub fn class_name(class: ClassCode) -> &'static str {
    match (class.base, class.sub, class.prog_if) {
        (0x00, 0x01, _) => "VGA compatible unclassified device",
        (0x00, _, _) => "Non-VGA unclassified device",
        (0x01, 0x00, _) => "SCSI storage controller",
        (0x01, 0x01, _) => "IDE interface",
        (0x01, 0x02, _) => "Floppy disk controller",
        (0x01, 0x04, _) => "RAID bus controller",
        (0x01, 0x05, _) => "ATA controller",
        (0x01, 0x06, 0x01) => "SATA controller (AHCI)",
        (0x01, 0x06, _) => "SATA controller",
        (0x01, 0x07, _) => "Serial Attached SCSI controller",
        (0x01, 0x08, 0x02) => "Non-Volatile memory controller (NVMe)",
        (0x01, 0x08, _) => "Non-Volatile memory controller",
        (0x01, _, _) => "Mass storage controller",
        (0x02, 0x00, _) => "Ethernet controller",
        (0x02, _, _) => "Network controller",
        (0x03, 0x00, _) => "VGA compatible controller",
        (0x03, 0x01, _) => "XGA compatible controller",
        (0x03, 0x02, _) => "3D controller",
        (0x03, _, _) => "Display controller",
        (0x04, 0x00, _) => "Multimedia video controller",
        (0x04, 0x01, _) => "Multimedia audio controller",
        (0x04, 0x03, _) => "Audio device",
        (0x04, _, _) => "Multimedia controller",
        (0x05, 0x00, _) => "RAM memory",
        (0x05, 0x01, _) => "FLASH memory",
        (0x05, _, _) => "Memory controller",
        (0x06, 0x00, _) => "Host bridge",
        (0x06, 0x01, _) => "ISA bridge",
        (0x06, 0x02, _) => "EISA bridge",
        (0x06, 0x04, _) => "PCI bridge",
        (0x06, 0x07, _) => "CardBus bridge",
        (0x06, 0x09, _) => "PCI bridge (semi-transparent)",
        (0x06, _, _) => "Bridge",
        (0x07, 0x00, _) => "Serial controller",
        (0x07, 0x01, _) => "Parallel controller",
        (0x07, _, _) => "Communication controller",
        (0x08, 0x00, _) => "PIC",
        (0x08, 0x01, _) => "DMA controller",
        (0x08, 0x02, _) => "Timer",
        (0x08, 0x03, _) => "RTC",
        (0x08, 0x05, _) => "SD Host controller",
        (0x08, 0x06, _) => "IOMMU",
        (0x08, _, _) => "System peripheral",
        (0x09, _, _) => "Input device controller",
        (0x0A, _, _) => "Docking station",
        (0x0B, _, _) => "Processor",
        (0x0C, 0x03, 0x00) => "USB controller (UHCI)",
        (0x0C, 0x03, 0x10) => "USB controller (OHCI)",
        (0x0C, 0x03, 0x20) => "USB controller (EHCI)",
        (0x0C, 0x03, 0x30) => "USB controller (xHCI)",
        (0x0C, 0x03, _) => "USB controller",
        (0x0C, 0x05, _) => "SMBus",
        (0x0C, _, _) => "Serial bus controller",
        (0x0D, _, _) => "Wireless controller",
        (0x0E, _, _) => "Intelligent controller",
        (0x0F, _, _) => "Satellite communications controller",
        (0x10, _, _) => "Encryption controller",
        (0x11, _, _) => "Signal processing controller",
        (0x12, _, _) => "Processing accelerators",
        (0x13, _, _) => "Non-Essential Instrumentation",
        (0x40, _, _) => "Coprocessor",
        (0xFF, _, _) => "Unassigned class",
        _ => "Unknown class",
    }
}

/// A size in bytes, printed in the largest unit that divides it exactly: `64`, `4K`, `128K`,
/// `16M`, `2G`, `1T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
        let bytes = self.0;
        for (unit, suffix) in UNITS {
            if bytes >= unit && bytes.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", bytes / unit);
            }
        }
        write!(f, "{bytes}")
    }
}

impl fmt::Display for Bar {
    /// `mem32 0xfeb80000 [128K]`, `mem64 pref 0x800000000 [16M]`, `io 0xc000 [64]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Bar::Memory32 { .. } => "mem32",
            Bar::Memory64 { .. } => "mem64",
            Bar::Io { .. } => "io",
        };
        let pref = if self.is_prefetchable() { " pref" } else { "" };
        write!(f, "{kind}{pref} {:#x} [{}]", self.address(), HumanSize(self.size()))
    }
}

impl fmt::Display for DecodedBar {
    /// `BAR0 mem32 0xfeb80000 [128K]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BAR{} {}", self.slot, self.bar)
    }
}

impl fmt::Display for Capability {
    /// The capability's name and what was decoded from it, on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            CapabilityKind::PowerManagement(pm) => {
                write!(f, "Power Management v{}: state {}", pm.version, pm.power_state)?;
                if pm.d1 {
                    f.write_str(", D1")?;
                }
                if pm.d2 {
                    f.write_str(", D2")?;
                }
                write!(f, ", PME from {:#04x}", pm.pme_support)
            }
            CapabilityKind::Msi(msi) => {
                write!(
                    f,
                    "MSI: {}, {} vector(s) capable, {} enabled, {}, {}; address @{:#x}",
                    if msi.is_64bit { "64-bit" } else { "32-bit" },
                    msi.vectors_capable(),
                    1u8 << msi.multiple_message_enable.min(5),
                    if msi.per_vector_masking { "per-vector masking" } else { "no masking" },
                    if msi.enabled { "on" } else { "off" },
                    msi.address_offset,
                )?;
                if let Some(upper) = msi.upper_address_offset {
                    write!(f, " upper @{upper:#x}")?;
                }
                write!(f, " data @{:#x}", msi.data_offset)?;
                if let Some(mask) = msi.mask_offset {
                    write!(f, " mask @{mask:#x}")?;
                }
                Ok(())
            }
            CapabilityKind::MsiX(msix) => write!(
                f,
                "MSI-X: {} entries, table BAR{}+{:#x}, PBA BAR{}+{:#x}, {}{}",
                msix.table_size,
                msix.table_bar,
                msix.table_offset,
                msix.pba_bar,
                msix.pba_offset,
                if msix.enabled { "on" } else { "off" },
                if msix.function_mask { ", all masked" } else { "" },
            ),
            CapabilityKind::PciExpress(pcie) => {
                write!(f, "PCI Express v{}: {}", pcie.version, pcie.port_type)?;
                if pcie.slot_implemented {
                    f.write_str(", slot")?;
                }
                Ok(())
            }
            CapabilityKind::VendorSpecific { length } => {
                write!(f, "Vendor Specific, {length} bytes")
            }
            CapabilityKind::Other => write!(f, "{} (id {:#04x})", self.name(), self.id),
        }
    }
}

/// The name of an Interrupt Pin value (PCI Local Bus Spec 3.0, §6.2.4).
fn interrupt_pin_name(pin: u8) -> &'static str {
    match pin {
        0 => "none",
        1 => "INTA#",
        2 => "INTB#",
        3 => "INTC#",
        4 => "INTD#",
        _ => "invalid",
    }
}

/// The name of a header layout.
fn header_name(header: HeaderType) -> &'static str {
    match header {
        HeaderType::Endpoint => "endpoint (type 0)",
        HeaderType::PciPciBridge => "PCI-to-PCI bridge (type 1)",
        HeaderType::CardBusBridge => "CardBus bridge (type 2)",
        _ => "unknown",
    }
}

/// One `lspci`-style line for a function; see [`PciFunction::lspci_line`].
pub struct LspciLine<'a>(pub &'a PciFunction);

impl fmt::Display for LspciLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let function = self.0;
        write!(
            f,
            "{} {:04x}:{:04x} class {} {}",
            Bdf(function.address),
            function.vendor_id,
            function.device_id,
            function.class,
            class_name(function.class)
        )?;
        let mut separator = "  ";
        for bar in &function.bars {
            write!(f, "{separator}{bar}")?;
            separator = " ";
        }
        if let Some(buses) = function.bridge_buses {
            write!(f, "{separator}buses {:02x}-{:02x}", buses.secondary, buses.subordinate)?;
        }
        Ok(())
    }
}

/// The `pci:devices` block for a function; see [`PciFunction::device_block`].
pub struct DeviceBlock<'a>(pub &'a PciFunction);

impl fmt::Display for DeviceBlock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let function = self.0;
        writeln!(
            f,
            "{} {:04x}:{:04x} {}",
            Bdf(function.address),
            function.vendor_id,
            function.device_id,
            class_name(function.class)
        )?;
        writeln!(f, "  class        {} revision {:02x}", function.class, function.revision)?;
        writeln!(
            f,
            "  header       {}{}",
            header_name(function.header_type),
            if function.multi_function { ", multi-function" } else { "" }
        )?;
        if let Some(subsystem) = function.subsystem {
            writeln!(f, "  subsystem    {:04x}:{:04x}", subsystem.vendor_id, subsystem.device_id)?;
        }
        write!(f, "  interrupt    pin {}", interrupt_pin_name(function.interrupt_pin))?;
        if function.interrupt_pin != 0 {
            write!(f, " line {}", function.interrupt_line)?;
        }
        writeln!(f)?;
        for bar in &function.bars {
            writeln!(f, "  BAR{:<10}{}", bar.slot, bar.bar)?;
        }
        if let Some(buses) = function.bridge_buses {
            writeln!(
                f,
                "  buses        primary {:02x} secondary {:02x} subordinate {:02x}",
                buses.primary, buses.secondary, buses.subordinate
            )?;
        }
        if function.capabilities.is_empty() {
            writeln!(f, "  capabilities none")?;
        }
        for capability in &function.capabilities {
            writeln!(f, "  cap {:#04x}     {}", capability.offset, capability)?;
        }
        if !function.bridge_path.is_empty() {
            f.write_str("  upstream    ")?;
            for (i, hop) in function.bridge_path.iter().enumerate() {
                let arrow = if i == 0 { " " } else { " > " };
                write!(f, "{arrow}{}", Bdf(hop.address))?;
                match hop.port_type {
                    Some(port_type) => write!(f, " ({port_type})")?,
                    None => f.write_str(" (PCI bridge)")?,
                }
            }
            writeln!(f)?;
        }
        for error in &function.bar_errors {
            writeln!(f, "  problem      {error}")?;
        }
        if let Some(error) = function.capability_error {
            writeln!(f, "  problem      {error}")?;
        }
        Ok(())
    }
}

impl PciFunction {
    /// This function as one `lspci`-style line (no trailing newline).
    pub fn lspci_line(&self) -> LspciLine<'_> {
        LspciLine(self)
    }

    /// This function as a `pci:devices` block (ends with a newline).
    pub fn device_block(&self) -> DeviceBlock<'_> {
        DeviceBlock(self)
    }
}

/// All functions as `lspci` lines, each ending in a newline.
pub fn lspci(functions: &[PciFunction]) -> String {
    let mut out = String::new();
    for function in functions {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{}", function.lspci_line());
    }
    out
}

/// The `pci:devices` view: one block per function, separated by blank lines.
pub fn devices_view(functions: &[PciFunction]) -> String {
    let mut out = String::new();
    for (i, function) in functions.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = write!(out, "{}", function.device_block());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn bdf_shows_segment_only_when_nonzero() {
        assert_eq!(format!("{}", Bdf(PciAddress::new(0, 0, 0x1F, 2))), "00:1f.2");
        assert_eq!(format!("{}", Bdf(PciAddress::new(0, 0xA3, 0, 7))), "a3:00.7");
        assert_eq!(format!("{}", Bdf(PciAddress::new(1, 2, 3, 4))), "0001:02:03.4");
    }

    #[test]
    fn sizes_use_the_largest_exact_unit() {
        let shown: alloc::vec::Vec<_> = [64, 4 << 10, 128 << 10, 16 << 20, 2 << 30, 1 << 40, 1536]
            .iter()
            .map(|&b| format!("{}", HumanSize(b)))
            .collect();
        assert_eq!(shown, ["64", "4K", "128K", "16M", "2G", "1T", "1536"]);
    }

    #[test]
    fn bars_print_kind_address_and_size() {
        let bar = Bar::Memory32 { address: 0xFD00_0000, size: 16 << 20, prefetchable: true };
        assert_eq!(format!("{}", DecodedBar { slot: 0, bar }), "BAR0 mem32 pref 0xfd000000 [16M]");
        let bar = Bar::Memory64 { address: 0x8_0000_0000, size: 8 << 30, prefetchable: false };
        assert_eq!(format!("{bar}"), "mem64 0x800000000 [8G]");
        assert_eq!(format!("{}", Bar::Io { port: 0xC000, size: 64 }), "io 0xc000 [64]");
    }

    #[test]
    fn class_names_for_common_devices() {
        let name = |b, s, p| class_name(ClassCode::new(b, s, p));
        assert_eq!(name(0x06, 0x00, 0x00), "Host bridge");
        assert_eq!(name(0x06, 0x01, 0x00), "ISA bridge");
        assert_eq!(name(0x06, 0x04, 0x00), "PCI bridge");
        assert_eq!(name(0x01, 0x06, 0x01), "SATA controller (AHCI)");
        assert_eq!(name(0x01, 0x08, 0x02), "Non-Volatile memory controller (NVMe)");
        assert_eq!(name(0x02, 0x00, 0x00), "Ethernet controller");
        assert_eq!(name(0x03, 0x00, 0x00), "VGA compatible controller");
        assert_eq!(name(0x0C, 0x05, 0x00), "SMBus");
        assert_eq!(name(0x0C, 0x03, 0x30), "USB controller (xHCI)");
        assert_eq!(name(0x02, 0x42, 0x00), "Network controller");
        assert_eq!(name(0x77, 0x00, 0x00), "Unknown class");
    }
}
