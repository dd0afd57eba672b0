//! The host half of the AHCI labs' grader: the controller, running whatever slot code this
//! build has (the reference in `slot.rs`, or a student's file under a lab feature), against the
//! simulated HBA. Every check that fails says what it found, the rule, where AHCI 1.3.1 says
//! so, and which section of the guide explains it.
//!
//! `cargo xtask lab grade ahci-issue` runs `issue::*`, `… ahci-complete` runs `complete::*`;
//! `cargo xtask test` runs both on the reference (must pass) and on the stubs (must fail).

extern crate std;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;

use device_io::Registers;
use dma::mapper::Direct;
use dma::sim::{SimDevice, SimMemory};
use dma::{BusAddr, DmaDevice, PhysMemory};

use crate::ata::{AtaCommand, CommandKind};
use crate::error::CommandError;
use crate::pattern::{check_sector, fill_sector};
use crate::regs::{port as preg, port_base};
use crate::sim::SimHba;
use crate::{Completion, Controller, IoBuffer, Request, RequestId, SubmitOptions};

const ISSUE_READ: &str = "docs/guide/07-ahci-sector.md (\"The chain of structures\", \"A read, step by step\") and docs/labs/ahci-issue/README.md";
const COMPLETE_READ: &str = "docs/guide/07-ahci-sector.md (\"A read, step by step\", \"Why the handler must not complete \
                             commands\") and docs/labs/ahci-complete/README.md";

fn fail(found: String, rule: &str, read: &str) -> ! {
    panic!("\n  found: {found}\n  rule:  {rule}\n  read:  {read}\n")
}

/// The driver's own test clock: 10 µs per reading.
use crate::tests::TestClock;

struct Rig {
    ctl: Controller<&'static SimHba, TestClock>,
    sim: &'static SimHba,
    phys: Arc<dyn PhysMemory>,
    bus: SimDevice,
}

const PLAIN: SubmitOptions = SubmitOptions { queued: false, timeout_us: 1_000_000, check_range: true };
const NCQ: SubmitOptions = SubmitOptions { queued: true, timeout_us: 1_000_000, check_range: true };
const SEED: u64 = 0x01AB_5EED;

/// One port with a 4096-sector disk holding the pattern of SEED, 64-bit HBA, memory above 4 GiB.
fn rig(read: &str) -> Rig {
    let mem = SimMemory::low_and_high(8 << 20, 32 << 20);
    let phys: Arc<dyn PhysMemory> = mem;
    let dev = DmaDevice::new("00:1f.2 ahci-lab", phys.clone(), Arc::new(Direct::new(phys.clone())));
    let sim: &'static SimHba = alloc::boxed::Box::leak(alloc::boxed::Box::new(SimHba::new(&dev, 1, true)));
    sim.attach_disk(0, 4096);
    sim.with_port(0, |p| {
        for (lba, s) in p.disk.as_mut().unwrap().data.chunks_mut(512).enumerate() {
            fill_sector(s, lba as u64, SEED);
        }
    });
    let bus = SimDevice::new(&dev);
    let ctl = Controller::init("00:1f.2 ahci-lab", sim, TestClock::default(), dev).expect("init");
    if ctl.port(0).and_then(|p| p.info()).is_none() {
        let executed = sim.with_port(0, |p| p.executed.len());
        let ci = sim.read32(port_base(0) + preg::CI);
        let faults = sim.faults();
        let hint = match (executed, ci) {
            _ if !faults.is_empty() => format!(
                "the HBA could not carry it out: {faults:?}. An address it read is wrong (CTBA and CTBAU, \
                 the PRD entries' DBA and DBAU?) or a structure is malformed (§4.2.2, §4.2.3)"
            ),
            (0, 0) => "the HBA was never told: PxCI stayed 0. issue_slot sets the slot's bit in PxCI \
                       (port_base(port) + 0x38) (AHCI 1.3.1 §3.3.14, §5.3.2)"
                .into(),
            (0, _) => format!("PxCI = {ci:#x} but the HBA executed nothing (faults: {:?})", sim.faults()),
            _ => format!(
                "the HBA executed {executed} command(s) (faults: {:?}) but the driver never saw IDENTIFY finish: \
                 PxCI = {ci:#x}, so finished_slots must report slot 0",
                sim.faults()
            ),
        };
        fail(format!("IDENTIFY DEVICE at bring-up did not complete: {hint}"), "AHCI 1.3.1 §5.3", read);
    }
    Rig { ctl, sim, phys, bus }
}

