//! Programming MSI-X: PCI Local Bus Spec 3.0, §6.8.2 "MSI-X Capability and Table Structures".
//!
//! MSI-X keeps its messages in memory, not in configuration space: a *table* of 16-byte entries
//! in one of the function's memory BARs (§6.8.2.6), each holding a message address, data and a
//! per-entry mask bit. The capability (decoded by the walk as
//! [`crate::capability::MsixCapability`]) says which BAR holds the table (the BIR) and where,
//! and its Message Control register holds the two bits that matter: MSI-X Enable (bit 15) and
//! Function Mask (bit 14) (§6.8.2.3).
//!
//! The table is reached through [`MsixTable`], 32-bit reads and writes at offsets from the
//! table's start, so the kernel can hand it a mapped BAR and host tests an array in memory.
//!
//! # Table entry layout (§6.8.2.6–§6.8.2.9)
//! | offset in entry | register |
//! |---|---|
//! | `0x0` | Message Address (bits 1:0 must be zero: dword aligned) |
//! | `0x4` | Message Upper Address |
//! | `0x8` | Message Data (32 bits) |
//! | `0xC` | Vector Control: bit 0 is the entry's Mask Bit, the rest reserved |

use core::fmt;

use crate::access::{CheckedConfigAccess, FunctionConfig};
use crate::capability::MsixCapability;

/// Bytes per table entry (§6.8.2.6).
pub const ENTRY_SIZE: u32 = 16;
/// Message Address offset inside an entry (§6.8.2.7).
pub const ENTRY_ADDRESS: u32 = 0x0;
/// Message Upper Address offset inside an entry (§6.8.2.8).
pub const ENTRY_UPPER_ADDRESS: u32 = 0x4;
/// Message Data offset inside an entry (§6.8.2.9).
pub const ENTRY_DATA: u32 = 0x8;
/// Vector Control offset inside an entry (§6.8.2.10).
pub const ENTRY_VECTOR_CONTROL: u32 = 0xC;
/// Vector Control bit 0: the entry may not send messages while set (§6.8.2.10).
pub const VECTOR_MASKED: u32 = 1;
/// Message Control bit 15: MSI-X Enable (§6.8.2.3).
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message Control bit 14: Function Mask, masking every entry at once (§6.8.2.3).
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;

/// The mapped MSI-X table: 32-bit accesses at byte offsets from the table's start (the BAR's
/// address plus the capability's table offset). §6.8.2.6 requires dword (or qword) accesses,
/// naturally aligned; every offset this module uses is a multiple of 4.
pub trait MsixTable {
    /// Reads the dword at `offset` from the table's start.
    fn read_u32(&self, offset: u32) -> u32;
    /// Writes the dword at `offset` from the table's start.
    fn write_u32(&self, offset: u32, value: u32);
}

/// Why MSI-X could not be enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixError {
    /// The function has no MSI-X capability; use MSI or INTx.
    NoMsixCapability,
    /// The Table BIR names BAR 6 or 7, which are reserved (§6.8.2.4).
    ReservedTableBir {
        /// The BIR read from the capability.
        bir: u8,
    },
    /// The entry asked for is not in the table (entries are `0..table_size`, §6.8.2.3).
    EntryOutOfRange {
        /// The entry asked for.
        entry: u16,
        /// Entries in the table.
        table_size: u16,
    },
    /// The message address must be dword aligned (§6.8.2.7).
    AddressNotDwordAligned {
        /// The message address asked for.
        address: u64,
    },
    /// The enable bit did not read back as set: the function ignored the write.
    EnableDidNotStick,
}

