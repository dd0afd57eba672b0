//! Interrupt remapping: the formats (VT-d spec §5.1, §9.9, §9.10, §10.4.29, §6.5.2.7).
//!
//! # Why
//! To a PCI device an MSI is nothing but a 4-byte memory write to 0xFEEx_xxxx: the address names
//! the CPU, the data names the vector. So a device that can write that window — through a bug,
//! a malicious firmware or a driver that hands it the wrong address — can raise *any* vector on
//! *any* CPU, pretending to be the disk, the timer, or an IPI. DMA remapping does not stop this:
//! the interrupt window is not memory, and VT-d never translates it as DMA.
//!
//! Interrupt remapping closes the hole. With `GCMD.IRE` set, the unit takes every write to the
//! window and reads it in the *remappable format* (§5.1.2.2): the message no longer carries a
//! vector, only a *handle*, an index into the **interrupt remapping table (IRT)** that software
//! owns. The entry (IRTE, §9.10) says which vector goes to which CPU, and which requester id is
//! allowed to use it (source-id validation: SVT, SQ, SID). A message naming an absent entry, an
//! entry belonging to another device, or one in the old *compatibility* format is blocked and
//! recorded as a fault with a reason code 20h..26h (§7.1.3).
//!
//! ```text
//!  MSI address 0xFEE | handle bits 14:0 << 5 | 1 << 4 (remappable) | SHV << 3 | handle bit 15 << 2
//!        │
//!        ▼  IRTA (§10.4.29): table base, size 2^(S+1)
//!  IRT[handle + subhandle] = IRTE ── P, SID/SQ/SVT ─► checked against the requester id
//!        │                           vector, destination, trigger, delivery mode
//!        ▼
//!  the local APIC of `destination` takes `vector`
//! ```
//!
//! This module holds the pure parts, host-tested: the IRTE's bits ([`Irte`]), the remappable
//! MSI message and I/O APIC redirection entry that point at an IRTE ([`msi_message`],
//! [`ioapic_rte`]), the IRTA register value ([`irta`]), the interrupt-entry-cache invalidation
//! descriptor ([`iec_descriptor`]) and the table's allocator ([`IrteAllocator`]). The unit's
//! table and its enabling are in [`unit`](crate::unit) (`Unit::enable_interrupt_remapping`).
//!
//! # Example
//! The IRTE for vector 0x41, level-triggered, to the CPU with APIC id 0, that only the device at
//! 00:1f.2 may raise; the MSI address that device is given for handle 5.
//! ```
//! use iommu_vtd::SourceId;
//! use iommu_vtd::interrupt_remap::{Irte, msi_message};
//! let e = Irte::remapped(0x41, 0, true, SourceId::new(0, 0x1f, 2));
//! let [lo, hi] = e.encode();
//! assert_eq!(lo, 1 | 1 << 4 | 0x41 << 16); // P, TM = level, vector (APIC id 0 in bits 47:40)
//! assert_eq!(hi, 0xfa | 1 << 18); // SID 00:1f.2, SQ = 00, SVT = 01
//! assert_eq!(Irte::decode([lo, hi]), e);
//! assert_eq!(msi_message(5), (0xFEE0_0000 | 5 << 5 | 1 << 4 | 1 << 3, 0));
//! ```

use core::fmt;

use crate::SourceId;

/// Entries in a unit's table: one 4 KiB page of 16-byte entries (IRTA.S = 7, 2^(S+1) = 256).
pub const TABLE_ENTRIES: usize = 256;

/// IRTA.S for [`TABLE_ENTRIES`]: the table holds 2^(S+1) entries.
pub const TABLE_SIZE_FIELD: u64 = 7;

/// The interrupt remapping table address register (64-bit, §10.4.29).
pub const IRTA_REG: usize = 0xB8;

/// The value of IRTA_REG for a table at `base` (4 KiB aligned) with 2^(S+1) entries,
/// xAPIC mode (EIME, bit 11, clear: destinations are 8-bit APIC ids; this kernel and TCG have
/// no x2APIC).
pub const fn irta(base: u64) -> u64 {
    (base & !0xfff) | TABLE_SIZE_FIELD
}

