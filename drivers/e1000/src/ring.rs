//! The ring-manipulation core of the driver: the only code that writes descriptors or moves a
//! tail register. Everything around it (buffers, counters, hang detection, classification of
//! received frames) stays in `tx.rs` and `rx.rs`.
//!
//! These functions are the reference solution of the e1000 labs (`docs/labs/e1000-tx`,
//! `docs/labs/e1000-rx`): the driver calls them through its private module `lab`
//! (`src/lab/mod.rs`), which names these modules unless a lab feature (`lab-tx`, `lab-rx`) swaps in
//! the student's file. The signatures are the lab's interface, so a student's version and this one
//! are interchangeable.

/// Transmit (SDM §3.3, §3.4): fill a descriptor, ring the doorbell; later, take it back.
pub mod transmit {
    use crate::desc::{DescriptorRing, TxDescriptor, tx_cmd, tx_status};
    use crate::regs;
    use core::sync::atomic::{Ordering, fence};
    use device_io::Registers;
    use dma::BusAddr;

    /// Queues one frame of `len` bytes at bus address `frame`: fills descriptor `tail` and
    /// writes TDT so the device sends it. Returns the new tail (the next descriptor to fill).
    /// The caller has checked there is room (one descriptor always stays unused).
    pub fn post_frame<R: Registers>(
        regs: &R,
        ring: &mut DescriptorRing,
        tail: usize,
        frame: BusAddr,
        len: u16,
    ) -> usize {
        let desc = TxDescriptor {
            addr: frame.as_u64(),
            length: len,
            // EOP: the frame is this one buffer; IFCS: append the CRC; RS: write DD back when
            // sent, so the buffer can be reclaimed (SDM §3.3.3.1). Status 0: not done yet.
            cmd: tx_cmd::EOP | tx_cmd::IFCS | tx_cmd::RS,
            ..Default::default()
        };
        ring.write(tail, desc.to_words());
        let next = (tail + 1) % ring.len();
        // The descriptor and the frame must be in memory before the device reads TDT.
        fence(Ordering::SeqCst);
        // TDT (§13.4.42): the device sends descriptors TDH..TDT.
        regs.write32(regs::TDT, next as u32);
        next
    }

    /// Takes back descriptor `index` if the device has sent it (DD set, SDM §3.3.3.2): returns
    /// the descriptor as the device wrote it back (its status says whether sending failed), and
    /// clears the slot. `None` while the device still owns it: its buffer must stay untouched.
    pub fn take_sent(ring: &mut DescriptorRing, index: usize) -> Option<TxDescriptor> {
        let desc = TxDescriptor::from_words(ring.read(index));
        if desc.status & tx_status::DD == 0 {
            return None;
        }
        ring.write(index, [0, 0]);
        Some(desc)
    }
}

/// Receive (SDM §3.2): see a written-back descriptor, give its buffer back, move the tail.
pub mod receive {
    use crate::desc::{DescriptorRing, RxDescriptor, rx_status};
    use crate::regs;
    use core::sync::atomic::{Ordering, fence};
    use device_io::Registers;
    use dma::BusAddr;

    /// Descriptor `index` as the device wrote it back, if it has (DD set, SDM §3.2.3.1); `None`
    /// while the device still owns it. After `Some`, the buffer's bytes may be read.
    pub fn take_received(ring: &DescriptorRing, index: usize) -> Option<RxDescriptor> {
        let desc = RxDescriptor::from_words(ring.read(index));
        if desc.status & rx_status::DD == 0 {
            return None;
        }
        // DD is set: the device wrote the buffer before the descriptor. Order our reads of the
        // buffer after the status read.
        fence(Ordering::Acquire);
        Some(desc)
    }

    /// Makes descriptor `index` an empty one pointing at `buffer` (status cleared, §3.2.3:
    /// software clears DD before handing a descriptor to the device). The device sees it only
    /// once the tail moves past it ([`return_to_device`]).
    pub fn give_back(ring: &mut DescriptorRing, index: usize, buffer: BusAddr) {
        ring.write(index, RxDescriptor { addr: buffer.as_u64(), ..Default::default() }.to_words());
    }

    /// Hands the device every descriptor given back so far: `next` is the next descriptor the
    /// driver will look at, so every one before it is free. RDT points at the last of them
    /// (SDM §3.2.6): one descriptor stays with software, because RDH == RDT means "no buffer".
    pub fn return_to_device<R: Registers>(regs: &R, ring_len: usize, next: usize) {
        let last = (next + ring_len - 1) % ring_len;
        // Descriptor writes must reach memory before the device sees the new tail.
        fence(Ordering::SeqCst);
        regs.write32(regs::RDT, last as u32);
    }
}
