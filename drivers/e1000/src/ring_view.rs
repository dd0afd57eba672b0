//! The `net:rings` view: every descriptor of both rings as the device sees it, with its owner.
//!
//! Who owns a descriptor follows from two registers per ring (SDM §3.2.6 for receive, §3.4 for
//! transmit): the device owns the descriptors from the *head* (RDH/TDH, which the device
//! advances) up to, not including, the *tail* (RDT/TDT, which the driver writes); the driver
//! owns the rest. For receive, the device's descriptors hold empty buffers it may fill; for
//! transmit, frames it has not sent yet. `head == tail` means the device owns none. The view
//! reads the registers and the descriptors at one moment while the device may be running, so
//! it is a snapshot: a status bit may change just after it was read.

use alloc::string::String;
use core::fmt::Write as _;

use device_io::{Clock, Registers};

use crate::E1000;
use crate::desc::{DescriptorRing, RxDescriptor, TxDescriptor, rx_errors, rx_status, tx_cmd, tx_status};
use crate::regs;

/// Who may touch a descriptor now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The driver (software): between the tail and the head.
    Driver,
    /// The device (hardware): from the head up to, not including, the tail.
    Device,
}

/// The owner of descriptor `index` of a ring of `len` whose registers read `head` and `tail`.
pub fn owner(index: usize, head: usize, tail: usize, len: usize) -> Owner {
    let (head, tail) = (head % len, tail % len);
    // Distance from the head, going forward; the device owns the first (tail - head) of them.
    let from_head = (index + len - head) % len;
    let device_owns = (tail + len - head) % len;
    if from_head < device_owns { Owner::Device } else { Owner::Driver }
}

fn flags(out: &mut String, bits: u8, names: &[(u8, &str)]) {
    let mut first = true;
    for (bit, name) in names {
        if bits & bit != 0 {
            out.push_str(if first { "" } else { "|" });
            out.push_str(name);
            first = false;
        }
    }
    if first {
        out.push('-');
    }
}

fn owner_text(owner: Owner) -> &'static str {
    match owner {
        Owner::Driver => "driver",
        Owner::Device => "DEVICE",
    }
}

/// Renders one ring: a header with the registers, then one line per descriptor.
fn render_ring(
    out: &mut String,
    name: &str,
    ring: &DescriptorRing,
    head: u32,
    tail: u32,
    line: impl Fn(&mut String, [u64; 2]),
) {
    let len = ring.len();
    let _ = writeln!(
        out,
        "{name}: {len} descriptors at bus {:#x}, head={head} tail={tail}, device owns {}",
        ring.bus_addr().as_u64(),
        (tail as usize + len - head as usize % len) % len
    );
    for i in 0..len {
        let who = owner(i, head as usize, tail as usize, len);
        let mut marks = String::new();
        if i == head as usize % len {
            marks.push_str(" <-head");
        }
        if i == tail as usize % len {
            marks.push_str(" <-tail");
        }
        let _ = write!(out, "  [{i:3}] {:<6} ", owner_text(who));
        line(out, ring.read(i));
        let _ = writeln!(out, "{marks}");
    }
}

