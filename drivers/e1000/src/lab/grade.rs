//! The host half of the e1000 labs' grader: the driver, running whatever ring code this build
//! has (the reference in `ring.rs`, or a student's file under a lab feature), against the
//! simulated 8254x. Every check that fails says what it found, what the device needed, where
//! the manual says so, and which section of the guide explains it.
//!
//! `cargo xtask lab grade e1000-tx` runs `transmit::*`, `… e1000-rx` runs `receive::*`;
//! `cargo xtask test` runs both on the reference (must pass) and on the stubs (must fail).

extern crate std;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;

use device_io::Registers;
use dma::mapper::Direct;
use dma::sim::SimMemory;
use dma::{DmaDevice, DmaPool, PhysMemory};

use crate::desc::{DescriptorRing, RxDescriptor, TxDescriptor, rx_status, tx_cmd, tx_status};
use crate::sim::{SIM_MAC, SimE1000};
use crate::{Config, E1000, INTEL, model_for, regs};

const TX_CHAPTER: &str = "docs/guide/06-e1000-packet.md (\"A frame leaves\") and docs/labs/e1000-tx/README.md";
const RX_CHAPTER: &str = "docs/guide/06-e1000-packet.md (\"A frame arrives\") and docs/labs/e1000-rx/README.md";

/// Stops the check with a message a student can act on.
fn fail(found: String, rule: &str, read: &str) -> ! {
    panic!("\n  found: {found}\n  rule:  {rule}\n  read:  {read}\n")
}

/// The driver's own test clock: 10 µs per reading.
use crate::tests::TestClock;

struct Machine {
    dev: DmaDevice,
    sim: SimE1000,
}

/// A NIC with a 64-bit mask over memory above and below 4 GiB (the high halves matter).
fn machine() -> Machine {
    let memory = SimMemory::low_and_high(8 << 20, 8 << 20);
    let phys: Arc<dyn PhysMemory> = memory;
    let dev = DmaDevice::new("00:02.0 e1000", phys.clone(), Arc::new(Direct::new(phys)));
    dev.set_mask(64).unwrap();
    let sim = SimE1000::new(&dev);
    Machine { dev, sim }
}

fn start(m: &Machine, descriptors: usize) -> E1000<&SimE1000, TestClock> {
    let config = Config { rx_descriptors: descriptors, tx_descriptors: descriptors, ..Config::default() };
    let model = model_for(INTEL, 0x100E).unwrap();
    E1000::new(&m.sim, TestClock::default(), m.dev.clone(), "00:02.0 e1000", model, config).unwrap()
}

fn frame(len: usize, seed: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed as u8)).collect();
    f[..6].copy_from_slice(&SIM_MAC);
    f[12..16].copy_from_slice(&(seed as u32).to_be_bytes());
    f
}

/// Registers that only record writes (for calling a ring function on its own).
#[derive(Default)]
struct Recorder(RefCell<Vec<(usize, u32)>>);

impl Registers for Recorder {
    fn read32(&self, _offset: usize) -> u32 {
        0
    }
    fn write32(&self, offset: usize, value: u32) {
        self.0.borrow_mut().push((offset, value));
    }
}

/// A ring of `len` descriptors in pool memory, filled with `garbage` status bits.
fn loose_ring(m: &Machine, len: usize) -> (DmaPool, DescriptorRing) {
    let pool = DmaPool::create("lab-grade", &m.dev, len * 16, 128, 4096).unwrap();
    let ring = DescriptorRing::new(pool.zalloc().unwrap(), len).unwrap();
    (pool, ring)
}

fn faults(m: &Machine) -> Vec<String> {
    m.sim.state.borrow().faults.clone()
}

/// The transmit lab: `post_frame` and `take_sent`.
mod transmit {
    use super::*;

    #[test]
    fn a_frame_reaches_the_wire() {
        let m = machine();
        let mut nic = start(&m, 8);
        let f = frame(100, 1);
        nic.transmit(&f).unwrap();
        let sent = m.sim.state.borrow().sent.clone();
        let tdt = m.sim.reg(regs::TDT);
        if sent.is_empty() {
            if tdt == 0 {
                fail(
                    "TDT is still 0 after post_frame: the device was never told there is a frame".into(),
                    "software fills descriptors from the tail, then writes TDT one past the last one it filled; \
                     the device sends TDH..TDT (SDM §3.4, §13.4.42)",
                    TX_CHAPTER,
                );
            }
            fail(format!("TDT = {tdt} but the device sent nothing (sim: {:?})", faults(&m)), "SDM §3.4", TX_CHAPTER);
        }
        let desc = TxDescriptor::from_words(nic.tx.ring.read(0));
        if sent[0] != f {
            fail(
                format!(
                    "the device sent {} bytes that differ from the frame ({} bytes); descriptor 0 has address {:#x}, \
                     length {}",
                    sent[0].len(),
                    f.len(),
                    desc.addr,
                    desc.length
                ),
                "the descriptor's buffer address is the bus address the driver passed in, its length the frame's \
                 (SDM §3.3.3, Table 3-8)",
                TX_CHAPTER,
            );
        }
        if !faults(&m).is_empty() {
            fail(format!("the device reported {:?}", faults(&m)), "SDM §3.3.3", TX_CHAPTER);
        }
    }

