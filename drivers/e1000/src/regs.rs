//! Register offsets and bits of the 8254x family, as the Intel 8254x Family of Gigabit Ethernet
//! Controllers Software Developer's Manual ("SDM") names them.
//!
//! Offsets are byte offsets into BAR0 (SDM §13.1, Table 13-2 "Ethernet Controller Register
//! Summary"). Every constant cites the section that describes it; the driver's comments cite the
//! same sections where it writes them, so the two can be read side by side with the manual.

/// Device Control (SDM §13.4.1).
pub const CTRL: usize = 0x0000;
/// Device Status (SDM §13.4.2), read-only.
pub const STATUS: usize = 0x0008;
/// Flow Control Address Low (SDM §13.4.10).
pub const FCAL: usize = 0x0028;
/// Flow Control Address High (SDM §13.4.11).
pub const FCAH: usize = 0x002C;
/// Flow Control Type (SDM §13.4.12).
pub const FCT: usize = 0x0030;
/// Flow Control Transmit Timer Value (SDM §13.4.13).
pub const FCTTV: usize = 0x0170;
/// EEPROM Read (SDM §13.4.4): one 16-bit word of the EEPROM without bit-banging EECD.
pub const EERD: usize = 0x0014;
/// Interrupt Cause Read (SDM §13.4.17); reading clears it.
pub const ICR: usize = 0x00C0;
/// Interrupt Throttling (SDM §13.4.18).
pub const ITR: usize = 0x00C4;
/// Interrupt Cause Set (SDM §13.4.19): software-raised causes, for tests.
pub const ICS: usize = 0x00C8;
/// Interrupt Mask Set/Read (SDM §13.4.20).
pub const IMS: usize = 0x00D0;
/// Interrupt Mask Clear (SDM §13.4.21).
pub const IMC: usize = 0x00D8;
/// Receive Control (SDM §13.4.22).
pub const RCTL: usize = 0x0100;
/// Transmit Control (SDM §13.4.33).
pub const TCTL: usize = 0x0400;
/// Transmit Inter-Packet Gap (SDM §13.4.34).
pub const TIPG: usize = 0x0410;
/// Receive Descriptor Base Address Low (SDM §13.4.27).
pub const RDBAL: usize = 0x2800;
/// Receive Descriptor Base Address High (SDM §13.4.28).
pub const RDBAH: usize = 0x2804;
/// Receive Descriptor Length in bytes, a multiple of 128 (SDM §13.4.29).
pub const RDLEN: usize = 0x2808;
/// Receive Descriptor Head (SDM §13.4.30): the next descriptor the device fills.
pub const RDH: usize = 0x2810;
/// Receive Descriptor Tail (SDM §13.4.31): one past the last descriptor software gave the device.
pub const RDT: usize = 0x2818;
/// Receive Delay Timer (SDM §13.4.32).
pub const RDTR: usize = 0x2820;
/// Transmit Descriptor Base Address Low (SDM §13.4.38).
pub const TDBAL: usize = 0x3800;
/// Transmit Descriptor Base Address High (SDM §13.4.39).
pub const TDBAH: usize = 0x3804;
/// Transmit Descriptor Length in bytes, a multiple of 128 (SDM §13.4.40).
pub const TDLEN: usize = 0x3808;
/// Transmit Descriptor Head (SDM §13.4.41): the next descriptor the device sends.
pub const TDH: usize = 0x3810;
/// Transmit Descriptor Tail (SDM §13.4.42): one past the last descriptor software queued.
pub const TDT: usize = 0x3818;
/// Transmit Interrupt Delay Value (SDM §13.4.43).
pub const TIDV: usize = 0x3820;
/// Multicast Table Array, 128 words (SDM §13.5.1).
pub const MTA: usize = 0x5200;
/// Number of 32-bit words in the MTA.
pub const MTA_WORDS: usize = 128;
/// Receive Address Low, entry 0 (SDM §13.5.2): MAC bytes 0..4.
pub const RAL0: usize = 0x5400;
/// Receive Address High, entry 0 (SDM §13.5.3): MAC bytes 4..6 and Address Valid.
pub const RAH0: usize = 0x5404;

