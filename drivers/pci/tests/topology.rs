//! Bridges: following secondary buses, recording the bridge path, surviving loops.

use pci::sim::{SimConfigSpace, SimFunction, bdf, fixtures};
use pci::{BridgeBuses, BridgeHop, ClassCode, PciAddress, PciePortType, devices_view, enumerate, lspci};

#[test]
fn e1000_behind_a_pcie_to_pci_bridge_records_the_path() {
    let functions = enumerate(&fixtures::pcie_to_pci_bridge_topology(), 0);
    let addresses: Vec<_> = functions.iter().map(|f| f.address).collect();
    assert_eq!(addresses, [bdf(0, 0x00, 0), bdf(0, 0x1C, 0), bdf(0, 0x1F, 0), bdf(1, 0x00, 0), bdf(2, 0x01, 0)]);

    let root_port = &functions[1];
    assert!(root_port.is_bridge());
    assert_eq!(root_port.bridge_buses, Some(BridgeBuses { primary: 0, secondary: 1, subordinate: 2 }));
    assert_eq!(root_port.pcie().unwrap().port_type, PciePortType::RootPort);
    assert_eq!(root_port.bars.len(), 1);
    assert!(root_port.msix().is_some());
    assert!(root_port.bridge_path.is_empty());

    let bridge = &functions[3];
    assert_eq!(bridge.pcie().unwrap().port_type, PciePortType::PcieToPciBridge);
    assert_eq!(bridge.bar(0).unwrap().size(), 256, "64-bit BAR in a type 1 header");
    assert_eq!(bridge.bridge_path, [BridgeHop { address: bdf(0, 0x1C, 0), port_type: Some(PciePortType::RootPort) }]);
    assert_eq!(bridge.pcie_to_pci_bridge(), None, "the bridge is not behind itself");

    let e1000 = &functions[4];
    assert_eq!((e1000.vendor_id, e1000.device_id), (0x8086, 0x100E));
    assert_eq!(
        e1000.bridge_path,
        [
            BridgeHop { address: bdf(0, 0x1C, 0), port_type: Some(PciePortType::RootPort) },
            BridgeHop { address: bdf(1, 0x00, 0), port_type: Some(PciePortType::PcieToPciBridge) },
        ]
    );
    assert_eq!(e1000.pcie_to_pci_bridge(), Some(bdf(1, 0, 0)));
}

#[test]
fn views_show_bridges_and_paths() {
    let functions = enumerate(&fixtures::pcie_to_pci_bridge_topology(), 0);
    let lines = lspci(&functions);
    assert!(
        lines.contains("00:1c.0 1b36:000c class 06/04/00 PCI bridge  BAR0 mem32 0xfea00000 [4K] buses 01-02\n"),
        "{lines}"
    );
    let view = devices_view(&functions);
    assert!(view.contains("  upstream     00:1c.0 (Root Port) > 01:00.0 (PCIe-to-PCI Bridge)\n"), "{view}");
    assert!(view.contains("  buses        primary 01 secondary 02 subordinate 02\n"), "{view}");
    assert!(view.contains("PCI Express v2: Root Port, slot"), "{view}");
    assert!(view.contains("MSI-X: 1 entries, table BAR0+0x0, PBA BAR0+0x800, off"), "{view}");
}

#[test]
fn bridge_loops_terminate_and_every_function_is_found_once() {
    let functions = enumerate(&fixtures::bridge_loop(), 0);
    let addresses: Vec<_> = functions.iter().map(|f| f.address).collect();
    assert_eq!(
        addresses,
        [
            bdf(0, 0x00, 0),
            bdf(0, 0x1C, 0),
            bdf(0, 0x1D, 0),
            bdf(1, 0x00, 0),
            bdf(1, 0x01, 0),
            bdf(1, 0x02, 0),
            bdf(1, 0x03, 0),
            bdf(2, 0x00, 0),
            bdf(2, 0x05, 0),
        ]
    );
    let smbus = &functions[5];
    assert_eq!(smbus.bridge_path.len(), 1);
    assert_eq!(smbus.bridge_path[0].address, bdf(0, 0x1C, 0), "bus 1 scanned via the first bridge");
    assert_eq!(smbus.bridge_path[0].port_type, None, "conventional bridge");
    let e1000 = &functions[8];
    let path: Vec<_> = e1000.bridge_path.iter().map(|h| h.address).collect();
    assert_eq!(path, [bdf(0, 0x1C, 0), bdf(1, 0x03, 0)]);
}

