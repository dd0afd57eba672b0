//! The ACPI DMAR table (VT-d spec §8): how firmware tells the OS which remapping units exist.
//!
//! Firmware describes each remapping unit with a DRHD structure (§8.3): the physical address
//! of its registers and the devices it translates (*device scopes*, §8.3.1), or "every PCI
//! device of this segment not claimed by another unit" (`INCLUDE_PCI_ALL`). RMRR structures
//! (§8.4) name memory that firmware itself keeps using for DMA (USB legacy emulation, for
//! example), which must stay identity-mapped for the devices in their scope.
//!
//! The table comes from firmware, so it is untrusted input: every length is checked against
//! what the slice holds, nothing is indexed without a bounds check, and a malformed table is an
//! [`DmarError`] that says what is wrong and where, never a panic.
//!
//! ```text
//! offset 0   ACPI header (36 bytes: "DMAR", length, revision, checksum, OEM ids)
//!        36  host address width − 1
//!        37  flags: INTR_REMAP, X2APIC_OPT_OUT, DMA_CTRL_PLATFORM_OPT_IN
//!        38  10 reserved bytes
//!        48  remapping structures: type u16, length u16, body...
//! ```
//!
//! # Example
//! A machine with one remapping unit (a DRHD, §8.3) that translates the NIC at 00:02.0 and a
//! USB controller behind the bridge at 00:1c.0, whose firmware keeps a legacy-keyboard buffer
//! (an RMRR, §8.4). Parsing finds the unit's registers; a scope path through a bridge
//! (§8.3.1) only becomes a requester id once PCI enumeration says which bus the bridge leads
//! to. The bytes come from firmware, so a copy cut short or with one byte changed is refused
//! with an error that says what is wrong, never half-trusted.
//! ```
//! use iommu_vtd::dmar::{DeviceScope, Dmar, DmarBuilder, DmarError, PathEntry, ScopeKind};
//! use iommu_vtd::SourceId;
//! let endpoint = |start_bus, hops: &[(u8, u8)]| DeviceScope { kind: ScopeKind::PciEndpoint, enumeration_id: 0,
//!     start_bus, path: hops.iter().map(|&(device, function)| PathEntry { device, function }).collect() };
//! let usb = endpoint(0, &[(0x1c, 0), (0, 0)]); // hop 1 is a bridge, hop 2 the device below it
//! let bytes = DmarBuilder::new(39, 0) // what firmware would hand over: header, checksum and all
//!     .drhd(0, 0, 0xfed9_0000, &[endpoint(0, &[(2, 0)]), usb.clone()])
//!     .rmrr(0, 0x7e00_0000, 0x7e00_ffff, &[usb])
//!     .build();
//!
//! let dmar = Dmar::parse(&bytes).unwrap();
//! let unit = &dmar.units[0];
//! assert_eq!((unit.register_base, unit.register_size(), unit.include_pci_all()), (0xfed9_0000, 4096, false));
//! let secondary_bus = |bus, dev, func| ((bus, dev, func) == (0, 0x1c, 0)).then_some(2); // from PCI config space
//! assert_eq!(unit.scopes[1].resolve(secondary_bus), Ok(SourceId::new(2, 0, 0)));
//! assert_eq!(dmar.unit_for(0, SourceId::new(2, 0, 0), secondary_bus), Some(unit));
//! assert_eq!(dmar.unit_for(0, SourceId::new(0, 3, 0), secondary_bus), None); // nothing remaps its DMA
//! assert_eq!((dmar.rmrrs[0].base, dmar.rmrrs[0].limit), (0x7e00_0000, 0x7e00_ffff)); // identity-map for 02:00.0
//!
//! let truncated = Dmar::parse(&bytes[..bytes.len() - 2]).unwrap_err();
//! assert_eq!(truncated, DmarError::BadLength { declared: bytes.len() as u32, available: bytes.len() - 2 });
//! let mut flipped = bytes.clone();
//! flipped[60] ^= 0x10; // one bit of the register address: the driver would program the wrong page
//! assert!(Dmar::parse(&flipped).unwrap_err().to_string().starts_with("DMAR checksum fails"));
//! ```

