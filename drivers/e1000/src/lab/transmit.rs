//! Lab e1000-tx: the transmit ring. Write the two functions below; `cargo xtask lab grade
//! e1000-tx` checks them. Read docs/labs/e1000-tx/README.md first, and guide chapter 6
//! (docs/guide/06-e1000-packet.md, "A frame leaves").
//!
//! The driver (drivers/e1000/src/tx.rs) calls them: it has copied the frame into a DMA buffer
//! whose bus address it passes in, it checks that the ring has room before calling
//! `post_frame`, and it frees a buffer only when `take_sent` gives its descriptor back.
// Remove this line once both functions use their arguments.
#![allow(unused_variables, unused_imports)]

use crate::desc::{DescriptorRing, TxDescriptor, tx_cmd, tx_status};
use crate::regs;
use core::sync::atomic::{Ordering, fence};
use device_io::Registers;
use dma::BusAddr;

/// Queues one frame of `len` bytes at bus address `frame`: fill descriptor `tail` of `ring`
/// (a legacy transmit descriptor, SDM §3.3.3) and tell the device by writing TDT. Return the
/// new tail: the next descriptor to fill.
///
/// Steps: build a `TxDescriptor` (address, length, the command bits the device needs to send
/// the frame, append its CRC and report back when done — see `tx_cmd`); write it with
/// `ring.write(tail, desc.to_words())`; make sure it is in memory before the device can look;
/// write the new tail to `regs::TDT`. The ring has `ring.len()` descriptors.
pub fn post_frame<R: Registers>(regs: &R, ring: &mut DescriptorRing, tail: usize, frame: BusAddr, len: u16) -> usize {
    // Not written yet: nothing reaches the device.
    tail
}

/// Takes back descriptor `index` if the device has finished with it: return the descriptor
/// as the device wrote it back (`TxDescriptor::from_words(ring.read(index))`), and clear the
/// slot; return `None` while the device still owns it (its buffer must not be freed yet).
pub fn take_sent(ring: &mut DescriptorRing, index: usize) -> Option<TxDescriptor> {
    // Not written yet: nothing is ever taken back.
    None
}