/// Source-id verification type, IRTE bits 83:82 (§9.10).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SourceValidation {
    /// 00b: no check (any requester may use the entry).
    None,
    /// 01b: the requester id must equal SID, with the bits SQ masks ignored.
    RequesterId {
        /// SQ (bits 81:80): 0 compares all 16 bits; 1, 2, 3 ignore function bit 2, bits 2:1,
        /// bits 2:0.
        qualifier: u8,
        /// The requester id allowed.
        sid: SourceId,
    },
    /// 10b: the requester's bus must lie in SID's range: startbus in bits 15:8, endbus in
    /// bits 7:0 (for devices behind a PCIe-to-PCI bridge whose requests may carry any of those
    /// buses, §9.10).
    BusRange {
        /// First bus allowed.
        start: u8,
        /// Last bus allowed.
        end: u8,
    },
}

impl SourceValidation {
    /// Whether a request from `requester` passes this check (what the hardware does, §9.10).
    pub const fn allows(self, requester: SourceId) -> bool {
        match self {
            SourceValidation::None => true,
            SourceValidation::RequesterId { qualifier, sid } => {
                let ignore: u16 = match qualifier & 3 {
                    0 => 0,
                    1 => 0b100,
                    2 => 0b110,
                    _ => 0b111,
                };
                requester.0 & !ignore == sid.0 & !ignore
            }
            SourceValidation::BusRange { start, end } => requester.bus() >= start && requester.bus() <= end,
        }
    }
}

impl fmt::Display for SourceValidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceValidation::None => f.write_str("SVT=00 (no check)"),
            SourceValidation::RequesterId { qualifier, sid } => write!(f, "SVT=01 SQ={qualifier:02b} SID={sid}"),
            SourceValidation::BusRange { start, end } => write!(f, "SVT=10 buses {start:02x}..={end:02x}"),
        }
    }
}

/// An interrupt remapping table entry in remapped format (§9.10, IM = 0). Fields this kernel
/// does not use (FPD, RH, logical destination mode) are zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Irte {
    /// P (bit 0).
    pub present: bool,
    /// TM (bit 4): level-triggered (I/O APIC level inputs) or edge (MSI).
    pub level: bool,
    /// DLM (bits 7:5): 000 fixed, 001 lowest priority, 100 NMI, ... This kernel uses fixed.
    pub delivery_mode: u8,
    /// V (bits 23:16): the vector the CPU receives.
    pub vector: u8,
    /// DST (bits 63:32): in xAPIC mode the 8-bit APIC id sits in bits 47:40.
    pub destination: u8,
    /// SVT/SQ/SID (bits 83:64): who may raise it.
    pub validation: SourceValidation,
}

impl Irte {
    /// The entry nothing may use (P clear).
    pub const ABSENT: Irte = Irte {
        present: false,
        level: false,
        delivery_mode: 0,
        vector: 0,
        destination: 0,
        validation: SourceValidation::None,
    };

    /// A present entry: fixed delivery of `vector` to the CPU with APIC id `destination`
    /// (physical mode), edge or level, raised only by `sid` (SVT = 01, SQ = 00: all 16 bits
    /// compared), as Linux 6.1 `set_irte_sid` does for a device that is its own requester.
    pub const fn remapped(vector: u8, destination: u8, level: bool, sid: SourceId) -> Irte {
        Irte {
            present: true,
            level,
            delivery_mode: 0,
            vector,
            destination,
            validation: SourceValidation::RequesterId { qualifier: 0, sid },
        }
    }

    /// The two 64-bit halves, low first, as the unit reads them.
    pub const fn encode(&self) -> [u64; 2] {
        let lo = self.present as u64
            | (self.level as u64) << 4
            | ((self.delivery_mode as u64) & 7) << 5
            | (self.vector as u64) << 16
            | (self.destination as u64) << 40;
        let hi = match self.validation {
            SourceValidation::None => 0,
            SourceValidation::RequesterId { qualifier, sid } => sid.0 as u64 | ((qualifier as u64) & 3) << 16 | 1 << 18,
            SourceValidation::BusRange { start, end } => ((start as u64) << 8 | end as u64) | 2 << 18,
        };
        [lo, hi]
    }