use alloc::vec::Vec;
use core::fmt;

use super::SourceId;

/// Size of the ACPI header plus the DMAR fixed fields: where remapping structures start.
pub const DMAR_HEADER_LEN: usize = 48;

/// The table's flags byte (§8.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DmarFlags(pub u8);

impl DmarFlags {
    /// INTR_REMAP (bit 0): the platform supports interrupt remapping.
    pub const fn intr_remap(self) -> bool {
        self.0 & 1 != 0
    }
    /// X2APIC_OPT_OUT (bit 1): firmware asks the OS not to enable x2APIC mode.
    pub const fn x2apic_opt_out(self) -> bool {
        self.0 & 2 != 0
    }
    /// DMA_CTRL_PLATFORM_OPT_IN (bit 2): firmware supports DMA protection when the OS asks.
    pub const fn dma_ctrl_platform_opt_in(self) -> bool {
        self.0 & 4 != 0
    }
}

/// A parsed DMAR table.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Dmar {
    /// Host address width in bits: the widest physical address DMA can reach.
    pub host_address_width: u8,
    /// Platform flags.
    pub flags: DmarFlags,
    /// Remapping units (DRHD), in table order.
    pub units: Vec<Drhd>,
    /// Reserved memory regions (RMRR), in table order.
    pub rmrrs: Vec<Rmrr>,
    /// Structures this parser does not use (ATSR, RHSA, ANDD, SATC, unknown types).
    pub skipped: Vec<SkippedStructure>,
}

/// A DMA remapping hardware unit definition (DRHD, type 0, §8.3).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Drhd {
    /// Flags; bit 0 is INCLUDE_PCI_ALL.
    pub flags: u8,
    /// Size field (bits 3..0): the register set spans 2^N 4 KiB pages.
    pub size: u8,
    /// PCI segment the unit serves.
    pub segment: u16,
    /// Physical address of the unit's registers.
    pub register_base: u64,
    /// Devices the unit translates (besides, with INCLUDE_PCI_ALL, every unclaimed one).
    pub scopes: Vec<DeviceScope>,
}

impl Drhd {
    /// INCLUDE_PCI_ALL: the unit translates every device of its segment that no other unit's
    /// scope names.
    pub const fn include_pci_all(&self) -> bool {
        self.flags & 1 != 0
    }

    /// Whether the unit translates any device: it names at least one device scope, or has
    /// INCLUDE_PCI_ALL. A unit with neither (firmware describing hardware it left unused) is
    /// skipped rather than brought up, as Linux does when it parses the DRHDs
    /// (`drivers/iommu/intel/dmar.c`): enabling it would only cost an interrupt and a queue.
    pub fn translates_anything(&self) -> bool {
        self.include_pci_all() || !self.scopes.is_empty()
    }

    /// Bytes of register space to map.
    pub const fn register_size(&self) -> usize {
        4096 << (self.size & 0xf)
    }
}

/// A reserved memory region reporting structure (RMRR, type 1, §8.4): memory firmware-owned
/// DMA keeps using, which must stay identity-mapped for the devices in scope.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Rmrr {
    /// PCI segment.
    pub segment: u16,
    /// First byte (4 KiB aligned).
    pub base: u64,
    /// Last byte, inclusive (the byte after it is 4 KiB aligned).
    pub limit: u64,
    /// Devices that use the region.
    pub scopes: Vec<DeviceScope>,
}

/// A remapping structure the parser skipped, kept for display.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SkippedStructure {
    /// The structure type.
    pub kind: u16,
    /// Byte offset in the table.
    pub offset: usize,
    /// Its length field.
    pub length: u16,
}

