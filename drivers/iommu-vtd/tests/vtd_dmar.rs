//! DMAR parsing (VT-d spec §8): QEMU's real table, hand-built ones, corrupted ones, fuzzing,
//! and device-scope resolution through bridges.

use iommu_vtd::SourceId;
use iommu_vtd::dmar::{DeviceScope, Dmar, DmarBuilder, DmarError, PathEntry, ScopeError, ScopeKind, StructureProblem};
use proptest::prelude::*;

/// The DMAR table QEMU 7.2 gives a q35 machine with `-device intel-iommu` (captured under
/// SeaBIOS; the kernel's ACPI fixture).
fn qemu_dmar(fixture: &str) -> Vec<u8> {
    let mut lines = fixture.lines().skip_while(|l| !l.starts_with("== acpi DMAR"));
    let header = lines.next().expect("DMAR block in fixture");
    let len: usize = header.split_whitespace().last().unwrap().parse().unwrap();
    let hex: String = lines.take_while(|l| !l.starts_with("== end")).collect();
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    assert_eq!(bytes.len(), len);
    bytes
}

const BIOS: &str = include_str!("../../../kernel/fixtures/qemu-q35-bios-vtd.acpi");
const UEFI: &str = include_str!("../../../kernel/fixtures/qemu-q35-uefi-vtd.acpi");

fn ep(bus: u8, path: &[(u8, u8)]) -> DeviceScope {
    scope(ScopeKind::PciEndpoint, 0, bus, path)
}

fn scope(kind: ScopeKind, id: u8, bus: u8, path: &[(u8, u8)]) -> DeviceScope {
    DeviceScope {
        kind,
        enumeration_id: id,
        start_bus: bus,
        path: path.iter().map(|&(device, function)| PathEntry { device, function }).collect(),
    }
}

#[test]
fn qemu_q35_table_parses() {
    for fixture in [BIOS, UEFI] {
        let d = Dmar::parse(&qemu_dmar(fixture)).unwrap();
        assert_eq!(d.host_address_width, 39);
        assert!(d.flags.intr_remap());
        assert!(!d.flags.x2apic_opt_out());
        assert_eq!(d.units.len(), 1);
        assert!(d.rmrrs.is_empty() && d.skipped.is_empty());
        let u = &d.units[0];
        // QEMU 7.2 lists every device explicitly instead of setting INCLUDE_PCI_ALL.
        assert!(!u.include_pci_all());
        assert_eq!(u.register_base, 0xfed9_0000);
        assert_eq!(u.segment, 0);
        assert_eq!(u.register_size(), 4096);
        assert_eq!(u.scopes.len(), 7);
        assert_eq!(u.scopes[0], scope(ScopeKind::IoApic, 0, 0xff, &[(0, 0)]));
        let endpoints: Vec<SourceId> = u.scopes[1..].iter().map(|s| s.resolve(|_, _, _| None).unwrap()).collect();
        assert_eq!(
            endpoints,
            [
                SourceId::new(0, 0, 0),
                SourceId::new(0, 1, 0),
                SourceId::new(0, 2, 0),
                SourceId::new(0, 0x1f, 0),
                SourceId::new(0, 0x1f, 2),
                SourceId::new(0, 0x1f, 3)
            ]
        );
        assert!(u.scopes[1..].iter().all(|s| s.kind == ScopeKind::PciEndpoint));
        assert_eq!(d.unit_for(0, SourceId::new(0, 2, 0), |_, _, _| None), Some(u));
        assert_eq!(d.unit_for(0, SourceId::new(3, 0, 0), |_, _, _| None), None);
        assert_eq!(d.unit_for(1, SourceId::new(0, 2, 0), |_, _, _| None), None);
    }
}