    #[test]
    fn the_descriptor_asks_for_a_crc_an_end_and_a_report() {
        let m = machine();
        let mut nic = start(&m, 8);
        nic.transmit(&frame(64, 2)).unwrap();
        let desc = TxDescriptor::from_words(nic.tx.ring.read(0));
        let needs = [
            (tx_cmd::EOP, "EOP", "without End Of Packet the device takes the next descriptor as more of this frame"),
            (tx_cmd::IFCS, "IFCS", "without Insert FCS the frame leaves with no CRC and every receiver drops it"),
            (
                tx_cmd::RS,
                "RS",
                "without Report Status the device never writes DD back, so the driver can never know the buffer is \
                 free",
            ),
        ];
        for (bit, name, why) in needs {
            if desc.cmd & bit == 0 {
                fail(
                    format!("descriptor 0 has CMD {:#04x}: {name} is not set", desc.cmd),
                    &format!("{why} (SDM §3.3.3.1, Table 3-10)"),
                    TX_CHAPTER,
                );
            }
        }
        if desc.status & tx_status::DD == 0 {
            fail(
                "descriptor 0: DD not set by the device after it sent the frame".into(),
                "the device writes DD back only when RS was requested (SDM §3.3.3.2)",
                TX_CHAPTER,
            );
        }
    }

    #[test]
    fn the_tail_wraps_and_every_frame_goes_once_in_order() {
        let m = machine();
        let mut nic = start(&m, 8);
        let frames: Vec<Vec<u8>> = (0..3 * 8 + 5).map(|i| frame(60 + i * 13, i)).collect();
        for (i, f) in frames.iter().enumerate() {
            nic.transmit(f).unwrap_or_else(|e| {
                fail(
                    format!("frame {i} on a ring of 8: {e}"),
                    "the driver frees a descriptor when take_sent returns it, which needs DD, which the device \
                     writes only when RS was requested (SDM §3.3.3.1, §3.4)",
                    TX_CHAPTER,
                )
            });
            let tdt = m.sim.reg(regs::TDT);
            if tdt >= 8 {
                fail(
                    format!("after frame {i}, TDT = {tdt} on a ring of 8 descriptors"),
                    "the ring is circular: after the last descriptor the tail wraps to 0 (SDM §3.4)",
                    TX_CHAPTER,
                );
            }
            let sent = m.sim.state.borrow().sent.len();
            if sent != i + 1 {
                fail(
                    format!("after {} frames the device has sent {sent}", i + 1),
                    "each post_frame moves TDT one descriptor on, so the device sends exactly that frame (SDM §3.4)",
                    TX_CHAPTER,
                );
            }
        }
        let sent = m.sim.state.borrow().sent.clone();
        if let Some(i) = (0..frames.len()).find(|&i| sent[i] != frames[i]) {
            fail(
                format!("frame {i} on the wire is not the {i}th frame posted"),
                "descriptors are sent in ring order from TDH to TDT (SDM §3.4)",
                TX_CHAPTER,
            );
        }
    }

    #[test]
    fn a_buffer_is_freed_only_after_the_device_sets_dd() {
        let m = machine();
        let mut nic = start(&m, 8);
        m.sim.state.borrow_mut().tx_stalled = true;
        for i in 0..3 {
            nic.transmit(&frame(80, i)).unwrap();
        }
        let reclaimed = nic.reclaim_transmitted();
        if reclaimed != 0 {
            fail(
                format!("take_sent gave back {reclaimed} descriptors whose DD bit is clear"),
                "until the device sets DD it may still be reading the buffer: freeing it is a use-after-free by \
                 DMA (SDM §3.3.3.2)",
                TX_CHAPTER,
            );
        }
        m.sim.state.borrow_mut().tx_stalled = false;
        nic.ring_transmit_doorbell();
        if m.sim.state.borrow().sent.len() != 3 {
            fail("nothing was posted to the device".into(), "see a_frame_reaches_the_wire", TX_CHAPTER);
        }
        if TxDescriptor::from_words(nic.tx.ring.read(0)).status & tx_status::DD == 0 {
            fail(
                "the device sent frames 0..2 but wrote no DD back into descriptor 0".into(),
                "the device reports a descriptor done only when its RS (report status) bit asks for it \
                 (SDM §3.3.3.1)",
                TX_CHAPTER,
            );
        }
        let reclaimed = nic.reclaim_transmitted();
        let in_use = nic.pool_stats()[2].blocks_in_use;
        if reclaimed != 3 || in_use != 0 {
            fail(
                format!(
                    "the device set DD on descriptors 0..2; take_sent gave back {reclaimed}, {in_use} buffers stay in use"
                ),
                "a descriptor with DD set is done: return it (as the device wrote it) and clear the slot \
                 (SDM §3.3.3.2)",
                TX_CHAPTER,
            );
        }
    }