impl SkippedStructure {
    /// The structure's name in the spec ("ATSR", ...), or "unknown".
    pub const fn name(&self) -> &'static str {
        match self.kind {
            2 => "ATSR",
            3 => "RHSA",
            4 => "ANDD",
            5 => "SATC",
            6 => "SIDP",
            _ => "unknown",
        }
    }
}

/// The type of a device scope entry (§8.3.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ScopeKind {
    /// 1: a PCI endpoint device.
    PciEndpoint,
    /// 2: a PCI-PCI bridge and every device below it.
    PciSubHierarchy,
    /// 3: an I/O APIC (for interrupt remapping).
    IoApic,
    /// 4: an HPET (MSI capable timer block).
    Hpet,
    /// 5: an ACPI namespace device (matched through ANDD).
    AcpiNamespace,
    /// Any other value (reserved).
    Other(u8),
}

impl ScopeKind {
    const fn from_u8(v: u8) -> ScopeKind {
        match v {
            1 => ScopeKind::PciEndpoint,
            2 => ScopeKind::PciSubHierarchy,
            3 => ScopeKind::IoApic,
            4 => ScopeKind::Hpet,
            5 => ScopeKind::AcpiNamespace,
            x => ScopeKind::Other(x),
        }
    }
}

/// One hop of a device-scope path: a device and function on the current bus.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PathEntry {
    /// PCI device number.
    pub device: u8,
    /// PCI function number.
    pub function: u8,
}

/// A device scope (§8.3.1): how to find a device from a starting bus by following bridges.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeviceScope {
    /// What kind of device.
    pub kind: ScopeKind,
    /// I/O APIC id, HPET number or ACPI device number, for those kinds.
    pub enumeration_id: u8,
    /// The bus the path starts on.
    pub start_bus: u8,
    /// Device/function hops; every entry but the last is a PCI-PCI bridge.
    pub path: Vec<PathEntry>,
}

/// Why a device scope could not be resolved to a requester id.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ScopeError {
    /// The scope has no path entries.
    EmptyPath,
    /// A hop names device > 31 or function > 7.
    BadPathEntry {
        /// Index of the hop.
        hop: usize,
    },
    /// A bridge on the path has no secondary bus (not a bridge, absent, or not configured).
    NotABridge {
        /// The bridge that was expected.
        at: SourceId,
    },
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::EmptyPath => f.write_str("device scope has an empty path (firmware bug)"),
            ScopeError::BadPathEntry { hop } => {
                write!(f, "device scope path entry {hop} names a device > 31 or function > 7 (firmware bug)")
            }
            ScopeError::NotABridge { at } => write!(
                f,
                "device scope path goes through {at}, which is not a configured PCI bridge; was PCI enumerated \
                 (bus numbers assigned) before resolving DMAR scopes?"
            ),
        }
    }
}

impl DeviceScope {
    /// Follows the path to the requester id of the device it names (§8.3.1): the first hop is
    /// on `start_bus`; each hop but the last is a bridge whose secondary bus the next hop is on.
    /// `secondary_bus(bus, device, function)` reads a bridge's secondary bus number from PCI
    /// configuration space (`None` if that function is not a bridge).
    ///
    /// For a [`ScopeKind::PciSubHierarchy`] the result is the bridge itself; the devices below
    /// it are those on its secondary..subordinate buses.
    pub fn resolve(&self, secondary_bus: impl Fn(u8, u8, u8) -> Option<u8>) -> Result<SourceId, ScopeError> {
        let (last, bridges) = self.path.split_last().ok_or(ScopeError::EmptyPath)?;
        let mut bus = self.start_bus;
        for (hop, e) in bridges.iter().enumerate() {
            if e.device > 31 || e.function > 7 {
                return Err(ScopeError::BadPathEntry { hop });
            }
            bus = secondary_bus(bus, e.device, e.function)
                .ok_or(ScopeError::NotABridge { at: SourceId::new(bus, e.device, e.function) })?;
        }
        if last.device > 31 || last.function > 7 {
            return Err(ScopeError::BadPathEntry { hop: bridges.len() });
        }
        Ok(SourceId::new(bus, last.device, last.function))
    }
}

