//! Host tests: the driver against the simulated 8254x in `sim`, over `dma::sim` memory.

extern crate std;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;
use std::rc::Rc;

use dma::mapper::Direct;
use dma::sim::SimMemory;
use dma::{DmaDevice, PhysMemory};

use crate::desc::{rx_errors, rx_status};
use crate::regs;
use crate::sim::{SIM_MAC, SimE1000};
use crate::*;

/// A clock that moves 10 µs per reading, and jumps when told.
#[derive(Clone, Default)]
pub(crate) struct TestClock(Rc<Cell<u64>>);

impl TestClock {
    fn advance_us(&self, us: u64) {
        self.0.set(self.0.get() + us);
    }
}

impl Clock for TestClock {
    fn now_us(&self) -> u64 {
        let t = self.0.get();
        self.0.set(t + 10);
        t
    }
}

struct Machine {
    memory: Arc<SimMemory>,
    dev: DmaDevice,
    sim: SimE1000,
    clock: TestClock,
}

/// 8 MiB below 4 GiB and 8 MiB above; the NIC takes a 64-bit mask, so its memory comes from
/// above 4 GiB and the driver must program the high halves (RDBAH/TDBAH).
fn machine() -> Machine {
    let memory = SimMemory::low_and_high(8 << 20, 8 << 20);
    let phys: Arc<dyn PhysMemory> = memory.clone();
    let dev = DmaDevice::new("00:02.0 e1000", phys.clone(), Arc::new(Direct::new(phys)));
    dev.set_mask(64).unwrap();
    let sim = SimE1000::new(&dev);
    Machine { memory, dev, sim, clock: TestClock::default() }
}

fn model(id: u16) -> &'static Model {
    model_for(INTEL, id).unwrap()
}

fn start(m: &Machine) -> E1000<&SimE1000, TestClock> {
    E1000::new(&m.sim, m.clock.clone(), m.dev.clone(), "00:02.0 e1000", model(0x100E), Config::default()).unwrap()
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect();
    f[..6].copy_from_slice(&SIM_MAC);
    f
}

fn receive_one(nic: &mut E1000<&SimE1000, TestClock>) -> Option<Vec<u8>> {
    nic.receive_with(|f| f.to_vec())
}

#[test]
fn probe_table_knows_the_family() {
    assert_eq!(model_for(0x8086, 0x100E).map(|m| m.name), Some("82540EM"));
    assert_eq!(model_for(0x8086, 0x100F).map(|m| m.name), Some("82545EM (copper)"));
    assert!(model_for(0x8086, 0x1000).is_none(), "82542 has another register layout");
    assert!(model_for(0x10ec, 0x100E).is_none(), "vendor matters");
    let mut ids: Vec<u16> = MODELS.iter().map(|m| m.device_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), MODELS.len(), "duplicate ids");
}