impl fmt::Display for MsixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoMsixCapability => f.write_str("function has no MSI-X capability; use MSI or legacy INTx instead"),
            Self::ReservedTableBir { bir } => {
                write!(f, "MSI-X table BIR is {bir}, a reserved value (only BARs 0..=5 exist)")
            }
            Self::EntryOutOfRange { entry, table_size } => {
                write!(f, "MSI-X entry {entry} is outside the table of {table_size} entries")
            }
            Self::AddressNotDwordAligned { address } => {
                write!(f, "MSI-X message address {address:#x} is not 4-byte aligned")
            }
            Self::EnableDidNotStick => {
                f.write_str("MSI-X enable bit did not stay set; the function may be broken or gone")
            }
        }
    }
}

impl MsixCapability {
    /// Offset of the Message Control register in configuration space (§6.8.2.3).
    pub fn control_offset(&self) -> u16 {
        u16::from(self.offset) + 2
    }

    /// Byte offset of `entry` from the table's start, or why it is not in the table.
    pub fn entry_offset(&self, entry: u16) -> Result<u32, MsixError> {
        if entry >= self.table_size {
            return Err(MsixError::EntryOutOfRange { entry, table_size: self.table_size });
        }
        Ok(u32::from(entry) * ENTRY_SIZE)
    }

    /// Bytes the table occupies in its BAR: [`ENTRY_SIZE`] per entry.
    pub fn table_bytes(&self) -> u32 {
        u32::from(self.table_size) * ENTRY_SIZE
    }

    /// Programs table entry `entry` with `address` and `data`, and turns MSI-X on, following
    /// PCI Local Bus Spec 3.0, §6.8.2:
    ///
    /// 1. Function Mask and MSI-X Enable are set together (§6.8.2.3): the function is in MSI-X
    ///    mode, so it stops using INTx, but can send no message while the entry is programmed;
    /// 2. the entry is masked (Vector Control bit 0, §6.8.2.10), then its Message Address,
    ///    Upper Address and Data are written (§6.8.2.7–§6.8.2.9);
    /// 3. the entry is unmasked and Function Mask cleared: a message pending on it is sent now;
    /// 4. INTx is disabled in the Command register as well (§6.8.2.3 forbids INTx while MSI-X is
    ///    on; setting Interrupt Disable protects against devices that get this wrong).
    ///
    /// The caller must have mapped the table's BAR ([`MsixCapability::table_bar`]) with memory
    /// decoding on. Nothing is written when the request is refused.
    pub fn enable<A: CheckedConfigAccess + ?Sized, T: MsixTable + ?Sized>(
        &self,
        config: &FunctionConfig<'_, A>,
        table: &T,
        entry: u16,
        address: u64,
        data: u32,
    ) -> Result<(), MsixError> {
        if self.table_bar > 5 {
            return Err(MsixError::ReservedTableBir { bir: self.table_bar });
        }
        let base = self.entry_offset(entry)?;
        if address & 0x3 != 0 {
            return Err(MsixError::AddressNotDwordAligned { address });
        }

        let control = config.read_u16(self.control_offset());
        config.write_u16(self.control_offset(), control | CONTROL_ENABLE | CONTROL_FUNCTION_MASK);

        let vector_control = table.read_u32(base + ENTRY_VECTOR_CONTROL);
        table.write_u32(base + ENTRY_VECTOR_CONTROL, vector_control | VECTOR_MASKED);
        table.write_u32(base + ENTRY_ADDRESS, address as u32);
        table.write_u32(base + ENTRY_UPPER_ADDRESS, (address >> 32) as u32);
        table.write_u32(base + ENTRY_DATA, data);
        table.write_u32(base + ENTRY_VECTOR_CONTROL, vector_control & !VECTOR_MASKED);

        config.disable_intx();
        let control = config.read_u16(self.control_offset());
        config.write_u16(self.control_offset(), (control | CONTROL_ENABLE) & !CONTROL_FUNCTION_MASK);

        if config.read_u16(self.control_offset()) & CONTROL_ENABLE == 0 {
            return Err(MsixError::EnableDidNotStick);
        }
        Ok(())
    }

