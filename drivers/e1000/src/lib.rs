//! Intel 8254x (e1000) Ethernet driver: descriptor rings and buffers in DMA-pool memory.
//!
//! The 8254x family moves frames between memory and the wire through two rings of 16-byte
//! descriptors (Intel 8254x Family of Gigabit Ethernet Controllers Software Developer's Manual,
//! "SDM", chapter 3). Software owns the descriptors from the ring's *tail* (TDT/RDT) round to the
//! *head* (TDH/RDH); the device owns the rest, and hands a descriptor back by setting its DD
//! ("descriptor done") bit. Everything here follows from that rule:
//!
//! * **Receive** ([`E1000::receive_with`]): every descriptor owns a 2 KiB buffer from the
//!   `e1000-rx-buf` pool. When DD is set the frame is in the buffer; the caller sees it in place,
//!   and the *same* buffer goes back to the device by moving RDT — buffers are recycled, never
//!   reallocated per frame. Frames with error bits, without EOP (a frame larger than one buffer),
//!   shorter than a minimal Ethernet frame or longer than a maximal one are counted and dropped.
//! * **Transmit** ([`E1000::transmit`]): the frame is copied into a 2 KiB block of the
//!   `e1000-tx-buf` pool, a descriptor points at it with RS (report status) set, and TDT moves.
//!   The block stays with its descriptor until the device sets DD, then returns to the pool
//!   ([`E1000::reclaim_transmitted`]).
//! * **Rings** come from the `e1000-rings` pool: blocks of `descriptors × 16` bytes, aligned to
//!   128 bytes so the base meets the SDM's 16-byte rule and the length its 128-byte rule
//!   (§14.4, §14.5), never crossing a 4 KiB boundary (one IOMMU page per ring).
//! * **Faults**: a transmit ring that stops completing (no DD within [`Config::tx_timeout_us`]
//!   while frames are pending) is a hang: the device is reset and re-initialised, the frames in
//!   flight are counted as dropped, and the log line names the device.
//!
//! The code that writes descriptors and moves the tails is in [`ring`], in small functions the
//! labs in `docs/labs` have students write (features `lab-tx`, `lab-rx`).
//!
//! The driver is generic over [`device_io::Registers`] and [`device_io::Clock`], and reaches
//! memory only through its [`dma::DmaDevice`]: it never computes a bus address, so it runs
//! unchanged on the Direct mapper, a bounce mapper, an IOMMU — and, in the host tests, on a
//! simulated 8254x over `dma::sim` memory.
//!
//! # Rules of use
//! The driver is not internally locked: the kernel wraps it in a lock. Interrupt handlers should
//! call only [`E1000::acknowledge_interrupts`] (reads ICR, which deasserts a level-triggered
//! INTx line); the rest allocates from pools and belongs in thread context.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod desc;
mod lab;
pub mod regs;
pub mod ring;
pub mod ring_view;
mod rx;
mod stats;
mod tx;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trace_tests;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{Ordering, fence};

use desc::{DescriptorRing, RxDescriptor, rx_errors, rx_status, tx_status};
use device_io::{Clock, Registers};
use dma::{AllocError, DmaDevice, DmaPool, PoolBlock, PoolError};
use regs::EerdLayout;
use rx::ReceiveRing;
pub use rx::{DropReason, RxRingState, RxVerdict, classify_rx};
pub use stats::{Counters, DeviceCounters};
pub use tx::TransmitError;
use tx::TransmitRing;

/// Smallest Ethernet frame without its CRC (IEEE 802.3: 64 bytes with the 4-byte FCS). The
/// device pads shorter transmits (TCTL.PSP) and never stores shorter good frames.
pub const MIN_FRAME_LEN: usize = 60;
/// Largest frame without CRC this driver sends or accepts: 1514 bytes plus a 4-byte 802.1Q tag.
pub const MAX_FRAME_LEN: usize = 1518;
/// Receive and transmit buffer size (RCTL.BSIZE = 2048, SDM §13.4.22).
pub const BUFFER_BYTES: usize = 2048;
/// Rings never cross this (one page, so one IOMMU mapping per ring).
const RING_BOUNDARY: usize = 4096;
/// SDM §14.4/§14.5: ring length a multiple of 128 bytes (8 descriptors); base 16-byte aligned.
const RING_ALIGN: usize = 128;
/// How long CTRL.RST may take to clear. The SDM asks for at least 1 µs before touching the
/// device again (§13.4.1); real parts take a few ms to reload the EEPROM.
const RESET_TIMEOUT_US: u64 = 20_000;
/// How long one EERD word read may take.
const EEPROM_TIMEOUT_US: u64 = 10_000;
/// Receive descriptors recycled before RDT is written (fewer MMIO writes under load); at most a
/// quarter of the ring.
const RDT_BATCH: usize = 16;
/// Interrupt causes the driver enables (SDM §13.4.20).
pub const INTERRUPT_CAUSES: u32 =
    regs::int::LSC | regs::int::RXT0 | regs::int::RXO | regs::int::RXDMT0 | regs::int::TXDW;