fn multi_unit_table() -> Vec<u8> {
    DmarBuilder::new(46, 0b101)
        // A graphics unit that owns 00:02.0 only.
        .drhd(0, 0, 0xfed9_0000, &[ep(0, &[(2, 0)])])
        // A unit owning everything under the bridge at 00:1c.0.
        .drhd(0, 0, 0xfed9_1000, &[scope(ScopeKind::PciSubHierarchy, 0, 0, &[(0x1c, 0)])])
        // The catch-all unit, with an IOAPIC and an HPET.
        .drhd(
            1,
            0,
            0xfed9_2000,
            &[scope(ScopeKind::IoApic, 2, 0xf0, &[(0x1f, 0)]), scope(ScopeKind::Hpet, 0, 0, &[(0x1f, 7)])],
        )
        // USB keeps using 0xe000_0000..0xe001_0000 for legacy keyboard emulation; the device is two
        // bridges down.
        .rmrr(0, 0xe000_0000, 0xe000_ffff, &[ep(0, &[(0x1c, 0), (0, 0), (3, 1)])])
        .rmrr(0, 0x7f00_0000, 0x7f00_0fff, &[ep(0, &[(0x14, 0)])])
        // An ATSR (type 2) and an unknown type 9 structure: skipped.
        .raw(&[2, 0, 8, 0, 0, 0, 0, 0])
        .raw(&[9, 0, 6, 0, 0xaa, 0xbb])
        .build()
}

#[test]
fn hand_built_table_with_units_rmrrs_and_bridge_paths() {
    let d = Dmar::parse(&multi_unit_table()).unwrap();
    assert_eq!(d.host_address_width, 46);
    assert!(d.flags.intr_remap() && d.flags.dma_ctrl_platform_opt_in() && !d.flags.x2apic_opt_out());
    assert_eq!(d.units.len(), 3);
    assert_eq!(d.units[1].scopes[0].kind, ScopeKind::PciSubHierarchy);
    assert_eq!(d.units[2].scopes[1], scope(ScopeKind::Hpet, 0, 0, &[(0x1f, 7)]));
    assert_eq!(d.rmrrs.len(), 2);
    assert_eq!((d.rmrrs[0].base, d.rmrrs[0].limit), (0xe000_0000, 0xe000_ffff));
    assert_eq!(d.skipped.len(), 2);
    assert_eq!((d.skipped[0].name(), d.skipped[1].name()), ("ATSR", "unknown"));
    assert_eq!(d.skipped[1].kind, 9);

    // Bridges: 00:1c.0 → bus 2; 02:00.0 → bus 3.
    let secondary = |bus: u8, dev: u8, func: u8| match (bus, dev, func) {
        (0, 0x1c, 0) => Some(2),
        (2, 0, 0) => Some(3),
        _ => None,
    };
    assert_eq!(d.rmrrs[0].scopes[0].resolve(secondary), Ok(SourceId::new(3, 3, 1)));
    assert_eq!(
        d.rmrrs[0].scopes[0].resolve(|_, _, _| None),
        Err(ScopeError::NotABridge { at: SourceId::new(0, 0x1c, 0) })
    );
    let err = d.rmrrs[0].scopes[0].resolve(|_, _, _| None).unwrap_err().to_string();
    assert!(err.contains("00:1c.0") && err.contains("bridge"), "{err}");

    assert_eq!(d.unit_for(0, SourceId::new(0, 2, 0), secondary).unwrap().register_base, 0xfed9_0000);
    assert_eq!(d.unit_for(0, SourceId::new(2, 0, 0), secondary).unwrap().register_base, 0xfed9_1000);
    assert_eq!(d.unit_for(0, SourceId::new(0, 0x1c, 0), secondary).unwrap().register_base, 0xfed9_1000);
    assert_eq!(d.unit_for(0, SourceId::new(0, 3, 0), secondary).unwrap().register_base, 0xfed9_2000);
}

#[test]
fn scope_path_entries_are_checked() {
    assert_eq!(ep(0, &[]).resolve(|_, _, _| None), Err(ScopeError::EmptyPath));
    assert_eq!(ep(0, &[(32, 0)]).resolve(|_, _, _| None), Err(ScopeError::BadPathEntry { hop: 0 }));
    assert_eq!(ep(0, &[(1, 0), (0, 9)]).resolve(|_, _, _| Some(5)), Err(ScopeError::BadPathEntry { hop: 1 }));
    assert_eq!(ep(7, &[(1, 0), (4, 2)]).resolve(|b, _, _| Some(b + 1)), Ok(SourceId::new(8, 4, 2)));
}

fn fix_checksum(t: &mut [u8]) {
    t[9] = 0;
    let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    t[9] = 0u8.wrapping_sub(sum);
}

