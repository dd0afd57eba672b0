//! The command-slot core of the driver: the only code that writes a command header, a command
//! table or PxCI/PxSACT, and that decides from PxIS, PxCI and PxSACT which slots finished.
//! Everything around it (checking requests, mapping buffers, building the PRDT from the mapped
//! segments, deadlines, error recovery) stays in `controller/`.
//!
//! These functions are the reference solution of the AHCI labs (`docs/labs/ahci-issue`,
//! `docs/labs/ahci-complete`): the controller calls them through its private module `lab`
//! (`src/lab/mod.rs`), which names these modules unless a lab feature (`lab-issue`, `lab-complete`)
//! swaps in the student's file.

/// Issuing a command (AHCI 1.3.1 §4.2.2, §4.2.3, §5.3.2).
pub mod issue {
    use crate::ata::H2D_FIS_LEN;
    use crate::controller::{COMMAND_HEADER_BYTES, PRDT_OFFSET};
    use crate::prdt::{PRD_ENTRY_BYTES, PrdEntry};
    use crate::regs::{self, port as preg};
    use core::sync::atomic::{Ordering, fence};
    use device_io::Registers;
    use dma::PoolBlock;

    fn put(block: &mut PoolBlock, offset: usize, value: u32) {
        if let Err(e) = block.write::<u32>(offset, value) {
            log::error!("ahci: structure write at {offset:#x} out of bounds ({e:?}); driver bug");
        }
    }

    /// Fills slot `slot`: its command table (`table`: the command FIS at 0x00, a zeroed ATAPI
    /// area, the PRDT at 0x80, §4.2.3) and its command header in `command_list` (§4.2.2).
    /// `writes_to_device` is the header's W bit; `addr64` says whether the HBA takes 64-bit
    /// addresses (CAP.S64A), so whether CTBAU may be non-zero.
    pub fn fill_slot(
        command_list: &mut PoolBlock,
        table: &mut PoolBlock,
        slot: u8,
        fis: &[u8; H2D_FIS_LEN],
        prdt: &[PrdEntry],
        writes_to_device: bool,
        addr64: bool,
    ) {
        // Command table (§4.2.3): the FIS, a zeroed ATAPI area, the PRDT.
        let mut cfis = [0u8; PRDT_OFFSET];
        cfis[..H2D_FIS_LEN].copy_from_slice(fis);
        let _ = table.write_bytes(0, &cfis);
        for (i, entry) in prdt.iter().enumerate() {
            let _ = table.write_bytes(PRDT_OFFSET + i * PRD_ENTRY_BYTES, &entry.to_bytes());
        }
        let ctba = table.bus_addr().as_u64();
        // Command header (§4.2.2): DW0 = CFL (FIS length in DWORDs) | W | PRDTL; DW1 = PRDBC,
        // zero until the HBA counts bytes; DW2/DW3 = CTBA/CTBAU; DW4..7 reserved, zero.
        let header = usize::from(slot) * COMMAND_HEADER_BYTES;
        let flags = (H2D_FIS_LEN / 4) as u32 | if writes_to_device { 1 << 6 } else { 0 } | (prdt.len() as u32) << 16;
        put(command_list, header, flags);
        put(command_list, header + 4, 0);
        put(command_list, header + 8, ctba as u32);
        put(command_list, header + 12, if addr64 { (ctba >> 32) as u32 } else { 0 });
        for dw in 4..8 {
            put(command_list, header + dw * 4, 0);
        }
    }

    /// Hands `slot` of port `port` to the HBA: PxSACT first for a queued (NCQ) command
    /// (§5.3.2, SATA 3.x §13.6), then PxCI. Both registers are "write 1 to set": writing a 0
    /// bit changes nothing, so only the slot's own bit is written.
    pub fn issue_slot<R: Registers>(regs: &R, port: u8, slot: u8, queued: bool) {
        // The command table and header must be in memory before the HBA is told to fetch them.
        fence(Ordering::SeqCst);
        let base = regs::port_base(port);
        if queued {
            regs.write32(base + preg::SACT, 1 << slot);
        }
        regs.write32(base + preg::CI, 1 << slot);
    }
}

/// Completing commands (AHCI 1.3.1 §5.3.8, §10.7.2).
pub mod complete {
    use crate::controller::COMMAND_HEADER_BYTES;
    use crate::regs::{self, port as preg};
    use device_io::Registers;
    use dma::PoolBlock;

    /// What a port said at one moment.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct PortSnapshot {
        /// PxIS as read (and acknowledged); all-ones if the device is gone.
        pub interrupt_status: u32,
        /// PxCI: slots the HBA has not finished sending.
        pub ci: u32,
        /// PxSACT: NCQ tags the device has not finished.
        pub sact: u32,
    }

    /// Reads and clears (acknowledges) PxIS, *then* reads PxCI and PxSACT (§10.7.2 order): a
    /// command that finishes after the snapshot sets PxIS again, so no completion is lost. A
    /// port that reads all-ones is gone: nothing is written back.
    pub fn acknowledge_and_snapshot<R: Registers>(regs: &R, port: u8) -> PortSnapshot {
        let base = regs::port_base(port);
        let interrupt_status = regs.read32(base + preg::IS);
        if interrupt_status != 0 && interrupt_status != u32::MAX {
            regs.write32(base + preg::IS, interrupt_status);
        }
        PortSnapshot { interrupt_status, ci: regs.read32(base + preg::CI), sact: regs.read32(base + preg::SACT) }
    }

    /// The slots in `issued` that have finished: the HBA has cleared their PxCI bit and, for an
    /// NCQ command, the device its PxSACT bit (§3.3.13, §3.3.14).
    pub fn finished_slots(issued: u32, snapshot: &PortSnapshot) -> u32 {
        issued & !snapshot.ci & !snapshot.sact
    }

    /// Bytes the HBA moved for `slot`: PRDBC, DW1 of its command header (§4.2.2).
    pub fn bytes_transferred(command_list: &PoolBlock, slot: u8) -> u32 {
        command_list.read::<u32>(usize::from(slot) * COMMAND_HEADER_BYTES + 4).unwrap_or(0)
    }
}