/// What is wrong with a DMAR table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DmarError {
    /// Fewer bytes than the fixed part of the table.
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// The signature is not "DMAR".
    BadSignature {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The header's length field is smaller than the fixed part or larger than the data.
    BadLength {
        /// The length field.
        declared: u32,
        /// Bytes available.
        available: usize,
    },
    /// The bytes of the table do not sum to zero modulo 256.
    BadChecksum {
        /// The sum found.
        sum: u8,
    },
    /// The host address width is more than 64 bits.
    BadHostAddressWidth {
        /// The width the table claims.
        bits: u16,
    },
    /// A remapping structure is malformed.
    BadStructure {
        /// Byte offset of the structure in the table.
        offset: usize,
        /// Its type.
        kind: u16,
        /// What is wrong.
        problem: StructureProblem,
    },
    /// A device scope inside a structure is malformed.
    BadScope {
        /// Byte offset of the scope in the table.
        offset: usize,
        /// What is wrong.
        problem: ScopeProblem,
    },
}

/// What is wrong with a remapping structure ([`DmarError::BadStructure`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StructureProblem {
    /// The 4-byte structure header runs past the end of the table.
    HeaderPastEnd,
    /// The length field is smaller than the structure header (§8.2).
    LengthBelowHeader,
    /// The length field runs past the end of the table.
    LengthPastEnd,
    /// A DRHD is shorter than its fixed part (§8.3).
    DrhdTooShort,
    /// A DRHD register base is zero or not 4 KiB aligned (§8.3).
    BadRegisterBase,
    /// An RMRR is shorter than its fixed part (§8.4).
    RmrrTooShort,
    /// An RMRR region is not a run of whole 4 KiB pages (§8.4).
    BadRmrrRange,
}

impl StructureProblem {
    /// The words a log line uses for it.
    pub const fn text(self) -> &'static str {
        match self {
            StructureProblem::HeaderPastEnd => "the structure header runs past the end of the table",
            StructureProblem::LengthBelowHeader => "length field is smaller than the 4-byte structure header",
            StructureProblem::LengthPastEnd => "length field runs past the end of the table",
            StructureProblem::DrhdTooShort => "DRHD is shorter than its 16-byte fixed part",
            StructureProblem::BadRegisterBase => "DRHD register base address is zero or not 4 KiB aligned",
            StructureProblem::RmrrTooShort => "RMRR is shorter than its 24-byte fixed part",
            StructureProblem::BadRmrrRange => {
                "RMRR region is not a run of whole 4 KiB pages (base > limit or unaligned)"
            }
        }
    }
}

impl fmt::Display for StructureProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// What is wrong with a device scope ([`DmarError::BadScope`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ScopeProblem {
    /// The 6-byte scope header runs past the end of its structure (§8.3.1).
    HeaderPastEnd,
    /// The length field is smaller than the scope header.
    LengthBelowHeader,
    /// The length leaves half a path entry (path entries are 2 bytes).
    HalfPathEntry,
    /// The length field runs past the end of its structure.
    LengthPastEnd,
}

impl ScopeProblem {
    /// The words a log line uses for it.
    pub const fn text(self) -> &'static str {
        match self {
            ScopeProblem::HeaderPastEnd => "the scope's 6-byte header runs past the end of its structure",
            ScopeProblem::LengthBelowHeader => "length field is smaller than the 6-byte scope header",
            ScopeProblem::HalfPathEntry => "length leaves half a path entry (path entries are 2 bytes)",
            ScopeProblem::LengthPastEnd => "length field runs past the end of its structure",
        }
    }
}

