//! Checking test for exercise 1 of `docs/exercises/` ("make the receive ring twice as large"):
//! whatever the ring sizes in `Config::default()`, the driver must program rings the 8254x can
//! use and that fit the pools they live in. Passes before and after a correct solution.
//!
//! The crate's own simulated 8254x is a private test module, so this test brings a minimal
//! register block of its own: registers that remember what is written, a reset that completes,
//! and a MAC address already loaded. That is all `E1000::new` needs; the rings are then read
//! back through the DMA service's simulated bus, as the device would read them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use device_io::{Clock, Registers};
use dma::mapper::Direct;
use dma::sim::{SimDevice, SimMemory};
use dma::{BusAddr, DmaDevice, PhysMemory};
use e1000::desc::{DESCRIPTOR_BYTES, RxDescriptor};
use e1000::{BUFFER_BYTES, Config, E1000, InitError, regs};

/// Registers that remember writes; CTRL.RST clears at once; RAL0/RAH0 hold a valid address.
#[derive(Default)]
struct Remembering {
    regs: RefCell<BTreeMap<usize, u32>>,
}

impl Remembering {
    fn new() -> Self {
        let r = Remembering::default();
        r.regs.borrow_mut().insert(regs::RAL0, u32::from_le_bytes([0x52, 0x54, 0x00, 0x12]));
        r.regs.borrow_mut().insert(regs::RAH0, 0x5634 | regs::rah::AV);
        r
    }
}

impl Registers for Remembering {
    fn read32(&self, offset: usize) -> u32 {
        self.regs.borrow().get(&offset).copied().unwrap_or(0)
    }
    fn write32(&self, offset: usize, value: u32) {
        let value = if offset == regs::CTRL { value & !regs::ctrl::RST } else { value };
        self.regs.borrow_mut().insert(offset, value);
    }
}

/// A clock that advances one microsecond per look, so every timeout ends.
#[derive(Default)]
struct Ticking(RefCell<u64>);

impl Clock for Ticking {
    fn now_us(&self) -> u64 {
        let mut t = self.0.borrow_mut();
        *t += 1;
        *t
    }
}

fn dma_device(name: &str) -> DmaDevice {
    let sim = SimMemory::low_and_high(16 << 20, 16 << 20);
    let phys: Arc<dyn PhysMemory> = sim;
    DmaDevice::new(name, phys.clone(), Arc::new(Direct::new(phys)))
}

fn start(regs: &Remembering, config: Config) -> Result<E1000<&Remembering, Ticking>, InitError> {
    let model = e1000::model_for(e1000::INTEL, 0x100E).expect("the 82540EM is supported");
    E1000::new(regs, Ticking::default(), dma_device("00:02.0 e1000-ex1"), "00:02.0 e1000-ex1", model, config)
}

fn base(regs: &Remembering, lo: usize, hi: usize) -> u64 {
    u64::from(regs.read32(lo)) | (u64::from(regs.read32(hi)) << 32)
}