    /// Decodes an entry written by [`Irte::encode`] (the fields this kernel does not use are
    /// dropped; SVT = 11b, reserved, reads as no check).
    pub const fn decode(words: [u64; 2]) -> Irte {
        let [lo, hi] = words;
        let sid = SourceId(hi as u16);
        let validation = match (hi >> 18) & 3 {
            1 => SourceValidation::RequesterId { qualifier: ((hi >> 16) & 3) as u8, sid },
            2 => SourceValidation::BusRange { start: (hi >> 8) as u8, end: hi as u8 },
            _ => SourceValidation::None,
        };
        Irte {
            present: lo & 1 != 0,
            level: lo & (1 << 4) != 0,
            delivery_mode: ((lo >> 5) & 7) as u8,
            vector: (lo >> 16) as u8,
            destination: (lo >> 40) as u8,
            validation,
        }
    }
}

/// The delivery mode's name (SDM Vol. 3A §11.11.2).
pub const fn delivery_mode_name(mode: u8) -> &'static str {
    match mode & 7 {
        0 => "fixed",
        1 => "lowest",
        2 => "SMI",
        4 => "NMI",
        5 => "INIT",
        7 => "ExtINT",
        _ => "reserved",
    }
}

/// The MSI address and data, in remappable format (§5.1.5.2), that make a device's message use
/// IRTE `handle`: address 0xFEE | handle bits 14:0 in bits 19:5 | interrupt format (bit 4) | SHV
/// (bit 3, the data holds a subhandle) | handle bit 15 in bit 2; data = subhandle 0. Linux 6.1
/// (`fill_msi_msg` in drivers/iommu/intel/irq_remapping.c) builds the same shape.
pub const fn msi_message(handle: u16) -> (u64, u32) {
    let h = handle as u64;
    (0xFEE0_0000 | (h & 0x7fff) << 5 | 1 << 4 | 1 << 3 | (h >> 15) << 2, 0)
}

/// The handle a remappable-format MSI address names (with the subhandle in `data` when SHV is
/// set), or `None` for a compatibility-format address (bit 4 clear).
pub const fn msi_handle(address: u64, data: u32) -> Option<u16> {
    if address & (1 << 4) == 0 {
        return None;
    }
    let mut h = (((address >> 5) & 0x7fff) | ((address >> 2) & 1) << 15) as u16;
    if address & (1 << 3) != 0 {
        h = h.wrapping_add(data as u16);
    }
    Some(h)
}

/// An I/O APIC redirection table entry in remappable format (§5.1.5.1): handle bits 14:0 in bits
/// 63:49, interrupt format (bit 48), mask (16), trigger mode (15), polarity (13), handle bit 15 in
/// bit 11, and the vector in bits 7:0. The vector is not used for delivery (the IRTE's is), but
/// it must equal the IRTE's: a level-triggered input is re-armed by the EOI broadcast the local
/// APIC sends with the delivered vector, and the I/O APIC matches it against this field.
pub const fn ioapic_rte(handle: u16, vector: u8, level: bool, active_low: bool, masked: bool) -> u64 {
    let h = handle as u64;
    vector as u64
        | ((h >> 15) & 1) << 11
        | (active_low as u64) << 13
        | (level as u64) << 15
        | (masked as u64) << 16
        | 1 << 48
        | (h & 0x7fff) << 49
}

/// Scope of an interrupt entry cache invalidation (§6.5.2.7).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IecScope {
    /// Every cached entry (G = 0).
    Global,
    /// The entries `index .. index + 2^mask` (G = 1; `index` aligned to 2^mask).
    Index {
        /// First entry.
        index: u16,
        /// IM: log2 of the count.
        mask: u8,
    },
}

/// Encodes an interrupt entry cache invalidate descriptor (type 4, §6.5.2.7): G in bit 4, IM in
/// bits 31:27, IIDX in bits 47:32.
pub const fn iec_descriptor(scope: IecScope) -> [u64; 2] {
    match scope {
        IecScope::Global => [0x4, 0],
        IecScope::Index { index, mask } => [0x4 | 1 << 4 | ((mask as u64) & 0x1f) << 27 | (index as u64) << 32, 0],
    }
}

/// Which entries of a table are in use: one bit per entry, lowest free first.
///
/// # Invariant
/// An index is handed out at most once until it is freed; freeing an index not in use is
/// refused (returns false), so a double free cannot give one entry to two devices.
#[derive(Clone, Debug)]
pub struct IrteAllocator {
    used: [u64; TABLE_ENTRIES / 64],
}