impl<R: Registers, C: Clock> E1000<R, C> {
    /// The `net:rings` text: the receive ring then the transmit ring, each with its head and
    /// tail registers and every descriptor (index, owner, buffer address, length, status bits
    /// decoded).
    pub fn render_rings(&self) -> String {
        let mut out = String::new();
        let (rdh, rdt) = (self.regs.read32(regs::RDH), self.regs.read32(regs::RDT));
        let (tdh, tdt) = (self.regs.read32(regs::TDH), self.regs.read32(regs::TDT));
        let _ = writeln!(out, "device {}", self.name);
        render_ring(&mut out, "rx", &self.rx.ring, rdh, rdt, |out, words| {
            let d = RxDescriptor::from_words(words);
            let _ = write!(out, "addr={:#014x} len={:<5} status=", d.addr, d.length);
            flags(out, d.status, &[(rx_status::DD, "DD"), (rx_status::EOP, "EOP")]);
            out.push_str(" errors=");
            flags(
                out,
                d.errors,
                &[
                    (rx_errors::CE, "CE"),
                    (rx_errors::SE, "SE"),
                    (rx_errors::SEQ, "SEQ"),
                    (rx_errors::CXE, "CXE"),
                    (rx_errors::TCPE, "TCPE"),
                    (rx_errors::IPE, "IPE"),
                    (rx_errors::RXE, "RXE"),
                ],
            );
        });
        render_ring(&mut out, "tx", &self.tx.ring, tdh, tdt, |out, words| {
            let d = TxDescriptor::from_words(words);
            let _ = write!(out, "addr={:#014x} len={:<5} cmd=", d.addr, d.length);
            flags(out, d.cmd, &[(tx_cmd::EOP, "EOP"), (tx_cmd::IFCS, "IFCS"), (tx_cmd::RS, "RS")]);
            out.push_str(" status=");
            flags(out, d.status, &[(tx_status::DD, "DD"), (tx_status::EC, "EC"), (tx_status::LC, "LC")]);
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_owns_head_up_to_tail() {
        // Empty: head == tail.
        assert!((0..8).all(|i| owner(i, 3, 3, 8) == Owner::Driver));
        // Receive after init: RDH=0, RDT=7: the device owns 0..7, the driver 7.
        assert!((0..7).all(|i| owner(i, 0, 7, 8) == Owner::Device));
        assert_eq!(owner(7, 0, 7, 8), Owner::Driver);
        // Wrapped: head 6, tail 2: the device owns 6, 7, 0, 1.
        let device: alloc::vec::Vec<usize> = (0..8).filter(|&i| owner(i, 6, 2, 8) == Owner::Device).collect();
        assert_eq!(device, [0, 1, 6, 7]);
    }

    /// Checked against the simulated 8254x: after one frame each way, the view shows the
    /// registers the device holds and each descriptor the device wrote back.
    #[test]
    fn the_view_matches_the_simulated_device() {
        use crate::sim::SimE1000;
        use alloc::sync::Arc;
        use dma::PhysMemory;
        let memory = dma::sim::SimMemory::low_and_high(8 << 20, 8 << 20);
        let phys: Arc<dyn PhysMemory> = memory.clone();
        let dev = dma::DmaDevice::new("00:02.0 e1000", phys.clone(), Arc::new(dma::mapper::Direct::new(phys)));
        dev.set_mask(64).unwrap();
        let sim = SimE1000::new(&dev);
        let model = crate::model_for(crate::INTEL, 0x100E).unwrap();
        let mut nic = E1000::new(
            &sim,
            crate::tests::TestClock::default(),
            dev.clone(),
            "00:02.0 e1000",
            model,
            crate::Config::default(),
        )
        .unwrap();
        let mut frame = alloc::vec![0x5au8; 60];
        frame[..6].copy_from_slice(&crate::sim::SIM_MAC);
        nic.transmit(&frame).unwrap();
        assert!(sim.inject(&frame));
        let text = nic.render_rings();
        let line = |ring: &str, i: usize| -> String {
            let start = text.find(&alloc::format!("{ring}: ")).unwrap();
            text[start..].lines().nth(1 + i).unwrap().into()
        };
        let (rdh, rdt, tdh, tdt) = (sim.reg(regs::RDH), sim.reg(regs::RDT), sim.reg(regs::TDH), sim.reg(regs::TDT));
        assert_eq!((tdh, tdt), (1, 1));
        assert!(text.contains(&alloc::format!("head={rdh} tail={rdt}")), "{text}");
        assert!(text.contains(&alloc::format!("head={tdh} tail={tdt}, device owns 0")), "{text}");
        // Transmit descriptor 0: sent (DD written back), the driver's again; its address is the
        // buffer the simulated device read.
        let tx0 = line("tx", 0);
        assert!(tx0.contains("driver") && tx0.contains("len=60") && tx0.contains("cmd=EOP|IFCS|RS"), "{tx0}");
        assert!(tx0.contains("status=DD"), "{tx0}");
        // Receive descriptor 0: filled by the device (DD|EOP), now the driver's; the next one is
        // the head, still the device's, with the buffer the simulated device will write next.
        let rx0 = line("rx", 0);
        assert!(rx0.contains("driver") && rx0.contains("len=60") && rx0.contains("status=DD|EOP"), "{rx0}");
        let rx1 = line("rx", 1);
        let buffers = sim.rx_buffer_addresses();
        assert!(rx1.contains("DEVICE") && rx1.contains("<-head"), "{rx1}");
        assert!(rx1.contains(&alloc::format!("addr={:#014x}", buffers[1])), "{rx1}\n{buffers:x?}");
    }
}