/// CTRL bits (SDM §13.4.1).
pub mod ctrl {
    /// Full duplex.
    pub const FD: u32 = 1 << 0;
    /// Link reset.
    pub const LRST: u32 = 1 << 3;
    /// Auto-speed detection enable.
    pub const ASDE: u32 = 1 << 5;
    /// Set link up: lets the MAC and PHY establish link.
    pub const SLU: u32 = 1 << 6;
    /// Invert loss-of-signal.
    pub const ILOS: u32 = 1 << 7;
    /// Device reset: self-clearing; resets everything but the PCI configuration registers.
    pub const RST: u32 = 1 << 26;
    /// VLAN mode enable.
    pub const VME: u32 = 1 << 30;
    /// PHY reset.
    pub const PHY_RST: u32 = 1 << 31;
}

/// STATUS bits (SDM §13.4.2).
pub mod status {
    /// Full duplex.
    pub const FD: u32 = 1 << 0;
    /// Link up.
    pub const LU: u32 = 1 << 1;
    /// Speed: 00 = 10, 01 = 100, 1x = 1000 Mb/s.
    pub const SPEED_SHIFT: u32 = 6;
}

/// Interrupt cause bits, shared by ICR, ICS, IMS and IMC (SDM §13.4.17).
pub mod int {
    /// Transmit descriptor written back.
    pub const TXDW: u32 = 1 << 0;
    /// Transmit queue empty.
    pub const TXQE: u32 = 1 << 1;
    /// Link status change.
    pub const LSC: u32 = 1 << 2;
    /// Receive sequence error.
    pub const RXSEQ: u32 = 1 << 3;
    /// Receive descriptor minimum threshold reached.
    pub const RXDMT0: u32 = 1 << 4;
    /// Receiver overrun: a frame arrived with no descriptor (or FIFO space) for it.
    pub const RXO: u32 = 1 << 6;
    /// Receiver timer interrupt: a frame was stored (after the RDTR delay).
    pub const RXT0: u32 = 1 << 7;
    /// Every cause the 8254x defines (bits 0..16), for IMC.
    pub const ALL: u32 = 0x0001_FFFF;
}

/// RCTL bits (SDM §13.4.22).
pub mod rctl {
    /// Receiver enable.
    pub const EN: u32 = 1 << 1;
    /// Store bad packets.
    pub const SBP: u32 = 1 << 2;
    /// Unicast promiscuous.
    pub const UPE: u32 = 1 << 3;
    /// Multicast promiscuous.
    pub const MPE: u32 = 1 << 4;
    /// Long packet enable (frames up to 16 KiB).
    pub const LPE: u32 = 1 << 5;
    /// Receive descriptor minimum threshold: 1/2 of RDLEN (bits 9:8 = 00).
    pub const RDMTS_HALF: u32 = 0 << 8;
    /// Broadcast accept mode.
    pub const BAM: u32 = 1 << 15;
    /// Receive buffer size 2048 bytes (BSIZE = 00 with BSEX = 0).
    pub const BSIZE_2048: u32 = 0 << 16;
    /// Strip Ethernet CRC from incoming frames.
    pub const SECRC: u32 = 1 << 26;
}

/// TCTL bits and fields (SDM §13.4.33).
pub mod tctl {
    /// Transmit enable.
    pub const EN: u32 = 1 << 1;
    /// Pad short packets to 64 bytes.
    pub const PSP: u32 = 1 << 3;
    /// Collision threshold field (bits 11:4); the SDM recommends 0Fh.
    pub const CT_SHIFT: u32 = 4;
    /// Recommended collision threshold.
    pub const CT_RECOMMENDED: u32 = 0x0F;
    /// Collision distance field (bits 21:12): 40h for full duplex, 200h for half duplex.
    pub const COLD_SHIFT: u32 = 12;
    /// Collision distance for full duplex.
    pub const COLD_FULL_DUPLEX: u32 = 0x40;
    /// Re-transmit on late collision.
    pub const RTLC: u32 = 1 << 24;
}

