//! A simulated 8254x for host tests: registers with behaviour, and DMA through `dma::sim`.
//!
//! It does what the driver relies on and nothing more: CTRL.RST restores defaults (RAL0/RAH0
//! loaded from the "EEPROM" unless told not to), EERD reads EEPROM words, ICR clears on read,
//! statistics registers clear on read, a TDT write sends every descriptor from TDH to TDT by
//! reading it and its buffer from bus memory (writing DD back when RS is set), and
//! [`SimE1000::inject`] receives a frame the way the device does: into the buffer of the
//! descriptor at RDH, written back with DD, EOP, length and errors, or counted in RNBC/MPC when
//! head meets tail. Every register write is logged so tests can check the init sequence.

extern crate std;

use core::cell::RefCell;
use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

use device_io::Registers;
use dma::BusAddr;
use dma::sim::SimDevice;

use crate::desc::{RxDescriptor, TxDescriptor, rx_status, tx_cmd, tx_status};
use crate::regs::{self, stat};

pub const SIM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

#[derive(Default)]
pub struct State {
    pub regs: BTreeMap<usize, u32>,
    /// Register writes in order.
    pub writes: Vec<(usize, u32)>,
    /// Frames the device sent.
    pub sent: Vec<Vec<u8>>,
    /// The device stops processing transmit descriptors (a hung DMA engine).
    pub tx_stalled: bool,
    /// After reset RAL0/RAH0 stay empty (blank autoload); the MAC is only in the EEPROM.
    pub ral_empty_after_reset: bool,
    /// CTRL.RST never clears.
    pub reset_sticks: bool,
    /// All registers read as ones (device gone).
    pub absent: bool,
    pub resets: usize,
    /// DMA faults the device hit (should stay empty).
    pub faults: Vec<String>,
}

pub struct SimE1000 {
    pub state: RefCell<State>,
    hw: SimDevice,
}

impl SimE1000 {
    pub fn new(dev: &dma::DmaDevice) -> Self {
        let sim = SimE1000 { state: RefCell::new(State::default()), hw: SimDevice::new(dev) };
        sim.power_on();
        sim
    }

