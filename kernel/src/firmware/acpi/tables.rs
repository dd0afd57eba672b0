//! A careful first walk over the firmware's ACPI tables.
//!
//! ACPI tables are input the kernel did not write: firmware bugs give bad checksums, truncated
//! tables, and pointers to nowhere. Before any table is parsed (by the `acpi` crate, or by our own
//! DMAR parser), this walk checks the structure every parser relies on and lists what it finds:
//!
//! * the RSDP: signature, checksum (and extended checksum for revision ≥ 2) — ACPI 6.5 §5.2.5.3;
//! * the root table (XSDT, or RSDT for ACPI 1.0): inside memory, long enough, checksum;
//! * each table it points to: inside memory, its header's length at least the header, its bytes
//!   summing to zero — ACPI 6.5 §5.2.6 (System Description Table Header).
//!
//! A problem is recorded and the walk goes on; a table with a problem is never handed to a parser.
//! Reads go through [`PhysBytes`], which answers `None` for memory outside what the kernel can
//! reach, so a wild pointer is a reported problem, never a page fault.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Read access to physical memory, refusing addresses the kernel cannot reach.
pub trait PhysBytes {
    /// `len` bytes at physical address `pa`, or `None` if any of them is outside reachable memory.
    fn read(&self, pa: u64, len: usize) -> Option<&[u8]>;
}

/// Size of the common table header.
pub const SDT_HEADER_LEN: usize = 36;

/// One table found through the root table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// Four-character signature, e.g. `*b"MCFG"`.
    pub signature: [u8; 4],
    /// Physical address of its header.
    pub address: u64,
    /// Length from its header, in bytes.
    pub length: u32,
    /// Header revision.
    pub revision: u8,
    /// OEM id (6 characters).
    pub oem_id: [u8; 6],
    /// True when the table passed every check and may be parsed.
    pub valid: bool,
}

impl TableEntry {
    /// The signature as text.
    pub fn name(&self) -> &str {
        core::str::from_utf8(&self.signature).unwrap_or("????")
    }
}

/// Something wrong with the tables. Each one is logged; none stops the boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcpiProblem {
    /// No RSDP address was given (the bootloader found none).
    NoRsdp,
    /// The RSDP is outside reachable memory.
    RsdpUnreadable {
        /// Physical address of the RSDP.
        address: u64,
    },
    /// The RSDP does not start with "RSD PTR ".
    RsdpBadSignature {
        /// Physical address of the RSDP.
        address: u64,
    },
    /// The RSDP's checksum (first 20 bytes) or extended checksum (all `length` bytes) is wrong.
    RsdpBadChecksum {
        /// Physical address of the RSDP.
        address: u64,
        /// Whether the failing checksum is the ACPI 2.0+ extended one.
        extended: bool,
    },
    /// The root table (RSDT/XSDT) has a problem; no other table can be trusted to be found.
    RootUnusable {
        /// "XSDT" or "RSDT".
        signature: &'static str,
        /// Physical address of the root table.
        address: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry of the root table points outside reachable memory.
    PointerOutOfRange {
        /// Position of the entry in the root table.
        index: usize,
        /// The physical address the entry holds.
        address: u64,
    },
    /// A table's header claims fewer bytes than a header has.
    LengthTooSmall {
        /// The table's signature.
        signature: [u8; 4],
        /// Physical address of the table.
        address: u64,
        /// The length its header claims.
        length: u32,
    },
    /// A table's length runs past reachable memory.
    Truncated {
        /// The table's signature.
        signature: [u8; 4],
        /// Physical address of the table.
        address: u64,
        /// The length its header claims.
        length: u32,
    },
    /// A table's bytes do not sum to zero.
    BadChecksum {
        /// The table's signature.
        signature: [u8; 4],
        /// Physical address of the table.
        address: u64,
    },
}

fn sig(s: &[u8; 4]) -> String {
    s.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect()
}