    #[test]
    fn post_frame_and_take_sent_on_their_own() {
        let m = machine();
        let (_pool, mut ring) = loose_ring(&m, 8);
        // Descriptor 7 still holds a finished frame from the previous lap.
        let old = TxDescriptor { addr: 0x1234, length: 60, cmd: 0x0b, status: tx_status::DD, ..Default::default() };
        ring.write(7, old.to_words());
        let regs = Recorder::default();
        let next = crate::lab::transmit::post_frame(&regs, &mut ring, 7, dma::BusAddr(0x1_2345_6000), 1514);
        if next != 0 {
            fail(
                format!("post_frame(tail = 7) on a ring of 8 returned {next}"),
                "the new tail is the next descriptor to fill, and wraps to 0 (SDM §3.4)",
                TX_CHAPTER,
            );
        }
        let tdt: Vec<u32> = regs.0.borrow().iter().filter(|w| w.0 == regs::TDT).map(|w| w.1).collect();
        if tdt != [0] {
            fail(
                format!("TDT writes {tdt:?}, expected exactly [0]"),
                "one doorbell per frame (SDM §13.4.42)",
                TX_CHAPTER,
            );
        }
        let d = TxDescriptor::from_words(ring.read(7));
        if d.addr != 0x1_2345_6000 || d.length != 1514 {
            fail(
                format!("descriptor 7 holds address {:#x} length {}, expected 0x123456000 and 1514", d.addr, d.length),
                "all 64 bits of the bus address, and the length in bytes (SDM §3.3.3, Table 3-8)",
                TX_CHAPTER,
            );
        }
        if d.status & tx_status::DD != 0 {
            fail(
                "descriptor 7 kept the DD bit of its previous frame".into(),
                "a posted descriptor starts with status 0; a stale DD makes take_sent free the buffer before the \
                 device has sent it (SDM §3.3.3.2)",
                TX_CHAPTER,
            );
        }
        // take_sent: None while DD is clear (and the descriptor untouched), the write-back when set.
        if crate::lab::transmit::take_sent(&mut ring, 7).is_some() {
            fail("take_sent returned a descriptor whose DD is clear".into(), "SDM §3.3.3.2", TX_CHAPTER);
        }
        let late = TxDescriptor { status: tx_status::DD | tx_status::LC, ..d };
        ring.write(7, late.to_words());
        match crate::lab::transmit::take_sent(&mut ring, 7) {
            Some(back) if back.status & tx_status::LC != 0 => {}
            other => fail(
                format!("take_sent on a done descriptor with a late collision returned {other:?}"),
                "return the descriptor as the device wrote it back, so the driver can count the error \
                 (SDM §3.3.3.2, Table 3-11)",
                TX_CHAPTER,
            ),
        }
    }
}

/// The receive lab: `take_received`, `give_back` and `return_to_device`.
mod receive {
    use super::*;

    fn receive_one(nic: &mut E1000<&SimE1000, TestClock>) -> Option<Vec<u8>> {
        nic.receive_with(|f| f.to_vec())
    }

    #[test]
    fn a_frame_is_delivered() {
        let m = machine();
        let mut nic = start(&m, 8);
        let f = frame(200, 3);
        assert!(m.sim.inject(&f), "the simulated device refused the frame");
        match receive_one(&mut nic) {
            Some(got) if got == f => {}
            Some(got) => fail(
                format!("received {} bytes that differ from the {} the device wrote", got.len(), f.len()),
                "the frame is in the descriptor's buffer, its length in the descriptor (SDM §3.2.3)",
                RX_CHAPTER,
            ),
            None => fail(
                "the device wrote descriptor 0 back with DD set, but take_received returned None".into(),
                "DD (descriptor done) set means the device has written the buffer and the descriptor \
                 (SDM §3.2.3.1, Table 3-2)",
                RX_CHAPTER,
            ),
        }
    }

