//! A simulated configuration space, for host tests and in-kernel self-tests.
//!
//! [`SimConfigSpace`] holds [`SimFunction`]s by address and implements the access traits, so
//! every piece of this crate runs over it exactly as it runs over ECAM. A simulated function is
//! 4 KiB of bytes plus a *writable mask* per dword: a write changes only the masked bits, as on
//! hardware, where read-only registers ignore writes and a BAR's hardwired-zero address bits
//! stay zero (that is what makes BAR sizing work). The Status register's error bits are
//! write-1-to-clear, like the real thing (PCI Local Bus Spec 3.0, §6.2.3). Every write is
//! recorded with the Command register value at the time, so tests can check *how* the code
//! under test talked to the device, not only the end state.
//!
//! Functions are built either from named parts ([`SimFunction::endpoint`],
//! [`SimFunction::bridge`], then `bar32`, `msi`, ...) or from a raw dump of a real device
//! ([`SimFunction::from_bytes`], e.g. `include_bytes!` of the 256 bytes
//! `/sys/bus/pci/devices/*/config` gives, or a QEMU capture). [`fixtures`] has the named
//! machines the tests use.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use pci_types::{ConfigRegionAccess, PciAddress};
use spin::Mutex;

use crate::access::{CheckedConfigAccess, reg};
use crate::capability::{CAP_MSI, CAP_MSIX, CAP_PCI_EXPRESS, CAP_POWER_MANAGEMENT, PciePortType};
use crate::enumerate::{BridgeBuses, ClassCode};

/// Bytes of configuration space per simulated function.
pub const SIM_CONFIG_SIZE: usize = 4096;

/// Command bits a typical function implements: I/O, memory, bus master, parity error
/// response, SERR# enable, interrupt disable.
const COMMAND_WRITABLE: u32 = 0x0547;

/// Status bits that are write-1-to-clear: master data parity error (8), signaled target abort
/// (11), received target abort (12), received master abort (13), signaled system error (14),
/// detected parity error (15). PCI Local Bus Spec 3.0, §6.2.3, Table 6-2.
const STATUS_RW1C: u16 = 0xF900;

/// Shorthand for a segment-0 address.
pub fn bdf(bus: u8, device: u8, function: u8) -> PciAddress {
    PciAddress::new(0, bus, device, function)
}

/// One simulated function: its configuration bytes and which bits of each dword are writable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFunction {
    bytes: Vec<u8>,
    writable: Vec<u32>,
    all_ones_from: Option<u16>,
    last_capability: Option<u8>,
}

impl SimFunction {
    /// A function with all-zero configuration space and nothing writable.
    fn blank() -> Self {
        Self {
            bytes: vec![0; SIM_CONFIG_SIZE],
            writable: vec![0; SIM_CONFIG_SIZE / 4],
            all_ones_from: None,
            last_capability: None,
        }
    }

    /// A function from a raw configuration dump (typically 256 bytes, or 4096 for PCIe).
    ///
    /// Bytes beyond the dump read as zero (which also ends any extended capability list);
    /// bytes beyond 4096 are ignored. Writable: the common Command bits, Interrupt Line, and the
    /// whole device-specific area from 0x40 (plain RAM, so MSI can be programmed). BARs are
    /// read-only until given a size with [`Self::bar_size`]: a dump does not record sizes.
    pub fn from_bytes(dump: &[u8]) -> Self {
        let mut function = Self::blank();
        let len = dump.len().min(SIM_CONFIG_SIZE);
        function.bytes[..len].copy_from_slice(&dump[..len]);
        function.writable[usize::from(reg::COMMAND) / 4] = COMMAND_WRITABLE;
        function.writable[usize::from(reg::INTERRUPT_LINE) / 4] = 0xFF;
        for mask in &mut function.writable[0x40 / 4..] {
            *mask = u32::MAX;
        }
        function
    }

    /// A type 0 (endpoint) function with the given IDs and class.
    pub fn endpoint(vendor_id: u16, device_id: u16, class: ClassCode) -> Self {
        let mut function = Self::blank();
        function.set_u16(reg::VENDOR_ID, vendor_id);
        function.set_u16(reg::DEVICE_ID, device_id);
        function.set_u8(reg::PROG_IF, class.prog_if);
        function.set_u8(reg::SUBCLASS, class.sub);
        function.set_u8(reg::BASE_CLASS, class.base);
        function.writable[usize::from(reg::COMMAND) / 4] = COMMAND_WRITABLE;
        function.writable[usize::from(reg::INTERRUPT_LINE) / 4] = 0xFF;
        function
    }

