//! Descriptor formats and the typed ring view over pool memory.
//!
//! A descriptor ring is an array of 16-byte descriptors in memory both the CPU and the device
//! write while the device runs, so it lives in coherent memory (a [`dma::PoolBlock`]) and is
//! only ever touched with volatile accesses of whole 64-bit halves: the compiler may neither
//! cache a descriptor nor split or merge the accesses.

use dma::{BusAddr, PoolBlock};

/// Size of every 8254x descriptor, receive or legacy transmit.
pub const DESCRIPTOR_BYTES: usize = 16;

/// Receive descriptor (SDM §3.2.3, Table 3-1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxDescriptor {
    /// Bus address of the receive buffer.
    pub addr: u64,
    /// Bytes the device stored in the buffer (CRC excluded with RCTL.SECRC).
    pub length: u16,
    /// Packet checksum (unused: checksum offload is off).
    pub checksum: u16,
    /// Status bits ([`rx_status`]).
    pub status: u8,
    /// Error bits ([`rx_errors`]), valid when status has EOP.
    pub errors: u8,
    /// VLAN tag (unused).
    pub special: u16,
}

/// Receive descriptor status bits (SDM §3.2.3.1, Table 3-2).
pub mod rx_status {
    /// Descriptor done: the device has written the buffer and this descriptor.
    pub const DD: u8 = 1 << 0;
    /// End of packet: the last buffer of a frame.
    pub const EOP: u8 = 1 << 1;
}

/// Receive descriptor error bits (SDM §3.2.3.2, Table 3-3).
pub mod rx_errors {
    /// CRC or alignment error.
    pub const CE: u8 = 1 << 0;
    /// Symbol error (TBI mode).
    pub const SE: u8 = 1 << 1;
    /// Sequence error.
    pub const SEQ: u8 = 1 << 2;
    /// Carrier extension error.
    pub const CXE: u8 = 1 << 4;
    /// TCP/UDP checksum error (only with checksum offload, which is off).
    pub const TCPE: u8 = 1 << 5;
    /// IP checksum error (only with checksum offload, which is off).
    pub const IPE: u8 = 1 << 6;
    /// RX data error.
    pub const RXE: u8 = 1 << 7;
    /// Errors that make the frame's bytes wrong.
    pub const FRAME: u8 = CE | SE | SEQ | CXE | RXE;
}

/// Legacy transmit descriptor (SDM §3.3.3, Table 3-8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxDescriptor {
    /// Bus address of the data.
    pub addr: u64,
    /// Bytes to send from `addr`.
    pub length: u16,
    /// Checksum offset (unused).
    pub cso: u8,
    /// Command bits ([`tx_cmd`]).
    pub cmd: u8,
    /// Status (low nibble, [`tx_status`]).
    pub status: u8,
    /// Checksum start (unused).
    pub css: u8,
    /// VLAN tag (unused).
    pub special: u16,
}

/// Legacy transmit command bits (SDM §3.3.3.1, Table 3-10).
pub mod tx_cmd {
    /// End of packet.
    pub const EOP: u8 = 1 << 0;
    /// Insert FCS (the Ethernet CRC).
    pub const IFCS: u8 = 1 << 1;
    /// Report status: write DD back when done.
    pub const RS: u8 = 1 << 3;
}

/// Transmit descriptor status bits (SDM §3.3.3.2, Table 3-11).
pub mod tx_status {
    /// Descriptor done.
    pub const DD: u8 = 1 << 0;
    /// Excess collisions (half duplex only).
    pub const EC: u8 = 1 << 1;
    /// Late collision (half duplex only).
    pub const LC: u8 = 1 << 2;
}

impl RxDescriptor {
    /// The two little-endian 64-bit words the device sees.
    pub fn to_words(self) -> [u64; 2] {
        [
            self.addr,
            u64::from(self.length)
                | u64::from(self.checksum) << 16
                | u64::from(self.status) << 32
                | u64::from(self.errors) << 40
                | u64::from(self.special) << 48,
        ]
    }

    /// The descriptor in `words`.
    pub fn from_words(words: [u64; 2]) -> Self {
        let w = words[1];
        RxDescriptor {
            addr: words[0],
            length: w as u16,
            checksum: (w >> 16) as u16,
            status: (w >> 32) as u8,
            errors: (w >> 40) as u8,
            special: (w >> 48) as u16,
        }
    }

    /// As bytes, the way the device reads them (host tests).
    pub fn to_bytes(self) -> [u8; DESCRIPTOR_BYTES] {
        words_to_bytes(self.to_words())
    }

    /// From bytes (host tests).
    pub fn from_bytes(bytes: [u8; DESCRIPTOR_BYTES]) -> Self {
        Self::from_words(bytes_to_words(bytes))
    }
}

