//! Checking test for exercise 5 of `docs/exercises/` ("resize the command table's PRDT"):
//! whatever `PRDT_ENTRIES` is, a command table must be laid out as AHCI 1.3.1 §4.2.3 says, fit
//! one page of its pool, and hold the PRDT of the largest command the driver accepts. Passes
//! before and after a correct solution.

use std::sync::Arc;

use ahci::controller::{COMMAND_TABLE_BYTES, MAX_SECTORS_PER_COMMAND, PRDT_ENTRIES, PRDT_OFFSET};
use ahci::prdt::{MAX_PRD_BYTES, PRD_ENTRY_BYTES, PrdtError, build_prdt};
use dma::mapper::Direct;
use dma::sim::SimMemory;
use dma::{BusAddr, BusSegment, DmaDevice, DmaPool, FromDevice, PAGE_SIZE, PageBuffer, PhysMemory};

#[test]
// The constants are the student's to change: asserting on them at run time is the point.
#[allow(clippy::assertions_on_constants)]
fn exercise5_command_table_layout_fits_one_page() {
    assert_eq!(PRDT_OFFSET, 0x80, "the PRDT starts at offset 0x80 of a command table (§4.2.3)");
    assert_eq!(PRD_ENTRY_BYTES, 16);
    assert_eq!(COMMAND_TABLE_BYTES, PRDT_OFFSET + PRDT_ENTRIES * PRD_ENTRY_BYTES);
    assert!((1..=0xFFFF).contains(&PRDT_ENTRIES), "PRDTL is a 16-bit field of the command header");
    assert!(COMMAND_TABLE_BYTES <= PAGE_SIZE, "a command table must stay within one page (one IOMMU page)");

    // The pool the driver creates for tables: 128-byte aligned, never crossing 4 KiB.
    let sim = SimMemory::low_and_high(4 << 20, 4 << 20);
    let phys: Arc<dyn PhysMemory> = sim;
    let dev = DmaDevice::new("00:1f.2 ahci-ex5", phys.clone(), Arc::new(Direct::new(phys)));
    let pool = DmaPool::create("ahci-cmd-table-ex5", &dev, COMMAND_TABLE_BYTES, 128, PAGE_SIZE)
        .expect("the command table pool can be created");
    let tables: Vec<_> = (0..64).map(|_| pool.zalloc().unwrap()).collect();
    for t in &tables {
        let bus = t.bus_addr().as_u64();
        assert_eq!(bus % 128, 0, "command table at {bus:#x} is not 128-byte aligned");
        assert_eq!(bus / 4096, (bus + COMMAND_TABLE_BYTES as u64 - 1) / 4096, "table at {bus:#x} crosses a page");
    }
}

#[test]
fn exercise5_the_largest_command_fits_its_prdt() {
    // The biggest request the driver accepts, in one physically contiguous buffer (what the
    // kernel's block layer submits), mapped as the driver maps it.
    let bytes = MAX_SECTORS_PER_COMMAND as usize * 512;
    let sim = SimMemory::low_and_high(8 << 20, 64 << 20);
    let phys: Arc<dyn PhysMemory> = sim;
    let dev = DmaDevice::new("00:1f.2 ahci-ex5-big", phys.clone(), Arc::new(Direct::new(phys.clone())));
    dev.set_mask(64).unwrap();
    dev.set_max_segment_size(MAX_PRD_BYTES).unwrap();
    let buffer = PageBuffer::alloc(&phys, bytes, u64::MAX).unwrap();
    let sg = dev.map_sg(vec![buffer], FromDevice).map_err(|e| e.error).unwrap();
    let prdt = build_prdt(sg.segments(), PRDT_ENTRIES, true)
        .unwrap_or_else(|e| panic!("a {bytes}-byte command does not fit a {PRDT_ENTRIES}-entry PRDT: {e:?}"));
    assert_eq!(prdt.iter().map(|e| e.len as usize).sum::<usize>(), bytes);
    assert!(prdt.iter().all(|e| e.len as usize <= MAX_PRD_BYTES && e.len % 2 == 0));
    drop(sg.unmap());

    // And the table's limit is enforced, not overrun.
    let too_many: Vec<BusSegment> =
        (0..=PRDT_ENTRIES as u64).map(|i| BusSegment { bus: BusAddr(0x10_0000 + i * 0x2000), len: 512 }).collect();
    assert!(matches!(
        build_prdt(&too_many, PRDT_ENTRIES, true),
        Err(PrdtError::TooManyEntries { needed, max }) if needed == PRDT_ENTRIES + 1 && max == PRDT_ENTRIES
    ));
}

// ----- Graded: fails on the tree as shipped, passes once exercise 5 is solved -----------------
// Run with `cargo test -p ahci --test exercises -- --ignored`. `cargo xtask test` runs it against
// the shipped tree (it must fail) and with docs/exercises/answers/05-ahci-prdt-size.patch
// applied (it must pass).

/// The task: half-page command tables, 0x80 + 120 × 16 = 2048 bytes, two per pool page — so the
/// 64 tables of QEMU's two disks (32 slots each) take 32 pages instead of 64.
#[test]
#[ignore = "graded: exercise 5 (docs/exercises/05-ahci-prdt-size.md)"]
#[allow(clippy::assertions_on_constants)]
fn exercise5_graded_command_tables_are_half_a_page() {
    assert_eq!(PRDT_ENTRIES, 120, "PRDT_ENTRIES should be 120");
    assert_eq!(COMMAND_TABLE_BYTES, 2048, "a command table should be half a page");
    let sim = SimMemory::low_and_high(4 << 20, 4 << 20);
    let phys: Arc<dyn PhysMemory> = sim;
    let dev = DmaDevice::new("00:1f.2 ahci-ex5-graded", phys.clone(), Arc::new(Direct::new(phys)));
    let pool = DmaPool::create("ahci-cmd-table-g5", &dev, COMMAND_TABLE_BYTES, 128, PAGE_SIZE).unwrap();
    let tables: Vec<_> = (0..64).map(|_| pool.zalloc().unwrap()).collect();
    let st = pool.stats();
    assert_eq!((st.blocks_in_use, st.total_blocks, st.block_size, st.pages), (64, 64, 2048, 32));
    drop(tables);
}