    /// A type 1 (PCI-to-PCI bridge) function, class 06/04/00, with the given bus numbers.
    pub fn bridge(vendor_id: u16, device_id: u16, buses: BridgeBuses) -> Self {
        let mut function = Self::endpoint(vendor_id, device_id, ClassCode::new(0x06, 0x04, 0x00));
        function.set_u8(reg::HEADER_TYPE, 0x01);
        function.set_u8(reg::PRIMARY_BUS, buses.primary);
        function.set_u8(reg::SECONDARY_BUS, buses.secondary);
        function.set_u8(reg::SUBORDINATE_BUS, buses.subordinate);
        function.writable[usize::from(reg::PRIMARY_BUS) / 4] = 0x00FF_FFFF;
        function
    }

    /// A function that reads all-ones everywhere, vendor ID included: what an empty slot, or a
    /// device that fell off the bus, looks like.
    pub fn all_ones() -> Self {
        Self { all_ones_from: Some(0), ..Self::blank() }
    }

    /// Makes everything from `offset` on read as all-ones (writes are still taken). With
    /// `offset` 4, the function answers its vendor/device ID and nothing else.
    pub fn reads_all_ones_from(mut self, offset: u16) -> Self {
        self.all_ones_from = Some(offset);
        self
    }

    /// Sets the Revision ID.
    pub fn revision(mut self, revision: u8) -> Self {
        self.set_u8(reg::REVISION_ID, revision);
        self
    }

    /// Sets Header Type bit 7: the device has more functions.
    pub fn multi_function(mut self) -> Self {
        let header = self.u8_at(reg::HEADER_TYPE);
        self.set_u8(reg::HEADER_TYPE, header | 0x80);
        self
    }

    /// Overwrites the whole Header Type byte (for malformed fixtures).
    pub fn header_type_raw(mut self, header_type: u8) -> Self {
        self.set_u8(reg::HEADER_TYPE, header_type);
        self
    }

    /// Sets the subsystem IDs (type 0 layout).
    pub fn subsystem(mut self, vendor_id: u16, device_id: u16) -> Self {
        self.set_u16(reg::SUBSYSTEM_VENDOR_ID, vendor_id);
        self.set_u16(reg::SUBSYSTEM_ID, device_id);
        self
    }

    /// Sets Interrupt Line and Interrupt Pin (1 = INTA#).
    pub fn interrupt(mut self, line: u8, pin: u8) -> Self {
        self.set_u8(reg::INTERRUPT_LINE, line);
        self.set_u8(reg::INTERRUPT_PIN, pin);
        self
    }

    /// Sets the Command register's initial value.
    pub fn command(mut self, command: u16) -> Self {
        self.set_u16(reg::COMMAND, command);
        self
    }

    /// Sets the Status register's initial value (bit 4 is managed by [`Self::capability`]).
    pub fn status(mut self, status: u16) -> Self {
        self.set_u16(reg::STATUS, status);
        self
    }

    /// A 32-bit memory BAR of `size` bytes (a power of two, at least 16; 0 = unimplemented).
    pub fn bar32(self, slot: u8, address: u32, size: u32, prefetchable: bool) -> Self {
        let flags = if prefetchable { 0x8 } else { 0x0 };
        let mask = !size.wrapping_sub(1) & !0xF;
        let mask = if size == 0 { 0 } else { mask };
        self.raw_bar(slot, (address & !0xF) | flags, mask)
    }

    /// A 64-bit memory BAR of `size` bytes in `slot` and `slot + 1`.
    pub fn bar64(self, slot: u8, address: u64, size: u64, prefetchable: bool) -> Self {
        let flags = 0x4 | if prefetchable { 0x8 } else { 0x0 };
        let mask = if size == 0 { 0 } else { !size.wrapping_sub(1) & !0xF };
        self.raw_bar(slot, (address as u32 & !0xF) | flags, mask as u32).raw_bar(
            slot.saturating_add(1),
            (address >> 32) as u32,
            (mask >> 32) as u32,
        )
    }

    /// An I/O BAR of `size` ports (a power of two, at least 4).
    pub fn io_bar(self, slot: u8, port: u32, size: u32) -> Self {
        let mask = if size == 0 { 0 } else { !size.wrapping_sub(1) & !0x3 };
        self.raw_bar(slot, (port & !0x3) | 0x1, mask)
    }