#[test]
fn corrupted_tables_are_errors_with_reasons() {
    let good = multi_unit_table();
    let parse = |t: &[u8]| Dmar::parse(t).unwrap_err();

    assert!(matches!(parse(&good[..40]), DmarError::TooShort { len: 40 }));
    let mut t = good.clone();
    t[0] = b'X';
    assert!(matches!(parse(&t), DmarError::BadSignature { .. }));
    assert!(parse(&t).to_string().contains("XMAR"));
    // Truncated copy: the header's length is beyond the slice.
    assert!(matches!(parse(&good[..good.len() - 1]), DmarError::BadLength { .. }));
    let mut t = good.clone();
    t[60] ^= 0x40;
    let e = parse(&t);
    assert!(matches!(e, DmarError::BadChecksum { .. }), "{e:?}");
    assert!(e.to_string().contains("checksum"));

    // A structure with length 0 (would loop forever if trusted).
    let mut t = good.clone();
    t[50] = 0;
    t[51] = 0;
    fix_checksum(&mut t);
    let e = parse(&t);
    assert!(matches!(e, DmarError::BadStructure { offset: 48, kind: 0, .. }), "{e:?}");
    assert!(e.to_string().contains("offset 48"), "{e}");

    // A DRHD shorter than its fixed part.
    let t = DmarBuilder::new(39, 0).raw(&[0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0]).build();
    assert!(parse(&t).to_string().contains("16-byte fixed part"));
    // A structure that runs past the end.
    let t = DmarBuilder::new(39, 0).raw(&[0, 0, 200, 0]).build();
    assert!(parse(&t).to_string().contains("past the end"));
    // A header cut in half at the end.
    let t = DmarBuilder::new(39, 0).raw(&[0, 0]).build();
    assert!(matches!(parse(&t), DmarError::BadStructure { .. }));

    // Scope length inconsistent: odd path, shorter than 6, past the structure end.
    for (scope_len, what) in [(7u8, "half a path entry"), (4, "smaller than"), (12, "past the end")] {
        let mut body = vec![0u8, 0, 24, 0, 1, 0, 0, 0];
        body.extend_from_slice(&0xfed9_0000u64.to_le_bytes());
        body.extend_from_slice(&[1, scope_len, 0, 0, 0, 0, 2, 0]);
        let t = DmarBuilder::new(39, 0).raw(&body).build();
        let e = parse(&t);
        assert!(matches!(e, DmarError::BadScope { offset: 64, .. }), "{e:?}");
        assert!(e.to_string().contains(what), "{e}");
    }

    // RMRR that is not whole pages.
    let t = DmarBuilder::new(39, 0).rmrr(0, 0x1000, 0x1ffe, &[]).build();
    assert!(parse(&t).to_string().contains("RMRR"));
    let t = DmarBuilder::new(39, 0).rmrr(0, 0x3000, 0x1fff, &[]).build();
    assert!(matches!(parse(&t), DmarError::BadStructure { kind: 1, .. }));

    // Impossible host address width.
    let mut t = good.clone();
    t[36] = 100;
    fix_checksum(&mut t);
    assert!(matches!(parse(&t), DmarError::BadHostAddressWidth { bits: 101 }));
}