/// The invariants every ring configuration must keep (SDM §14.4, §14.5, and the driver's own
/// rules: one ring per pool block inside one 4 KiB page, one 2 KiB pool buffer per descriptor).
fn check_rings(config: Config) {
    let regs = Remembering::new();
    let nic = start(&regs, config).unwrap_or_else(|e| panic!("{config:?} refused: {e}"));
    let (rx, tx) = (config.rx_descriptors, config.tx_descriptors);
    for (what, n) in [("receive", rx), ("transmit", tx)] {
        assert!(n.is_multiple_of(8) && (8..=256).contains(&n), "{what} ring of {n}: a multiple of 8, 8..=256");
    }

    // What the device is told.
    let rdlen = regs.read32(regs::RDLEN) as usize;
    let tdlen = regs.read32(regs::TDLEN) as usize;
    assert_eq!(rdlen, rx * DESCRIPTOR_BYTES, "RDLEN is the ring's size in bytes");
    assert_eq!(tdlen, tx * DESCRIPTOR_BYTES, "TDLEN is the ring's size in bytes");
    for (name, len, ring) in [
        ("receive", rdlen, base(&regs, regs::RDBAL, regs::RDBAH)),
        ("transmit", tdlen, base(&regs, regs::TDBAL, regs::TDBAH)),
    ] {
        assert_eq!(len % 128, 0, "{name} ring length {len} is not a multiple of 128 bytes (SDM §14.4)");
        assert_eq!(ring % 16, 0, "{name} ring base {ring:#x} is not 16-byte aligned");
        assert_eq!(ring / 4096, (ring + len as u64 - 1) / 4096, "{name} ring crosses a 4 KiB page");
    }
    assert_eq!(regs.read32(regs::RDH), 0);
    assert_eq!(regs.read32(regs::RDT) as usize, rx - 1, "the device owns all receive descriptors but one");
    assert_eq!((regs.read32(regs::TDH), regs.read32(regs::TDT)), (0, 0), "the transmit ring starts empty");

    // The pools the rings and buffers live in.
    let [rings, rx_buf, _tx_buf] = nic.pool_stats();
    assert!(rings.block_size >= rx.max(tx) * DESCRIPTOR_BYTES, "a ring does not fit its e1000-rings block");
    assert!(rings.block_size <= 4096, "an e1000-rings block is larger than a page");
    assert_eq!(rings.blocks_in_use, 2, "one ring block each for receive and transmit");
    assert_eq!(rx_buf.block_size, BUFFER_BYTES, "receive buffers must be RCTL.BSIZE (2048) bytes");
    assert_eq!(BUFFER_BYTES, 2048);
    assert_eq!(rx_buf.blocks_in_use, rx, "one e1000-rx-buf block per receive descriptor");

    // Every receive descriptor, as the device reads it: its own 2 KiB buffer, status clear.
    let hw = SimDevice::new(nic.dma_device());
    let ring = base(&regs, regs::RDBAL, regs::RDBAH);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..rx {
        let mut bytes = [0u8; DESCRIPTOR_BYTES];
        hw.read(BusAddr(ring + (i * DESCRIPTOR_BYTES) as u64), &mut bytes).unwrap();
        let d = RxDescriptor::from_bytes(bytes);
        assert_ne!(d.addr, 0, "descriptor {i} has no buffer");
        assert_eq!(d.status, 0, "descriptor {i} handed to the device with status set");
        assert_eq!(d.addr / 4096, (d.addr + BUFFER_BYTES as u64 - 1) / 4096, "buffer {i} crosses a page");
        let mut probe = [0u8; 1];
        hw.read(BusAddr(d.addr + BUFFER_BYTES as u64 - 1), &mut probe).expect("the whole buffer is reachable");
        assert!(seen.insert(d.addr), "descriptors share buffer {:#x}", d.addr);
    }
    drop(nic);
}

#[test]
fn exercise1_default_rings_are_usable_and_fit_their_pools() {
    check_rings(Config::default());
}

#[test]
fn exercise1_every_allowed_ring_size_keeps_the_invariants() {
    for n in [8, 64, 128, 256] {
        check_rings(Config { rx_descriptors: n, tx_descriptors: 8, ..Config::default() });
        check_rings(Config { rx_descriptors: 8, tx_descriptors: n, ..Config::default() });
    }
}

#[test]
fn exercise1_rings_that_cannot_work_are_refused() {
    for n in [0, 4, 12, 250, 264, 512] {
        let regs = Remembering::new();
        let result = start(&regs, Config { rx_descriptors: n, ..Config::default() });
        assert!(
            matches!(result, Err(InitError::BadRingSize { descriptors }) if descriptors == n),
            "a receive ring of {n} descriptors was not refused"
        );
    }
}

// ----- Graded: fails on the tree as shipped, passes once exercise 1 is solved -----------------
// Run with `cargo test -p e1000 --test exercises -- --ignored`. `cargo xtask test` runs it
// against the shipped tree (it must fail) and against docs/exercises/answers/01-bigger-rx-ring.patch
// (it must pass).

/// The task itself: a default receive ring of 256 descriptors, the transmit ring unchanged, and
/// the pools sized for it — the ring pool's blocks hold 256 × 16 bytes, one whole page each.
#[test]
#[ignore = "graded: exercise 1 (docs/exercises/01-bigger-rx-ring.md)"]
fn exercise1_graded_default_receive_ring_is_256() {
    let config = Config::default();
    assert_eq!(config.rx_descriptors, 256, "the default receive ring should have 256 descriptors");
    assert_eq!(config.tx_descriptors, 128, "the transmit ring stays at 128 descriptors");
    check_rings(config);
    let regs = Remembering::new();
    let nic = start(&regs, config).expect("the default configuration starts");
    let [rings, rx_buf, _] = nic.pool_stats();
    assert_eq!(rings.block_size, 4096, "e1000-rings blocks are sized for the larger ring: 256 × 16 bytes");
    assert_eq!((rx_buf.blocks_in_use, rx_buf.total_blocks), (256, 256), "one 2 KiB buffer per descriptor, 2 per page");
    assert_eq!(regs.read32(regs::RDLEN), 4096);
    assert_eq!(regs.read32(regs::RDT), 255);
}