    /// A BAR register with an exact value and writable mask (for malformed fixtures).
    pub fn raw_bar(mut self, slot: u8, value: u32, writable: u32) -> Self {
        let offset = reg::BAR0 + 4 * u16::from(slot);
        self.set_u32(offset, value);
        self.set_writable(offset, writable);
        self
    }

    /// Gives the BAR in `slot` (as found in a dump) a size, keeping its flag bits read-only.
    /// For a 64-bit BAR, also sets the upper slot's mask.
    pub fn bar_size(mut self, slot: u8, size: u64) -> Self {
        let offset = reg::BAR0 + 4 * u16::from(slot);
        let value = self.u32_at(offset);
        let mask = if size == 0 { 0 } else { !size.wrapping_sub(1) };
        if value & 1 != 0 {
            self.set_writable(offset, mask as u32 & !0x3);
        } else {
            self.set_writable(offset, mask as u32 & !0xF);
            if value & 0x6 == 0x4 {
                self.set_writable(offset + 4, (mask >> 32) as u32);
            }
        }
        self
    }

    /// Adds a capability with `id` at `offset`, appending it to the capability list (and
    /// setting Status bit 4 and the capabilities pointer for the first one). `body` is what
    /// follows the ID and next-pointer bytes.
    pub fn capability(mut self, offset: u8, id: u8, body: &[u8]) -> Self {
        self.set_u8(u16::from(offset), id);
        self.set_u8(u16::from(offset) + 1, 0);
        for (i, byte) in body.iter().enumerate() {
            self.set_u8(u16::from(offset) + 2 + i as u16, *byte);
        }
        match self.last_capability {
            Some(last) => self.set_u8(u16::from(last) + 1, offset),
            None => {
                let pointer = if self.u8_at(reg::HEADER_TYPE) & 0x7F == 2 {
                    reg::CARDBUS_CAPABILITIES_POINTER
                } else {
                    reg::CAPABILITIES_POINTER
                };
                self.set_u8(pointer, offset);
                let status = self.u16_at(reg::STATUS);
                self.set_u16(reg::STATUS, status | crate::access::STATUS_CAPABILITIES_LIST);
            }
        }
        self.last_capability = Some(offset);
        self
    }

    /// An MSI capability at `offset`. `multiple_message_capable` is log2 of the vectors asked
    /// for. The enable bit, Multiple Message Enable, address, data and mask registers are
    /// writable.
    pub fn msi(self, offset: u8, is_64bit: bool, per_vector_masking: bool, multiple_message_capable: u8) -> Self {
        let control: u16 = u16::from(multiple_message_capable & 0x7) << 1
            | u16::from(is_64bit) << 7
            | u16::from(per_vector_masking) << 8;
        let mut function = self.capability(offset, CAP_MSI, &control.to_le_bytes());
        let base = u16::from(offset);
        function.set_writable(base, 0x0071_0000);
        function.set_writable(base + 4, 0xFFFF_FFFC);
        let data = if is_64bit {
            function.set_writable(base + 8, u32::MAX);
            base + 0xC
        } else {
            base + 8
        };
        function.set_writable(data, 0x0000_FFFF);
        if per_vector_masking {
            function.set_writable(data + 4, u32::MAX);
        }
        function
    }

    /// An MSI-X capability at `offset` with `table_size` entries (at least 1).
    pub fn msix(self, offset: u8, table_size: u16, table: (u8, u32), pba: (u8, u32)) -> Self {
        let control = table_size.saturating_sub(1) & 0x7FF;
        let mut body = Vec::new();
        body.extend_from_slice(&control.to_le_bytes());
        body.extend_from_slice(&((table.1 & !0x7) | u32::from(table.0 & 0x7)).to_le_bytes());
        body.extend_from_slice(&((pba.1 & !0x7) | u32::from(pba.0 & 0x7)).to_le_bytes());
        let mut function = self.capability(offset, CAP_MSIX, &body);
        function.set_writable(u16::from(offset), 0xC000_0000);
        function
    }

    /// A PCI Express capability (version 2) at `offset` with the given Device/Port Type.
    pub fn pcie(self, offset: u8, port_type: PciePortType, slot_implemented: bool) -> Self {
        let capabilities: u16 = 0x2 | u16::from(port_type.bits()) << 4 | u16::from(slot_implemented) << 8;
        let mut body = capabilities.to_le_bytes().to_vec();
        body.resize(0x3C - 2, 0);
        self.capability(offset, CAP_PCI_EXPRESS, &body)
    }