/// One member of the 8254x family this driver drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Model {
    /// PCI device id (vendor 8086).
    pub device_id: u16,
    /// The SDM's name for it.
    pub name: &'static str,
    /// Where EERD keeps its bits, if it has one.
    pub eerd: EerdLayout,
}

/// Intel's PCI vendor id.
pub const INTEL: u16 = 0x8086;

/// The copper 8254x parts the SDM covers that share the register set used here (SDM §1.1 and
/// Table 5-1 "Device IDs"; ids as in Linux's e1000_hw.h). Fiber and SerDes variants are left
/// out: their link comes up through TBI/SerDes setup this driver does not do. The 82542 is left
/// out too: its receive and transmit registers live at other offsets.
pub const MODELS: &[Model] = &[
    Model { device_id: 0x1004, name: "82543GC (copper)", eerd: EerdLayout::None },
    Model { device_id: 0x1008, name: "82544EI (copper)", eerd: EerdLayout::None },
    Model { device_id: 0x100C, name: "82544GC (copper)", eerd: EerdLayout::None },
    Model { device_id: 0x100D, name: "82544GC (LOM)", eerd: EerdLayout::None },
    Model { device_id: 0x100E, name: "82540EM", eerd: EerdLayout::Done4Addr8 },
    Model { device_id: 0x1015, name: "82540EM (LOM)", eerd: EerdLayout::Done4Addr8 },
    Model { device_id: 0x1016, name: "82540EP (LOM)", eerd: EerdLayout::Done4Addr8 },
    Model { device_id: 0x1017, name: "82540EP", eerd: EerdLayout::Done4Addr8 },
    Model { device_id: 0x101E, name: "82540EP (LP)", eerd: EerdLayout::Done4Addr8 },
    Model { device_id: 0x100F, name: "82545EM (copper)", eerd: EerdLayout::Done4Addr8 },
    Model { device_id: 0x1026, name: "82545GM (copper)", eerd: EerdLayout::Done4Addr8 },
    Model { device_id: 0x1010, name: "82546EB (copper)", eerd: EerdLayout::Done4Addr8 },
    Model { device_id: 0x101D, name: "82546EB (quad copper)", eerd: EerdLayout::Done4Addr8 },
    Model { device_id: 0x1079, name: "82546GB (copper)", eerd: EerdLayout::Done4Addr8 },
    Model { device_id: 0x1013, name: "82541EI", eerd: EerdLayout::Done1Addr2 },
    Model { device_id: 0x1018, name: "82541EI (mobile)", eerd: EerdLayout::Done1Addr2 },
    Model { device_id: 0x1014, name: "82541ER (LOM)", eerd: EerdLayout::Done1Addr2 },
    Model { device_id: 0x1078, name: "82541ER", eerd: EerdLayout::Done1Addr2 },
    Model { device_id: 0x1076, name: "82541GI", eerd: EerdLayout::Done1Addr2 },
    Model { device_id: 0x1077, name: "82541GI (mobile)", eerd: EerdLayout::Done1Addr2 },
    Model { device_id: 0x107C, name: "82541GI (LF)", eerd: EerdLayout::Done1Addr2 },
    Model { device_id: 0x1019, name: "82547EI", eerd: EerdLayout::Done1Addr2 },
    Model { device_id: 0x101A, name: "82547EI (mobile)", eerd: EerdLayout::Done1Addr2 },
    Model { device_id: 0x1075, name: "82547GI", eerd: EerdLayout::Done1Addr2 },
];

