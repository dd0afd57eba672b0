//! Base Address Registers: where a function's registers live, and how big they are.
//!
//! PCI Local Bus Spec 3.0, §6.2.5.1 "Address Maps". A BAR's low bits say what it is:
//!
//! ```text
//! bit 0     1 = I/O space, 0 = memory space
//! I/O:      bit 1 reserved, bits 31:2 port address
//! memory:   bits 2:1 type (00 = 32-bit, 10 = 64-bit, 01 and 11 reserved)
//!           bit 3 prefetchable
//!           bits 31:4 address (a 64-bit BAR takes the next slot for bits 63:32)
//! ```
//!
//! The size is not stored anywhere: the address bits the device does not decode are hardwired
//! to zero. Writing all-ones and reading back reveals them; the lowest address bit that reads
//! back as one is the size. (For a well-formed BAR that is exactly `!mask + 1`; taking the
//! lowest set bit also gives the right answer for I/O BARs whose upper 16 bits are hardwired to
//! zero, which §6.2.5.1 allows.) While the BAR holds all-ones the function would decode a
//! nonsense range, so decoding is switched off in the Command register for the duration and
//! everything is put back afterwards.

use alloc::vec::Vec;
use core::fmt;

use log::{debug, warn};
use pci_types::{CommandRegister, HeaderType};

use crate::access::{CheckedConfigAccess, FunctionConfig, reg};
use crate::view::Bdf;

/// BAR bit 0: the BAR maps I/O space.
const BAR_IO: u32 = 1;
/// Memory BAR bits 2:1.
const BAR_MEM_TYPE_MASK: u32 = 0b110;
/// Memory type 00: 32-bit address.
const BAR_MEM_TYPE_32: u32 = 0b000;
/// Memory type 10: 64-bit address, the next BAR holds bits 63:32.
const BAR_MEM_TYPE_64: u32 = 0b100;
/// Memory BAR bit 3: prefetchable.
const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
/// Flag bits of a memory BAR.
const BAR_MEM_FLAGS: u32 = 0xF;
/// Flag bits of an I/O BAR.
const BAR_IO_FLAGS: u32 = 0x3;

/// One decoded BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// A memory range below 4 GiB.
    Memory32 {
        /// Bus address of the range's first byte.
        address: u32,
        /// Length in bytes (a power of two, found by sizing).
        size: u32,
        /// Reads have no side effects, so the range may be prefetched and write-combined.
        prefetchable: bool,
    },
    /// A memory range anywhere in 64-bit space; uses two BAR slots.
    Memory64 {
        /// Bus address of the range's first byte.
        address: u64,
        /// Length in bytes (a power of two, found by sizing).
        size: u64,
        /// Reads have no side effects, so the range may be prefetched and write-combined.
        prefetchable: bool,
    },
    /// An I/O port range.
    Io {
        /// First I/O port of the range.
        port: u32,
        /// Number of ports.
        size: u32,
    },
}

impl Bar {
    /// The base address (bus address for memory, port number for I/O).
    pub fn address(&self) -> u64 {
        match *self {
            Self::Memory32 { address, .. } => u64::from(address),
            Self::Memory64 { address, .. } => address,
            Self::Io { port, .. } => u64::from(port),
        }
    }

    /// The size in bytes (memory) or ports (I/O).
    pub fn size(&self) -> u64 {
        match *self {
            Self::Memory32 { size, .. } => u64::from(size),
            Self::Memory64 { size, .. } => size,
            Self::Io { size, .. } => u64::from(size),
        }
    }

    /// Whether this is a memory BAR (32- or 64-bit).
    pub fn is_memory(&self) -> bool {
        !self.is_io()
    }

    /// Whether this is an I/O BAR.
    pub fn is_io(&self) -> bool {
        matches!(self, Self::Io { .. })
    }

    /// Whether the memory range is prefetchable (reads have no side effects, so it may be
    /// mapped write-combining). Always false for I/O.
    pub fn is_prefetchable(&self) -> bool {
        match *self {
            Self::Memory32 { prefetchable, .. } | Self::Memory64 { prefetchable, .. } => prefetchable,
            Self::Io { .. } => false,
        }
    }

    /// How many BAR slots this BAR occupies.
    pub fn slots(&self) -> u8 {
        match self {
            Self::Memory64 { .. } => 2,
            _ => 1,
        }
    }
}