#[test]
fn every_truncation_and_single_byte_change_is_handled() {
    for table in [qemu_dmar(BIOS), multi_unit_table()] {
        for cut in 0..table.len() {
            assert!(Dmar::parse(&table[..cut]).is_err(), "truncated at {cut} must not parse");
        }
        for i in 0..table.len() {
            for v in [0u8, 1, 5, 6, 7, 0x7f, 0x80, 0xff] {
                let mut t = table.clone();
                t[i] = v;
                fix_checksum(&mut t);
                let _ = Dmar::parse(&t); // must not panic
            }
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(mut body in proptest::collection::vec(any::<u8>(), 0..400), declared in any::<u32>()) {
        let _ = Dmar::parse(&body);
        // The same bytes behind a valid header, so the structure walk is reached.
        let mut t = DmarBuilder::new(39, 0).build();
        t.append(&mut body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t);
        if let Ok(d) = Dmar::parse(&t) {
            for u in &d.units {
                for s in &u.scopes {
                    let _ = s.resolve(|b, d, f| Some(b ^ d ^ f));
                }
            }
        }
        t[4..8].copy_from_slice(&declared.to_le_bytes());
        let _ = Dmar::parse(&t);
    }

    #[test]
    fn built_tables_round_trip(
        units in proptest::collection::vec((any::<u8>(), any::<u16>(), (1u64..1 << 52).prop_map(|page| page << 12),
            proptest::collection::vec((1u8..6, any::<u8>(), proptest::collection::vec((0u8..32, 0u8..8), 0..4)), 0..4)), 0..4),
    ) {
        let mut b = DmarBuilder::new(48, 1);
        let mut expect = Vec::new();
        for (flags, seg, base, scopes) in &units {
            let scopes: Vec<DeviceScope> = scopes.iter().map(|(k, bus, path)| {
                let kind = match k { 1 => ScopeKind::PciEndpoint, 2 => ScopeKind::PciSubHierarchy, 3 => ScopeKind::IoApic, 4 => ScopeKind::Hpet, _ => ScopeKind::AcpiNamespace };
                scope(kind, 0, *bus, path)
            }).collect();
            b = b.drhd(*flags, *seg, *base, &scopes);
            expect.push((*flags, *seg, *base, scopes));
        }
        let d = Dmar::parse(&b.build()).unwrap();
        prop_assert_eq!(d.units.len(), expect.len());
        for (u, (flags, seg, base, scopes)) in d.units.iter().zip(expect) {
            prop_assert_eq!((u.flags, u.segment, u.register_base), (flags, seg, base));
            prop_assert_eq!(&u.scopes, &scopes);
        }
    }
}

/// A sub-hierarchy scope covers every bus below its bridge, not just the first: a device
/// behind a root port and a PCIe-to-PCI bridge (bus 2) belongs to the unit naming the port.
#[test]
fn sub_hierarchy_scope_covers_deeper_buses() {
    use iommu_vtd::dmar::{DeviceScope, Dmar, DmarBuilder, PathEntry, ScopeKind};
    let port = DeviceScope {
        kind: ScopeKind::PciSubHierarchy,
        enumeration_id: 0,
        start_bus: 0,
        path: vec![PathEntry { device: 2, function: 0 }],
    };
    let bytes = DmarBuilder::new(38, 0).drhd(0, 0, 0xfed9_0000, &[port]).build();
    let d = Dmar::parse(&bytes).unwrap();
    // Root port 00:02.0 forwards buses 1..=2; the PCIe-to-PCI bridge on bus 1 forwards bus 2.
    let secondary = |b: u8, dev: u8, f: u8| match (b, dev, f) {
        (0, 2, 0) => Some(1),
        (1, 0, 0) => Some(2),
        _ => None,
    };
    let range = |b: u8, dev: u8, f: u8| match (b, dev, f) {
        (0, 2, 0) => Some((1, 2)),
        (1, 0, 0) => Some((2, 2)),
        _ => None,
    };
    let deep = SourceId::new(2, 1, 0);
    assert_eq!(d.unit_for_in_hierarchy(0, deep, secondary, range).map(|u| u.register_base), Some(0xfed9_0000));
    assert_eq!(d.unit_for_in_hierarchy(0, SourceId::new(3, 0, 0), secondary, range), None);
}

#[test]
fn drhd_register_base_must_be_a_nonzero_page() {
    for base in [0u64, 0xfed9_0010] {
        let t = DmarBuilder::new(39, 0).drhd(1, 0, base, &[]).build();
        match Dmar::parse(&t) {
            Err(DmarError::BadStructure { kind: 0, problem, .. }) => {
                assert_eq!(problem, StructureProblem::BadRegisterBase);
                assert!(problem.to_string().contains("register base"), "{problem}")
            }
            other => panic!("base {base:#x}: {other:?}"),
        }
    }
    assert!(Dmar::parse(&DmarBuilder::new(39, 0).drhd(1, 0, 0xfed9_0000, &[]).build()).is_ok());
}

#[test]
fn a_unit_with_no_scope_and_no_include_all_translates_nothing() {
    let qemu = Dmar::parse(&qemu_dmar(BIOS)).unwrap();
    assert!(qemu.units[0].translates_anything(), "QEMU's unit names its devices");
    let mut idle = qemu.units[0].clone();
    idle.scopes.clear();
    assert!(!idle.translates_anything(), "no scope, no INCLUDE_PCI_ALL: the kernel skips it");
    idle.flags |= 1;
    assert!(idle.translates_anything(), "INCLUDE_PCI_ALL covers every unclaimed device");
}