#[test]
fn init_sequence_follows_the_manual() {
    let m = machine();
    let nic = start(&m);
    let writes = m.sim.state.borrow().writes.clone();
    let pos = |offset: usize| {
        writes.iter().position(|w| w.0 == offset).unwrap_or_else(|| panic!("{offset:#x} never written"))
    };
    let last = |offset: usize| writes.iter().rev().find(|w| w.0 == offset).map(|w| w.1).unwrap();
    // Interrupts masked, then reset, before anything else.
    assert_eq!(writes[0], (regs::IMC, regs::int::ALL));
    assert_eq!(writes[1].0, regs::CTRL);
    assert_ne!(writes[1].1 & regs::ctrl::RST, 0);
    // Link: SLU and ASDE on, resets and ILOS off.
    let ctrl = last(regs::CTRL);
    assert_eq!(ctrl & (regs::ctrl::SLU | regs::ctrl::ASDE), regs::ctrl::SLU | regs::ctrl::ASDE);
    assert_eq!(ctrl & (regs::ctrl::RST | regs::ctrl::LRST | regs::ctrl::PHY_RST | regs::ctrl::ILOS), 0);
    // MAC programmed with Address Valid.
    assert_eq!(nic.mac(), SIM_MAC);
    assert_ne!(last(regs::RAH0) & regs::rah::AV, 0);
    // All 128 MTA words cleared.
    let mta = writes.iter().filter(|w| (regs::MTA..regs::MTA + 512).contains(&w.0) && w.1 == 0).count();
    assert_eq!(mta, 128);
    // Receive ring: 16-byte aligned base (above 4 GiB here: high half set), length a multiple
    // of 128, head 0, tail at the last descriptor; RCTL written after the ring is set up.
    let rdba = u64::from(last(regs::RDBAL)) | u64::from(last(regs::RDBAH)) << 32;
    assert_eq!(rdba % 16, 0);
    assert!(rdba >= 1 << 32, "64-bit ring address expected, got {rdba:#x}");
    assert_eq!(last(regs::RDLEN), 128 * 16);
    assert_eq!(last(regs::RDLEN) % 128, 0);
    assert_eq!(last(regs::RDH), 0);
    assert_eq!(last(regs::RDT), 127);
    assert!(pos(regs::RCTL) > pos(regs::RDT));
    assert_eq!(last(regs::RCTL), regs::rctl::EN | regs::rctl::BAM | regs::rctl::SECRC);
    // Transmit ring and control.
    let tdba = u64::from(last(regs::TDBAL)) | u64::from(last(regs::TDBAH)) << 32;
    assert_eq!(tdba % 16, 0);
    assert_ne!(tdba, rdba);
    assert_eq!(last(regs::TDLEN), 128 * 16);
    assert_eq!((last(regs::TDH), last(regs::TDT)), (0, 0));
    assert_eq!(last(regs::TCTL), regs::tctl::EN | regs::tctl::PSP | 0x0F << 4 | 0x40 << 12);
    assert_eq!(last(regs::TIPG), 10 | 8 << 10 | 6 << 20);
    assert!(pos(regs::TCTL) > pos(regs::TDT));
    // 8000 interrupts/s: 125 µs / 256 ns = 488.
    assert_eq!(last(regs::ITR), 488);
    // Polling until asked: every cause masked.
    assert_eq!(m.sim.reg(regs::IMS), 0);
    // Every receive descriptor points at its own pool buffer, inside one 4 KiB page.
    let buffers = m.sim.rx_buffer_addresses();
    assert_eq!(buffers.len(), 128);
    let mut sorted = buffers.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 128);
    assert!(buffers.iter().all(|&a| a / 4096 == (a + BUFFER_BYTES as u64 - 1) / 4096));
    let [rings, rx, tx] = nic.pool_stats();
    assert_eq!((rings.blocks_in_use, rx.blocks_in_use, tx.blocks_in_use), (2, 128, 0));
}

#[test]
fn mac_comes_from_the_eeprom_when_ral_is_empty() {
    let m = machine();
    m.sim.state.borrow_mut().ral_empty_after_reset = true;
    let nic = start(&m);
    assert_eq!(nic.mac(), SIM_MAC);
    assert!(m.sim.state.borrow().writes.iter().any(|w| w.0 == regs::EERD));
    // And written back for the receive filter.
    assert_eq!(m.sim.reg(regs::RAL0), u32::from_le_bytes([0x52, 0x54, 0x00, 0x12]));
}

#[test]
fn no_mac_without_eerd_is_an_error() {
    let m = machine();
    m.sim.state.borrow_mut().ral_empty_after_reset = true;
    let err = E1000::new(&m.sim, m.clock.clone(), m.dev.clone(), "00:02.0 e1000", model(0x100C), Config::default())
        .err()
        .unwrap();
    assert_eq!(err, InitError::NoMacAddress);
    assert!(std::format!("{err}").contains("EEPROM"));
}

#[test]
fn bad_configurations_and_dead_devices_are_refused() {
    let m = machine();
    for n in [0, 7, 12, 264, 512] {
        let config = Config { rx_descriptors: n, ..Config::default() };
        let err = E1000::new(&m.sim, m.clock.clone(), m.dev.clone(), "x", model(0x100E), config).err();
        assert_eq!(err, Some(InitError::BadRingSize { descriptors: n }));
    }
    m.sim.state.borrow_mut().reset_sticks = true;
    let err = E1000::new(&m.sim, m.clock.clone(), m.dev.clone(), "x", model(0x100E), Config::default()).err();
    assert_eq!(err, Some(InitError::ResetTimeout));
    m.sim.state.borrow_mut().absent = true;
    let err = E1000::new(&m.sim, m.clock.clone(), m.dev.clone(), "x", model(0x100E), Config::default()).err();
    assert_eq!(err, Some(InitError::DeviceNotResponding));
}