impl TxDescriptor {
    /// The two little-endian 64-bit words the device sees.
    pub fn to_words(self) -> [u64; 2] {
        [
            self.addr,
            u64::from(self.length)
                | u64::from(self.cso) << 16
                | u64::from(self.cmd) << 24
                | u64::from(self.status) << 32
                | u64::from(self.css) << 40
                | u64::from(self.special) << 48,
        ]
    }

    /// The descriptor in `words`.
    pub fn from_words(words: [u64; 2]) -> Self {
        let w = words[1];
        TxDescriptor {
            addr: words[0],
            length: w as u16,
            cso: (w >> 16) as u8,
            cmd: (w >> 24) as u8,
            status: (w >> 32) as u8,
            css: (w >> 40) as u8,
            special: (w >> 48) as u16,
        }
    }

    /// As bytes, the way the device reads them (host tests).
    pub fn to_bytes(self) -> [u8; DESCRIPTOR_BYTES] {
        words_to_bytes(self.to_words())
    }

    /// From bytes (host tests).
    pub fn from_bytes(bytes: [u8; DESCRIPTOR_BYTES]) -> Self {
        Self::from_words(bytes_to_words(bytes))
    }
}

fn words_to_bytes(words: [u64; 2]) -> [u8; DESCRIPTOR_BYTES] {
    let mut out = [0; DESCRIPTOR_BYTES];
    out[..8].copy_from_slice(&words[0].to_le_bytes());
    out[8..].copy_from_slice(&words[1].to_le_bytes());
    out
}

fn bytes_to_words(bytes: [u8; DESCRIPTOR_BYTES]) -> [u64; 2] {
    let mut lo = [0; 8];
    let mut hi = [0; 8];
    lo.copy_from_slice(&bytes[..8]);
    hi.copy_from_slice(&bytes[8..]);
    [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
}

/// A ring of `len` descriptors in one pool block: indexes descriptors, not bytes.
///
/// Invariant: `len * DESCRIPTOR_BYTES <= block.len()` and the block's CPU address is 16-byte
/// aligned (pool blocks are aligned to at least 128 bytes within page-aligned units), so every
/// descriptor's two halves are naturally aligned 64-bit words.
pub struct DescriptorRing {
    block: PoolBlock,
    len: usize,
}

impl DescriptorRing {
    /// A ring over `block`; `None` if the block is too small or misaligned for `len` descriptors.
    pub fn new(block: PoolBlock, len: usize) -> Option<Self> {
        let fits = len.checked_mul(DESCRIPTOR_BYTES).is_some_and(|bytes| bytes <= block.len());
        let aligned = (block.as_ptr() as usize).is_multiple_of(DESCRIPTOR_BYTES)
            && block.bus_addr().as_u64().is_multiple_of(DESCRIPTOR_BYTES as u64);
        (fits && aligned && len > 0).then_some(DescriptorRing { block, len })
    }

    /// Number of descriptors.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (rings have at least one descriptor).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes the ring occupies (what RDLEN/TDLEN say).
    pub fn bytes(&self) -> usize {
        self.len * DESCRIPTOR_BYTES
    }

    /// The device's address of descriptor 0.
    pub fn bus_addr(&self) -> BusAddr {
        self.block.bus_addr()
    }

    fn word_ptr(&self, index: usize, half: usize) -> *mut u64 {
        let index = index % self.len;
        // In bounds: index < len and len * 16 <= block.len() (type invariant).
        self.block.as_ptr().wrapping_add(index * DESCRIPTOR_BYTES + half * 8).cast()
    }

    /// Reads descriptor `index` (modulo the ring length) as two volatile 64-bit loads. Length,
    /// status and errors share the second word, so they are always seen together, as the
    /// device wrote them back.
    pub fn read(&self, index: usize) -> [u64; 2] {
        // SAFETY: both pointers are inside the ring's block and 8-byte aligned (type invariant);
        // the block is coherent memory this ring owns, and every bit pattern is a valid u64.
        unsafe { [self.word_ptr(index, 0).read_volatile(), self.word_ptr(index, 1).read_volatile()] }
    }

    /// Writes descriptor `index` (modulo the ring length): address half first, then the half
    /// holding the status, so the device never sees a cleared status with a stale address.
    pub fn write(&mut self, index: usize, words: [u64; 2]) {
        // SAFETY: as in `read`; `&mut self` makes this the only CPU writer.
        unsafe {
            self.word_ptr(index, 0).write_volatile(words[0]);
            self.word_ptr(index, 1).write_volatile(words[1]);
        }
    }

    /// Zeroes every descriptor.
    pub fn clear(&mut self) {
        for i in 0..self.len {
            self.write(i, [0, 0]);
        }
    }
}