    /// A Power Management capability (version 3, D0 now) at `offset`.
    pub fn power_management(self, offset: u8) -> Self {
        let pmc: u16 = 0x3;
        let mut body = pmc.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0]);
        let mut function = self.capability(offset, CAP_POWER_MANAGEMENT, &body);
        function.set_writable(u16::from(offset) + 4, 0x3);
        function
    }

    /// Writes raw bytes, bypassing the writable masks (for malformed fixtures, e.g. to make a
    /// capability list loop).
    pub fn poke(mut self, offset: u16, bytes: &[u8]) -> Self {
        for (i, byte) in bytes.iter().enumerate() {
            self.set_u8(offset.saturating_add(i as u16), *byte);
        }
        self
    }

    /// Sets which bits of the dword at `offset` software can write.
    pub fn writable(mut self, offset: u16, mask: u32) -> Self {
        self.set_writable(offset, mask);
        self
    }

    /// The dword at `offset` as the device would return it.
    pub fn read_u32(&self, offset: u16) -> u32 {
        if usize::from(offset) >= SIM_CONFIG_SIZE {
            return u32::MAX;
        }
        if self.all_ones_from.is_some_and(|from| offset & !3 >= from) {
            return u32::MAX;
        }
        self.u32_at(offset)
    }

    /// The raw configuration bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Applies a configuration write as the device would: only writable bits change, and
    /// Status error bits written as one are cleared.
    fn write_u32(&mut self, offset: u16, value: u32) {
        if usize::from(offset) >= SIM_CONFIG_SIZE {
            return;
        }
        let index = usize::from(offset) / 4;
        let mask = self.writable[index];
        let old = self.u32_at(offset);
        let mut new = (old & !mask) | (value & mask);
        if offset & !3 == reg::COMMAND {
            let clear = (value >> 16) as u16 & STATUS_RW1C;
            new &= !(u32::from(clear) << 16);
        }
        self.set_u32(offset, new);
    }

    fn set_writable(&mut self, offset: u16, mask: u32) {
        if let Some(slot) = self.writable.get_mut(usize::from(offset) / 4) {
            *slot = mask;
        }
    }

    fn u32_at(&self, offset: u16) -> u32 {
        let start = usize::from(offset & !3);
        match self.bytes.get(start..start + 4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => u32::MAX,
        }
    }

    fn u16_at(&self, offset: u16) -> u16 {
        (self.u32_at(offset) >> (u32::from(offset & 2) * 8)) as u16
    }

    fn u8_at(&self, offset: u16) -> u8 {
        self.bytes.get(usize::from(offset)).copied().unwrap_or(0xFF)
    }

    fn set_u32(&mut self, offset: u16, value: u32) {
        let start = usize::from(offset & !3);
        if let Some(bytes) = self.bytes.get_mut(start..start + 4) {
            bytes.copy_from_slice(&value.to_le_bytes());
        }
    }

    fn set_u16(&mut self, offset: u16, value: u16) {
        let [low, high] = value.to_le_bytes();
        self.set_u8(offset, low);
        self.set_u8(offset.saturating_add(1), high);
    }

    fn set_u8(&mut self, offset: u16, value: u8) {
        if let Some(byte) = self.bytes.get_mut(usize::from(offset)) {
            *byte = value;
        }
    }
}

/// One configuration write that reached a simulated function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimWrite {
    /// The function written to.
    pub address: PciAddress,
    /// Dword-aligned offset.
    pub offset: u16,
    /// The value written (before the writable mask).
    pub value: u32,
    /// The function's Command register just before this write.
    pub command_before: u16,
}

/// A simulated configuration space: functions by address, all-ones everywhere else.
#[derive(Debug, Default)]
pub struct SimConfigSpace {
    functions: Mutex<BTreeMap<PciAddress, SimFunction>>,
    writes: Mutex<Vec<SimWrite>>,
}

impl SimConfigSpace {
    /// An empty space: every address reads all-ones.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `function` at `address` (builder style).
    pub fn with(self, address: PciAddress, function: SimFunction) -> Self {
        self.insert(address, function);
        self
    }

    /// Adds or replaces the function at `address`.
    pub fn insert(&self, address: PciAddress, function: SimFunction) {
        self.functions.lock().insert(address, function);
    }