impl Default for IrteAllocator {
    fn default() -> IrteAllocator {
        IrteAllocator::new()
    }
}

impl IrteAllocator {
    /// Every entry free.
    pub const fn new() -> IrteAllocator {
        IrteAllocator { used: [0; TABLE_ENTRIES / 64] }
    }

    /// The lowest free index, now in use; `None` when the table is full.
    pub fn allocate(&mut self) -> Option<u16> {
        for (w, word) in self.used.iter_mut().enumerate() {
            if *word != u64::MAX {
                let bit = (!*word).trailing_zeros();
                *word |= 1 << bit;
                return Some((w * 64) as u16 + bit as u16);
            }
        }
        None
    }

    /// The lowest free index at or above `from`, now in use.
    pub fn allocate_from(&mut self, from: u16) -> Option<u16> {
        let i = (usize::from(from)..TABLE_ENTRIES).find(|&i| self.used[i / 64] & (1 << (i % 64)) == 0)?;
        self.used[i / 64] |= 1 << (i % 64);
        Some(i as u16)
    }

    /// Frees `index`; false if it was not in use (or out of range).
    pub fn free(&mut self, index: u16) -> bool {
        let i = index as usize;
        if i >= TABLE_ENTRIES || !self.in_use(index) {
            return false;
        }
        self.used[i / 64] &= !(1 << (i % 64));
        true
    }

    /// Whether `index` is in use.
    pub fn in_use(&self, index: u16) -> bool {
        let i = index as usize;
        i < TABLE_ENTRIES && self.used[i / 64] & (1 << (i % 64)) != 0
    }

