//! Enumerating a machine shaped like `qemu-system-x86_64 -machine q35 -device e1000`.

use pci::sim::{bdf, fixtures};
use pci::{Bar, CapabilityKind, ClassCode, HeaderType, Subsystem, devices_view, enumerate, lspci};

#[test]
fn finds_the_six_q35_functions_in_address_order() {
    let sim = fixtures::qemu_q35();
    let functions = enumerate(&sim, 0);
    let found: Vec<_> = functions.iter().map(|f| (f.address, f.vendor_id, f.device_id, f.class)).collect();
    assert_eq!(
        found,
        [
            (bdf(0, 0x00, 0), 0x8086, 0x29C0, ClassCode::new(0x06, 0x00, 0x00)),
            (bdf(0, 0x01, 0), 0x1234, 0x1111, ClassCode::new(0x03, 0x00, 0x00)),
            (bdf(0, 0x02, 0), 0x8086, 0x100E, ClassCode::new(0x02, 0x00, 0x00)),
            (bdf(0, 0x1F, 0), 0x8086, 0x2918, ClassCode::new(0x06, 0x01, 0x00)),
            (bdf(0, 0x1F, 2), 0x8086, 0x2922, ClassCode::new(0x01, 0x06, 0x01)),
            (bdf(0, 0x1F, 3), 0x8086, 0x2930, ClassCode::new(0x0C, 0x05, 0x00)),
        ]
    );
    assert!(functions.iter().all(|f| f.bridge_path.is_empty() && f.bridge_buses.is_none()));
    assert!(functions.iter().all(|f| f.bar_errors.is_empty() && f.capability_error.is_none()));
}

#[test]
fn e1000_has_two_bars_no_capabilities_and_inta() {
    let functions = enumerate(&fixtures::qemu_q35(), 0);
    let e1000 = functions.iter().find(|f| f.address == bdf(0, 2, 0)).unwrap();
    assert_eq!(e1000.revision, 0x03);
    assert_eq!(e1000.header_type, HeaderType::Endpoint);
    assert!(!e1000.multi_function);
    assert_eq!(e1000.subsystem, Some(Subsystem { vendor_id: 0x1AF4, device_id: 0x1100 }));
    assert_eq!((e1000.interrupt_pin, e1000.interrupt_line), (1, 11));
    assert_eq!(e1000.bar(0), Some(Bar::Memory32 { address: 0xFEBC_0000, size: 128 << 10, prefetchable: false }));
    assert_eq!(e1000.bar(1), Some(Bar::Io { port: 0xC000, size: 64 }));
    assert_eq!(e1000.bars.len(), 2);
    assert!(e1000.capabilities.is_empty());
    assert!(e1000.msi().is_none());
}

#[test]
fn vga_framebuffer_is_prefetchable() {
    let functions = enumerate(&fixtures::qemu_q35(), 0);
    let vga = &functions[1];
    assert_eq!(vga.bar(0), Some(Bar::Memory32 { address: 0xFD00_0000, size: 16 << 20, prefetchable: true }));
    assert_eq!(vga.bar(2), Some(Bar::Memory32 { address: 0xFEBF_0000, size: 4096, prefetchable: false }));
    assert_eq!(vga.bar(1), None);
}

#[test]
fn ahci_has_io_and_abar_msi_and_sata_capability() {
    let functions = enumerate(&fixtures::qemu_q35(), 0);
    let ahci = functions.iter().find(|f| f.address == bdf(0, 0x1F, 2)).unwrap();
    assert!(ahci.multi_function);
    assert_eq!(ahci.bar(4), Some(Bar::Io { port: 0xC080, size: 32 }));
    assert_eq!(ahci.bar(5), Some(Bar::Memory32 { address: 0xFEBF_1000, size: 4096, prefetchable: false }));
    let msi = ahci.msi().expect("AHCI has MSI");
    assert_eq!((msi.offset, msi.is_64bit), (0x80, true));
    assert_eq!(ahci.capabilities[1].offset, 0xA8);
    assert_eq!(ahci.capabilities[1].id, 0x12);
    assert_eq!(ahci.capabilities[1].kind, CapabilityKind::Other);
}

