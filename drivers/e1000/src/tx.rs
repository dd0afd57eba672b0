//! The transmit path (SDM §3.3, §3.4): a frame is copied into a pool block, a legacy descriptor
//! points at it with RS set, and TDT moves; the block goes back to its pool when the device has
//! written DD. A ring that stops completing is a hang, and resets the device.

use super::*;

/// Why a frame was not queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransmitError {
    /// Zero-length frame.
    Empty,
    /// Longer than [`MAX_FRAME_LEN`].
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Every descriptor is in flight; reclaim completed ones (or wait) and try again.
    RingFull,
    /// No transmit buffer could be allocated.
    NoBuffer(AllocError),
}

impl fmt::Display for TransmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransmitError::Empty => f.write_str("empty frame: nothing to send"),
            TransmitError::TooLong { len } => {
                write!(f, "frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte maximum (no jumbo frames)")
            }
            TransmitError::RingFull => f.write_str("transmit ring full: reclaim completed frames and retry"),
            TransmitError::NoBuffer(e) => write!(f, "no transmit buffer: {e}"),
        }
    }
}

pub(crate) struct TransmitRing {
    pub(crate) ring: DescriptorRing,
    /// The buffer (and frame length) descriptor `i` points at while in flight.
    pub(crate) in_flight: Vec<Option<(PoolBlock, usize)>>,
    /// Next descriptor to fill (what TDT says).
    pub(crate) tail: usize,
    /// Oldest descriptor not yet reclaimed. `clean == tail`: nothing in flight.
    pub(crate) clean: usize,
    /// When the ring last made progress (a completion, or the first frame onto an empty ring).
    pub(crate) last_progress_us: u64,
}

impl TransmitRing {
    pub(crate) fn pending(&self) -> usize {
        (self.tail + self.ring.len() - self.clean) % self.ring.len()
    }

    /// One descriptor stays unused so that TDT == TDH always means "empty" (SDM §3.4).
    pub(crate) fn free(&self) -> usize {
        self.ring.len() - 1 - self.pending()
    }
}

impl<R: Registers, C: Clock> E1000<R, C> {
    /// Descriptors free for transmit now.
    pub fn transmit_space(&self) -> usize {
        self.tx.free()
    }

    /// Frames queued and not yet reclaimed.
    pub fn transmit_pending(&self) -> usize {
        self.tx.pending()
    }

    /// Queues a copy of `frame` (without CRC: the device appends it).
    pub fn transmit(&mut self, frame: &[u8]) -> Result<(), TransmitError> {
        self.transmit_with(frame.len(), |buffer| buffer.copy_from_slice(frame))
    }

    /// Queues a `len`-byte frame that `fill` writes straight into the transmit buffer.
    pub fn transmit_with<T>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> T) -> Result<T, TransmitError> {
        if len == 0 {
            return Err(TransmitError::Empty);
        }
        if len > MAX_FRAME_LEN {
            return Err(TransmitError::TooLong { len });
        }
        if self.tx.free() == 0 {
            self.reclaim_transmitted();
        }
        if self.tx.free() == 0 {
            self.counters.tx_ring_full += 1;
            return Err(TransmitError::RingFull);
        }
        let mut block = self.tx_pool.alloc().map_err(TransmitError::NoBuffer)?;
        // SAFETY: the block was just allocated and no descriptor points at it yet, so the
        // device cannot access it.
        let bytes = unsafe { block.as_mut_slice() };
        let result = fill(&mut bytes[..len]);
        let index = self.tx.tail;
        if self.tx.pending() == 0 {
            self.tx.last_progress_us = self.clock.now_us();
        }
        // Descriptor `index` points at the block, then TDT moves (ring.rs, or a lab's version).
        let bus = block.bus_addr();
        self.tx.in_flight[index] = Some((block, len));
        let next = lab::transmit::post_frame(&self.regs, &mut self.tx.ring, index, bus, len as u16);
        self.tx.tail = next % self.tx.ring.len();
        Ok(result)
    }

    /// Returns the buffers of frames the device has sent (DD set, SDM §3.3.3.2) to their pool.
    /// Returns how many were reclaimed.
    pub fn reclaim_transmitted(&mut self) -> usize {
        let mut reclaimed = 0;
        while self.tx.clean != self.tx.tail {
            let index = self.tx.clean;
            // DD set: the device is done with the buffer (ring.rs, or a lab's version).
            let Some(desc) = lab::transmit::take_sent(&mut self.tx.ring, index) else { break };
            if let Some((block, len)) = self.tx.in_flight[index].take() {
                if desc.status & (tx_status::EC | tx_status::LC) != 0 {
                    self.counters.tx_errors += 1;
                } else {
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += len as u64;
                }
                drop(block);
            }
            self.tx.clean = (index + 1) % self.tx.ring.len();
            reclaimed += 1;
        }
        if reclaimed > 0 {
            self.tx.last_progress_us = self.clock.now_us();
        }
        reclaimed
    }

    /// Detects a transmit hang: frames pending and no completion for [`Config::tx_timeout_us`].
    /// A hung device is reset and re-initialised (frames in flight are dropped and counted).
    /// Returns true if it reset the device.
    pub fn check_transmit_hang(&mut self) -> bool {
        self.reclaim_transmitted();
        if self.tx.pending() == 0 {
            return false;
        }
        let stalled_us = self.clock.now_us().saturating_sub(self.tx.last_progress_us);
        if stalled_us < self.config.tx_timeout_us {
            return false;
        }
        let (tdh, tdt) = (self.regs.read32(regs::TDH), self.regs.read32(regs::TDT));
        log::warn!(
            "{}: transmit hang: {} frames pending for {} ms (TDH {} TDT {}, STATUS {:#x}); resetting the device",
            self.name,
            self.tx.pending(),
            stalled_us / 1000,
            tdh,
            tdt,
            self.regs.read32(regs::STATUS)
        );
        self.counters.tx_hangs += 1;
        self.update_device_counters();
        if let Err(e) = self.bring_up() {
            log::error!("{}: re-initialisation after a transmit hang failed: {e}", self.name);
        }
        true
    }

    /// Resets and re-initialises the device (as after a hang).
    pub fn reset(&mut self) -> Result<(), InitError> {
        self.update_device_counters();
        self.bring_up()
    }

    /// Writes TDT with its current value: the device has nothing new to send, so this costs
    /// exactly one register write. The benchmark's cost floor.
    pub fn ring_transmit_doorbell(&self) {
        self.regs.write32(regs::TDT, self.tx.tail as u32);
    }
}