impl Rig {
    fn buffer(&self, bytes: usize) -> IoBuffer {
        IoBuffer::pages(&self.phys, bytes).unwrap()
    }

    /// Services the port until `id` completes, or `None` after `rounds` passes.
    fn wait(&mut self, id: RequestId, rounds: usize) -> Option<Completion> {
        for _ in 0..rounds {
            self.ctl.service();
            if let Some(c) = self.ctl.take_completion(id) {
                return Some(c);
            }
        }
        None
    }

    fn read_bus(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = alloc::vec![0u8; len];
        self.bus.read(BusAddr(addr), &mut out).expect("bus read");
        out
    }

    fn dword(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.read_bus(addr, 4).try_into().unwrap())
    }

    fn reg(&self, offset: usize) -> u32 {
        self.sim.read32(port_base(0) + offset)
    }

    fn defer(&self, on: bool) {
        self.sim.with_port(0, |p| {
            p.defer = on;
            p.defer_non_queued = on;
        });
    }

    fn check_pattern(&self, c: &Completion, lba: u64, read: &str) {
        if let Err(e) = &c.result {
            fail(format!("the read of LBA {lba} failed: {e}"), "AHCI 1.3.1 §5.3", read);
        }
        let data: Vec<u8> = c.buffers.iter().flat_map(|b| b.iter().copied()).collect();
        for (i, s) in data.chunks(512).enumerate() {
            if check_sector(s, lba + i as u64, SEED).is_err() {
                fail(
                    format!("sector {} of the read of LBA {lba} does not hold that sector's bytes", i),
                    "the PRDT lists the buffers in order; the FIS names the LBA and count (§4.2.3)",
                    read,
                );
            }
        }
    }
}

/// Registers that answer reads from a table and log every access in order.
struct Scripted {
    values: Vec<(usize, u32)>,
    log: RefCell<Vec<(char, usize, u32)>>,
}

impl Scripted {
    fn new(values: &[(usize, u32)]) -> Self {
        Scripted { values: values.to_vec(), log: RefCell::new(Vec::new()) }
    }
    fn writes(&self) -> Vec<(usize, u32)> {
        self.log.borrow().iter().filter(|a| a.0 == 'w').map(|a| (a.1, a.2)).collect()
    }
    fn position(&self, kind: char, offset: usize) -> Option<usize> {
        self.log.borrow().iter().position(|a| a.0 == kind && a.1 == offset)
    }
}

impl Registers for Scripted {
    fn read32(&self, offset: usize) -> u32 {
        let v = self.values.iter().find(|v| v.0 == offset).map_or(0, |v| v.1);
        self.log.borrow_mut().push(('r', offset, v));
        v
    }
    fn write32(&self, offset: usize, value: u32) {
        self.log.borrow_mut().push(('w', offset, value));
    }
}

/// The issue lab: `fill_slot` and `issue_slot`.
mod issue {
    use super::*;

    #[test]
    fn identify_reaches_the_disk() {
        let r = rig(ISSUE_READ);
        let info = r.ctl.port(0).and_then(|p| p.info()).unwrap();
        if info.model != "SIM HARDDISK" || info.sectors != 4096 {
            fail(
                format!("IDENTIFY returned model {:?}, {} sectors", info.model, info.sectors),
                "the 512 bytes of IDENTIFY data land in the buffer the PRDT names (§4.2.3.3)",
                ISSUE_READ,
            );
        }
        if !r.sim.faults().is_empty() {
            fail(format!("the HBA reported {:?}", r.sim.faults()), "AHCI 1.3.1 §4.2", ISSUE_READ);
        }
    }