#[test]
fn bridge_to_an_unconfigured_secondary_bus_is_not_followed() {
    let unconfigured = SimFunction::bridge(0x8086, 0x244E, BridgeBuses { primary: 0, secondary: 0, subordinate: 0 });
    let sim = SimConfigSpace::new().with(bdf(0, 0, 0), fixtures::q35_host_bridge()).with(bdf(0, 3, 0), unconfigured);
    let functions = enumerate(&sim, 0);
    assert_eq!(functions.len(), 2);
}

#[test]
fn multi_function_host_bridge_roots_extra_buses() {
    let sim = SimConfigSpace::new()
        .with(bdf(0, 0, 0), fixtures::q35_host_bridge().multi_function())
        .with(bdf(0, 0, 1), fixtures::q35_host_bridge().multi_function())
        .with(bdf(0, 2, 0), fixtures::q35_e1000())
        .with(bdf(1, 4, 0), fixtures::q35_e1000());
    let addresses: Vec<_> = enumerate(&sim, 0).iter().map(|f| f.address).collect();
    assert_eq!(addresses, [bdf(0, 0, 0), bdf(0, 0, 1), bdf(0, 2, 0), bdf(1, 4, 0)]);
}

#[test]
fn host_bus_also_reached_through_a_bridge_is_scanned_once() {
    let sim = SimConfigSpace::new()
        .with(bdf(0, 0, 0), fixtures::q35_host_bridge().multi_function())
        .with(bdf(0, 0, 1), fixtures::q35_host_bridge().multi_function())
        .with(bdf(0, 0x1C, 0), fixtures::root_port(1, 1))
        .with(bdf(1, 0, 0), fixtures::q35_e1000());
    let functions = enumerate(&sim, 0);
    let e1000: Vec<_> = functions.iter().filter(|f| f.address == bdf(1, 0, 0)).collect();
    assert_eq!(e1000.len(), 1);
}

#[test]
fn other_segments_are_enumerated_and_shown_with_their_number() {
    let e1000 = PciAddress::new(1, 0, 2, 0);
    let sim = SimConfigSpace::new()
        .with(PciAddress::new(1, 0, 0, 0), fixtures::q35_host_bridge())
        .with(e1000, fixtures::q35_e1000())
        .with(bdf(0, 0, 0), fixtures::q35_host_bridge());
    let functions = enumerate(&sim, 1);
    assert_eq!(functions.len(), 2);
    assert_eq!(functions[1].address, e1000);
    assert!(lspci(&functions).contains("0001:00:02.0 8086:100e"));
}

#[test]
fn a_deep_chain_of_bridges_does_not_exhaust_anything() {
    // 254 bridges in a line, bus n -> n + 1, and an endpoint at the bottom.
    let mut sim = SimConfigSpace::new().with(bdf(0, 0, 0), fixtures::q35_host_bridge());
    for bus in 0..254u8 {
        let buses = BridgeBuses { primary: bus, secondary: bus + 1, subordinate: 255 };
        sim = sim.with(bdf(bus, 1, 0), SimFunction::bridge(0x8086, 0x244E, buses));
    }
    sim = sim.with(bdf(254, 0, 0), SimFunction::endpoint(0x8086, 0x100E, ClassCode::new(2, 0, 0)));
    let functions = enumerate(&sim, 0);
    assert_eq!(functions.len(), 256);
    assert_eq!(functions.last().unwrap().bridge_path.len(), 254);
}