    /// Removes the function at `address` (hot-unplug: it now reads all-ones).
    pub fn remove(&self, address: PciAddress) -> Option<SimFunction> {
        self.functions.lock().remove(&address)
    }

    /// A copy of the function at `address`, as it is now.
    pub fn function(&self, address: PciAddress) -> Option<SimFunction> {
        self.functions.lock().get(&address).cloned()
    }

    /// Reads a dword without going through the unsafe trait (for assertions).
    pub fn peek_u32(&self, address: PciAddress, offset: u16) -> u32 {
        self.functions.lock().get(&address).map_or(u32::MAX, |f| f.read_u32(offset))
    }

    /// Every write so far, in order.
    pub fn writes(&self) -> Vec<SimWrite> {
        self.writes.lock().clone()
    }

    /// Forgets the recorded writes.
    pub fn clear_writes(&self) {
        self.writes.lock().clear();
    }
}

impl ConfigRegionAccess for SimConfigSpace {
    unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
        self.peek_u32(address, offset)
    }

    unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
        let mut functions = self.functions.lock();
        let Some(function) = functions.get_mut(&address) else {
            return;
        };
        let command_before = function.u16_at(reg::COMMAND);
        function.write_u32(offset, value);
        self.writes.lock().push(SimWrite { address, offset: offset & !3, value, command_before });
    }
}

// SAFETY: the simulation touches only its own heap data; every address and offset is accepted,
// absent functions and offsets past 4 KiB read as all-ones, and writes to them are dropped.
unsafe impl CheckedConfigAccess for SimConfigSpace {}

/// Why a hex dump could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HexDumpError {
    /// A `== pci` header line that does not read `== pci <bdf>[bar<n>=<size>,...] <address> <length>`.
    BadHeader {
        /// Line number in the dump (1-based).
        line: usize,
    },
    /// A data line with an odd number of digits or a non-hex character.
    BadHexLine {
        /// Line number in the dump (1-based).
        line: usize,
    },
    /// A block that ended (or a file that ended) before `== end`.
    UnterminatedBlock {
        /// Line number in the dump (1-based) where the block began.
        line: usize,
    },
}

impl core::fmt::Display for HexDumpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::BadHeader { line } => write!(
                f,
                "line {line}: expected `== pci <bdf>[bar<n>=<size>,...] <address> <length>`; was the dump \
                 edited by hand?"
            ),
            Self::BadHexLine { line } => {
                write!(f, "line {line}: not a line of hex byte pairs; re-capture with `dump pci`")
            }
            Self::UnterminatedBlock { line } => {
                write!(f, "line {line}: block has no `== end`; the capture was cut short, re-capture it")
            }
        }
    }
}

/// Loads the output of the kernel shell's `dump pci` (as saved by `cargo xtask fixtures`):
///
/// ```text
/// # comment
/// == pci 00:02.0[bar0=0x20000,bar1=0x40] 0x0 4096
/// 86800e10...        (32 bytes per line, hex)
/// == end
/// ```
///
/// Each block becomes a [`SimFunction::from_bytes`] at that BDF, with each listed BAR given its
/// size. Blocks of other kinds (`== acpi ...`) and `#` lines are skipped.
pub fn load_hex_dump(text: &str) -> Result<SimConfigSpace, HexDumpError> {
    let space = SimConfigSpace::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    while let Some((number, line)) = lines.next() {
        let Some(header) = line.strip_prefix("== ") else { continue };
        let is_pci = header.starts_with("pci ");
        let block = if is_pci {
            Some(parse_block_header(header).ok_or(HexDumpError::BadHeader { line: number })?)
        } else {
            None
        };
        let mut bytes = Vec::new();
        let mut ended = false;
        for (number, line) in lines.by_ref() {
            if line == "== end" {
                ended = true;
                break;
            }
            if line.starts_with("==") {
                return Err(HexDumpError::UnterminatedBlock { line: number });
            }
            if is_pci {
                parse_hex_line(line, &mut bytes).ok_or(HexDumpError::BadHexLine { line: number })?;
            }
        }
        if !ended {
            return Err(HexDumpError::UnterminatedBlock { line: number });
        }
        if let Some((address, bars)) = block {
            let mut function = SimFunction::from_bytes(&bytes);
            for (slot, size) in bars {
                function = function.bar_size(slot, size);
            }
            space.insert(address, function);
        }
    }
    Ok(space)
}