impl fmt::Display for ScopeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl fmt::Display for DmarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmarError::TooShort { len } => {
                write!(
                    f,
                    "DMAR table is {len} bytes, less than its {DMAR_HEADER_LEN}-byte fixed part; the copy is truncated"
                )
            }
            DmarError::BadSignature { found } => {
                write!(f, "not a DMAR table: signature is {:?}", core::str::from_utf8(found).unwrap_or("(binary)"))
            }
            DmarError::BadLength { declared, available } => write!(
                f,
                "DMAR header says {declared} bytes but {available} are available (or fewer than {DMAR_HEADER_LEN}); \
                 the table copy is truncated or the header is corrupt"
            ),
            DmarError::BadChecksum { sum } => {
                write!(f, "DMAR checksum fails (bytes sum to {sum:#04x}, not 0); the table is corrupt, VT-d stays off")
            }
            DmarError::BadHostAddressWidth { bits } => {
                write!(f, "DMAR host address width of {bits} bits is impossible (firmware bug)")
            }
            DmarError::BadStructure { offset, kind, problem } => {
                write!(f, "DMAR structure of type {kind} at offset {offset}: {problem}")
            }
            DmarError::BadScope { offset, problem } => write!(f, "DMAR device scope at offset {offset}: {problem}"),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

impl Dmar {
    /// Parses a DMAR table (header included). Bytes after the header's length are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Dmar, DmarError> {
        if bytes.len() < DMAR_HEADER_LEN {
            return Err(DmarError::TooShort { len: bytes.len() });
        }
        let mut sig = [0u8; 4];
        sig.copy_from_slice(&bytes[..4]);
        if &sig != b"DMAR" {
            return Err(DmarError::BadSignature { found: sig });
        }
        let declared = u32_at(bytes, 4).unwrap_or(0);
        let len = declared as usize;
        if len < DMAR_HEADER_LEN || len > bytes.len() {
            return Err(DmarError::BadLength { declared, available: bytes.len() });
        }
        let table = &bytes[..len];
        let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        if sum != 0 {
            return Err(DmarError::BadChecksum { sum });
        }
        let haw = table[36] as u16 + 1;
        if haw > 64 {
            return Err(DmarError::BadHostAddressWidth { bits: haw });
        }
        let mut out = Dmar {
            host_address_width: haw as u8,
            flags: DmarFlags(table[37]),
            units: Vec::new(),
            rmrrs: Vec::new(),
            skipped: Vec::new(),
        };
        let mut off = DMAR_HEADER_LEN;
        while off < len {
            let bad =
                |problem| DmarError::BadStructure { offset: off, kind: u16_at(table, off).unwrap_or(0xffff), problem };
            let (Some(kind), Some(slen)) = (u16_at(table, off), u16_at(table, off + 2)) else {
                return Err(bad(StructureProblem::HeaderPastEnd));
            };
            let slen_u = slen as usize;
            if slen_u < 4 {
                return Err(bad(StructureProblem::LengthBelowHeader));
            }
            let Some(body) = table.get(off..off + slen_u) else {
                return Err(bad(StructureProblem::LengthPastEnd));
            };
            match kind {
                0 => {
                    if slen_u < 16 {
                        return Err(bad(StructureProblem::DrhdTooShort));
                    }
                    // The register set is at least one 4 KiB page, mapped as such (§8.3,
                    // Register Base Address; §10.4): a zero or unaligned base cannot be a unit.
                    let base = u64_at(body, 8).unwrap_or(0);
                    if base == 0 || base % 4096 != 0 {
                        return Err(bad(StructureProblem::BadRegisterBase));
                    }
                    out.units.push(Drhd {
                        flags: body[4],
                        size: body[5] & 0xf,
                        segment: u16_at(body, 6).unwrap_or(0),
                        register_base: base,
                        scopes: parse_scopes(body, 16, off)?,
                    });
                }
                1 => {
                    if slen_u < 24 {
                        return Err(bad(StructureProblem::RmrrTooShort));
                    }
                    let base = u64_at(body, 8).unwrap_or(0);
                    let limit = u64_at(body, 16).unwrap_or(0);
                    if base > limit || base % 4096 != 0 || limit % 4096 != 4095 {
                        return Err(bad(StructureProblem::BadRmrrRange));
                    }
                    out.rmrrs.push(Rmrr {
                        segment: u16_at(body, 6).unwrap_or(0),
                        base,
                        limit,
                        scopes: parse_scopes(body, 24, off)?,
                    });
                }
                _ => out.skipped.push(SkippedStructure { kind, offset: off, length: slen }),
            }
            off += slen_u;
        }
        Ok(out)
    }

    /// The unit that translates the PCI function `dev` on `segment`: the unit whose scope
    /// names it (an endpoint entry, or a sub-hierarchy bridge it is or whose secondary bus it
    /// is on), else the segment's INCLUDE_PCI_ALL unit. `secondary_bus` reads bridges as in
    /// [`DeviceScope::resolve`]. Devices deeper than one bus below a sub-hierarchy bridge need
    /// the bridge's subordinate bus number: use [`Dmar::unit_for_in_hierarchy`] for them.
    pub fn unit_for(
        &self,
        segment: u16,
        dev: SourceId,
        secondary_bus: impl Fn(u8, u8, u8) -> Option<u8>,
    ) -> Option<&Drhd> {
        let buses = |b: u8, d: u8, f: u8| secondary_bus(b, d, f).map(|s| (s, s));
        self.unit_for_in_hierarchy(segment, dev, &secondary_bus, buses)
    }

    /// Like [`Dmar::unit_for`], with `bus_range` giving a bridge's (secondary, subordinate) bus
    /// numbers, so a device anywhere below a sub-hierarchy bridge — behind further bridges —
    /// is matched to the unit that names the bridge (VT-d §8.3.1: a sub-hierarchy scope covers
    /// every bus the bridge forwards to).
    pub fn unit_for_in_hierarchy(
        &self,
        segment: u16,
        dev: SourceId,
        secondary_bus: impl Fn(u8, u8, u8) -> Option<u8>,
        bus_range: impl Fn(u8, u8, u8) -> Option<(u8, u8)>,
    ) -> Option<&Drhd> {
        let named = self.units.iter().filter(|u| u.segment == segment).find(|u| {
            u.scopes.iter().any(|s| match (s.kind, s.resolve(&secondary_bus)) {
                (ScopeKind::PciEndpoint, Ok(id)) => id == dev,
                (ScopeKind::PciSubHierarchy, Ok(br)) => {
                    br == dev
                        || bus_range(br.bus(), br.device(), br.function())
                            .is_some_and(|(sec, sub)| (sec..=sub).contains(&dev.bus()))
                }
                _ => false,
            })
        });
        named.or_else(|| self.units.iter().find(|u| u.segment == segment && u.include_pci_all()))
    }
}

