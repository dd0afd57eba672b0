//! Lab ahci-complete: finding the commands that finished. Write the three functions below;
//! `cargo xtask lab grade ahci-complete` checks them. Read docs/labs/ahci-complete/README.md
//! first, and guide chapter 7 (docs/guide/07-ahci-sector.md, "A read, step by step").
//!
//! The controller (drivers/ahci/src/controller/complete.rs, `service_port`) calls them in its
//! bottom half: `acknowledge_and_snapshot`, then (if PxIS shows no error) `finished_slots`,
//! then for each finished slot `bytes_transferred`, before it unmaps that command's buffers.
// Remove this line once the functions use their arguments.
#![allow(unused_variables, unused_imports)]

use crate::controller::COMMAND_HEADER_BYTES;
use crate::regs::{self, port as preg};
use device_io::Registers;
use dma::PoolBlock;

/// What a port said at one moment: PxIS, PxCI and PxSACT.
pub use crate::slot::complete::PortSnapshot;

/// Acknowledges port `port`'s interrupt status (PxIS is "write 1 to clear") and reads PxCI
/// and PxSACT. The order matters (§10.7.2): what happens to a command that finishes between
/// your reads? A port whose registers read all-ones (0xffff_ffff) is gone: write nothing.
/// Port `n`'s registers start at `regs::port_base(n)`; `preg::IS`, `preg::CI`, `preg::SACT`.
pub fn acknowledge_and_snapshot<R: Registers>(regs: &R, port: u8) -> PortSnapshot {
    // Not written yet: the port never seems to say anything.
    PortSnapshot::default()
}

/// The slots among `issued` that have finished (§3.3.13 PxSACT, §3.3.14 PxCI). Remember that
/// a queued (NCQ) command leaves PxCI long before it is done.
pub fn finished_slots(issued: u32, snapshot: &PortSnapshot) -> u32 {
    // Not written yet: nothing ever finishes.
    0
}

/// Bytes the HBA moved for `slot`: PRDBC, in the slot's command header (§4.2.2). Read a DWORD
/// with `command_list.read::<u32>(offset)` (it returns a `Result`).
pub fn bytes_transferred(command_list: &PoolBlock, slot: u8) -> u32 {
    // Not written yet.
    0
}