    #[test]
    fn headers_and_tables_say_what_the_hba_needs() {
        let mut r = rig(ISSUE_READ);
        r.defer(true);
        // Slot 0: a read of 8 sectors into two buffers; slot 1: a write of 4 sectors.
        let read = Request::Read { lba: 40, buffers: alloc::vec![r.buffer(2048), r.buffer(2048)] };
        let read_id = r.ctl.submit_with(0, read, PLAIN).unwrap();
        let mut data = r.buffer(2048);
        for (i, s) in data.chunks_mut(512).enumerate() {
            fill_sector(s, 3000 + i as u64, 0x77);
        }
        let write_id = r.ctl.submit_with(0, Request::Write { lba: 3000, buffers: alloc::vec![data] }, PLAIN).unwrap();
        let (clb, _, table0) = r.ctl.port(0).unwrap().structure_addresses();
        for (slot, write, prdtl, command) in [
            (0u64, false, 2u32, AtaCommand { kind: CommandKind::ReadDmaExt, lba: 40, count: 8, tag: 0 }),
            (1, true, 1, AtaCommand { kind: CommandKind::WriteDmaExt, lba: 3000, count: 4, tag: 1 }),
        ] {
            let header = clb + slot * 32;
            let dw0 = r.dword(header);
            if dw0 & 0x1F != 5 {
                fail(
                    format!("slot {slot}'s header has CFL = {} (DW0 = {dw0:#x})", dw0 & 0x1F),
                    "CFL (DW0 bits 4:0) is the command FIS length in DWORDs: a Register H2D FIS is 20 bytes, 5 \
                     DWORDs (§4.2.2)",
                    ISSUE_READ,
                );
            }
            if (dw0 & (1 << 6) != 0) != write {
                fail(
                    format!("slot {slot} ({}) has W = {} in DW0 {dw0:#x}", command.kind.name(), dw0 >> 6 & 1),
                    "W (DW0 bit 6) says the data goes from memory to the device: set for writes, clear for reads \
                     (§4.2.2)",
                    ISSUE_READ,
                );
            }
            if dw0 >> 16 != prdtl {
                fail(
                    format!("slot {slot}'s header has PRDTL = {} for {prdtl} PRD entries", dw0 >> 16),
                    "PRDTL (DW0 bits 31:16) is the number of PRDT entries; the HBA reads exactly that many (§4.2.2)",
                    ISSUE_READ,
                );
            }
            if r.dword(header + 4) != 0 {
                fail(
                    format!("slot {slot}'s PRDBC (DW1) is {:#x} before the HBA ran it", r.dword(header + 4)),
                    "software clears PRDBC; the HBA counts the bytes it moves into it (§4.2.2)",
                    ISSUE_READ,
                );
            }
            let ctba = u64::from(r.dword(header + 8)) | u64::from(r.dword(header + 12)) << 32;
            let want = table0 + slot * crate::controller::COMMAND_TABLE_BYTES as u64;
            let tables_contiguous = r.read_bus(ctba, 1)[0] == 0x27;
            if ctba % 128 != 0 || !tables_contiguous || (slot == 0 && ctba != want) {
                fail(
                    format!("slot {slot}'s header points at CTBA {ctba:#x} (slot 0's table is at {table0:#x})"),
                    "CTBA/CTBAU (DW2, DW3) hold the full bus address of the slot's command table, 128-byte aligned \
                     (§4.2.2)",
                    ISSUE_READ,
                );
            }
            let fis = r.read_bus(ctba, 20);
            if fis[..] != command.to_fis()[..] {
                fail(
                    format!("slot {slot}'s command table starts with {:02x?}, expected {:02x?}", fis, command.to_fis()),
                    "the command FIS goes at offset 0 of the command table (§4.2.3.1)",
                    ISSUE_READ,
                );
            }
            for i in 0..prdtl as u64 {
                let dw3 = r.dword(ctba + 0x80 + i * 16 + 12);
                let len = 2048;
                if dw3 & 0x3F_FFFF != len - 1 {
                    fail(
                        format!("slot {slot}, PRD {i}: DBC = {:#x} for a {len}-byte buffer", dw3 & 0x3F_FFFF),
                        "DBC (DW3 bits 21:0) is the byte count minus one, so bit 0 is always 1 (§4.2.3.3)",
                        ISSUE_READ,
                    );
                }
            }
        }
        r.sim.run_deferred(0);
        let c = r.wait(read_id, 1000).expect("the read completes");
        r.check_pattern(&c, 40, ISSUE_READ);
        let w = r.wait(write_id, 1000).expect("the write completes");
        let on_disk = r.sim.with_port(0, |p| p.disk.as_ref().unwrap().data[3000 * 512..3004 * 512].to_vec());
        if w.result.is_err()
            || !on_disk.chunks(512).enumerate().all(|(i, s)| check_sector(s, 3000 + i as u64, 0x77).is_ok())
        {
            fail("the written sectors on the disk do not hold the buffer's bytes".into(), "§4.2.3.3", ISSUE_READ);
        }
        if !r.sim.faults().is_empty() {
            fail(format!("the HBA reported {:?}", r.sim.faults()), "AHCI 1.3.1 §4.2", ISSUE_READ);
        }
    }