/// Parses the device scopes in `body[start..]`; `table_off` is the structure's offset in the
/// table (for messages).
fn parse_scopes(body: &[u8], start: usize, table_off: usize) -> Result<Vec<DeviceScope>, DmarError> {
    let mut scopes = Vec::new();
    let mut off = start;
    while off < body.len() {
        let bad = |problem| DmarError::BadScope { offset: table_off + off, problem };
        let Some(hdr) = body.get(off..off + 6) else {
            return Err(bad(ScopeProblem::HeaderPastEnd));
        };
        let slen = hdr[1] as usize;
        if slen < 6 {
            return Err(bad(ScopeProblem::LengthBelowHeader));
        }
        if (slen - 6) % 2 != 0 {
            return Err(bad(ScopeProblem::HalfPathEntry));
        }
        let Some(scope) = body.get(off..off + slen) else {
            return Err(bad(ScopeProblem::LengthPastEnd));
        };
        let path = scope[6..].as_chunks::<2>().0.iter().map(|p| PathEntry { device: p[0], function: p[1] }).collect();
        scopes.push(DeviceScope { kind: ScopeKind::from_u8(hdr[0]), enumeration_id: hdr[4], start_bus: hdr[5], path });
        off += slen;
    }
    Ok(scopes)
}

/// Builds DMAR tables byte by byte, with a correct length and checksum: for tests and for
/// anyone who wants to describe a machine without firmware.
#[derive(Clone, Debug, Default)]
pub struct DmarBuilder {
    body: Vec<u8>,
    haw: u8,
    flags: u8,
}