/// The model for a PCI vendor/device id pair, if this driver handles it.
pub fn model_for(vendor_id: u16, device_id: u16) -> Option<&'static Model> {
    if vendor_id != INTEL {
        return None;
    }
    MODELS.iter().find(|m| m.device_id == device_id)
}

/// Tunables. The defaults suit QEMU and a small kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Receive descriptors: a multiple of 8 (128-byte ring length), 8..=256 (one page).
    pub rx_descriptors: usize,
    /// Transmit descriptors: same rules.
    pub tx_descriptors: usize,
    /// Interrupt rate ceiling programmed into ITR (SDM §13.4.18); 0 disables throttling.
    pub max_interrupts_per_second: u32,
    /// A transmit pending this long without a completion is a hang.
    pub tx_timeout_us: u64,
}

impl Default for Config {
    fn default() -> Self {
        // 8000 interrupts/s is Linux e1000's default ceiling: ~125 µs of coalescing.
        Config { rx_descriptors: 128, tx_descriptors: 128, max_interrupts_per_second: 8000, tx_timeout_us: 2_000_000 }
    }
}

/// Why the driver could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitError {
    /// Ring sizes outside the rules of [`Config`].
    BadRingSize {
        /// The size asked for.
        descriptors: usize,
    },
    /// Registers read as all-ones: the BAR is not decoded or the device is gone.
    DeviceNotResponding,
    /// CTRL.RST did not clear in time.
    ResetTimeout,
    /// RAL0/RAH0 hold no address and the EEPROM could not be read.
    NoMacAddress,
    /// A pool could not be created.
    Pool(PoolError),
    /// DMA memory could not be allocated.
    Alloc(AllocError),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::BadRingSize { descriptors } => write!(
                f,
                "ring of {descriptors} descriptors: use a multiple of 8 between 8 and 256 (SDM §14.4: length a multiple of 128 bytes)"
            ),
            InitError::DeviceNotResponding => f.write_str(
                "registers read 0xffffffff: BAR0 is not decoded (memory space disabled?) or the device is gone",
            ),
            InitError::ResetTimeout => {
                write!(f, "CTRL.RST did not clear within {} ms; the device is wedged (power-cycle it)", RESET_TIMEOUT_US / 1000)
            }
            InitError::NoMacAddress => f.write_str(
                "no MAC address: RAL0/RAH0 are empty and the EEPROM (EERD) did not answer; the NIC's EEPROM may be blank",
            ),
            InitError::Pool(e) => write!(f, "cannot create a DMA pool: {e}"),
            InitError::Alloc(e) => write!(f, "cannot allocate DMA memory: {e}"),
        }
    }
}

impl From<PoolError> for InitError {
    fn from(e: PoolError) -> Self {
        InitError::Pool(e)
    }
}

impl From<AllocError> for InitError {
    fn from(e: AllocError) -> Self {
        InitError::Alloc(e)
    }
}

/// A running 8254x. See the crate documentation.
pub struct E1000<R: Registers, C: Clock> {
    regs: R,
    clock: C,
    name: String,
    model: &'static Model,
    config: Config,
    mac: [u8; 6],
    interrupt_mask: u32,
    link_up: bool,
    counters: Counters,
    device_counters: DeviceCounters,
    // Rings hold pool blocks: they are declared (so dropped) before the pools.
    rx: ReceiveRing,
    tx: TransmitRing,
    ring_pool: DmaPool,
    rx_pool: DmaPool,
    tx_pool: DmaPool,
    dev: DmaDevice,
}

fn check_ring_size(descriptors: usize) -> Result<(), InitError> {
    if (8..=256).contains(&descriptors) && descriptors.is_multiple_of(8) {
        Ok(())
    } else {
        Err(InitError::BadRingSize { descriptors })
    }
}