    #[test]
    fn queued_commands_set_pxsact() {
        let mut r = rig(ISSUE_READ);
        r.defer(true);
        let ids: Vec<RequestId> = (0..3u64)
            .map(|i| {
                let request = Request::Read { lba: 100 + 8 * i, buffers: alloc::vec![r.buffer(4096)] };
                r.ctl.submit_with(0, request, NCQ).unwrap()
            })
            .collect();
        let (sact, ci) = (r.reg(preg::SACT), r.reg(preg::CI));
        if sact & 0b111 != 0b111 || ci & 0b111 != 0b111 {
            fail(
                format!("with NCQ commands in slots 0..2: PxSACT = {sact:#x}, PxCI = {ci:#x}"),
                "a queued command's tag is set in PxSACT before its slot is set in PxCI: the device completes \
                 tags by clearing PxSACT bits (§5.3.2, SATA 3.x §13.6)",
                ISSUE_READ,
            );
        }
        r.sim.run_deferred(0);
        for (i, id) in ids.into_iter().enumerate() {
            let c = r.wait(id, 1000).expect("the NCQ read completes");
            r.check_pattern(&c, 100 + 8 * i as u64, ISSUE_READ);
        }
    }

    #[test]
    fn issue_slot_writes_only_the_new_bit() {
        // Slot 0 is still busy: PxCI and PxSACT read 1.
        let base = port_base(3);
        let regs = Scripted::new(&[(base + preg::CI, 1), (base + preg::SACT, 1)]);
        crate::lab::issue::issue_slot(&regs, 3, 5, true);
        let writes = regs.writes();
        if writes != [(base + preg::SACT, 1 << 5), (base + preg::CI, 1 << 5)] {
            fail(
                format!("issue_slot(port 3, slot 5, queued) wrote {writes:x?} (offset, value)"),
                "exactly two writes: 1 << 5 to port 3's PxSACT (0x100 + 3 × 0x80 + 0x34), then 1 << 5 to its PxCI \
                 (+ 0x38). Both are write-1-to-set: writing back bits you read re-issues a slot that finished \
                 in between (§3.3.13, §3.3.14)",
                ISSUE_READ,
            );
        }
        let regs = Scripted::new(&[]);
        crate::lab::issue::issue_slot(&regs, 0, 2, false);
        if regs.writes() != [(port_base(0) + preg::CI, 1 << 2)] {
            fail(
                format!("issue_slot(port 0, slot 2, not queued) wrote {:x?}", regs.writes()),
                "a non-queued command sets only its PxCI bit; PxSACT is for NCQ tags (§5.3.2)",
                ISSUE_READ,
            );
        }
    }
}

