//! The HBA's register map: generic host control (AHCI 1.3.1 §3.1) and per-port registers
//! (§3.3), with the bits this driver uses. Offsets are bytes from ABAR (BAR5).

/// Generic host control registers (AHCI 1.3.1 §3.1).
pub mod hba {
    /// HBA Capabilities (§3.1.1).
    pub const CAP: usize = 0x00;
    /// Global HBA Control (§3.1.2).
    pub const GHC: usize = 0x04;
    /// Interrupt Status: one bit per port with a pending interrupt (§3.1.3).
    pub const IS: usize = 0x08;
    /// Ports Implemented (§3.1.4).
    pub const PI: usize = 0x0C;
    /// Version (§3.1.5).
    pub const VS: usize = 0x10;
    /// HBA Capabilities Extended (§3.1.10).
    pub const CAP2: usize = 0x24;
    /// BIOS/OS Handoff Control and Status (§3.1.11).
    pub const BOHC: usize = 0x28;
}

/// CAP bits (§3.1.1).
pub mod cap {
    /// Supports 64-bit Addressing: command list, FIS area, command tables and data may lie above 4 GiB.
    pub const S64A: u32 = 1 << 31;
    /// Supports Native Command Queuing.
    pub const SNCQ: u32 = 1 << 30;
    /// Supports Staggered Spin-up: software must set PxCMD.SUD to spin a device up.
    pub const SSS: u32 = 1 << 27;
    /// Supports Command List Override (PxCMD.CLO).
    pub const SCLO: u32 = 1 << 24;
    /// Number of Command Slots, 0-based (bits 12:8).
    pub const NCS_SHIFT: u32 = 8;
    /// Number of Ports, 0-based (bits 4:0).
    pub const NP_MASK: u32 = 0x1F;
}

/// GHC bits (§3.1.2).
pub mod ghc {
    /// AHCI Enable: the HBA is driven through AHCI registers only.
    pub const AE: u32 = 1 << 31;
    /// Interrupt Enable: the HBA may raise its interrupt.
    pub const IE: u32 = 1 << 1;
    /// HBA Reset; self-clearing when the reset is done (§10.4.3).
    pub const HR: u32 = 1 << 0;
}

/// CAP2 bits (§3.1.10).
pub mod cap2 {
    /// BIOS/OS Handoff supported (§10.6).
    pub const BOH: u32 = 1 << 0;
}

/// BOHC bits (§3.1.11).
pub mod bohc {
    /// BIOS Owned Semaphore.
    pub const BOS: u32 = 1 << 0;
    /// OS Owned Semaphore.
    pub const OOS: u32 = 1 << 1;
    /// BIOS Busy: the BIOS is finishing outstanding commands.
    pub const BB: u32 = 1 << 4;
}

/// Byte offset of port `n`'s register block (§3.3: 0x100 + n × 0x80).
pub const fn port_base(n: u8) -> usize {
    0x100 + n as usize * 0x80
}

/// Port register offsets inside a port's block (§3.3).
pub mod port {
    /// Command List Base Address, 1 KiB aligned (§3.3.1).
    pub const CLB: usize = 0x00;
    /// Command List Base Address Upper 32 bits (§3.3.2).
    pub const CLBU: usize = 0x04;
    /// FIS Base Address, 256-byte aligned (§3.3.3).
    pub const FB: usize = 0x08;
    /// FIS Base Address Upper 32 bits (§3.3.4).
    pub const FBU: usize = 0x0C;
    /// Interrupt Status (§3.3.5), write 1 to clear.
    pub const IS: usize = 0x10;
    /// Interrupt Enable (§3.3.6).
    pub const IE: usize = 0x14;
    /// Command and Status (§3.3.7).
    pub const CMD: usize = 0x18;
    /// Task File Data: the device's ATA status and error registers (§3.3.8).
    pub const TFD: usize = 0x20;
    /// Signature from the device's first D2H Register FIS (§3.3.9).
    pub const SIG: usize = 0x24;
    /// SATA Status, SStatus (§3.3.10).
    pub const SSTS: usize = 0x28;
    /// SATA Control, SControl (§3.3.11).
    pub const SCTL: usize = 0x2C;
    /// SATA Error, SError (§3.3.12), write 1 to clear.
    pub const SERR: usize = 0x30;
    /// SATA Active: NCQ tags the device still owns (§3.3.13).
    pub const SACT: usize = 0x34;
    /// Command Issue: slots handed to the HBA (§3.3.14).
    pub const CI: usize = 0x38;
}