    #[test]
    fn nothing_is_delivered_before_the_device_writes() {
        let m = machine();
        let mut nic = start(&m, 8);
        if let Some(got) = receive_one(&mut nic) {
            fail(
                format!("a {}-byte frame was delivered from an empty ring", got.len()),
                "a descriptor whose DD bit is clear still belongs to the device: its buffer holds nothing yet \
                 (SDM §3.2.3.1)",
                RX_CHAPTER,
            );
        }
        let (_pool, mut ring) = loose_ring(&m, 8);
        let half = RxDescriptor { addr: 0x5000, length: 64, status: rx_status::EOP, ..Default::default() };
        ring.write(2, half.to_words());
        if crate::lab::receive::take_received(&ring, 2).is_some() {
            fail("take_received returned descriptor 2 with EOP set but DD clear".into(), "SDM §3.2.3.1", RX_CHAPTER);
        }
    }

    #[test]
    fn buffers_go_back_empty_and_the_same() {
        let m = machine();
        let mut nic = start(&m, 8);
        let before = m.sim.rx_buffer_addresses();
        for i in 0..3 {
            m.sim.inject(&frame(100, i));
            receive_one(&mut nic);
        }
        for (i, &buffer) in before.iter().enumerate().take(3) {
            let d = RxDescriptor::from_words(nic.rx.ring.read(i));
            if d.addr != buffer {
                fail(
                    format!("descriptor {i} now points at {:#x}; its buffer is at {buffer:#x}", d.addr),
                    "give_back puts the same buffer back: the driver recycles buffers, and another address may be \
                     memory the device must not write (SDM §3.2.3)",
                    RX_CHAPTER,
                );
            }
            if d.status != 0 {
                fail(
                    format!("descriptor {i} was given back with status {:#04x}", d.status),
                    "software clears the status before handing a descriptor back; a stale DD makes the driver \
                     deliver the old frame again next time round (SDM §3.2.3)",
                    RX_CHAPTER,
                );
            }
        }
    }

    #[test]
    fn the_tail_leaves_one_descriptor_with_software() {
        let regs = Recorder::default();
        for (next, want) in [(0usize, 7u32), (5, 4), (1, 0)] {
            regs.0.borrow_mut().clear();
            crate::lab::receive::return_to_device(&regs, 8, next);
            let rdt: Vec<u32> = regs.0.borrow().iter().filter(|w| w.0 == regs::RDT).map(|w| w.1).collect();
            if rdt != [want] {
                fail(
                    format!("return_to_device(ring of 8, next = {next}) wrote RDT {rdt:?}, expected [{want}]"),
                    "the device fills RDH up to but not including RDT; RDT = next would hand over the descriptor \
                     software looks at next too, and once the device catches up RDH == RDT means \"no buffers\" \
                     and it drops every frame (SDM §3.2.6)",
                    RX_CHAPTER,
                );
            }
        }
    }

    #[test]
    fn the_ring_wraps_and_refills_under_load() {
        let m = machine();
        let mut nic = start(&m, 8);
        let mut seed = 0;
        for round in 0..4 {
            // Fill the ring: the device takes frames until it has no free descriptor.
            let mut accepted = Vec::new();
            while accepted.len() < 20 {
                let f = frame(60 + seed * 17 % 1400, seed);
                seed += 1;
                if !m.sim.inject(&f) {
                    break;
                }
                accepted.push(f);
            }
            if !faults(&m).is_empty() {
                fail(format!("round {round}: the device reported {:?}", faults(&m)), "SDM §3.2.6", RX_CHAPTER);
            }
            if accepted.len() != 7 {
                fail(
                    format!(
                        "round {round}: the device accepted {} frames into a ring of 8 (RDH {}, RDT {})",
                        accepted.len(),
                        m.sim.reg(regs::RDH),
                        m.sim.reg(regs::RDT)
                    ),
                    "after a full drain every descriptor but one is the device's again, so it takes 7 frames \
                     (SDM §3.2.6)",
                    RX_CHAPTER,
                );
            }
            for (i, f) in accepted.iter().enumerate() {
                match receive_one(&mut nic) {
                    Some(got) if &got == f => {}
                    other => fail(
                        format!("round {round}, frame {i}: got {:?} bytes", other.map(|g| g.len())),
                        "frames come back in ring order, each once (SDM §3.2)",
                        RX_CHAPTER,
                    ),
                }
            }
            // Nothing left, and the tail handed back.
            if receive_one(&mut nic).is_some() {
                fail(format!("round {round}: a frame came back twice"), "SDM §3.2.3", RX_CHAPTER);
            }
        }
    }
}