/// Parses `pci 00:02.0[bar0=0x20000,bar1=0x40] 0x0 4096` into the address and BAR sizes.
fn parse_block_header(header: &str) -> Option<(PciAddress, Vec<(u8, u64)>)> {
    let name = header.strip_prefix("pci ")?.split_whitespace().next()?;
    let (bdf_text, rest) = name.split_once('[')?;
    let bars_text = rest.strip_suffix(']')?;
    let mut bars = Vec::new();
    for item in bars_text.split(',').filter(|s| !s.is_empty()) {
        let (slot, size) = item.strip_prefix("bar")?.split_once('=')?;
        let size = size.strip_prefix("0x").map_or_else(|| size.parse().ok(), |h| u64::from_str_radix(h, 16).ok())?;
        bars.push((slot.parse().ok()?, size));
    }
    Some((parse_bdf(bdf_text)?, bars))
}

/// Parses `bb:dd.f` or `ssss:bb:dd.f` (hex, as [`crate::Bdf`] prints them).
pub fn parse_bdf(text: &str) -> Option<PciAddress> {
    let (front, function) = text.rsplit_once('.')?;
    let mut parts = front.rsplitn(3, ':');
    let device = u8::from_str_radix(parts.next()?, 16).ok()?;
    let bus = u8::from_str_radix(parts.next()?, 16).ok()?;
    let segment = match parts.next() {
        Some(segment) => u16::from_str_radix(segment, 16).ok()?,
        None => 0,
    };
    let function: u8 = function.parse().ok()?;
    (device < 32 && function < 8).then(|| PciAddress::new(segment, bus, device, function))
}

/// Appends the bytes of one line of hex pairs.
fn parse_hex_line(line: &str, bytes: &mut Vec<u8>) -> Option<()> {
    if line.len() % 2 != 0 {
        return None;
    }
    for pair in line.as_bytes().chunks(2) {
        let text = core::str::from_utf8(pair).ok()?;
        bytes.push(u8::from_str_radix(text, 16).ok()?);
    }
    Some(())
}

/// Named machines and functions for tests.
///
/// The q35 functions reproduce what QEMU 7.2 with SeaBIOS presents for this project's
/// standard machine (IDs, classes, revisions, BAR addresses and sizes, interrupt routing,
/// capability offsets); `tests/qemu_capture.rs` checks them against the real capture in
/// `tests/fixtures/qemu-q35.pci`. The PCIe root port and PCIe-to-PCI bridge follow QEMU's
/// `pcie-root-port` and `pcie-pci-bridge` devices but are not captured yet. Where QEMU is not
/// the point (bridge loops, malformed headers) the fixture says so in its name.
pub mod fixtures {
    use super::{SimConfigSpace, SimFunction, bdf};
    use crate::capability::{CAP_SATA, PciePortType};
    use crate::enumerate::{BridgeBuses, ClassCode};

    /// QEMU's subsystem vendor/device (Red Hat, QEMU).
    const QEMU_SUBSYSTEM: (u16, u16) = (0x1AF4, 0x1100);

    /// 00:00.0 on q35: Intel 82G33 DRAM controller 8086:29c0, host bridge 06/00/00.
    pub fn q35_host_bridge() -> SimFunction {
        SimFunction::endpoint(0x8086, 0x29C0, ClassCode::new(0x06, 0x00, 0x00))
            .subsystem(QEMU_SUBSYSTEM.0, QEMU_SUBSYSTEM.1)
    }

    /// 00:01.0 on q35: QEMU standard VGA 1234:1111, 03/00/00, BAR0 16 MiB prefetchable
    /// framebuffer, BAR2 4 KiB MMIO registers.
    pub fn q35_vga() -> SimFunction {
        SimFunction::endpoint(0x1234, 0x1111, ClassCode::new(0x03, 0x00, 0x00))
            .revision(0x02)
            .subsystem(QEMU_SUBSYSTEM.0, QEMU_SUBSYSTEM.1)
            .command(0x0103)
            .bar32(0, 0xFD00_0000, 16 << 20, true)
            .bar32(2, 0xFEBF_0000, 4 << 10, false)
    }

    /// 00:02.0 on q35: Intel 82540EM e1000 8086:100e, 02/00/00, BAR0 128 KiB MMIO, BAR1 64
    /// I/O ports, INTA#, and (as in QEMU) no capability list.
    pub fn q35_e1000() -> SimFunction {
        SimFunction::endpoint(0x8086, 0x100E, ClassCode::new(0x02, 0x00, 0x00))
            .revision(0x03)
            .subsystem(QEMU_SUBSYSTEM.0, QEMU_SUBSYSTEM.1)
            .command(0x0103)
            .bar32(0, 0xFEBC_0000, 128 << 10, false)
            .io_bar(1, 0xC000, 64)
            .interrupt(11, 1)
    }