impl fmt::Display for AcpiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiProblem::NoRsdp => write!(f, "no RSDP: the firmware published no ACPI tables"),
            AcpiProblem::RsdpUnreadable { address } => {
                write!(f, "RSDP at {address:#x} is outside reachable memory")
            }
            AcpiProblem::RsdpBadSignature { address } => {
                write!(f, "RSDP at {address:#x} lacks the \"RSD PTR \" signature")
            }
            AcpiProblem::RsdpBadChecksum { address, extended } => {
                write!(f, "RSDP at {address:#x} has a wrong {}checksum", if *extended { "extended " } else { "" })
            }
            AcpiProblem::RootUnusable { signature, address, reason } => {
                write!(f, "{signature} at {address:#x} unusable: {reason}; ignoring all ACPI tables")
            }
            AcpiProblem::PointerOutOfRange { index, address } => {
                write!(f, "root table entry {index} points outside memory ({address:#x}); entry skipped")
            }
            AcpiProblem::LengthTooSmall { signature, address, length } => write!(
                f,
                "{} table at {address:#x} claims length {length}, shorter than its header; table ignored",
                sig(signature)
            ),
            AcpiProblem::Truncated { signature, address, length } => write!(
                f,
                "{} table at {address:#x} (length {length}) runs past reachable memory; table ignored",
                sig(signature)
            ),
            AcpiProblem::BadChecksum { signature, address } => {
                write!(f, "{} table at {address:#x} has a wrong checksum; table ignored", sig(signature))
            }
        }
    }
}

/// What the walk found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiInventory {
    /// RSDP address.
    pub rsdp: u64,
    /// RSDP revision (0 = ACPI 1.0 with an RSDT; ≥ 2 = XSDT).
    pub revision: u8,
    /// Root table address, when the root table is sound.
    pub root: Option<u64>,
    /// Every table the root table lists, valid or not.
    pub tables: Vec<TableEntry>,
    /// Every problem met.
    pub problems: Vec<AcpiProblem>,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

impl AcpiInventory {
    /// Walks the tables starting at the RSDP at `rsdp`.
    pub fn walk(mem: &impl PhysBytes, rsdp: Option<u64>) -> Self {
        let mut inv = AcpiInventory::default();
        let Some(rsdp) = rsdp else {
            inv.problems.push(AcpiProblem::NoRsdp);
            return inv;
        };
        inv.rsdp = rsdp;
        let Some(v1) = mem.read(rsdp, 20) else {
            inv.problems.push(AcpiProblem::RsdpUnreadable { address: rsdp });
            return inv;
        };
        if &v1[..8] != b"RSD PTR " {
            inv.problems.push(AcpiProblem::RsdpBadSignature { address: rsdp });
            return inv;
        }
        if !checksum_ok(v1) {
            inv.problems.push(AcpiProblem::RsdpBadChecksum { address: rsdp, extended: false });
            return inv;
        }
        inv.revision = v1[15];
        let rsdt = u32_at(v1, 16) as u64;
        let (root_sig, root_addr, entry_size): (&'static str, u64, usize) = if inv.revision >= 2 {
            let Some(v2) = mem.read(rsdp, 36) else {
                inv.problems.push(AcpiProblem::RsdpUnreadable { address: rsdp });
                return inv;
            };
            let length = u32_at(v2, 20) as usize;
            match mem.read(rsdp, length.max(36)) {
                Some(all) if checksum_ok(all) => ("XSDT", u64_at(v2, 24), 8),
                _ => {
                    inv.problems.push(AcpiProblem::RsdpBadChecksum { address: rsdp, extended: true });
                    return inv;
                }
            }
        } else {
            ("RSDT", rsdt, 4)
        };

        let root = match Self::check_table(mem, root_addr) {
            Ok(bytes) if &bytes[..4] == root_sig.as_bytes() => bytes,
            Ok(_) => {
                inv.problems.push(AcpiProblem::RootUnusable {
                    signature: root_sig,
                    address: root_addr,
                    reason: "wrong signature",
                });
                return inv;
            }
            Err(p) => {
                let reason = match p {
                    AcpiProblem::BadChecksum { .. } => "wrong checksum",
                    AcpiProblem::LengthTooSmall { .. } => "length shorter than its header",
                    _ => "outside reachable memory",
                };
                inv.problems.push(AcpiProblem::RootUnusable { signature: root_sig, address: root_addr, reason });
                return inv;
            }
        };
        inv.root = Some(root_addr);

        for (index, entry) in root[SDT_HEADER_LEN..].chunks_exact(entry_size).enumerate() {
            let address = if entry_size == 8 { u64_at(entry, 0) } else { u32_at(entry, 0) as u64 };
            let Some(header) = mem.read(address, SDT_HEADER_LEN) else {
                inv.problems.push(AcpiProblem::PointerOutOfRange { index, address });
                continue;
            };
            let mut table = TableEntry {
                signature: header[..4].try_into().unwrap_or([0; 4]),
                address,
                length: u32_at(header, 4),
                revision: header[8],
                oem_id: header[10..16].try_into().unwrap_or([0; 6]),
                valid: false,
            };
            match Self::check_table(mem, address) {
                Ok(_) => table.valid = true,
                Err(problem) => inv.problems.push(problem),
            }
            inv.tables.push(table);
        }
        inv
    }