/// The completion lab: `acknowledge_and_snapshot`, `finished_slots` and `bytes_transferred`.
mod complete {
    use super::*;

    #[test]
    fn a_read_completes_with_its_data_and_byte_count() {
        let mut r = rig(COMPLETE_READ);
        let id = r.ctl.submit_with(0, Request::Read { lba: 7, buffers: alloc::vec![r.buffer(4096)] }, PLAIN).unwrap();
        let Some(c) = r.wait(id, 100) else {
            fail(
                format!("the HBA finished slot 0 (PxCI = {:#x}) but no completion came", r.reg(preg::CI)),
                "a slot that was issued and whose PxCI and PxSACT bits are clear has finished (§3.3.13, §3.3.14)",
                COMPLETE_READ,
            )
        };
        r.check_pattern(&c, 7, COMPLETE_READ);
        if c.bytes_transferred != 4096 {
            fail(
                format!("the completion says {} bytes moved; the HBA wrote 4096 into PRDBC", c.bytes_transferred),
                "PRDBC is DW1 (byte offset 4) of the slot's 32-byte command header (§4.2.2)",
                COMPLETE_READ,
            );
        }
    }

    #[test]
    fn nothing_completes_while_pxci_is_set() {
        let mut r = rig(COMPLETE_READ);
        r.defer(true);
        let id = r.ctl.submit_with(0, Request::Read { lba: 9, buffers: alloc::vec![r.buffer(1024)] }, PLAIN).unwrap();
        if r.wait(id, 3).is_some() {
            fail(
                "slot 0 was reported finished while its PxCI bit is still set".into(),
                "the HBA clears PxCI when the command is done; until then it may still write the buffer, which \
                 the driver unmaps on completion: a DMA use-after-unmap (§3.3.14, §5.3.8)",
                COMPLETE_READ,
            );
        }
        r.sim.run_deferred(0);
        let c = r
            .wait(id, 100)
            .unwrap_or_else(|| fail("the command finished but no completion came".into(), "§3.3.14", COMPLETE_READ));
        r.check_pattern(&c, 9, COMPLETE_READ);
    }

    #[test]
    fn queued_commands_complete_when_pxsact_clears() {
        let mut r = rig(COMPLETE_READ);
        r.defer(true);
        let ids: Vec<RequestId> = (0..3u64)
            .map(|i| {
                let request = Request::Read { lba: 200 + 8 * i, buffers: alloc::vec![r.buffer(4096)] };
                r.ctl.submit_with(0, request, NCQ).unwrap()
            })
            .collect();
        // The device accepts the three commands: PxCI clears, PxSACT stays.
        r.sim.accept_queued(0);
        r.ctl.service();
        if !r.ctl.drain_completions().is_empty() {
            fail(
                format!(
                    "NCQ commands reported finished with PxCI = {:#x}, PxSACT = {:#x}",
                    r.reg(preg::CI),
                    r.reg(preg::SACT)
                ),
                "for a queued command the HBA clears PxCI as soon as the device accepts it; only PxSACT clearing \
                 (a Set Device Bits FIS) says it is done (§3.3.13, SATA 3.x §13.6.4)",
                COMPLETE_READ,
            );
        }
        // They finish, last first.
        r.sim.run_deferred(0);
        for (i, id) in ids.into_iter().enumerate() {
            let c = r.wait(id, 100).unwrap_or_else(|| {
                fail(format!("NCQ slot {i} finished (PxSACT clear) but no completion came"), "§3.3.13", COMPLETE_READ)
            });
            r.check_pattern(&c, 200 + 8 * i as u64, COMPLETE_READ);
        }
    }