/// A BAR together with the slot (0..=5) it was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedBar {
    /// BAR index: the register is at `0x10 + 4 * slot`.
    pub slot: u8,
    /// What the BAR maps.
    pub bar: Bar,
}

/// A BAR that was skipped because its contents make no sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarError {
    /// The BAR register reads `0xFFFF_FFFF`, which no valid BAR can hold (the reserved bits
    /// would be set).
    ReadsAllOnes {
        /// The BAR's index in the header (0–5).
        slot: u8,
    },
    /// A memory BAR with type 01 or 11, which PCI 3.0 reserves.
    ReservedMemoryType {
        /// The BAR's index in the header (0–5).
        slot: u8,
        /// The register as read.
        raw: u32,
    },
    /// A 64-bit memory BAR in the header's last slot: its upper half would be outside the BARs.
    Memory64InLastSlot {
        /// The BAR's index in the header (0–5).
        slot: u8,
    },
    /// The read-only flag bits changed when all-ones was written: the register is not a BAR.
    FlagsChangedDuringSizing {
        /// The BAR's index in the header (0–5).
        slot: u8,
        /// The register before all-ones was written.
        before: u32,
        /// The register read back after all-ones was written.
        after: u32,
    },
}

impl BarError {
    /// The slot the problem was found in.
    pub fn slot(&self) -> u8 {
        match *self {
            Self::ReadsAllOnes { slot }
            | Self::ReservedMemoryType { slot, .. }
            | Self::Memory64InLastSlot { slot }
            | Self::FlagsChangedDuringSizing { slot, .. } => slot,
        }
    }
}

impl fmt::Display for BarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ReadsAllOnes { slot } => write!(
                f,
                "BAR{slot} reads 0xffffffff, which no BAR can hold; the function may have been \
                 removed or be powered down; BAR ignored"
            ),
            Self::ReservedMemoryType { slot, raw } => write!(
                f,
                "BAR{slot} ({raw:#010x}) is a memory BAR of reserved type {}; BAR ignored",
                (raw & BAR_MEM_TYPE_MASK) >> 1
            ),
            Self::Memory64InLastSlot { slot } => write!(
                f,
                "BAR{slot} is a 64-bit memory BAR in the last slot, so its upper half does not \
                 exist; the header is malformed; BAR ignored"
            ),
            Self::FlagsChangedDuringSizing { slot, before, after } => write!(
                f,
                "BAR{slot} flag bits changed while sizing ({before:#010x} -> {after:#010x}); \
                 the register does not behave like a BAR; BAR ignored"
            ),
        }
    }
}

/// What probing a function's BARs found: the usable BARs, and the slots that were skipped as
/// malformed. Unimplemented slots (size zero) appear in neither list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BarProbe {
    /// Implemented, well-formed BARs in slot order.
    pub bars: Vec<DecodedBar>,
    /// Malformed BARs that were skipped.
    pub errors: Vec<BarError>,
}

/// How many BAR slots a header layout has: 6 for type 0, 2 for type 1 (PCI-to-PCI Bridge Spec
/// 1.2, §3.2.5.1), 1 for a CardBus bridge (its socket register base), 0 for unknown layouts.
pub fn bar_slots(header_type: HeaderType) -> u8 {
    match header_type {
        HeaderType::Endpoint => 6,
        HeaderType::PciPciBridge => 2,
        HeaderType::CardBusBridge => 1,
        _ => 0,
    }
}

/// Decodes and sizes the first `slots` BARs (at most 6) of a function.
///
/// Memory and I/O decoding are switched off in the Command register while the BARs hold
/// all-ones, and every BAR and the Command register are restored before returning (PCI Local
/// Bus Spec 3.0, §6.2.5.1, "Implementation Note: Sizing a 32-bit Base Address Register").
/// Problems are logged with the function's BDF.
pub fn probe_bars<A: CheckedConfigAccess + ?Sized>(config: &FunctionConfig<'_, A>, slots: u8) -> BarProbe {
    let slots = slots.min(6);
    let mut probe = BarProbe::default();
    if slots == 0 {
        return probe;
    }

    let command = config.command();
    let decode = CommandRegister::IO_ENABLE | CommandRegister::MEMORY_ENABLE;
    let quiet = command - decode;
    if command != quiet {
        config.write_command(quiet);
    }

    let bdf = Bdf(config.address());
    let mut slot = 0;
    while slot < slots {
        let (result, used) = probe_slot(config, slot, slots);
        match result {
            Ok(Some(bar)) => probe.bars.push(DecodedBar { slot, bar }),
            Ok(None) => debug!("pci {bdf}: BAR{slot} is unimplemented (sizes as zero); skipped"),
            Err(error) => {
                warn!("pci {bdf}: {error}");
                probe.errors.push(error);
            }
        }
        slot += used;
    }

    if command != quiet {
        config.write_command(command);
    }
    probe
}

