//! Host tests over ACPI tables captured from QEMU 7.2 (`cargo xtask fixtures`): the walk and the
//! `acpi` crate must agree with what this QEMU really produces, under SeaBIOS (ACPI 1.0 RSDT)
//! and under OVMF (ACPI 2.0+ XSDT).

use super::tables::{AcpiInventory, AcpiProblem, PhysBytes};
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr::NonNull;

const BIOS_VTD: &str = include_str!("../../../fixtures/qemu-q35-bios-vtd.acpi");
const UEFI_VTD: &str = include_str!("../../../fixtures/qemu-q35-uefi-vtd.acpi");

/// Physical memory made of the captured blocks at their captured addresses.
struct Captured {
    blocks: Vec<(String, u64, Vec<u8>)>,
}

impl Captured {
    fn parse(text: &str) -> Self {
        let mut blocks = Vec::new();
        let mut lines = text.lines().filter(|l| !l.starts_with('#'));
        while let Some(header) = lines.next() {
            let fields: Vec<&str> = header.split_whitespace().collect();
            let ["==", "acpi", name, address, length] = fields[..] else { panic!("bad header {header:?}") };
            let address = u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap();
            let mut bytes = Vec::new();
            for line in lines.by_ref().take_while(|l| *l != "== end") {
                for i in (0..line.len()).step_by(2) {
                    bytes.push(u8::from_str_radix(&line[i..i + 2], 16).unwrap());
                }
            }
            assert_eq!(bytes.len(), length.parse::<usize>().unwrap(), "{name}");
            if name == "RSDP" {
                // The acpi crate maps a whole ACPI 2.0 RSDP (36 bytes) even for revision 0; the
                // capture holds the 20 bytes revision 0 defines, the rest is zero here.
                bytes.resize(36, 0);
            }
            blocks.push((name.into(), address, bytes));
        }
        Captured { blocks }
    }

    fn rsdp(&self) -> u64 {
        self.blocks.iter().find(|b| b.0 == "RSDP").unwrap().1
    }

    fn block_mut(&mut self, name: &str) -> &mut Vec<u8> {
        &mut self.blocks.iter_mut().find(|b| b.0 == name).unwrap().2
    }
}

impl PhysBytes for Captured {
    fn read(&self, pa: u64, len: usize) -> Option<&[u8]> {
        self.blocks.iter().find_map(|(_, at, bytes)| {
            let start = usize::try_from(pa.checked_sub(*at)?).ok()?;
            bytes.get(start..start.checked_add(len)?)
        })
    }
}

const EXPECTED: [&[u8; 4]; 7] = [b"FACP", b"APIC", b"HPET", b"MCFG", b"DMAR", b"WAET", b"FACP"];

#[test]
fn seabios_tables_walk_clean() {
    let mem = Captured::parse(BIOS_VTD);
    let inv = AcpiInventory::walk(&mem, Some(mem.rsdp()));
    assert_eq!(inv.problems, []);
    assert_eq!(inv.revision, 0, "SeaBIOS publishes an ACPI 1.0 RSDP with an RSDT");
    assert!(inv.root_is_sound());
    for sig in EXPECTED {
        assert!(inv.find(sig).is_some(), "{}", core::str::from_utf8(sig).unwrap());
    }
    assert_eq!(inv.copy_table(&mem, b"DMAR").unwrap().len(), 120);
}

#[test]
fn ovmf_tables_walk_clean() {
    let mem = Captured::parse(UEFI_VTD);
    let inv = AcpiInventory::walk(&mem, Some(mem.rsdp()));
    assert_eq!(inv.problems, []);
    assert_eq!(inv.revision, 2, "OVMF publishes an ACPI 2.0 RSDP with an XSDT");
    assert!(inv.find(b"BGRT").is_some());
    for sig in EXPECTED {
        assert!(inv.find(sig).is_some(), "{}", core::str::from_utf8(sig).unwrap());
    }
}

#[test]
fn a_corrupted_capture_loses_only_the_corrupted_table() {
    for name in ["APIC", "MCFG", "DMAR", "HPET"] {
        let mut mem = Captured::parse(BIOS_VTD);
        mem.block_mut(name)[40] ^= 0x5a;
        let inv = AcpiInventory::walk(&mem, Some(mem.rsdp()));
        let sig: [u8; 4] = name.as_bytes().try_into().unwrap();
        assert!(matches!(inv.problems[..], [AcpiProblem::BadChecksum { signature, .. }] if signature == sig));
        assert!(inv.find(&sig).is_none());
        assert_eq!(inv.tables.iter().filter(|t| t.valid).count(), inv.tables.len() - 1);
    }
}

/// The `acpi` crate's window onto the captured memory.
#[derive(Clone)]
struct CapturedHandler(&'static Captured);

impl acpi::AcpiHandler for CapturedHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> acpi::PhysicalMapping<Self, T> {
        let bytes = self.0.read(physical_address as u64, size).expect("the crate reads only captured memory");
        // SAFETY: `bytes` lives as long as the leaked `Captured`; the crate only reads through it.
        unsafe {
            acpi::PhysicalMapping::new(
                physical_address,
                NonNull::new(bytes.as_ptr() as *mut T).unwrap(),
                size,
                size,
                self.clone(),
            )
        }
    }

    fn unmap_physical_region<T>(_region: &acpi::PhysicalMapping<Self, T>) {}
}

#[test]
fn the_acpi_crate_finds_ecam_and_the_pm_ports_in_both_captures() {
    for text in [BIOS_VTD, UEFI_VTD] {
        let mem: &'static Captured = alloc::boxed::Box::leak(alloc::boxed::Box::new(Captured::parse(text)));
        // SAFETY: the RSDP address is the captured one; every table is in the capture.
        let tables = unsafe { acpi::AcpiTables::from_rsdp(CapturedHandler(mem), mem.rsdp() as usize) }.unwrap();
        let regions = acpi::mcfg::PciConfigRegions::new(&tables).unwrap();
        // q35: MMCONFIG at 0xB000_0000 for buses 0..=255 of segment 0.
        assert_eq!(regions.physical_address(0, 0, 0, 0), Some(0xb000_0000));
        assert_eq!(regions.physical_address(0, 0, 0x1f, 2), Some(0xb000_0000 + (0x1f << 15) + (2 << 12)));
        let fadt = tables.find_table::<acpi::fadt::Fadt>().unwrap();
        let pm1a = fadt.pm1a_control_block().unwrap();
        assert_eq!(pm1a.address, 0x604, "ICH9 PMBASE 0x600 + 4");
        assert_eq!(fadt.pm_timer_block().unwrap().unwrap().address, 0x608);
    }
}