    /// Checks one table's header, length and checksum; returns its bytes.
    fn check_table(mem: &impl PhysBytes, address: u64) -> Result<&[u8], AcpiProblem> {
        let header = mem.read(address, SDT_HEADER_LEN).ok_or(AcpiProblem::PointerOutOfRange { index: 0, address })?;
        let signature: [u8; 4] = header[..4].try_into().unwrap_or([0; 4]);
        let length = u32_at(header, 4);
        if (length as usize) < SDT_HEADER_LEN {
            return Err(AcpiProblem::LengthTooSmall { signature, address, length });
        }
        let bytes = mem.read(address, length as usize).ok_or(AcpiProblem::Truncated { signature, address, length })?;
        if !checksum_ok(bytes) {
            return Err(AcpiProblem::BadChecksum { signature, address });
        }
        Ok(bytes)
    }

    /// True when the root table is sound and every pointer in it could be read, so a parser
    /// that follows the root table itself (like the `acpi` crate) only ever reads good memory.
    pub fn root_is_sound(&self) -> bool {
        self.root.is_some()
            && !self
                .problems
                .iter()
                .any(|p| matches!(p, AcpiProblem::PointerOutOfRange { .. } | AcpiProblem::Truncated { .. }))
    }

    /// The first valid table with this signature.
    pub fn find(&self, signature: &[u8; 4]) -> Option<&TableEntry> {
        self.tables.iter().find(|t| t.valid && &t.signature == signature)
    }

    /// A copy of the first valid table with this signature, header included.
    pub fn copy_table(&self, mem: &impl PhysBytes, signature: &[u8; 4]) -> Option<Vec<u8>> {
        let t = self.find(signature)?;
        mem.read(t.address, t.length as usize).map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec;

    /// A flat simulated physical memory starting at address 0.
    pub struct FlatMemory(pub Vec<u8>);

    impl PhysBytes for FlatMemory {
        fn read(&self, pa: u64, len: usize) -> Option<&[u8]> {
            let start = usize::try_from(pa).ok()?;
            self.0.get(start..start.checked_add(len)?)
        }
    }

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        let sum = bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        bytes[at] = 0u8.wrapping_sub(sum);
    }

