//! Building simulated functions from raw config-space dumps.
//!
//! A single raw dump (e.g. Linux `/sys/bus/pci/devices/*/config`) is loaded with
//! `SimFunction::from_bytes(..)` plus one `bar_size` per implemented BAR, because a dump
//! records addresses but not sizes. Whole-machine captures from the kernel's `dump pci` live in
//! `tests/fixtures/` and are loaded with `load_hex_dump` (see `qemu_capture.rs`).

use pci::sim::{SimConfigSpace, SimFunction, bdf, fixtures};
use pci::{CommandRegister, enumerate};

fn dump_of(function: &SimFunction) -> Vec<u8> {
    function.bytes()[..256].to_vec()
}

#[test]
fn a_256_byte_dump_enumerates_like_the_fixture_it_came_from() {
    let ahci_dump = dump_of(&fixtures::q35_ahci());
    let e1000_dump = dump_of(&fixtures::q35_e1000());
    assert_eq!(ahci_dump.len(), 256);

    let from_fixtures = fixtures::qemu_q35();
    let from_dumps = fixtures::qemu_q35()
        .with(bdf(0, 0x1F, 2), SimFunction::from_bytes(&ahci_dump).bar_size(4, 32).bar_size(5, 4096))
        .with(bdf(0, 0x02, 0), SimFunction::from_bytes(&e1000_dump).bar_size(0, 128 << 10).bar_size(1, 64));
    assert_eq!(enumerate(&from_dumps, 0), enumerate(&from_fixtures, 0));
}

#[test]
fn msi_can_be_programmed_on_a_dumped_function() {
    let sim = SimConfigSpace::new().with(bdf(0, 0, 0), SimFunction::from_bytes(&dump_of(&fixtures::q35_ahci())));
    let ahci = enumerate(&sim, 0).remove(0);
    ahci.enable_msi(&sim, 0xFEE0_0000, 0x45).unwrap();
    assert_eq!(sim.peek_u32(bdf(0, 0, 0), 0x8C), 0x45);
    assert!(ahci.config(&sim).command().contains(CommandRegister::INTERRUPT_DISABLE));
}

#[test]
fn a_64_bit_bar_in_a_dump_gets_both_halves_sized() {
    let bridge = fixtures::pcie_to_pci_bridge(0, 1, 1);
    let sim = SimConfigSpace::new().with(bdf(0, 0, 0), SimFunction::from_bytes(&dump_of(&bridge)).bar_size(0, 256));
    let functions = enumerate(&sim, 0);
    assert_eq!(functions[0].bar(0).unwrap().size(), 256);
}

#[test]
fn short_and_long_dumps_are_accepted() {
    let short = SimFunction::from_bytes(&[0x86, 0x80, 0x0E, 0x10]);
    assert_eq!(short.read_u32(0), 0x100E_8086);
    assert_eq!(short.read_u32(0x100), 0);
    let long = SimFunction::from_bytes(&vec![0xAB; 8192]);
    assert_eq!(long.read_u32(0xFFC), 0xABAB_ABAB);
    assert_eq!(long.read_u32(0x1000), u32::MAX);
}