    fn power_on(&self) {
        let mut st = self.state.borrow_mut();
        let keep_ral_empty = st.ral_empty_after_reset;
        st.regs.clear();
        // STATUS: full duplex, 1000 Mb/s; LU once SLU is set.
        st.regs.insert(regs::STATUS, regs::status::FD | (2 << regs::status::SPEED_SHIFT));
        if !keep_ral_empty {
            let m = SIM_MAC;
            st.regs.insert(regs::RAL0, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
            st.regs.insert(regs::RAH0, u32::from(u16::from_le_bytes([m[4], m[5]])) | regs::rah::AV);
        }
    }

    fn get(st: &State, offset: usize) -> u32 {
        st.regs.get(&offset).copied().unwrap_or(0)
    }

    pub fn get_for_test(st: &State, offset: usize) -> u32 {
        Self::get(st, offset)
    }

    pub fn reg(&self, offset: usize) -> u32 {
        Self::get(&self.state.borrow(), offset)
    }

    /// Whether the (level-triggered) interrupt line is asserted: a cause set and enabled.
    pub fn interrupt_asserted(&self) -> bool {
        let st = self.state.borrow();
        Self::get(&st, regs::ICR) & Self::get(&st, regs::IMS) != 0
    }

    fn bump(st: &mut State, offset: usize, by: u32) {
        let v = Self::get(st, offset).wrapping_add(by);
        st.regs.insert(offset, v);
    }

    fn raise(st: &mut State, cause: u32) {
        let v = Self::get(st, regs::ICR) | cause;
        st.regs.insert(regs::ICR, v);
    }

    fn read_desc(&self, st: &mut State, base_lo: usize, base_hi: usize, index: u32) -> Option<(BusAddr, [u8; 16])> {
        let base = u64::from(Self::get(st, base_lo)) | u64::from(Self::get(st, base_hi)) << 32;
        let addr = BusAddr(base + u64::from(index) * 16);
        let mut bytes = [0u8; 16];
        match self.hw.read(addr, &mut bytes) {
            Ok(()) => Some((addr, bytes)),
            Err(e) => {
                st.faults.push(std::format!("descriptor read: {e}"));
                None
            }
        }
    }

    fn process_tx(&self, st: &mut State) {
        if Self::get(st, regs::TCTL) & regs::tctl::EN == 0 || st.tx_stalled {
            return;
        }
        let count = Self::get(st, regs::TDLEN) / 16;
        if count == 0 {
            return;
        }
        if Self::get(st, regs::TDT) >= count {
            // Real parts misbehave in undefined ways; the sim refuses (a lab's wrong tail).
            let tdt = Self::get(st, regs::TDT);
            st.faults.push(std::format!("TDT {tdt} is beyond the ring of {count} descriptors"));
            return;
        }
        while Self::get(st, regs::TDH) != Self::get(st, regs::TDT) {
            let head = Self::get(st, regs::TDH) % count;
            let Some((addr, bytes)) = self.read_desc(st, regs::TDBAL, regs::TDBAH, head) else { return };
            let mut desc = TxDescriptor::from_bytes(bytes);
            let mut frame = std::vec![0u8; usize::from(desc.length)];
            if let Err(e) = self.hw.read(BusAddr(desc.addr), &mut frame) {
                st.faults.push(std::format!("transmit buffer read: {e}"));
                return;
            }
            Self::bump(st, stat::GPTC, 1);
            Self::bump(st, stat::TPT, 1);
            Self::bump(st, stat::GOTCL, u32::from(desc.length) + 4);
            st.sent.push(frame);
            if desc.cmd & tx_cmd::RS != 0 {
                desc.status |= tx_status::DD;
                if let Err(e) = self.hw.write(addr, &desc.to_bytes()) {
                    st.faults.push(std::format!("descriptor write-back: {e}"));
                }
            }
            st.regs.insert(regs::TDH, (head + 1) % count);
        }
        Self::raise(st, regs::int::TXDW | regs::int::TXQE);
    }

    /// The device receives `frame`, stored with these status and error bits. False if it was
    /// dropped (receiver off, or no free descriptor).
    pub fn inject_with(&self, frame: &[u8], status: u8, errors: u8) -> bool {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        if Self::get(st, regs::RCTL) & regs::rctl::EN == 0 {
            return false;
        }
        let count = Self::get(st, regs::RDLEN) / 16;
        let head = Self::get(st, regs::RDH);
        if Self::get(st, regs::RDT) >= count.max(1) {
            let rdt = Self::get(st, regs::RDT);
            st.faults.push(std::format!("RDT {rdt} is beyond the ring of {count} descriptors"));
            return false;
        }
        if count == 0 || head == Self::get(st, regs::RDT) {
            Self::bump(st, stat::RNBC, 1);
            Self::bump(st, stat::MPC, 1);
            Self::raise(st, regs::int::RXO);
            return false;
        }
        let Some((addr, bytes)) = self.read_desc(st, regs::RDBAL, regs::RDBAH, head) else { return false };
        let mut desc = RxDescriptor::from_bytes(bytes);
        let stored = frame.len().min(crate::BUFFER_BYTES);
        if let Err(e) = self.hw.write(BusAddr(desc.addr), &frame[..stored]) {
            st.faults.push(std::format!("receive buffer write: {e}"));
            return false;
        }
        desc.length = frame.len() as u16;
        desc.status = status;
        desc.errors = errors;
        if let Err(e) = self.hw.write(addr, &desc.to_bytes()) {
            st.faults.push(std::format!("descriptor write-back: {e}"));
        }
        st.regs.insert(regs::RDH, (head + 1) % count);
        Self::bump(st, stat::GPRC, 1);
        Self::bump(st, stat::TPR, 1);
        Self::bump(st, stat::GORCL, frame.len() as u32 + 4);
        Self::raise(st, regs::int::RXT0);
        true
    }

    /// The device receives a good frame.
    pub fn inject(&self, frame: &[u8]) -> bool {
        self.inject_with(frame, rx_status::DD | rx_status::EOP, 0)
    }

    /// The bus addresses of the receive buffers the ring points at now.
    pub fn rx_buffer_addresses(&self) -> Vec<u64> {
        let mut st = self.state.borrow_mut();
        let count = Self::get(&st, regs::RDLEN) / 16;
        (0..count)
            .filter_map(|i| self.read_desc(&mut st, regs::RDBAL, regs::RDBAH, i))
            .map(|(_, b)| RxDescriptor::from_bytes(b).addr)
            .collect()
    }
}

fn is_stat(offset: usize) -> bool {
    (0x4000..0x4100).contains(&offset)
}

impl Registers for SimE1000 {
    fn read32(&self, offset: usize) -> u32 {
        let mut st = self.state.borrow_mut();
        if st.absent {
            return u32::MAX;
        }
        if offset == regs::ICR || is_stat(offset) {
            // Read-to-clear. (For GORC/GOTC the low half is read first and the sim keeps the
            // whole count in the low half, which is fine below 4 GiB of traffic.)
            return st.regs.remove(&offset).unwrap_or(0);
        }
        Self::get(&st, offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        st.writes.push((offset, value));
        if st.absent {
            return;
        }
        match offset {
            regs::CTRL if value & regs::ctrl::RST != 0 => {
                st.resets += 1;
                let sticks = st.reset_sticks;
                drop(guard);
                self.power_on();
                let mut st = self.state.borrow_mut();
                st.regs.insert(regs::CTRL, if sticks { regs::ctrl::RST } else { 0 });
            }
            regs::CTRL => {
                st.regs.insert(regs::CTRL, value);
                if value & regs::ctrl::SLU != 0 {
                    let status = Self::get(st, regs::STATUS) | regs::status::LU;
                    st.regs.insert(regs::STATUS, status);
                }
            }
            regs::IMS => {
                let v = Self::get(st, regs::IMS) | value;
                st.regs.insert(regs::IMS, v);
            }
            regs::IMC => {
                let v = Self::get(st, regs::IMS) & !value;
                st.regs.insert(regs::IMS, v);
            }
            regs::ICS => Self::raise(st, value),
            regs::EERD if value & 1 != 0 => {
                // 82540 layout: address in bits 15:8, DONE bit 4, data in bits 31:16.
                let word = (value >> 8) & 0xff;
                let data = match word {
                    0..=2 => {
                        u32::from(u16::from_le_bytes([SIM_MAC[word as usize * 2], SIM_MAC[word as usize * 2 + 1]]))
                    }
                    _ => 0xffff,
                };
                st.regs.insert(regs::EERD, (data << 16) | (word << 8) | (1 << 4));
            }
            regs::TDT => {
                st.regs.insert(regs::TDT, value);
                self.process_tx(st);
            }
            regs::STATUS => {} // read-only
            _ => {
                st.regs.insert(offset, value);
            }
        }
    }
}