impl DmarBuilder {
    /// An empty table for a host address width of `haw_bits` with `flags`.
    pub fn new(haw_bits: u8, flags: u8) -> DmarBuilder {
        DmarBuilder { body: Vec::new(), haw: haw_bits.saturating_sub(1), flags }
    }

    fn scope_bytes(out: &mut Vec<u8>, scopes: &[DeviceScope]) {
        for s in scopes {
            let kind = match s.kind {
                ScopeKind::PciEndpoint => 1,
                ScopeKind::PciSubHierarchy => 2,
                ScopeKind::IoApic => 3,
                ScopeKind::Hpet => 4,
                ScopeKind::AcpiNamespace => 5,
                ScopeKind::Other(x) => x,
            };
            out.extend_from_slice(&[kind, (6 + 2 * s.path.len()) as u8, 0, 0, s.enumeration_id, s.start_bus]);
            for p in &s.path {
                out.extend_from_slice(&[p.device, p.function]);
            }
        }
    }

    /// Appends a DRHD.
    pub fn drhd(mut self, flags: u8, segment: u16, base: u64, scopes: &[DeviceScope]) -> DmarBuilder {
        let mut s = Vec::new();
        Self::scope_bytes(&mut s, scopes);
        let len = (16 + s.len()) as u16;
        self.body.extend_from_slice(&0u16.to_le_bytes());
        self.body.extend_from_slice(&len.to_le_bytes());
        self.body.extend_from_slice(&[flags, 0]);
        self.body.extend_from_slice(&segment.to_le_bytes());
        self.body.extend_from_slice(&base.to_le_bytes());
        self.body.extend_from_slice(&s);
        self
    }

    /// Appends an RMRR.
    pub fn rmrr(mut self, segment: u16, base: u64, limit: u64, scopes: &[DeviceScope]) -> DmarBuilder {
        let mut s = Vec::new();
        Self::scope_bytes(&mut s, scopes);
        let len = (24 + s.len()) as u16;
        self.body.extend_from_slice(&1u16.to_le_bytes());
        self.body.extend_from_slice(&len.to_le_bytes());
        self.body.extend_from_slice(&[0, 0]);
        self.body.extend_from_slice(&segment.to_le_bytes());
        self.body.extend_from_slice(&base.to_le_bytes());
        self.body.extend_from_slice(&limit.to_le_bytes());
        self.body.extend_from_slice(&s);
        self
    }

    /// Appends raw structure bytes (type and length included), for other types.
    pub fn raw(mut self, bytes: &[u8]) -> DmarBuilder {
        self.body.extend_from_slice(bytes);
        self
    }

    /// The finished table.
    pub fn build(self) -> Vec<u8> {
        let len = (DMAR_HEADER_LEN + self.body.len()) as u32;
        let mut t = Vec::with_capacity(len as usize);
        t.extend_from_slice(b"DMAR");
        t.extend_from_slice(&len.to_le_bytes());
        t.push(1); // revision
        t.push(0); // checksum, fixed below
        t.extend_from_slice(b"TEACH ");
        t.extend_from_slice(b"VTDTABLE");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"TEAC");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.push(self.haw);
        t.push(self.flags);
        t.extend_from_slice(&[0; 10]);
        t.extend_from_slice(&self.body);
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }
}