    /// 00:1f.0 on q35: ICH9 LPC/ISA bridge 8086:2918, 06/01/00, multi-function.
    pub fn q35_isa_bridge() -> SimFunction {
        SimFunction::endpoint(0x8086, 0x2918, ClassCode::new(0x06, 0x01, 0x00))
            .revision(0x02)
            .subsystem(QEMU_SUBSYSTEM.0, QEMU_SUBSYSTEM.1)
            .multi_function()
    }

    /// 00:1f.2 on q35: ICH9 AHCI 8086:2922, 01/06/01, BAR4 32 I/O ports (index/data pair),
    /// BAR5 4 KiB ABAR, MSI (64-bit, 1 vector) at 0x80, SATA capability at 0xa8.
    pub fn q35_ahci() -> SimFunction {
        SimFunction::endpoint(0x8086, 0x2922, ClassCode::new(0x01, 0x06, 0x01))
            .revision(0x02)
            .subsystem(QEMU_SUBSYSTEM.0, QEMU_SUBSYSTEM.1)
            .multi_function()
            .command(0x0107)
            .io_bar(4, 0xC080, 32)
            .bar32(5, 0xFEBF_1000, 4 << 10, false)
            .interrupt(10, 1)
            .msi(0x80, true, false, 0)
            // SATA capability: revision 1.0, SATACR1 = BAR4, offset 4 (QEMU's values).
            .capability(0xA8, CAP_SATA, &[0x10, 0x00, 0x18, 0x00, 0x00, 0x00])
    }

    /// 00:1f.3 on q35: ICH9 SMBus 8086:2930, 0c/05/00, BAR4 64 I/O ports.
    pub fn q35_smbus() -> SimFunction {
        SimFunction::endpoint(0x8086, 0x2930, ClassCode::new(0x0C, 0x05, 0x00))
            .revision(0x02)
            .subsystem(QEMU_SUBSYSTEM.0, QEMU_SUBSYSTEM.1)
            .multi_function()
            .command(0x0103)
            .io_bar(4, 0x0700, 64)
            .interrupt(10, 1)
    }

    /// `qemu-system-x86_64 -machine q35 -device e1000` (default VGA): six functions on bus 0.
    pub fn qemu_q35() -> SimConfigSpace {
        SimConfigSpace::new()
            .with(bdf(0, 0x00, 0), q35_host_bridge())
            .with(bdf(0, 0x01, 0), q35_vga())
            .with(bdf(0, 0x02, 0), q35_e1000())
            .with(bdf(0, 0x1F, 0), q35_isa_bridge())
            .with(bdf(0, 0x1F, 2), q35_ahci())
            .with(bdf(0, 0x1F, 3), q35_smbus())
    }

    /// QEMU `pcie-root-port` 1b36:000c at 00:1c.0 with buses 01..=02: BAR0 4 KiB, Power
    /// Management, MSI-X (1 vector in BAR0), PCIe Root Port with a slot.
    pub fn root_port(secondary: u8, subordinate: u8) -> SimFunction {
        SimFunction::bridge(0x1B36, 0x000C, BridgeBuses { primary: 0, secondary, subordinate })
            .bar32(0, 0xFEA0_0000, 4 << 10, false)
            .interrupt(10, 1)
            .power_management(0x40)
            .msix(0x48, 1, (0, 0x000), (0, 0x800))
            .pcie(0x54, PciePortType::RootPort, true)
    }

    /// QEMU `pcie-pci-bridge` 1b36:000e: BAR0 64-bit 256 bytes, MSI (64-bit, maskable), PCIe
    /// capability of type PCIe-to-PCI bridge.
    pub fn pcie_to_pci_bridge(primary: u8, secondary: u8, subordinate: u8) -> SimFunction {
        SimFunction::bridge(0x1B36, 0x000E, BridgeBuses { primary, secondary, subordinate })
            .bar64(0, 0xFE80_0000, 256, false)
            .interrupt(10, 1)
            .power_management(0x40)
            .msi(0x4C, true, true, 0)
            .pcie(0x6C, PciePortType::PcieToPciBridge, false)
    }