    /// Masks table entry `entry` (Vector Control bit 0, §6.8.2.10); an entry outside the table
    /// is refused.
    pub fn mask<T: MsixTable + ?Sized>(&self, table: &T, entry: u16) -> Result<(), MsixError> {
        let base = self.entry_offset(entry)?;
        let vector_control = table.read_u32(base + ENTRY_VECTOR_CONTROL);
        table.write_u32(base + ENTRY_VECTOR_CONTROL, vector_control | VECTOR_MASKED);
        Ok(())
    }

    /// Turns MSI-X off: clears MSI-X Enable and Function Mask (§6.8.2.3). The table is left as
    /// it is; INTx stays disabled, re-enable it with [`FunctionConfig::enable_intx`] if the
    /// driver falls back to it.
    pub fn disable<A: CheckedConfigAccess + ?Sized>(&self, config: &FunctionConfig<'_, A>) {
        let control = config.read_u16(self.control_offset());
        config.write_u16(self.control_offset(), control & !(CONTROL_ENABLE | CONTROL_FUNCTION_MASK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enumerate::ClassCode;
    use crate::sim::{SimConfigSpace, SimFunction, bdf};
    use alloc::vec;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use pci_types::CommandRegister;

    const NIC: ClassCode = ClassCode::new(0x02, 0x00, 0x00);

    /// An in-memory table that logs every write.
    struct Table {
        words: RefCell<Vec<u32>>,
        writes: RefCell<Vec<(u32, u32)>>,
    }

    impl Table {
        fn new(entries: usize) -> Table {
            // Reset state: every entry masked (§6.8.2.10).
            let mut words = vec![0u32; entries * 4];
            for e in 0..entries {
                words[e * 4 + 3] = VECTOR_MASKED;
            }
            Table { words: RefCell::new(words), writes: RefCell::new(Vec::new()) }
        }
        fn word(&self, offset: u32) -> u32 {
            self.words.borrow()[offset as usize / 4]
        }
    }

    impl MsixTable for Table {
        fn read_u32(&self, offset: u32) -> u32 {
            assert_eq!(offset % 4, 0, "unaligned table read");
            self.words.borrow().get(offset as usize / 4).copied().unwrap_or(u32::MAX)
        }
        fn write_u32(&self, offset: u32, value: u32) {
            assert_eq!(offset % 4, 0, "unaligned table write");
            self.writes.borrow_mut().push((offset, value));
            if let Some(w) = self.words.borrow_mut().get_mut(offset as usize / 4) {
                *w = value;
            }
        }
    }

    fn function(table_size: u16, bir: u8) -> SimConfigSpace {
        SimConfigSpace::new().with(
            bdf(0, 3, 0),
            SimFunction::endpoint(0x8086, 0x10D3, NIC).msix(0xA0, table_size, (bir, 0x0), (bir, 0x2000)),
        )
    }

    fn msix_of(sim: &SimConfigSpace) -> MsixCapability {
        let function = crate::enumerate::enumerate(sim, 0).into_iter().next().expect("one function");
        // Enumeration sizes BARs; only what `enable` writes is of interest.
        sim.clear_writes();
        *function.msix().expect("an MSI-X capability")
    }

    #[test]
    fn enable_programs_the_entry_unmasks_it_and_turns_msix_on() {
        let sim = function(5, 3);
        let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
        let msix = msix_of(&sim);
        let table = Table::new(5);
        msix.enable(&config, &table, 2, 0x1_FEE0_1000, 0x45).unwrap();

        assert_eq!([table.word(0x20), table.word(0x24), table.word(0x28)], [0xFEE0_1000, 0x1, 0x45]);
        assert_eq!(table.word(0x2C) & VECTOR_MASKED, 0, "entry 2 unmasked");
        for other in [0u32, 1, 3, 4] {
            assert_eq!(table.word(other * 16 + 12), VECTOR_MASKED, "entry {other} untouched");
        }
        let control = config.read_u16(msix.control_offset());
        assert_eq!(control & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK), CONTROL_ENABLE);
        assert!(config.command().contains(CommandRegister::INTERRUPT_DISABLE));
        assert!(msix_of(&sim).enabled && !msix_of(&sim).function_mask);
    }

    #[test]
    fn the_entry_is_written_only_while_masked() {
        let sim = function(1, 0);
        let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
        let table = Table::new(1);
        msix_of(&sim).enable(&config, &table, 0, 0xFEE0_0000, 0x41).unwrap();
        let writes = table.writes.borrow();
        assert_eq!(writes.first(), Some(&(0xC, VECTOR_MASKED)), "masked first");
        assert_eq!(writes.last(), Some(&(0xC, 0)), "unmasked last");
        assert_eq!(writes.len(), 5);
    }

    #[test]
    fn function_mask_covers_the_programming() {
        let sim = function(1, 0);
        let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
        let table = Table::new(1);
        msix_of(&sim).enable(&config, &table, 0, 0xFEE0_0000, 0x41).unwrap();
        // The control writes, in order: enable + function mask, then enable alone.
        let controls: Vec<u16> =
            sim.writes().iter().filter(|w| w.offset == 0xA0).map(|w| (w.value >> 16) as u16).collect();
        assert_eq!(controls, [CONTROL_ENABLE | CONTROL_FUNCTION_MASK, CONTROL_ENABLE]);
    }

    #[test]
    fn refuses_an_entry_outside_the_table_a_reserved_bir_and_a_bad_address() {
        let sim = function(5, 3);
        let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
        let table = Table::new(5);
        let msix = msix_of(&sim);
        assert_eq!(
            msix.enable(&config, &table, 5, 0xFEE0_0000, 0x41),
            Err(MsixError::EntryOutOfRange { entry: 5, table_size: 5 })
        );
        assert_eq!(
            msix.enable(&config, &table, 0, 0xFEE0_0002, 0x41),
            Err(MsixError::AddressNotDwordAligned { address: 0xFEE0_0002 })
        );
        assert_eq!(msix.mask(&table, 7), Err(MsixError::EntryOutOfRange { entry: 7, table_size: 5 }));
        for bir in [6, 7] {
            let sim = function(5, bir);
            let msix = msix_of(&sim);
            assert!(!msix.bars_valid());
            let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
            assert_eq!(msix.enable(&config, &table, 0, 0xFEE0_0000, 0x41), Err(MsixError::ReservedTableBir { bir }));
            assert!(sim.writes().is_empty(), "nothing written for BIR {bir}");
        }
        assert!(sim.writes().is_empty(), "nothing written to config space for a refused request");
        assert!(table.writes.borrow().is_empty(), "nothing written to the table for a refused request");
    }

    #[test]
    fn reports_an_enable_bit_that_does_not_stick() {
        let function = SimFunction::endpoint(0x8086, 0x10D3, NIC).msix(0xA0, 1, (0, 0), (0, 0x800)).writable(0xA0, 0);
        let sim = SimConfigSpace::new().with(bdf(0, 3, 0), function);
        let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
        let table = Table::new(1);
        assert_eq!(msix_of(&sim).enable(&config, &table, 0, 0xFEE0_0000, 0x41), Err(MsixError::EnableDidNotStick));
    }

    #[test]
    fn disable_clears_enable_and_function_mask_and_mask_sets_the_entry_bit() {
        let sim = function(2, 0);
        let config = FunctionConfig::new(&sim, bdf(0, 3, 0));
        let table = Table::new(2);
        let msix = msix_of(&sim);
        msix.enable(&config, &table, 1, 0xFEE0_0000, 0x41).unwrap();
        msix.mask(&table, 1).unwrap();
        assert_eq!(table.word(0x1C), VECTOR_MASKED);
        msix.disable(&config);
        let after = msix_of(&sim);
        assert!(!after.enabled && !after.function_mask);
        assert_eq!((msix.table_bytes(), msix.entry_offset(1)), (32, Ok(16)));
    }
}