impl<R: Registers, C: Clock> E1000<R, C> {
    /// Creates the pools, rings and buffers, then resets and initialises the device. `name` is
    /// what log lines call it (the PCI address and driver, like the DMA device's name).
    pub fn new(
        regs: R,
        clock: C,
        dev: DmaDevice,
        name: impl Into<String>,
        model: &'static Model,
        config: Config,
    ) -> Result<Self, InitError> {
        let name = name.into();
        check_ring_size(config.rx_descriptors)?;
        check_ring_size(config.tx_descriptors)?;
        if regs.read32(regs::STATUS) == u32::MAX {
            return Err(InitError::DeviceNotResponding);
        }
        let ring_bytes = config.rx_descriptors.max(config.tx_descriptors) * desc::DESCRIPTOR_BYTES;
        let ring_pool = DmaPool::create("e1000-rings", &dev, ring_bytes, RING_ALIGN, RING_BOUNDARY)?;
        let rx_pool = DmaPool::create("e1000-rx-buf", &dev, BUFFER_BYTES, 16, 4096)?;
        let tx_pool = DmaPool::create("e1000-tx-buf", &dev, BUFFER_BYTES, 16, 4096)?;
        let ring = |n| -> Result<DescriptorRing, InitError> {
            let block = ring_pool.zalloc()?;
            DescriptorRing::new(block, n).ok_or(InitError::BadRingSize { descriptors: n })
        };
        let rx_ring = ring(config.rx_descriptors)?;
        let tx_ring = ring(config.tx_descriptors)?;
        let buffers = (0..config.rx_descriptors).map(|_| rx_pool.alloc()).collect::<Result<Vec<_>, _>>()?;
        let mut in_flight = Vec::new();
        in_flight.resize_with(config.tx_descriptors, || None);
        let mut nic = E1000 {
            regs,
            clock,
            name,
            model,
            config,
            mac: [0; 6],
            interrupt_mask: 0,
            link_up: false,
            counters: Counters::default(),
            device_counters: DeviceCounters::default(),
            rx: ReceiveRing { ring: rx_ring, buffers, next: 0, unreturned: 0, discarding: false },
            tx: TransmitRing { ring: tx_ring, in_flight, tail: 0, clean: 0, last_progress_us: 0 },
            ring_pool,
            rx_pool,
            tx_pool,
            dev,
        };
        nic.bring_up()?;
        log::info!(
            "{}: {} up, MAC {}, {} RX / {} TX descriptors, link {}",
            nic.name,
            nic.model.name,
            MacDisplay(nic.mac),
            nic.config.rx_descriptors,
            nic.config.tx_descriptors,
            if nic.link_up { "up" } else { "down" }
        );
        if let Some(lab) = lab::lab_build() {
            log::warn!("{}: lab build: {lab} (docs/labs)", nic.name);
        }
        Ok(nic)
    }

    /// Resets the device and programs it from scratch (SDM §14.3 General Configuration, §14.4,
    /// §14.5). Receive buffers are kept (the device is stopped, so they are ours again);
    /// frames still in the transmit ring are dropped and counted.
    fn bring_up(&mut self) -> Result<(), InitError> {
        // Mask every interrupt before the reset (SDM §14.4 asks for interrupts masked while the
        // rings are set up; §13.4.21 IMC: writing 1 clears a mask bit).
        self.regs.write32(regs::IMC, regs::int::ALL);
        // Global reset: CTRL.RST (SDM §13.4.1) resets the MAC, its FIFOs and every register but
        // PCI configuration; it clears itself when done. DMA stops, so every buffer is ours.
        let ctrl = self.regs.read32(regs::CTRL);
        self.regs.write32(regs::CTRL, ctrl | regs::ctrl::RST);
        // The SDM asks for at least 1 µs before the next access.
        self.clock.delay_us(1);
        let regs = &self.regs;
        if !self.clock.poll_until(RESET_TIMEOUT_US, || regs.read32(regs::CTRL) & regs::ctrl::RST == 0) {
            return Err(InitError::ResetTimeout);
        }
        self.counters.resets += 1;
        // Reset unmasks nothing, but mask again as Linux does, and clear pending causes (reading
        // ICR clears it, §13.4.17).
        self.regs.write32(regs::IMC, regs::int::ALL);
        let _ = self.regs.read32(regs::ICR);

        self.mac = self.read_mac()?;
        // §14.3 General Configuration: CTRL.ASDE and CTRL.SLU set (the MAC takes speed and
        // duplex from the PHY's auto-negotiation), LRST, PHY_RST, ILOS and VME clear.
        let ctrl = self.regs.read32(regs::CTRL);
        let ctrl = (ctrl | regs::ctrl::SLU | regs::ctrl::ASDE)
            & !(regs::ctrl::LRST | regs::ctrl::PHY_RST | regs::ctrl::ILOS | regs::ctrl::VME);
        self.regs.write32(regs::CTRL, ctrl);
        // §14.3: no flow control: FCAL, FCAH, FCT and FCTTV are zero.
        for reg in [regs::FCAL, regs::FCAH, regs::FCT, regs::FCTTV] {
            self.regs.write32(reg, 0);
        }
        self.init_receive();
        self.init_transmit();
        // ITR (§13.4.18): the minimum gap between interrupts in 256 ns units.
        let itr = match self.config.max_interrupts_per_second {
            0 => 0,
            rate => (1_000_000_000 / (u64::from(rate) * 256)).min(0xFFFF) as u32,
        };
        self.regs.write32(regs::ITR, itr);
        if self.interrupt_mask != 0 {
            // IMS (§13.4.20): writing 1 enables a cause.
            self.regs.write32(regs::IMS, self.interrupt_mask);
        }
        self.link_up = self.regs.read32(regs::STATUS) & regs::status::LU != 0;
        Ok(())
    }