/// PxIS / PxIE bits (§3.3.5).
pub mod is {
    /// Device to Host Register FIS received.
    pub const DHRS: u32 = 1 << 0;
    /// PIO Setup FIS received.
    pub const PSS: u32 = 1 << 1;
    /// DMA Setup FIS received.
    pub const DSS: u32 = 1 << 2;
    /// Set Device Bits FIS received (NCQ completions).
    pub const SDBS: u32 = 1 << 3;
    /// Unknown FIS.
    pub const UFS: u32 = 1 << 4;
    /// Descriptor Processed (a PRD with I set).
    pub const DPS: u32 = 1 << 5;
    /// Port Connect Change.
    pub const PCS: u32 = 1 << 6;
    /// PhyRdy Change.
    pub const PRCS: u32 = 1 << 22;
    /// Overflow: the device sent more data than the PRDT holds.
    pub const OFS: u32 = 1 << 24;
    /// Interface Non-fatal Error.
    pub const INFS: u32 = 1 << 26;
    /// Interface Fatal Error.
    pub const IFS: u32 = 1 << 27;
    /// Host Bus Data Error.
    pub const HBDS: u32 = 1 << 28;
    /// Host Bus Fatal Error (for example a bus address the host could not reach).
    pub const HBFS: u32 = 1 << 29;
    /// Task File Error: the device reported ERR in its status.
    pub const TFES: u32 = 1 << 30;
    /// Cold Port Detect.
    pub const CPDS: u32 = 1 << 31;
    /// Bits that mean a command failed and the port needs recovery (§6.1.2, §6.1.3).
    pub const ERRORS: u32 = TFES | HBFS | HBDS | IFS | INFS | OFS | UFS;
    /// Fatal bits: the HBA stopped processing the command list (PxCMD.ST must be cycled, §6.2.2).
    pub const FATAL: u32 = TFES | HBFS | HBDS | IFS;
    /// What this driver enables: completions and every error.
    pub const ENABLED: u32 = DHRS | PSS | DSS | SDBS | ERRORS | PCS | PRCS;
}

/// PxCMD bits (§3.3.7).
pub mod cmd {
    /// Start: the HBA may process the command list.
    pub const ST: u32 = 1 << 0;
    /// Spin-Up Device.
    pub const SUD: u32 = 1 << 1;
    /// Power On Device.
    pub const POD: u32 = 1 << 2;
    /// Command List Override.
    pub const CLO: u32 = 1 << 3;
    /// FIS Receive Enable.
    pub const FRE: u32 = 1 << 4;
    /// Current Command Slot (bits 12:8), valid while ST is set.
    pub const CCS_SHIFT: u32 = 8;
    /// FIS Receive Running.
    pub const FR: u32 = 1 << 14;
    /// Command List Running.
    pub const CR: u32 = 1 << 15;
}

/// PxTFD / ATA status bits (§3.3.8, ATA8-ACS §6.2).
pub mod tfd {
    /// Error: the last command failed; the error register says why.
    pub const ERR: u32 = 1 << 0;
    /// Data Request.
    pub const DRQ: u32 = 1 << 3;
    /// Busy.
    pub const BSY: u32 = 1 << 7;
}

/// PxSSTS fields (§3.3.10).
pub mod ssts {
    /// Device Detection: 3 = device present and PHY communication established.
    pub const DET_PRESENT: u32 = 3;
    /// Interface Power Management: 1 = active.
    pub const IPM_ACTIVE: u32 = 1;
}

/// Device signatures in PxSIG (§3.3.9; SATA 3.x §11.3).
pub mod sig {
    /// ATA disk.
    pub const ATA: u32 = 0x0000_0101;
    /// ATAPI (optical) device.
    pub const ATAPI: u32 = 0xEB14_0101;
    /// Enclosure management bridge.
    pub const SEMB: u32 = 0xC33C_0101;
    /// Port multiplier.
    pub const PM: u32 = 0x9669_0101;
}
