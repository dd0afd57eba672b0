//! Lab e1000-rx: the receive ring. Write the three functions below; `cargo xtask lab grade
//! e1000-rx` checks them. Read docs/labs/e1000-rx/README.md first, and guide chapter 6
//! (docs/guide/06-e1000-packet.md, "A frame arrives").
//!
//! The driver (drivers/e1000/src/rx.rs) calls them: it looks at descriptor `next` with
//! `take_received`, hands the frame to the network stack, gives the same buffer back with
//! `give_back`, and every few descriptors calls `return_to_device`.
// Remove this line once the functions use their arguments.
#![allow(unused_variables, unused_imports)]

use crate::desc::{DescriptorRing, RxDescriptor, rx_status};
use crate::regs;
use core::sync::atomic::{Ordering, fence};
use device_io::Registers;
use dma::BusAddr;

/// Descriptor `index` as the device wrote it back, if it has (SDM §3.2.3.1), else `None`.
/// After `Some`, the driver reads the frame from the buffer: make sure those reads cannot be
/// done before the status was read.
pub fn take_received(ring: &DescriptorRing, index: usize) -> Option<RxDescriptor> {
    // Not written yet: no frame ever arrives.
    None
}

/// Makes descriptor `index` an empty descriptor pointing at `buffer`, ready for the device
/// (SDM §3.2.3). Write it with `ring.write(index, desc.to_words())`.
pub fn give_back(ring: &mut DescriptorRing, index: usize, buffer: BusAddr) {
    // Not written yet.
}

/// Hands the device every descriptor given back so far by writing `regs::RDT` (SDM §3.2.6).
/// `next` is the next descriptor the driver will look at; every one before it has been given
/// back. Think about what RDH == RDT means to the device.
pub fn return_to_device<R: Registers>(regs: &R, ring_len: usize, next: usize) {
    // Not written yet: the device never gets a buffer back.
}
