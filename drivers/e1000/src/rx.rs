//! The receive path (SDM §3.2): every descriptor owns a pool buffer; a frame is seen in place
//! when DD is set, and the same buffer goes back to the device by moving RDT.

use super::*;

/// What the receive path decided about one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxVerdict {
    /// A good frame of this many bytes.
    Deliver(usize),
    /// Part of a frame already being discarded (counted when it began).
    Skip,
    /// A bad frame, counted under this reason.
    Drop(DropReason),
}

/// Why a received frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The descriptor's error bits (CE, SE, SEQ, CXE, RXE) are set.
    Errored,
    /// Shorter than [`MIN_FRAME_LEN`].
    Runt,
    /// Longer than [`MAX_FRAME_LEN`] (or than the buffer).
    Oversized,
    /// Spread over several descriptors (no EOP on the first): cannot happen with 2 KiB buffers
    /// and long packets off, so the device is misbehaving.
    Fragmented,
}

/// Classifies one done receive descriptor. `discarding` is true while the rest of a fragmented
/// frame is being skipped; it is updated. Pure, so the rules are tested on their own.
pub fn classify_rx(desc: &RxDescriptor, discarding: &mut bool) -> RxVerdict {
    let eop = desc.status & rx_status::EOP != 0;
    if *discarding {
        if eop {
            *discarding = false;
        }
        return RxVerdict::Skip;
    }
    if !eop {
        *discarding = true;
        return RxVerdict::Drop(DropReason::Fragmented);
    }
    let len = usize::from(desc.length);
    if desc.errors & rx_errors::FRAME != 0 {
        RxVerdict::Drop(DropReason::Errored)
    } else if len < MIN_FRAME_LEN {
        RxVerdict::Drop(DropReason::Runt)
    } else if len > MAX_FRAME_LEN || len > BUFFER_BYTES {
        RxVerdict::Drop(DropReason::Oversized)
    } else {
        RxVerdict::Deliver(len)
    }
}

/// The receive ring as the device and the driver see it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxRingState {
    /// Receive Descriptor Head: the next descriptor the device fills (SDM §13.4.30).
    pub rdh: u32,
    /// Receive Descriptor Tail: the device may fill descriptors up to, not including, this one (§13.4.31).
    pub rdt: u32,
    /// Filled descriptors (DD set) waiting for the driver, from its next one on.
    pub ready: usize,
    /// RDH == RDT: the device holds no empty descriptor, so every frame arriving now is
    /// missed (counted by the device in RNBC and MPC, signalled by ICR.RXO).
    pub exhausted: bool,
}

pub(crate) struct ReceiveRing {
    pub(crate) ring: DescriptorRing,
    /// `buffers[i]` is the buffer descriptor `i` points at, for the driver's whole life.
    pub(crate) buffers: Vec<PoolBlock>,
    /// Next descriptor to look at for DD.
    pub(crate) next: usize,
    /// Descriptors recycled since RDT was last written.
    pub(crate) unreturned: usize,
    /// Skipping the rest of a fragmented frame.
    pub(crate) discarding: bool,
}

impl<R: Registers, C: Clock> E1000<R, C> {
    /// Hands the next good received frame to `f` in place, then gives its buffer back to the
    /// device. Bad frames on the way are counted and dropped. `None` when no frame is waiting.
    pub fn receive_with<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let mut f = Some(f);
        loop {
            let index = self.rx.next;
            // DD set, buffer reads ordered after it (ring.rs, or a lab's version).
            let Some(desc) = lab::receive::take_received(&self.rx.ring, index) else {
                self.return_rx_descriptors();
                return None;
            };
            let verdict = classify_rx(&desc, &mut self.rx.discarding);
            let mut result = None;
            match verdict {
                RxVerdict::Deliver(len) => {
                    let buffer = &mut self.rx.buffers[index];
                    // SAFETY: DD says the device is done with this buffer, and it is handed
                    // back (recycle below) only after `f` returns: nothing else accesses it.
                    let bytes = unsafe { buffer.as_mut_slice() };
                    let frame = &bytes[..len.min(bytes.len())];
                    self.counters.rx_packets += 1;
                    self.counters.rx_bytes += len as u64;
                    result = f.take().map(|f| f(frame));
                }
                RxVerdict::Skip => {}
                RxVerdict::Drop(reason) => {
                    self.counters.rx_dropped += 1;
                    match reason {
                        DropReason::Errored => self.counters.rx_errors += 1,
                        DropReason::Runt => self.counters.rx_runts += 1,
                        DropReason::Oversized => self.counters.rx_oversized += 1,
                        DropReason::Fragmented => self.counters.rx_fragmented += 1,
                    }
                }
            }
            self.recycle_rx(index);
            if let Some(r) = result {
                return Some(r);
            }
        }
    }

    /// Reads RDH and RDT and counts the filled descriptors: the evidence for "the ring ran
    /// out". Each call that finds it exhausted counts once in `rx_ring_exhausted`. Reads
    /// registers, so call it from maintenance or diagnostics, not per frame.
    pub fn rx_ring_state(&mut self) -> RxRingState {
        let rdh = self.regs.read32(regs::RDH);
        let rdt = self.regs.read32(regs::RDT);
        let len = self.rx.ring.len();
        let ready = (0..len)
            .map(|i| (self.rx.next + i) % len)
            .take_while(|&i| RxDescriptor::from_words(self.rx.ring.read(i)).status & rx_status::DD != 0)
            .count();
        let exhausted = rdh == rdt;
        if exhausted {
            self.counters.rx_ring_exhausted += 1;
        }
        RxRingState { rdh, rdt, ready, exhausted }
    }

    /// Gives descriptor `index`'s buffer back to the device: same buffer, status cleared.
    fn recycle_rx(&mut self, index: usize) {
        lab::receive::give_back(&mut self.rx.ring, index, self.rx.buffers[index].bus_addr());
        self.rx.next = (index + 1) % self.rx.ring.len();
        self.rx.unreturned += 1;
        // Batch, but never keep more than a quarter of the ring from the device.
        if self.rx.unreturned >= RDT_BATCH.min(self.rx.ring.len() / 4) {
            self.return_rx_descriptors();
        }
    }

    /// Moves RDT up to the last recycled descriptor (SDM §3.2.6: software adds receive buffers
    /// by advancing the tail).
    fn return_rx_descriptors(&mut self) {
        if self.rx.unreturned == 0 {
            return;
        }
        self.rx.unreturned = 0;
        lab::receive::return_to_device(&self.regs, self.rx.ring.len(), self.rx.next);
    }
}
