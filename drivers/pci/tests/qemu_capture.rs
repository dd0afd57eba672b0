//! The real thing: configuration space captured from QEMU q35 by `cargo xtask fixtures`
//! (`fixtures/qemu-q35.pci`, the kernel's `dump pci` output), enumerated with the same code
//! the kernel runs and checked against the hand-built `sim::fixtures::qemu_q35`.
//!
//! If a re-capture changes what QEMU presents, these tests say which field moved; update the
//! hand-built fixture to match (it is what the other tests reason about).

use pci::sim::{HexDumpError, bdf, fixtures, load_hex_dump, parse_bdf};
use pci::{PciAddress, enumerate, lspci};

const CAPTURE: &str = include_str!("fixtures/qemu-q35.pci");

#[test]
fn captured_q35_enumerates_exactly_like_the_hand_built_fixture() {
    let captured = enumerate(&load_hex_dump(CAPTURE).unwrap(), 0);
    let built = enumerate(&fixtures::qemu_q35(), 0);
    assert_eq!(captured.len(), 6);
    for (real, model) in captured.iter().zip(&built) {
        assert_eq!(real, model, "{}", real.lspci_line());
    }
}

#[test]
fn captured_q35_lspci() {
    let captured = enumerate(&load_hex_dump(CAPTURE).unwrap(), 0);
    let text = lspci(&captured);
    assert!(
        text.contains(
            "00:02.0 8086:100e class 02/00/00 Ethernet controller  BAR0 mem32 0xfebc0000 [128K] BAR1 io 0xc000 [64]\n"
        ),
        "{text}"
    );
}

#[test]
fn captured_ahci_can_be_programmed_for_msi() {
    let sim = load_hex_dump(CAPTURE).unwrap();
    let functions = enumerate(&sim, 0);
    let ahci = functions.iter().find(|f| f.address == bdf(0, 0x1F, 2)).unwrap();
    ahci.enable_msi(&sim, 0xFEE0_0000, 0x42).unwrap();
    assert_eq!(sim.peek_u32(ahci.address, 0x8C), 0x42);
}

#[test]
fn hex_dump_format_errors_name_the_line() {
    let header_only = "== pci 00:02.0[bar0=0x20000] 0x0 4\n86800e10\n";
    assert_eq!(load_hex_dump(header_only).unwrap_err(), HexDumpError::UnterminatedBlock { line: 1 });
    let bad_hex = "# c\n== pci 00:02.0[] 0x0 4\n86800g10\n== end\n";
    assert_eq!(load_hex_dump(bad_hex).unwrap_err(), HexDumpError::BadHexLine { line: 3 });
    let bad_header = "== pci 00:02[] 0x0 4\n== end\n";
    assert_eq!(load_hex_dump(bad_header).unwrap_err(), HexDumpError::BadHeader { line: 1 });
    assert!(format!("{}", HexDumpError::BadHexLine { line: 3 }).starts_with("line 3:"));
    // Other kinds of block are skipped.
    let acpi = "== acpi DSDT 0x7fe0000 4\n44534454\n== end\n";
    assert!(enumerate(&load_hex_dump(acpi).unwrap(), 0).is_empty());
}

#[test]
fn bdf_text_parses_back() {
    assert_eq!(parse_bdf("00:1f.2"), Some(bdf(0, 0x1F, 2)));
    assert_eq!(parse_bdf("0001:a3:00.7"), Some(PciAddress::new(1, 0xA3, 0, 7)));
    assert_eq!(parse_bdf("00:20.0"), None, "device 32");
    assert_eq!(parse_bdf("00:1f.8"), None, "function 8");
    assert_eq!(parse_bdf("1f.2"), None);
}