    /// q35 with `-device pcie-root-port,id=rp -device pcie-pci-bridge,bus=rp,id=br
    /// -device e1000,bus=br,addr=1`: the e1000 at 02:01.0 sits behind a PCIe-to-PCI bridge,
    /// so its DMA carries the bridge's requester ID.
    pub fn pcie_to_pci_bridge_topology() -> SimConfigSpace {
        SimConfigSpace::new()
            .with(bdf(0, 0x00, 0), q35_host_bridge())
            .with(bdf(0, 0x1C, 0), root_port(1, 2))
            .with(bdf(1, 0x00, 0), pcie_to_pci_bridge(1, 2, 2))
            .with(bdf(2, 0x01, 0), q35_e1000())
            .with(bdf(0, 0x1F, 0), q35_isa_bridge())
    }

    /// Not a real machine: bridges that lead back up or sideways.
    ///
    /// - 00:1c.0 → bus 1 (the only legitimate route);
    /// - 00:1d.0 claims bus 1 as well (bus reached twice);
    /// - 01:00.0 names its own bus 1 as secondary; 01:01.0 names bus 0;
    /// - 01:03.0 → bus 2, where 02:00.0 points back to bus 1;
    /// - 01:02.0 and 02:05.0 are plain endpoints that must each be found exactly once.
    pub fn bridge_loop() -> SimConfigSpace {
        let plain_bridge = |primary, secondary, subordinate| {
            SimFunction::bridge(0x8086, 0x244E, BridgeBuses { primary, secondary, subordinate })
        };
        SimConfigSpace::new()
            .with(bdf(0, 0x00, 0), q35_host_bridge())
            .with(bdf(0, 0x1C, 0), plain_bridge(0, 1, 2))
            .with(bdf(0, 0x1D, 0), plain_bridge(0, 1, 1))
            .with(bdf(1, 0x00, 0), plain_bridge(1, 1, 1))
            .with(bdf(1, 0x01, 0), plain_bridge(1, 0, 0))
            .with(bdf(1, 0x02, 0), q35_smbus())
            .with(bdf(1, 0x03, 0), plain_bridge(1, 2, 2))
            .with(bdf(2, 0x00, 0), plain_bridge(2, 1, 1))
            .with(bdf(2, 0x05, 0), q35_e1000())
    }

    /// Not a real machine: functions whose config space is broken in the ways enumeration
    /// must survive, next to one healthy e1000 (00:02.0).
    ///
    /// - 00:03.0 answers its ID, then reads all-ones;
    /// - 00:04.0 has header type 0x7f;
    /// - 00:05.0 has vendor ID 0000;
    /// - 00:06.0 has a reserved-type BAR0, BAR1 reading all-ones, a 64-bit BAR in slot 5 and
    ///   a capability list that loops (0x40 → 0x50 → 0x40);
    /// - 00:07.0 reads all-ones entirely (treated as absent).
    pub fn malformed_functions() -> SimConfigSpace {
        let class = ClassCode::new(0x02, 0x00, 0x00);
        SimConfigSpace::new()
            .with(bdf(0, 0x00, 0), q35_host_bridge())
            .with(bdf(0, 0x02, 0), q35_e1000())
            .with(bdf(0, 0x03, 0), SimFunction::endpoint(0x8086, 0x100E, class).reads_all_ones_from(4))
            .with(bdf(0, 0x04, 0), SimFunction::endpoint(0x8086, 0x100E, class).header_type_raw(0x7F))
            .with(bdf(0, 0x05, 0), SimFunction::endpoint(0x0000, 0x0000, class))
            .with(bdf(0, 0x06, 0), broken_bars_and_capabilities())
            .with(bdf(0, 0x07, 0), SimFunction::all_ones())
    }

    /// The 00:06.0 of [`malformed_functions`].
    pub fn broken_bars_and_capabilities() -> SimFunction {
        SimFunction::endpoint(0x1AF4, 0x1000, ClassCode::new(0x02, 0x00, 0x00))
            .raw_bar(0, 0xFEB0_0006, 0xFFFF_F000)
            .raw_bar(1, 0xFFFF_FFFF, 0)
            .bar32(2, 0xFEB1_0000, 4 << 10, false)
            .raw_bar(5, 0xFEB2_0004, 0xFFFF_F000)
            .capability(0x40, 0x09, &[4])
            .capability(0x50, 0x09, &[4])
            .poke(0x51, &[0x40])
    }
}