#[test]
fn small_rings_work() {
    let m = machine();
    let config = Config { rx_descriptors: 8, tx_descriptors: 8, ..Config::default() };
    let mut nic = E1000::new(&m.sim, m.clock.clone(), m.dev.clone(), "x", model(0x100E), config).unwrap();
    for i in 0..40 {
        let f = frame(60 + i, i as u8);
        nic.transmit(&f).unwrap();
        assert!(m.sim.inject(&f));
        assert_eq!(receive_one(&mut nic).as_deref(), Some(&f[..]));
    }
    assert_eq!(m.sim.state.borrow().sent.len(), 40);
}

#[test]
fn transmit_ring_wraps_and_buffers_return_to_the_pool() {
    let m = machine();
    let mut nic = start(&m);
    let mut expected = Vec::new();
    for i in 0..300usize {
        let f = frame(60 + (i * 37) % 1455, i as u8);
        nic.transmit(&f).unwrap();
        expected.push(f);
        if i % 50 == 49 {
            nic.reclaim_transmitted();
        }
    }
    nic.reclaim_transmitted();
    assert_eq!(m.sim.state.borrow().sent, expected);
    assert_eq!(nic.transmit_pending(), 0);
    assert_eq!(nic.pool_stats()[2].blocks_in_use, 0, "every transmit buffer reclaimed");
    let c = nic.counters();
    assert_eq!(c.tx_packets, 300);
    assert_eq!(c.tx_bytes, expected.iter().map(|f| f.len() as u64).sum::<u64>());
    assert!(m.sim.state.borrow().faults.is_empty());
    let hw = nic.device_counters();
    assert_eq!(hw.gptc, 300);
}

#[test]
fn transmit_refuses_bad_lengths_and_a_full_ring() {
    let m = machine();
    let mut nic = start(&m);
    assert_eq!(nic.transmit(&[]), Err(TransmitError::Empty));
    assert_eq!(nic.transmit(&[0; 1519]), Err(TransmitError::TooLong { len: 1519 }));
    m.sim.state.borrow_mut().tx_stalled = true;
    for i in 0..127 {
        nic.transmit(&frame(100, i)).unwrap();
    }
    assert_eq!(nic.transmit_space(), 0);
    assert_eq!(nic.transmit(&frame(100, 0)), Err(TransmitError::RingFull));
    assert_eq!(nic.counters().tx_ring_full, 1);
}

#[test]
fn receive_ring_wraps_and_recycles_the_same_buffers() {
    let m = machine();
    let mut nic = start(&m);
    let mut before = m.sim.rx_buffer_addresses();
    before.sort_unstable();
    for i in 0..300usize {
        let f = frame(60 + (i * 53) % 1455, i as u8);
        assert!(m.sim.inject(&f), "frame {i} dropped");
        assert_eq!(receive_one(&mut nic).as_deref(), Some(&f[..]), "frame {i}");
    }
    assert_eq!(receive_one(&mut nic), None);
    let mut after = m.sim.rx_buffer_addresses();
    after.sort_unstable();
    assert_eq!(before, after, "buffers are recycled, not reallocated");
    assert_eq!(nic.pool_stats()[1].blocks_in_use, 128);
    assert_eq!(nic.pool_stats()[1].total_blocks, 128);
    let c = nic.counters();
    assert_eq!((c.rx_packets, c.rx_dropped), (300, 0));
}