    /// A table with a valid header and checksum.
    pub fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; SDT_HEADER_LEN];
        t[..4].copy_from_slice(signature);
        t[4..8].copy_from_slice(&((SDT_HEADER_LEN + body.len()) as u32).to_le_bytes());
        t[8] = 1;
        t[10..16].copy_from_slice(b"BOCHS ");
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    /// Lays out RSDP (rev 2) at 0x100, XSDT at 0x200 and `tables` from 0x1000 on.
    pub fn machine(tables: &[Vec<u8>]) -> FlatMemory {
        let mut mem = vec![0u8; 0x1000 + tables.iter().map(|t| t.len() + 16).sum::<usize>()];
        let mut addrs = Vec::new();
        let mut at = 0x1000;
        for t in tables {
            mem[at..at + t.len()].copy_from_slice(t);
            addrs.push(at as u64);
            at += t.len().next_multiple_of(16);
        }
        let body: Vec<u8> = addrs.iter().flat_map(|a| a.to_le_bytes()).collect();
        let xsdt = table(b"XSDT", &body);
        mem[0x200..0x200 + xsdt.len()].copy_from_slice(&xsdt);
        let mut rsdp = vec![0u8; 36];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[9..15].copy_from_slice(b"BOCHS ");
        rsdp[15] = 2;
        rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
        rsdp[24..32].copy_from_slice(&0x200u64.to_le_bytes());
        fix_checksum(&mut rsdp[..20], 8);
        fix_checksum(&mut rsdp, 32);
        mem[0x100..0x100 + 36].copy_from_slice(&rsdp);
        FlatMemory(mem)
    }

    #[test]
    fn a_sound_set_of_tables_is_listed_and_valid() {
        let mem = machine(&[table(b"FACP", &[0; 100]), table(b"MCFG", &[0; 24])]);
        let inv = AcpiInventory::walk(&mem, Some(0x100));
        assert!(inv.problems.is_empty(), "{:?}", inv.problems);
        assert!(inv.root_is_sound());
        assert_eq!(inv.revision, 2);
        assert_eq!(inv.tables.len(), 2);
        assert_eq!(inv.find(b"MCFG").unwrap().length, 60);
        assert_eq!(inv.copy_table(&mem, b"MCFG").unwrap().len(), 60);
        assert!(inv.find(b"DMAR").is_none());
    }

    #[test]
    fn a_bad_checksum_rejects_only_that_table() {
        let mut bad = table(b"DMAR", &[0; 48]);
        bad[50] ^= 0xff;
        let mem = machine(&[table(b"FACP", &[0; 100]), bad]);
        let inv = AcpiInventory::walk(&mem, Some(0x100));
        assert!(matches!(inv.problems[..], [AcpiProblem::BadChecksum { signature: [b'D', b'M', b'A', b'R'], .. }]));
        assert!(inv.find(b"DMAR").is_none(), "a table with a bad checksum must not be parsed");
        assert!(inv.find(b"FACP").is_some());
        assert!(inv.root_is_sound());
    }

    #[test]
    fn a_truncated_table_is_reported_not_read() {
        let mut mem = machine(&[table(b"APIC", &[0; 40])]);
        let len = mem.0.len();
        // The table claims far more bytes than memory holds.
        mem.0[0x1004..0x1008].copy_from_slice(&(len as u32 * 2).to_le_bytes());
        let inv = AcpiInventory::walk(&mem, Some(0x100));
        assert!(matches!(inv.problems[..], [AcpiProblem::Truncated { .. }]), "{:?}", inv.problems);
        assert!(!inv.root_is_sound());
        // A length shorter than a header.
        mem.0[0x1004..0x1008].copy_from_slice(&8u32.to_le_bytes());
        let inv = AcpiInventory::walk(&mem, Some(0x100));
        assert!(matches!(inv.problems[..], [AcpiProblem::LengthTooSmall { length: 8, .. }]));
    }

    #[test]
    fn a_wild_pointer_is_reported() {
        let mut mem = machine(&[table(b"APIC", &[0; 40])]);
        // Point the XSDT's only entry far outside memory and fix the XSDT checksum.
        mem.0[0x200 + 36..0x200 + 44].copy_from_slice(&0xdead_0000_0000u64.to_le_bytes());
        let xsdt_len = SDT_HEADER_LEN + 8;
        fix_checksum(&mut mem.0[0x200..0x200 + xsdt_len], 9);
        let inv = AcpiInventory::walk(&mem, Some(0x100));
        assert_eq!(inv.problems, [AcpiProblem::PointerOutOfRange { index: 0, address: 0xdead_0000_0000 }]);
        assert!(!inv.root_is_sound());
    }

    #[test]
    fn rsdp_problems_stop_the_walk_cleanly() {
        let mem = machine(&[]);
        assert_eq!(AcpiInventory::walk(&mem, None).problems, [AcpiProblem::NoRsdp]);
        assert_eq!(AcpiInventory::walk(&mem, Some(0x108)).problems, [AcpiProblem::RsdpBadSignature { address: 0x108 }]);
        assert_eq!(
            AcpiInventory::walk(&mem, Some(u64::MAX - 4)).problems,
            [AcpiProblem::RsdpUnreadable { address: u64::MAX - 4 }]
        );
        let mut bad = machine(&[]);
        bad.0[0x100 + 9] ^= 1;
        assert!(matches!(
            AcpiInventory::walk(&bad, Some(0x100)).problems[..],
            [AcpiProblem::RsdpBadChecksum { extended: false, .. }]
        ));
        let mut bad = machine(&[]);
        bad.0[0x100 + 33] ^= 1;
        assert!(matches!(
            AcpiInventory::walk(&bad, Some(0x100)).problems[..],
            [AcpiProblem::RsdpBadChecksum { extended: true, .. }]
        ));
        let mut bad = machine(&[]);
        bad.0[0x200 + 20] ^= 1; // corrupt the XSDT
        let inv = AcpiInventory::walk(&bad, Some(0x100));
        assert!(matches!(inv.problems[..], [AcpiProblem::RootUnusable { reason: "wrong checksum", .. }]));
        assert!(!inv.root_is_sound());
    }

    #[test]
    fn no_input_makes_the_walk_panic() {
        // Every single-byte corruption of a small machine must be survived.
        let good = machine(&[table(b"FACP", &[7; 20]), table(b"MCFG", &[1; 24])]);
        for at in 0..good.0.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = FlatMemory(good.0.clone());
                m.0[at] ^= flip;
                let inv = AcpiInventory::walk(&m, Some(0x100));
                for p in &inv.problems {
                    let _ = alloc::format!("{p}");
                }
            }
        }
    }
}