    /// The station address: RAL0/RAH0 when the device loaded them from its EEPROM after reset
    /// (RAH.AV set), else the EEPROM's words 0..3 through EERD (SDM §13.4.4, §5.6.1). The
    /// address is then written back to RAL0/RAH0 with AV set so the receive filter accepts it
    /// (§14.4: "program the Receive Address Registers").
    fn read_mac(&mut self) -> Result<[u8; 6], InitError> {
        let ral = self.regs.read32(regs::RAL0);
        let rah = self.regs.read32(regs::RAH0);
        let mut mac = [0u8; 6];
        mac[..4].copy_from_slice(&ral.to_le_bytes());
        mac[4..].copy_from_slice(&rah.to_le_bytes()[..2]);
        let valid = |m: &[u8; 6]| m.iter().any(|&b| b != 0) && m != &[0xff; 6] && m[0] & 1 == 0;
        if rah & regs::rah::AV == 0 || !valid(&mac) {
            let (start, done, shift) = self.model.eerd.bits().ok_or(InitError::NoMacAddress)?;
            for word in 0..3u32 {
                self.regs.write32(regs::EERD, start | (word << shift));
                let regs = &self.regs;
                let mut value = 0;
                let ok = self.clock.poll_until(EEPROM_TIMEOUT_US, || {
                    value = regs.read32(regs::EERD);
                    value & done != 0
                });
                if !ok {
                    return Err(InitError::NoMacAddress);
                }
                let bytes = ((value >> 16) as u16).to_le_bytes();
                mac[word as usize * 2..word as usize * 2 + 2].copy_from_slice(&bytes);
            }
            if !valid(&mac) {
                return Err(InitError::NoMacAddress);
            }
        }
        self.regs.write32(regs::RAL0, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        self.regs.write32(regs::RAH0, u32::from(u16::from_le_bytes([mac[4], mac[5]])) | regs::rah::AV);
        Ok(mac)
    }

    /// SDM §14.4 Receive Initialization.
    fn init_receive(&mut self) {
        // "Initialize the MTA (Multicast Table Array) to 0b" (§14.4, §13.5.1).
        for i in 0..regs::MTA_WORDS {
            self.regs.write32(regs::MTA + 4 * i, 0);
        }
        // Every descriptor points at its own buffer, status cleared (§3.2.3: software clears
        // DD before handing a descriptor to the device).
        let rx = &mut self.rx;
        for (i, buffer) in rx.buffers.iter().enumerate() {
            rx.ring.write(i, RxDescriptor { addr: buffer.bus_addr().as_u64(), ..Default::default() }.to_words());
        }
        rx.next = 0;
        rx.unreturned = 0;
        rx.discarding = false;
        let base = rx.ring.bus_addr().as_u64();
        fence(Ordering::SeqCst);
        // RDBAL/RDBAH (§13.4.27-28): the ring's bus address, 16-byte aligned (the pool aligns
        // to 128). RDLEN (§13.4.29): its length in bytes, a multiple of 128.
        self.regs.write32(regs::RDBAL, base as u32);
        self.regs.write32(regs::RDBAH, (base >> 32) as u32);
        self.regs.write32(regs::RDLEN, rx.ring.bytes() as u32);
        // RDH = 0 and RDT = last descriptor (§13.4.30-31): the device owns descriptors
        // RDH..RDT, all but one, so head == tail always means "no free buffer".
        self.regs.write32(regs::RDH, 0);
        self.regs.write32(regs::RDT, (rx.ring.len() - 1) as u32);
        // RDTR (§13.4.32): no receive delay; ITR does the coalescing.
        self.regs.write32(regs::RDTR, 0);
        // RCTL (§13.4.22), written last: EN receiver on; BAM accept broadcast (ARP, DHCP);
        // BSIZE 2048 with BSEX 0; SECRC strip the CRC; LPE off (no frames over 1522 bytes);
        // LBM 00 no loopback; RDMTS 1/2: RXDMT0 when half the ring is left; MO 00; UPE/MPE off.
        self.regs.write32(
            regs::RCTL,
            regs::rctl::EN | regs::rctl::BAM | regs::rctl::BSIZE_2048 | regs::rctl::SECRC | regs::rctl::RDMTS_HALF,
        );
    }

    /// SDM §14.5 Transmit Initialization.
    fn init_transmit(&mut self) {
        let tx = &mut self.tx;
        let lost = tx.in_flight.iter_mut().filter_map(Option::take).count();
        self.counters.tx_dropped += lost as u64;
        tx.ring.clear();
        tx.tail = 0;
        tx.clean = 0;
        tx.last_progress_us = self.clock.now_us();
        let base = tx.ring.bus_addr().as_u64();
        fence(Ordering::SeqCst);
        // TDBAL/TDBAH (§13.4.38-39): ring base, 16-byte aligned; TDLEN (§13.4.40): bytes, a
        // multiple of 128; TDH = TDT = 0 (§13.4.41-42): empty.
        self.regs.write32(regs::TDBAL, base as u32);
        self.regs.write32(regs::TDBAH, (base >> 32) as u32);
        self.regs.write32(regs::TDLEN, tx.ring.bytes() as u32);
        self.regs.write32(regs::TDH, 0);
        self.regs.write32(regs::TDT, 0);
        // TIDV (§13.4.43): no transmit interrupt delay.
        self.regs.write32(regs::TIDV, 0);
        // TCTL (§13.4.33): EN transmitter on; PSP pad short packets to 64 bytes; CT 0Fh (the
        // recommended collision threshold); COLD 40h (full-duplex collision distance).
        self.regs.write32(
            regs::TCTL,
            regs::tctl::EN
                | regs::tctl::PSP
                | (regs::tctl::CT_RECOMMENDED << regs::tctl::CT_SHIFT)
                | (regs::tctl::COLD_FULL_DUPLEX << regs::tctl::COLD_SHIFT),
        );
        // TIPG (§13.4.34): IPGT 10, IPGR1 8, IPGR2 6, the IEEE 802.3 values for copper.
        self.regs.write32(regs::TIPG, regs::tipg::RECOMMENDED);
    }

    /// The device's name in log lines (PCI address and driver).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which 8254x this is.
    pub fn model(&self) -> &'static Model {
        self.model
    }