    #[test]
    fn a_failed_read_is_reported_as_a_device_error() {
        let mut r = rig(COMPLETE_READ);
        r.sim.with_port(0, |p| p.fail_lbas = Some(300..301));
        let id = r.ctl.submit_with(0, Request::Read { lba: 300, buffers: alloc::vec![r.buffer(512)] }, PLAIN).unwrap();
        let c = r
            .wait(id, 200_000)
            .unwrap_or_else(|| fail("the failed read never completed".into(), "§6.2.2", COMPLETE_READ));
        if !matches!(c.result, Err(CommandError::Device { .. })) {
            fail(
                format!("the read of a bad sector ended with {:?}", c.result),
                "the device's error shows as PxIS.TFES: acknowledge_and_snapshot must return the PxIS it cleared, \
                 so the driver's recovery sees the error at once instead of waiting for the deadline (§6.1.2)",
                COMPLETE_READ,
            );
        }
    }

    #[test]
    fn pxis_is_acknowledged_before_pxci_is_read() {
        let base = port_base(2);
        let regs = Scripted::new(&[(base + preg::IS, 0x1), (base + preg::CI, 0x4), (base + preg::SACT, 0x8)]);
        let snapshot = crate::lab::complete::acknowledge_and_snapshot(&regs, 2);
        let (is_write, ci_read, sact_read) = (
            regs.position('w', base + preg::IS),
            regs.position('r', base + preg::CI),
            regs.position('r', base + preg::SACT),
        );
        let ok = |read: Option<usize>| matches!((is_write, read), (Some(w), Some(r)) if w < r);
        if regs.writes() != [(base + preg::IS, 1)] || !ok(ci_read) || !ok(sact_read) {
            let named: Vec<String> = regs
                .log
                .borrow()
                .iter()
                .map(|&(kind, offset, value)| {
                    let reg = match offset.wrapping_sub(base) {
                        preg::IS => "PxIS",
                        preg::CI => "PxCI",
                        preg::SACT => "PxSACT",
                        _ => "other",
                    };
                    format!("{} {reg} {value:#x}", if kind == 'r' { "read" } else { "write" })
                })
                .collect();
            fail(
                format!("port 2: {}", named.join(", ")),
                "read PxIS, write the same bits back to clear them, *then* read PxCI and PxSACT: a command that \
                 finishes after the snapshot sets PxIS again; in the other order its status is cleared while it \
                 still looked busy, and with MSI nothing signals it again (§10.7.2)",
                COMPLETE_READ,
            );
        }
        let want = crate::slot::complete::PortSnapshot { interrupt_status: 1, ci: 4, sact: 8 };
        if snapshot != want {
            fail(format!("returned {snapshot:?}, expected {want:?}"), "§3.3.5, §3.3.13, §3.3.14", COMPLETE_READ);
        }
        let gone =
            Scripted::new(&[(base + preg::IS, u32::MAX), (base + preg::CI, u32::MAX), (base + preg::SACT, u32::MAX)]);
        crate::lab::complete::acknowledge_and_snapshot(&gone, 2);
        if !gone.writes().is_empty() {
            fail(
                format!("on a port that reads all-ones you wrote {:x?}", gone.writes()),
                "all-ones is what a vanished device returns: there is nothing to acknowledge (PCIe master abort)",
                COMPLETE_READ,
            );
        }
        let finished = crate::lab::complete::finished_slots(0b1111, &want);
        if finished != 0b0011 {
            fail(
                format!("finished_slots(issued 0b1111, CI 0b0100, SACT 0b1000) = {finished:#b}, expected 0b11"),
                "a slot has finished when its PxCI and PxSACT bits are both clear (§3.3.13, §3.3.14)",
                COMPLETE_READ,
            );
        }
    }
}