#[test]
fn errored_runt_oversized_and_fragmented_frames_are_counted_and_dropped() {
    let m = machine();
    let mut nic = start(&m);
    let good = frame(100, 1);
    let dd_eop = rx_status::DD | rx_status::EOP;
    assert!(m.sim.inject_with(&frame(100, 2), dd_eop, rx_errors::CE));
    assert!(m.sim.inject_with(&frame(100, 3), dd_eop, rx_errors::RXE));
    assert!(m.sim.inject(&frame(20, 4)));
    assert!(m.sim.inject(&frame(1600, 5)));
    assert!(m.sim.inject(&frame(3000, 6)), "longer than the buffer: the length lies");
    // A frame over three descriptors: no EOP, no EOP, EOP.
    assert!(m.sim.inject_with(&frame(200, 7), rx_status::DD, 0));
    assert!(m.sim.inject_with(&frame(200, 7), rx_status::DD, 0));
    assert!(m.sim.inject_with(&frame(200, 7), dd_eop, 0));
    // Checksum-offload errors do not make a frame bad (offload is off).
    assert!(m.sim.inject_with(&good, dd_eop, rx_errors::TCPE));
    assert_eq!(receive_one(&mut nic).as_deref(), Some(&good[..]));
    assert_eq!(receive_one(&mut nic), None);
    let c = nic.counters();
    assert_eq!((c.rx_errors, c.rx_runts, c.rx_oversized, c.rx_fragmented), (2, 1, 2, 1));
    assert_eq!(c.rx_dropped, 6);
    assert_eq!(c.rx_packets, 1);
    // The ring is intact: the next frames arrive.
    for i in 0..200 {
        let f = frame(64, i as u8);
        assert!(m.sim.inject(&f));
        assert_eq!(receive_one(&mut nic).as_deref(), Some(&f[..]));
    }
}

#[test]
fn a_full_receive_ring_drops_counts_and_recovers() {
    let m = machine();
    let mut nic = start(&m);
    let frames: Vec<Vec<u8>> = (0..200).map(|i| frame(60 + i * 7, i as u8)).collect();
    let accepted = frames.iter().filter(|f| m.sim.inject(f)).count();
    assert_eq!(accepted, 127, "one descriptor always stays with software");
    let state = nic.rx_ring_state();
    assert!(state.exhausted && state.rdh == state.rdt && state.ready == 127, "{state:?}");
    assert_eq!(nic.counters().rx_ring_exhausted, 1);
    assert_ne!(nic.acknowledge_interrupts() & regs::int::RXO, 0);
    for f in &frames[..127] {
        assert_eq!(receive_one(&mut nic).as_deref(), Some(&f[..]));
    }
    assert_eq!(receive_one(&mut nic), None);
    let state = nic.rx_ring_state();
    assert!(!state.exhausted && state.ready == 0, "drained: {state:?}");
    assert_eq!(nic.drops(), 73);
    let hw = nic.device_counters();
    assert_eq!((hw.rnbc, hw.mpc), (73, 73));
    assert_eq!(nic.counters().rx_overruns, 1);
    // Recovered: the ring takes frames again, all of them.
    for f in &frames[127..] {
        assert!(m.sim.inject(f));
        assert_eq!(receive_one(&mut nic).as_deref(), Some(&f[..]));
    }
}

#[test]
fn a_transmit_hang_is_detected_and_the_device_reset() {
    let m = machine();
    let mut nic = start(&m);
    nic.transmit(&frame(100, 0)).unwrap();
    assert!(!nic.check_transmit_hang());
    m.sim.state.borrow_mut().tx_stalled = true;
    for i in 0..5 {
        nic.transmit(&frame(100, i)).unwrap();
    }
    m.clock.advance_us(1_000_000);
    assert!(!nic.check_transmit_hang(), "not yet: the deadline is 2 s");
    m.clock.advance_us(1_500_000);
    assert!(nic.check_transmit_hang());
    let c = nic.counters();
    assert_eq!((c.tx_hangs, c.tx_dropped, c.resets, c.tx_packets), (1, 5, 2, 1));
    assert_eq!(m.sim.state.borrow().resets, 2);
    assert_eq!(nic.pool_stats()[2].blocks_in_use, 0, "stuck buffers freed after the reset");
    assert_eq!((m.sim.reg(regs::TDH), m.sim.reg(regs::TDT)), (0, 0));
    // The device works again, both ways.
    m.sim.state.borrow_mut().tx_stalled = false;
    let f = frame(200, 9);
    nic.transmit(&f).unwrap();
    assert_eq!(m.sim.state.borrow().sent.last(), Some(&f));
    assert!(m.sim.inject(&f));
    assert_eq!(receive_one(&mut nic).as_deref(), Some(&f[..]));
    assert!(!nic.check_transmit_hang());
}