/// Decodes and sizes the BAR in `slot`, with decoding already switched off.
///
/// Returns the BAR (`None` if unimplemented) and the number of slots consumed.
fn probe_slot<A: CheckedConfigAccess + ?Sized>(
    config: &FunctionConfig<'_, A>,
    slot: u8,
    slots: u8,
) -> (Result<Option<Bar>, BarError>, u8) {
    let offset = reg::BAR0 + 4 * u16::from(slot);
    let original = config.read_u32(offset);
    if original == u32::MAX {
        return (Err(BarError::ReadsAllOnes { slot }), 1);
    }

    if original & BAR_IO != 0 {
        let readback = size_probe_u32(config, offset, original);
        if readback & BAR_IO_FLAGS != original & BAR_IO_FLAGS {
            let error = BarError::FlagsChangedDuringSizing { slot, before: original, after: readback };
            return (Err(error), 1);
        }
        let mask = readback & !BAR_IO_FLAGS;
        if mask == 0 {
            return (Ok(None), 1);
        }
        let size = mask.isolate_lowest_one();
        let port = original & !BAR_IO_FLAGS;
        return (Ok(Some(Bar::Io { port, size })), 1);
    }

    let prefetchable = original & BAR_MEM_PREFETCHABLE != 0;
    match original & BAR_MEM_TYPE_MASK {
        BAR_MEM_TYPE_32 => {
            let readback = size_probe_u32(config, offset, original);
            if readback & BAR_MEM_FLAGS != original & BAR_MEM_FLAGS {
                let error = BarError::FlagsChangedDuringSizing { slot, before: original, after: readback };
                return (Err(error), 1);
            }
            let mask = readback & !BAR_MEM_FLAGS;
            if mask == 0 {
                return (Ok(None), 1);
            }
            let size = mask.isolate_lowest_one();
            let address = original & !BAR_MEM_FLAGS;
            (Ok(Some(Bar::Memory32 { address, size, prefetchable })), 1)
        }
        BAR_MEM_TYPE_64 => {
            if slot + 1 >= slots {
                return (Err(BarError::Memory64InLastSlot { slot }), 1);
            }
            let upper_offset = offset + 4;
            let original_upper = config.read_u32(upper_offset);
            config.write_u32(offset, u32::MAX);
            config.write_u32(upper_offset, u32::MAX);
            let readback = config.read_u32(offset);
            let readback_upper = config.read_u32(upper_offset);
            config.write_u32(offset, original);
            config.write_u32(upper_offset, original_upper);

            if readback & BAR_MEM_FLAGS != original & BAR_MEM_FLAGS {
                let error = BarError::FlagsChangedDuringSizing { slot, before: original, after: readback };
                return (Err(error), 2);
            }
            let mask = (u64::from(readback_upper) << 32 | u64::from(readback)) & !u64::from(BAR_MEM_FLAGS);
            if mask == 0 {
                return (Ok(None), 2);
            }
            let size = mask.isolate_lowest_one();
            let address = u64::from(original_upper) << 32 | u64::from(original & !BAR_MEM_FLAGS);
            (Ok(Some(Bar::Memory64 { address, size, prefetchable })), 2)
        }
        _ => (Err(BarError::ReservedMemoryType { slot, raw: original }), 1),
    }
}

