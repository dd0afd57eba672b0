//! Config space that makes no sense must never crash enumeration or the views.

use pci::sim::{SimConfigSpace, SimFunction, bdf, fixtures};
use pci::{BarError, CapabilityError, FunctionError, devices_view, enumerate, lspci};

#[test]
fn broken_functions_are_skipped_and_healthy_ones_kept() {
    let functions = enumerate(&fixtures::malformed_functions(), 0);
    let addresses: Vec<_> = functions.iter().map(|f| f.address).collect();
    // 00:03.0 (all-ones header), 00:04.0 (header type 0x7f), 00:05.0 (vendor 0000) and 00:07.0
    // (all-ones, i.e. absent) are skipped.
    assert_eq!(addresses, [bdf(0, 0, 0), bdf(0, 2, 0), bdf(0, 6, 0)]);
}

#[test]
fn broken_bars_and_capability_loop_are_recorded_on_the_function() {
    let functions = enumerate(&fixtures::malformed_functions(), 0);
    let broken = &functions[2];
    assert_eq!(broken.bars.len(), 1, "only BAR2 is usable");
    assert_eq!(broken.bars[0].slot, 2);
    assert_eq!(
        broken.bar_errors,
        [
            BarError::ReservedMemoryType { slot: 0, raw: 0xFEB0_0006 },
            BarError::ReadsAllOnes { slot: 1 },
            BarError::Memory64InLastSlot { slot: 5 },
        ]
    );
    assert_eq!(broken.capabilities.len(), 2);
    assert_eq!(broken.capability_error, Some(CapabilityError::Loop { pointer: 0x40 }));

    let view = devices_view(&functions);
    assert!(view.contains("  problem      BAR5 is a 64-bit memory BAR in the last slot"), "{view}");
    assert!(view.contains("  problem      capability list loops back to 0x40"), "{view}");
}

#[test]
fn probe_function_explains_why_it_skipped() {
    let sim = fixtures::malformed_functions();
    let probe = |d| pci::enumerate::probe_function(&sim, bdf(0, d, 0), &[]);
    assert_eq!(probe(3).unwrap_err(), FunctionError::HeaderReadsAllOnes { vendor_id: 0x8086, device_id: 0x100E });
    assert_eq!(probe(4).unwrap_err(), FunctionError::UnknownHeaderType { header_type: 0x7F });
    assert_eq!(probe(5).unwrap_err(), FunctionError::InvalidVendorId { vendor_id: 0 });
    assert_eq!(probe(7), Ok(None));
    assert_eq!(probe(8), Ok(None));
    let text = format!("{}", probe(3).unwrap_err());
    assert!(text.contains("8086:100e") && text.contains("skipped"), "{text}");
}

#[test]
fn a_function_that_vanishes_mid_walk_is_harmless() {
    // Everything after the header reads all-ones: BARs and capabilities included.
    let function = fixtures::q35_ahci().reads_all_ones_from(0x10);
    let sim = SimConfigSpace::new().with(bdf(0, 0, 0), function);
    let functions = enumerate(&sim, 0);
    assert_eq!(functions.len(), 1);
    assert!(functions[0].bars.is_empty());
    assert_eq!(functions[0].bar_errors.len(), 6);
    // Status (below 0x10) still announces a list, but the pointer at 0x34 reads 0xff: the walk
    // masks it to 0xfc, finds all-ones there, and stops.
    assert_eq!(functions[0].capability_error, Some(CapabilityError::ReadsAllOnes { pointer: 0xFC }));
    assert!(functions[0].capabilities.is_empty());
}

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// A function of random bytes, biased towards valid header types so the walk gets deep.
fn random_function(random: &mut Random) -> SimFunction {
    let mut bytes = vec![0u8; 256];
    for byte in &mut bytes {
        *byte = random.byte();
    }
    if random.byte() < 230 {
        bytes[0x0E] = (random.byte() % 3) | (random.byte() & 0x80);
    }
    if random.byte() < 200 {
        // Plausible bus numbers so bridges lead somewhere.
        bytes[0x19] = random.byte() % 4;
    }
    let mut function = SimFunction::from_bytes(&bytes);
    for slot in 0..6u16 {
        function = function.writable(0x10 + 4 * slot, random.next() as u32);
    }
    function
}

#[test]
fn random_config_space_never_panics() {
    let mut random = Random(0x5EED_1234_ABCD_0001);
    let (mut found, mut behind_bridges, mut with_capabilities) = (0, 0, 0);
    for _ in 0..300 {
        let sim = SimConfigSpace::new();
        sim.insert(bdf(0, 0, 0), random_function(&mut random));
        for _ in 0..24 {
            let function = if random.byte() < 160 { 0 } else { random.byte() % 8 };
            let address = bdf(random.byte() % 4, random.byte() % 32, function);
            let function = if random.byte() < 20 { SimFunction::all_ones() } else { random_function(&mut random) };
            sim.insert(address, function);
        }
        let functions = enumerate(&sim, 0);
        found += functions.len();
        behind_bridges += functions.iter().filter(|f| !f.bridge_path.is_empty()).count();
        with_capabilities += functions.iter().filter(|f| !f.capabilities.is_empty()).count();
        let _ = lspci(&functions);
        let _ = devices_view(&functions);
        for function in &functions {
            let _ = function.enable_msi(&sim, 0xFEE0_0000, 0x40);
            let config = function.config(&sim);
            config.enable_memory_space();
            config.enable_bus_mastering();
            config.disable_intx();
        }
    }
    // The random machines must actually exercise the walk, not just be rejected at the door.
    println!(
        "random machines: {found} functions, {behind_bridges} behind bridges, {with_capabilities} with capabilities"
    );
    assert!(found > 1500 && behind_bridges > 400 && with_capabilities > 400);
}
