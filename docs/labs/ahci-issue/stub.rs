//! Lab ahci-issue: sending a command. Write the two functions below; `cargo xtask lab grade
//! ahci-issue` checks them. Read docs/labs/ahci-issue/README.md first, and guide chapter 7
//! (docs/guide/07-ahci-sector.md, "The chain of structures" and "A read, step by step").
//!
//! The controller (drivers/ahci/src/controller/submit.rs) calls them: it has checked the
//! request, mapped the buffers, built the PRD entries from the mapped segments and picked a
//! free slot; it calls `fill_slot`, then `issue_slot`.
// Remove this line once both functions use their arguments.
#![allow(unused_variables, unused_imports)]

use crate::ata::H2D_FIS_LEN;
use crate::controller::{COMMAND_HEADER_BYTES, PRDT_OFFSET};
use crate::prdt::{PRD_ENTRY_BYTES, PrdEntry};
use crate::regs::{self, port as preg};
use core::sync::atomic::{Ordering, fence};
use device_io::Registers;
use dma::PoolBlock;

/// Fills slot `slot`: its command table `table` (the command FIS `fis` at offset 0x00, zeros
/// up to the PRDT, the PRD entries at `PRDT_OFFSET`, AHCI 1.3.1 §4.2.3) and its 32-byte command
/// header in `command_list` (§4.2.2: which DWORDs hold CFL, W, PRDTL, PRDBC, CTBA and CTBAU?).
/// `writes_to_device` is true when data goes from memory to the disk; `addr64` is CAP.S64A.
///
/// Write bytes with `table.write_bytes(offset, &bytes)` and DWORDs with
/// `command_list.write::<u32>(offset, value)` (both return a `Result`); `table.bus_addr()` is
/// the table's address as the HBA sees it. Each `PrdEntry` has a bus address and a length.
pub fn fill_slot(
    command_list: &mut PoolBlock,
    table: &mut PoolBlock,
    slot: u8,
    fis: &[u8; H2D_FIS_LEN],
    prdt: &[PrdEntry],
    writes_to_device: bool,
    addr64: bool,
) {
    // Not written yet: the slot stays empty.
}

/// Hands slot `slot` of port `port` to the HBA (§5.3.2): for a queued (NCQ) command its bit
/// in PxSACT first, then its bit in PxCI. Port `n`'s registers start at `regs::port_base(n)`;
/// `preg::SACT` and `preg::CI` are the offsets inside. What must be true of memory before the
/// HBA reads the slot?
pub fn issue_slot<R: Registers>(regs: &R, port: u8, slot: u8, queued: bool) {
    // Not written yet: the HBA is never told.
}