#[test]
fn interrupts_are_masked_until_enabled_and_icr_acknowledges() {
    let m = machine();
    let mut nic = start(&m);
    assert!(m.sim.inject(&frame(64, 0)));
    assert!(!m.sim.interrupt_asserted(), "polling mode: masked");
    nic.enable_interrupts();
    assert!(m.sim.interrupt_asserted());
    let causes = nic.acknowledge_interrupts();
    assert_ne!(causes & regs::int::RXT0, 0);
    assert!(!m.sim.interrupt_asserted(), "reading ICR deasserts the line");
    nic.raise_interrupt(regs::int::LSC);
    assert!(m.sim.interrupt_asserted());
    nic.acknowledge_interrupts();
    assert_eq!(nic.counters().link_changes, 1);
    assert_eq!(nic.acknowledge_interrupts(), 0, "nothing pending: not ours");
    // A reset keeps the mask the driver wants.
    nic.reset().unwrap();
    assert_eq!(m.sim.reg(regs::IMS), INTERRUPT_CAUSES);
    nic.disable_interrupts();
    assert_eq!(m.sim.reg(regs::IMS), 0);
}

#[test]
fn stats_view_names_every_counter() {
    let m = machine();
    let mut nic = start(&m);
    nic.transmit(&frame(100, 0)).unwrap();
    nic.reclaim_transmitted();
    let text = nic.render_stats();
    for needle in [
        "device 00:02.0 e1000 82540EM",
        "mac 52:54:00:12:34:56",
        "link up",
        "drops 0",
        "tx_packets 1",
        "hw.GPTC 1",
        "hw.MPC 0",
        "hw.RNBC 0",
        "hw.CRCERRS 0",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
}

#[test]
fn dropping_the_driver_stops_the_device_and_frees_its_memory() {
    let m = machine();
    let baseline = m.memory.frames_in_use();
    {
        let mut nic = start(&m);
        m.sim.state.borrow_mut().tx_stalled = true;
        nic.transmit(&frame(100, 0)).unwrap();
    }
    let st = m.sim.state.borrow();
    assert_eq!(st.resets, 2);
    assert_eq!(SimE1000::get_for_test(&st, regs::RCTL), 0);
    drop(st);
    assert_eq!(m.memory.frames_in_use(), baseline, "pools released every unit");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Send(usize),
        Arrive(usize),
        Receive,
        Reclaim,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..=MAX_FRAME_LEN).prop_map(Step::Send),
            (MIN_FRAME_LEN..=1514usize).prop_map(Step::Arrive),
            Just(Step::Receive),
            Just(Step::Reclaim),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Any interleaving of sends, arrivals, receives and reclaims keeps every frame intact
        /// and in order, and loses a frame only when the ring is full (counted in MPC).
        #[test]
        fn frames_survive_any_interleaving(steps in proptest::collection::vec(step(), 1..400)) {
            let m = machine();
            let config = Config { rx_descriptors: 16, tx_descriptors: 16, ..Config::default() };
            let mut nic = E1000::new(&m.sim, m.clock.clone(), m.dev.clone(), "x", model(0x100E), config).unwrap();
            let mut sent = Vec::new();
            let mut arrived = std::collections::VecDeque::new();
            let mut lost = 0u64;
            for (i, s) in steps.iter().enumerate() {
                match *s {
                    Step::Send(len) => {
                        let f = frame(len.max(6), i as u8);
                        if nic.transmit(&f).is_ok() { sent.push(f); }
                    }
                    Step::Arrive(len) => {
                        let f = frame(len, i as u8);
                        if m.sim.inject(&f) { arrived.push_back(f); } else { lost += 1; }
                    }
                    Step::Receive => {
                        let got = receive_one(&mut nic);
                        prop_assert_eq!(got, arrived.pop_front());
                    }
                    Step::Reclaim => { nic.reclaim_transmitted(); }
                }
            }
            while let Some(f) = arrived.pop_front() {
                prop_assert_eq!(receive_one(&mut nic), Some(f));
            }
            prop_assert_eq!(receive_one(&mut nic), None);
            prop_assert_eq!(&m.sim.state.borrow().sent, &sent);
            prop_assert_eq!(nic.device_counters().mpc, lost);
            prop_assert!(m.sim.state.borrow().faults.is_empty());
        }
    }
}