/// TIPG fields (SDM §13.4.34, Table 13-77): IPGT 10, IPGR1 8, IPGR2 6 are the IEEE 802.3 values
/// recommended for copper on the 82540/82541/82545/82546/82547.
pub mod tipg {
    /// Transmit IPG time.
    pub const IPGT: u32 = 10;
    /// IPG receive time 1 (bits 19:10).
    pub const IPGR1: u32 = 8;
    /// IPG receive time 2 (bits 29:20).
    pub const IPGR2: u32 = 6;
    /// The register value.
    pub const RECOMMENDED: u32 = IPGT | (IPGR1 << 10) | (IPGR2 << 20);
}

/// RAH bits (SDM §13.5.3).
pub mod rah {
    /// Address valid: the entry takes part in filtering.
    pub const AV: u32 = 1 << 31;
}

/// Statistics registers (SDM §13.7). All are read-to-clear; the 64-bit octet counters clear when
/// their high half is read, so the low half is read first.
pub mod stat {
    /// CRC Error Count (§13.7.1).
    pub const CRCERRS: usize = 0x4000;
    /// Alignment Error Count (§13.7.2).
    pub const ALGNERRC: usize = 0x4004;
    /// Symbol Error Count (§13.7.3).
    pub const SYMERRS: usize = 0x4008;
    /// RX Error Count (§13.7.4).
    pub const RXERRC: usize = 0x400C;
    /// Missed Packets Count (§13.7.5): frames dropped because the receive FIFO was full.
    pub const MPC: usize = 0x4010;
    /// Collision Count (§13.7.10).
    pub const COLC: usize = 0x4028;
    /// Good Packets Received Count (§13.7.27).
    pub const GPRC: usize = 0x4074;
    /// Broadcast Packets Received Count (§13.7.28).
    pub const BPRC: usize = 0x4078;
    /// Multicast Packets Received Count (§13.7.29).
    pub const MPRC: usize = 0x407C;
    /// Good Packets Transmitted Count (§13.7.30).
    pub const GPTC: usize = 0x4080;
    /// Good Octets Received Count, low (§13.7.31).
    pub const GORCL: usize = 0x4088;
    /// Good Octets Received Count, high (§13.7.31).
    pub const GORCH: usize = 0x408C;
    /// Good Octets Transmitted Count, low (§13.7.32).
    pub const GOTCL: usize = 0x4090;
    /// Good Octets Transmitted Count, high (§13.7.32).
    pub const GOTCH: usize = 0x4094;
    /// Receive No Buffers Count (§13.7.33): frames that found head == tail (not necessarily lost).
    pub const RNBC: usize = 0x40A0;
    /// Receive Undersize Count (§13.7.34).
    pub const RUC: usize = 0x40A4;
    /// Receive Fragment Count (§13.7.35).
    pub const RFC: usize = 0x40A8;
    /// Receive Oversize Count (§13.7.36).
    pub const ROC: usize = 0x40AC;
    /// Receive Jabber Count (§13.7.37).
    pub const RJC: usize = 0x40B0;
    /// Total Packets Received (§13.7.40).
    pub const TPR: usize = 0x40D0;
    /// Total Packets Transmitted (§13.7.41).
    pub const TPT: usize = 0x40D4;
}

/// EERD layouts (SDM §13.4.4): where START, DONE, the address and the data sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EerdLayout {
    /// 82540/82545/82546: DONE is bit 4, the word address bits 15:8.
    Done4Addr8,
    /// 82541/82547: DONE is bit 1, the word address bits 15:2.
    Done1Addr2,
    /// 82543/82544: no EERD; the EEPROM is only reachable by bit-banging EECD, which this driver
    /// does not do (the MAC must then be in RAL0/RAH0, where the device loads it after reset).
    None,
}

impl EerdLayout {
    /// (start bit, done bit, address shift).
    pub fn bits(self) -> Option<(u32, u32, u32)> {
        match self {
            EerdLayout::Done4Addr8 => Some((1, 1 << 4, 8)),
            EerdLayout::Done1Addr2 => Some((1, 1 << 1, 2)),
            EerdLayout::None => None,
        }
    }
}