    /// The station (MAC) address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The DMA handle the driver allocates through.
    pub fn dma_device(&self) -> &DmaDevice {
        &self.dev
    }

    /// Statistics of the driver's three pools: rings, receive buffers, transmit buffers.
    pub fn pool_stats(&self) -> [dma::PoolStats; 3] {
        [self.ring_pool.stats(), self.rx_pool.stats(), self.tx_pool.stats()]
    }

    /// The register block (tests and diagnostics).
    pub fn registers(&self) -> &R {
        &self.regs
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Link state from STATUS.LU (SDM §13.4.2), read now.
    pub fn link_up(&mut self) -> bool {
        self.link_up = self.regs.read32(regs::STATUS) & regs::status::LU != 0;
        self.link_up
    }

    /// Link speed in Mb/s from STATUS.SPEED.
    pub fn link_speed_mbps(&self) -> u32 {
        match (self.regs.read32(regs::STATUS) >> regs::status::SPEED_SHIFT) & 3 {
            0 => 10,
            1 => 100,
            _ => 1000,
        }
    }

    /// Enables the interrupt causes in [`INTERRUPT_CAUSES`] (IMS, SDM §13.4.20).
    pub fn enable_interrupts(&mut self) {
        self.interrupt_mask = INTERRUPT_CAUSES;
        self.regs.write32(regs::IMS, INTERRUPT_CAUSES);
    }

    /// Masks every interrupt (IMC, SDM §13.4.21): polling mode.
    pub fn disable_interrupts(&mut self) {
        self.interrupt_mask = 0;
        self.regs.write32(regs::IMC, regs::int::ALL);
    }

    /// True when interrupts are enabled.
    pub fn interrupts_enabled(&self) -> bool {
        self.interrupt_mask != 0
    }

    /// Raises `causes` from software (ICS, SDM §13.4.19): proves interrupt delivery.
    pub fn raise_interrupt(&self, causes: u32) {
        self.regs.write32(regs::ICS, causes);
    }

    /// Reads and clears ICR (SDM §13.4.17), which also deasserts the interrupt line, and acts on
    /// what it says: a link-status change is logged, a receiver overrun counted. Returns the
    /// causes (0: the interrupt was not ours — shared lines). Safe in interrupt context.
    pub fn acknowledge_interrupts(&mut self) -> u32 {
        let icr = self.regs.read32(regs::ICR);
        if icr == u32::MAX {
            // All-ones: the device is gone (surprise removal); nothing to acknowledge.
            return 0;
        }
        if icr != 0 {
            self.counters.interrupts += 1;
        }
        if icr & regs::int::LSC != 0 {
            self.counters.link_changes += 1;
            let up = self.link_up();
            log::info!("{}: link {}", self.name, if up { "up" } else { "down" });
        }
        if icr & regs::int::RXO != 0 {
            self.counters.rx_overruns += 1;
        }
        icr
    }

    /// The driver's own counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Reads the device's statistics registers (read-to-clear) into the running totals.
    pub fn update_device_counters(&mut self) {
        self.device_counters.accumulate(&self.regs);
    }

    /// The device's statistics, read now.
    pub fn device_counters(&mut self) -> DeviceCounters {
        self.update_device_counters();
        self.device_counters
    }

    /// Frames lost anywhere: dropped by the driver (receive and transmit) and missed by the
    /// device for lack of FIFO space (MPC).
    pub fn drops(&mut self) -> u64 {
        let device = self.device_counters();
        self.counters.rx_dropped + self.counters.tx_dropped + device.mpc
    }

    /// The `net:stats` text: one `name value` pair per line.
    pub fn render_stats(&mut self) -> String {
        use core::fmt::Write as _;
        let device = self.device_counters();
        let up = self.link_up();
        let mut out = String::new();
        let _ = writeln!(out, "device {} {}", self.name, self.model.name);
        let _ = writeln!(out, "mac {}", MacDisplay(self.mac));
        let _ = writeln!(out, "link {}", if up { "up" } else { "down" });
        let _ = writeln!(out, "interrupts_enabled {}", self.interrupts_enabled());
        let _ = writeln!(out, "drops {}", self.counters.rx_dropped + self.counters.tx_dropped + device.mpc);
        self.counters.render(&mut out);
        let _ = writeln!(out, "tx_pending {}", self.tx.pending());
        device.render(&mut out);
        out
    }
}

impl<R: Registers, C: Clock> Drop for E1000<R, C> {
    /// Stops the device before its memory goes back to the pools: a reset stops all DMA.
    fn drop(&mut self) {
        self.regs.write32(regs::IMC, regs::int::ALL);
        self.regs.write32(regs::RCTL, 0);
        self.regs.write32(regs::TCTL, 0);
        let ctrl = self.regs.read32(regs::CTRL);
        self.regs.write32(regs::CTRL, ctrl | regs::ctrl::RST);
        self.clock.delay_us(1);
        let regs = &self.regs;
        if !self.clock.poll_until(RESET_TIMEOUT_US, || regs.read32(regs::CTRL) & regs::ctrl::RST == 0) {
            log::error!("{}: reset at teardown did not complete; DMA memory stays quarantined", self.name);
            // Leak the buffers rather than free memory a device may still write.
            core::mem::forget(core::mem::take(&mut self.rx.buffers));
            core::mem::forget(core::mem::take(&mut self.tx.in_flight));
        }
        log::info!("{}: stopped", self.name);
    }
}

/// Formats a MAC address as `52:54:00:12:34:56`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacDisplay(pub [u8; 6]);

impl fmt::Display for MacDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}