/// Writes all-ones to the BAR at `offset`, reads it back, and restores `original`.
fn size_probe_u32<A: CheckedConfigAccess + ?Sized>(config: &FunctionConfig<'_, A>, offset: u16, original: u32) -> u32 {
    config.write_u32(offset, u32::MAX);
    let readback = config.read_u32(offset);
    config.write_u32(offset, original);
    readback
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enumerate::{BridgeBuses, ClassCode};
    use crate::sim::{SimConfigSpace, SimFunction, bdf, fixtures};
    use alloc::vec;

    const NIC: ClassCode = ClassCode::new(0x02, 0x00, 0x00);

    fn probe(function: SimFunction, slots: u8) -> (BarProbe, SimConfigSpace) {
        let sim = SimConfigSpace::new().with(bdf(0, 3, 0), function);
        let probe = probe_bars(&FunctionConfig::new(&sim, bdf(0, 3, 0)), slots);
        (probe, sim)
    }

    #[test]
    fn memory32_and_io_bars_are_decoded_and_sized() {
        let (probe, _) = probe(fixtures::q35_e1000(), 6);
        assert_eq!(
            probe.bars,
            vec![
                DecodedBar {
                    slot: 0,
                    bar: Bar::Memory32 { address: 0xFEBC_0000, size: 128 << 10, prefetchable: false }
                },
                DecodedBar { slot: 1, bar: Bar::Io { port: 0xC000, size: 64 } },
            ]
        );
        assert!(probe.errors.is_empty());
    }

    #[test]
    fn prefetchable_flag_is_decoded() {
        let (probe, _) = probe(fixtures::q35_vga(), 6);
        assert_eq!(probe.bars[0].bar, Bar::Memory32 { address: 0xFD00_0000, size: 16 << 20, prefetchable: true });
        assert!(probe.bars[0].bar.is_prefetchable());
        assert_eq!(probe.bars[1].slot, 2);
        assert!(!probe.bars[1].bar.is_prefetchable());
    }

    #[test]
    fn memory64_bar_uses_two_slots_and_sizes_in_64_bits() {
        let function = SimFunction::endpoint(0x1B36, 0x0010, NIC)
            .bar64(0, 0x8_0000_0000, 8 << 30, true)
            .bar64(2, 0xFE00_0000, 16 << 10, false)
            .bar32(4, 0xFEB0_0000, 4096, false);
        let (probe, _) = probe(function, 6);
        assert_eq!(
            probe.bars,
            vec![
                DecodedBar {
                    slot: 0,
                    bar: Bar::Memory64 { address: 0x8_0000_0000, size: 8 << 30, prefetchable: true }
                },
                DecodedBar {
                    slot: 2,
                    bar: Bar::Memory64 { address: 0xFE00_0000, size: 16 << 10, prefetchable: false }
                },
                DecodedBar { slot: 4, bar: Bar::Memory32 { address: 0xFEB0_0000, size: 4096, prefetchable: false } },
            ]
        );
        assert_eq!(probe.bars[0].bar.slots(), 2);
    }

    #[test]
    fn sizing_restores_every_bar_and_the_command_register() {
        let function = fixtures::q35_ahci().bar64(0, 0x1_2345_6000, 4096, false).command(0x0507);
        let before = function.clone();
        let (_, sim) = probe(function, 6);
        assert_eq!(sim.function(bdf(0, 3, 0)).unwrap(), before);
    }

    #[test]
    fn decoding_is_off_whenever_a_bar_holds_all_ones() {
        let (_, sim) = probe(fixtures::q35_ahci(), 6);
        let writes = sim.writes();
        let sizing: Vec<_> = writes.iter().filter(|w| w.value == u32::MAX).collect();
        assert_eq!(sizing.len(), 6, "one all-ones write per slot");
        for write in sizing {
            assert_eq!(write.command_before & 0b11, 0, "decode still on during {write:?}");
        }
        // The first write turns decoding off, the last one restores 0x0107.
        assert_eq!(writes.first().unwrap().offset, reg::COMMAND);
        assert_eq!(writes.first().unwrap().value, 0x0104);
        assert_eq!(writes.last().unwrap().offset, reg::COMMAND);
        assert_eq!(writes.last().unwrap().value, 0x0107);
    }

    #[test]
    fn command_register_is_left_alone_when_decoding_was_already_off() {
        let (_, sim) = probe(fixtures::q35_e1000().command(0x0004), 6);
        assert!(sim.writes().iter().all(|w| w.offset != reg::COMMAND));
    }

    #[test]
    fn zero_size_bars_are_unimplemented_not_errors() {
        let function = SimFunction::endpoint(0x8086, 0x1234, NIC)
            .bar32(0, 0, 0, false)
            .bar64(1, 0, 0, false)
            .raw_bar(3, 0xFEB0_0000, 0) // address bits, but nothing writable
            .io_bar(4, 0xC000, 32);
        let (probe, _) = probe(function, 6);
        assert_eq!(probe.bars.len(), 2);
        assert_eq!(probe.bars[0].slot, 3, "a read-only BAR sizes by its lowest address bit");
        assert_eq!(probe.bars[1], DecodedBar { slot: 4, bar: Bar::Io { port: 0xC000, size: 32 } });
        assert!(probe.errors.is_empty());
    }

    #[test]
    fn memory64_bar_in_the_last_slot_is_malformed_and_not_touched() {
        let function = SimFunction::endpoint(0x8086, 0x1234, NIC).bar32(0, 0xFEB0_0000, 4096, false).raw_bar(
            5,
            0xFEB1_0004,
            0xFFFF_F000,
        );
        let (probe, sim) = probe(function, 6);
        assert_eq!(probe.bars.len(), 1);
        assert_eq!(probe.errors, vec![BarError::Memory64InLastSlot { slot: 5 }]);
        assert!(sim.writes().iter().all(|w| w.offset != 0x24 && w.offset != 0x28));
        assert!(alloc::format!("{}", probe.errors[0]).contains("BAR5"));
    }

    #[test]
    fn reserved_types_and_all_ones_are_reported() {
        let function = SimFunction::endpoint(0x8086, 0x1234, NIC)
            .raw_bar(0, 0xFEB0_0002, 0xFFFF_F000)
            .raw_bar(1, u32::MAX, 0)
            .raw_bar(2, 0xFEB0_0006, 0xFFFF_F000);
        let (probe, _) = probe(function, 6);
        assert!(probe.bars.is_empty());
        assert_eq!(
            probe.errors,
            vec![
                BarError::ReservedMemoryType { slot: 0, raw: 0xFEB0_0002 },
                BarError::ReadsAllOnes { slot: 1 },
                BarError::ReservedMemoryType { slot: 2, raw: 0xFEB0_0006 },
            ]
        );
    }

    #[test]
    fn flag_bits_that_change_while_sizing_are_reported() {
        // A memory BAR whose "type" bits are writable: not a BAR.
        let function = SimFunction::endpoint(0x8086, 0x1234, NIC).raw_bar(0, 0xFEB0_0000, u32::MAX);
        let (probe, _) = probe(function, 6);
        assert!(probe.bars.is_empty());
        assert!(matches!(probe.errors[..], [BarError::FlagsChangedDuringSizing { slot: 0, .. }]));
    }

    #[test]
    fn io_bar_with_upper_half_hardwired_to_zero_sizes_correctly() {
        let function = SimFunction::endpoint(0x8086, 0x1234, NIC).raw_bar(0, 0xC041, 0x0000_FFE0);
        let (probe, _) = probe(function, 6);
        assert_eq!(probe.bars[0].bar, Bar::Io { port: 0xC040, size: 32 });
    }

    #[test]
    fn bridges_have_two_bar_slots() {
        let buses = BridgeBuses { primary: 0, secondary: 1, subordinate: 1 };
        let function = SimFunction::bridge(0x8086, 0x244E, buses).bar32(0, 0xFE00_0000, 4096, false);
        let (probe, sim) = probe(function, bar_slots(HeaderType::PciPciBridge));
        assert_eq!(probe.bars.len(), 1);
        assert!(sim.writes().iter().all(|w| w.offset < 0x18), "bus numbers untouched");
        assert_eq!(bar_slots(HeaderType::Endpoint), 6);
        assert_eq!(bar_slots(HeaderType::CardBusBridge), 1);
        assert_eq!(bar_slots(HeaderType::Unknown(0x7F)), 0);
    }

    #[test]
    fn memory64_in_a_bridges_second_slot_is_malformed() {
        let buses = BridgeBuses { primary: 0, secondary: 1, subordinate: 1 };
        let function = SimFunction::bridge(0x8086, 0x244E, buses).bar64(1, 0xFE00_0000, 4096, false);
        let (probe, _) = probe(function, 2);
        assert_eq!(probe.errors, vec![BarError::Memory64InLastSlot { slot: 1 }]);
    }
}
