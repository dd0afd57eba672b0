//! Counters: the driver's own, and the device's statistics registers (SDM §13.7).

use core::fmt::Write as _;

use alloc::string::String;
use device_io::Registers;

use crate::regs::stat;

/// What the driver counted itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Good frames handed up.
    pub rx_packets: u64,
    /// Their bytes (without CRC).
    pub rx_bytes: u64,
    /// Received frames dropped by the driver (the four reasons below).
    pub rx_dropped: u64,
    /// Frames with descriptor error bits (CE, SE, SEQ, CXE, RXE).
    pub rx_errors: u64,
    /// Frames shorter than 60 bytes.
    pub rx_runts: u64,
    /// Frames longer than 1518 bytes.
    pub rx_oversized: u64,
    /// Frames spread over several descriptors (no EOP on the first).
    pub rx_fragmented: u64,
    /// ICR.RXO: the device found no receive descriptor (or FIFO space) for a frame.
    pub rx_overruns: u64,
    /// Times [`crate::E1000::rx_ring_state`] found the receive ring exhausted: RDH caught up
    /// with RDT, so the device owned no empty descriptor (SDM §3.2.6).
    pub rx_ring_exhausted: u64,
    /// Frames the device reported sent.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames the device reported failed (excess or late collisions).
    pub tx_errors: u64,
    /// Frames lost from the transmit ring by a reset.
    pub tx_dropped: u64,
    /// Transmits refused because every descriptor was in flight.
    pub tx_ring_full: u64,
    /// Transmit hangs detected (each followed by a reset).
    pub tx_hangs: u64,
    /// Device resets, the first one included.
    pub resets: u64,
    /// Link status changes (ICR.LSC).
    pub link_changes: u64,
    /// Interrupt acknowledgements that found a cause.
    pub interrupts: u64,
}

impl Counters {
    pub(crate) fn render(&self, out: &mut String) {
        let rows = [
            ("rx_packets", self.rx_packets),
            ("rx_bytes", self.rx_bytes),
            ("rx_dropped", self.rx_dropped),
            ("rx_errors", self.rx_errors),
            ("rx_runts", self.rx_runts),
            ("rx_oversized", self.rx_oversized),
            ("rx_fragmented", self.rx_fragmented),
            ("rx_overruns", self.rx_overruns),
            ("rx_ring_exhausted", self.rx_ring_exhausted),
            ("tx_packets", self.tx_packets),
            ("tx_bytes", self.tx_bytes),
            ("tx_errors", self.tx_errors),
            ("tx_dropped", self.tx_dropped),
            ("tx_ring_full", self.tx_ring_full),
            ("tx_hangs", self.tx_hangs),
            ("resets", self.resets),
            ("link_changes", self.link_changes),
            ("interrupts", self.interrupts),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

/// Running totals of the device's statistics registers (SDM §13.7). The registers clear when
/// read, so every read is added here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// CRC errors (CRCERRS).
    pub crcerrs: u64,
    /// Alignment errors (ALGNERRC).
    pub algnerrc: u64,
    /// Symbol errors (SYMERRS).
    pub symerrs: u64,
    /// Receive errors (RXERRC).
    pub rxerrc: u64,
    /// Missed packets: dropped for lack of FIFO space (MPC).
    pub mpc: u64,
    /// Collisions (COLC).
    pub colc: u64,
    /// Good packets received (GPRC).
    pub gprc: u64,
    /// Broadcast packets received (BPRC).
    pub bprc: u64,
    /// Multicast packets received (MPRC).
    pub mprc: u64,
    /// Good packets transmitted (GPTC).
    pub gptc: u64,
    /// Good octets received (GORCL/GORCH).
    pub gorc: u64,
    /// Good octets transmitted (GOTCL/GOTCH).
    pub gotc: u64,
    /// Receive attempts that found no free descriptor (RNBC); the frame may still be kept.
    pub rnbc: u64,
    /// Undersized frames received (RUC).
    pub ruc: u64,
    /// Fragments received (RFC).
    pub rfc: u64,
    /// Oversized frames received (ROC).
    pub roc: u64,
    /// Jabbers received (RJC).
    pub rjc: u64,
    /// Total packets received (TPR).
    pub tpr: u64,
    /// Total packets transmitted (TPT).
    pub tpt: u64,
}

impl DeviceCounters {
    pub(crate) fn accumulate(&mut self, regs: &impl Registers) {
        let r = |offset| u64::from(regs.read32(offset));
        self.crcerrs += r(stat::CRCERRS);
        self.algnerrc += r(stat::ALGNERRC);
        self.symerrs += r(stat::SYMERRS);
        self.rxerrc += r(stat::RXERRC);
        self.mpc += r(stat::MPC);
        self.colc += r(stat::COLC);
        self.gprc += r(stat::GPRC);
        self.bprc += r(stat::BPRC);
        self.mprc += r(stat::MPRC);
        self.gptc += r(stat::GPTC);
        // 64-bit octet counters: low half first; reading the high half clears both (§13.7.31).
        let low = r(stat::GORCL);
        self.gorc += low | r(stat::GORCH) << 32;
        let low = r(stat::GOTCL);
        self.gotc += low | r(stat::GOTCH) << 32;
        self.rnbc += r(stat::RNBC);
        self.ruc += r(stat::RUC);
        self.rfc += r(stat::RFC);
        self.roc += r(stat::ROC);
        self.rjc += r(stat::RJC);
        self.tpr += r(stat::TPR);
        self.tpt += r(stat::TPT);
    }

    pub(crate) fn render(&self, out: &mut String) {
        let rows = [
            ("CRCERRS", self.crcerrs),
            ("ALGNERRC", self.algnerrc),
            ("SYMERRS", self.symerrs),
            ("RXERRC", self.rxerrc),
            ("MPC", self.mpc),
            ("COLC", self.colc),
            ("GPRC", self.gprc),
            ("BPRC", self.bprc),
            ("MPRC", self.mprc),
            ("GPTC", self.gptc),
            ("GORC", self.gorc),
            ("GOTC", self.gotc),
            ("RNBC", self.rnbc),
            ("RUC", self.ruc),
            ("RFC", self.rfc),
            ("ROC", self.roc),
            ("RJC", self.rjc),
            ("TPR", self.tpr),
            ("TPT", self.tpt),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "hw.{name} {value}");
        }
    }
}