    /// Entries in use.
    pub fn count(&self) -> usize {
        self.used.iter().map(|w| w.count_ones() as usize).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irte_bits_sit_where_section_9_10_puts_them() {
        let e = Irte {
            present: true,
            level: true,
            delivery_mode: 0b001,
            vector: 0xAB,
            destination: 0x5C,
            validation: SourceValidation::RequesterId { qualifier: 0b10, sid: SourceId::new(3, 4, 5) },
        };
        let [lo, hi] = e.encode();
        assert_eq!(lo & 1, 1, "P is bit 0");
        assert_eq!(lo & 0b10, 0, "FPD (bit 1) clear: faults are recorded");
        assert_eq!((lo >> 2) & 1, 0, "DM (bit 2) = physical");
        assert_eq!((lo >> 4) & 1, 1, "TM is bit 4");
        assert_eq!((lo >> 5) & 7, 0b001, "DLM is bits 7:5");
        assert_eq!((lo >> 15) & 1, 0, "IM (bit 15) = remapped, not posted");
        assert_eq!((lo >> 16) & 0xff, 0xAB, "V is bits 23:16");
        assert_eq!((lo >> 40) & 0xff, 0x5C, "xAPIC destination is bits 47:40");
        assert_eq!(lo & 0xff00_00ff_ff00_7f00 & !(0xff << 40), 0, "reserved bits of the low half stay 0");
        assert_eq!(hi & 0xffff, SourceId::new(3, 4, 5).0 as u64, "SID is bits 79:64");
        assert_eq!((hi >> 16) & 3, 0b10, "SQ is bits 81:80");
        assert_eq!((hi >> 18) & 3, 0b01, "SVT is bits 83:82");
        assert_eq!(hi >> 20, 0, "bits 127:84 reserved");
        assert_eq!(Irte::decode([lo, hi]), e);
        assert_eq!(Irte::ABSENT.encode(), [0, 0]);
        let bus = Irte { validation: SourceValidation::BusRange { start: 2, end: 4 }, ..e };
        assert_eq!(bus.encode()[1], 0x0204 | 2 << 18);
        assert_eq!(Irte::decode(bus.encode()), bus);
    }

    #[test]
    fn source_validation_masks_what_sq_says() {
        let sid = SourceId::new(0, 3, 0);
        let exact = SourceValidation::RequesterId { qualifier: 0, sid };
        assert!(exact.allows(sid));
        assert!(!exact.allows(SourceId::new(0, 3, 1)));
        assert!(!exact.allows(SourceId::new(0, 2, 0)));
        let any_function = SourceValidation::RequesterId { qualifier: 3, sid };
        assert!(any_function.allows(SourceId::new(0, 3, 7)));
        assert!(!any_function.allows(SourceId::new(0, 4, 0)));
        let bit2 = SourceValidation::RequesterId { qualifier: 1, sid };
        assert!(bit2.allows(SourceId::new(0, 3, 4)) && !bit2.allows(SourceId::new(0, 3, 1)));
        let buses = SourceValidation::BusRange { start: 2, end: 3 };
        assert!(buses.allows(SourceId::new(2, 0, 0)) && buses.allows(SourceId::new(3, 9, 1)));
        assert!(!buses.allows(SourceId::new(1, 0, 0)) && !buses.allows(SourceId::new(4, 0, 0)));
        assert!(SourceValidation::None.allows(SourceId(0xffff)));
    }

    #[test]
    fn msi_and_rte_carry_the_handle_in_the_spec_bits() {
        for handle in [0u16, 1, 5, 0x7fff, 0x8000, 0xffff, 0x1234] {
            let (address, data) = msi_message(handle);
            assert_eq!(address >> 20, 0xFEE);
            assert_eq!((address >> 4) & 1, 1, "interrupt format: remappable");
            assert_eq!((address >> 3) & 1, 1, "SHV");
            assert_eq!(data, 0, "subhandle 0");
            assert_eq!(msi_handle(address, data), Some(handle));
            let rte = ioapic_rte(handle, 0x33, true, false, false);
            assert_eq!((rte >> 48) & 1, 1, "interrupt format");
            assert_eq!(((rte >> 49) | ((rte >> 11) & 1) << 15) as u16, handle);
            assert_eq!(rte & 0xff, 0x33);
            assert_eq!(rte & (0x7 << 8), 0, "bits 10:8 must be 0");
            assert_eq!((rte >> 15) & 1, 1, "level");
        }
        assert_eq!(ioapic_rte(0, 0, false, true, true), 1 << 48 | 1 << 16 | 1 << 13);
        assert_eq!(msi_handle(0xFEE0_0000, 0x41), None, "compatibility format");
        assert_eq!(msi_handle(0xFEE0_0000 | 3 << 5 | 1 << 4, 0xffff), Some(3), "no SHV: data ignored");
        assert_eq!(msi_handle(0xFEE0_0000 | 3 << 5 | 1 << 4 | 1 << 3, 2), Some(5));
    }

    #[test]
    fn irta_and_iec_descriptor_encodings() {
        assert_eq!(irta(0x1234_5000), 0x1234_5007);
        assert_eq!(irta(0x1234_5000) & (1 << 11), 0, "EIME off: xAPIC");
        assert_eq!(1usize << (TABLE_SIZE_FIELD + 1), TABLE_ENTRIES);
        assert_eq!(iec_descriptor(IecScope::Global), [0x4, 0]);
        assert_eq!(iec_descriptor(IecScope::Index { index: 0x12, mask: 0 }), [0x4 | 1 << 4 | 0x12 << 32, 0]);
        assert_eq!(iec_descriptor(IecScope::Index { index: 8, mask: 3 })[0] >> 27 & 0x1f, 3);
    }

    #[test]
    fn allocator_hands_each_index_out_once() {
        let mut a = IrteAllocator::new();
        let mut got = alloc::vec::Vec::new();
        while let Some(i) = a.allocate() {
            assert!(!got.contains(&i));
            got.push(i);
        }
        assert_eq!(got.len(), TABLE_ENTRIES);
        assert_eq!(a.count(), TABLE_ENTRIES);
        assert!(a.free(70));
        assert!(!a.free(70), "double free refused");
        assert!(!a.free(TABLE_ENTRIES as u16), "out of range refused");
        assert_eq!(a.allocate(), Some(70), "lowest free first");
        assert_eq!(a.allocate(), None);
        let mut b = IrteAllocator::new();
        assert_eq!(b.allocate_from(200), Some(200));
        assert_eq!(b.allocate_from(200), Some(201));
        assert_eq!(b.allocate(), Some(0));
        assert_eq!(b.allocate_from(TABLE_ENTRIES as u16), None);
        assert!(b.free(200) && b.in_use(201) && b.count() == 2);
    }
}