#[test]
fn functions_1_to_7_are_probed_only_for_multi_function_devices() {
    let functions = enumerate(&fixtures::qemu_q35(), 0);
    let isa = functions.iter().find(|f| f.address == bdf(0, 0x1F, 0)).unwrap();
    assert!(isa.multi_function);
    // 00:1f.1 is absent, 00:1f.2 and .3 are found: the scan went past a gap.
    assert!(functions.iter().all(|f| f.address != bdf(0, 0x1F, 1)));

    // A function 1 hiding behind a single-function device 0 is not probed.
    let sim = fixtures::qemu_q35().with(bdf(0, 2, 1), fixtures::q35_smbus());
    assert!(enumerate(&sim, 0).iter().all(|f| f.address != bdf(0, 2, 1)));
}

#[test]
fn enumeration_leaves_config_space_exactly_as_it_found_it() {
    let sim = fixtures::qemu_q35();
    let addresses =
        [bdf(0, 0x00, 0), bdf(0, 0x01, 0), bdf(0, 0x02, 0), bdf(0, 0x1F, 0), bdf(0, 0x1F, 2), bdf(0, 0x1F, 3)];
    let before: Vec<_> = addresses.iter().map(|&a| sim.function(a).unwrap()).collect();
    enumerate(&sim, 0);
    let after: Vec<_> = addresses.iter().map(|&a| sim.function(a).unwrap()).collect();
    assert_eq!(before, after);
    for write in sim.writes() {
        if write.value == u32::MAX {
            assert_eq!(write.command_before & 0b11, 0, "BAR sized with decoding on: {write:?}");
        }
    }
}

#[test]
fn lspci_view_of_q35() {
    let functions = enumerate(&fixtures::qemu_q35(), 0);
    assert_eq!(
        lspci(&functions),
        "00:00.0 8086:29c0 class 06/00/00 Host bridge\n\
         00:01.0 1234:1111 class 03/00/00 VGA compatible controller  BAR0 mem32 pref 0xfd000000 [16M] BAR2 mem32 0xfebf0000 [4K]\n\
         00:02.0 8086:100e class 02/00/00 Ethernet controller  BAR0 mem32 0xfebc0000 [128K] BAR1 io 0xc000 [64]\n\
         00:1f.0 8086:2918 class 06/01/00 ISA bridge\n\
         00:1f.2 8086:2922 class 01/06/01 SATA controller (AHCI)  BAR4 io 0xc080 [32] BAR5 mem32 0xfebf1000 [4K]\n\
         00:1f.3 8086:2930 class 0c/05/00 SMBus  BAR4 io 0x700 [64]\n"
    );
}

#[test]
fn devices_view_of_ahci() {
    let functions = enumerate(&fixtures::qemu_q35(), 0);
    let ahci = functions.iter().find(|f| f.address == bdf(0, 0x1F, 2)).unwrap();
    assert_eq!(
        format!("{}", ahci.device_block()),
        "00:1f.2 8086:2922 SATA controller (AHCI)\n\
         \x20 class        01/06/01 revision 02\n\
         \x20 header       endpoint (type 0), multi-function\n\
         \x20 subsystem    1af4:1100\n\
         \x20 interrupt    pin INTA# line 10\n\
         \x20 BAR4         io 0xc080 [32]\n\
         \x20 BAR5         mem32 0xfebf1000 [4K]\n\
         \x20 cap 0x80     MSI: 64-bit, 1 vector(s) capable, 1 enabled, no masking, off; address @0x84 upper @0x88 data @0x8c\n\
         \x20 cap 0xa8     SATA Data/Index Configuration (id 0x12)\n"
    );
    let view = devices_view(&functions);
    assert_eq!(view.matches("\n\n").count(), functions.len() - 1, "blocks separated by one blank line");
    assert!(view.contains("00:02.0 8086:100e Ethernet controller\n"));
    assert!(view.contains("  capabilities none\n"));
}
