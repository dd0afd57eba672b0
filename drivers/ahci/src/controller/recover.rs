//! Error handling: recovery (AHCI 1.3.1 §6.2.2), the NCQ Command Error log (READ LOG EXT 10h,
//! ACS-3 §9.13), the retry policy, taking a port out of service, stopping the engines (§10.3.2)
//! and COMRESET (§10.4.2).
//!
//! # Recovery, step by step
//! 1. **NCQ successes first.** When a queued command fails, the Set Device Bits FISes the device
//!    sent before (or with) the error cleared the PxSACT bits of the commands that finished
//!    without error (SATA 3.x §13.6.4.2); those complete normally, before anything is reset.
//! 2. **Stop** (§6.2.2.1): clear PxCMD.ST, wait for PxCMD.CR to clear (the HBA then clears
//!    PxCI and PxSACT), clear PxSERR and PxIS.
//! 3. **Ask the device (NCQ).** With the engine restarted, READ LOG EXT for log page 10h, sent
//!    as a non-queued command in a command table of its own ([`Port`]'s `log_table`), names
//!    the failed tag, its failing LBA and its status and error registers, and takes the device
//!    out of its error state (ACS-3 §4.20.3: until then it aborts every queued command).
//! 4. **Reset when needed:** COMRESET if the engine would not stop, the device stays busy, or
//!    a device error was not cleared by reading the log (a non-queued error, or a device that
//!    does not answer READ LOG EXT — QEMU 7.2 does not, see below). A port that still will
//!    not stop is disabled and its buffers quarantined.
//! 5. **Decide**, then restart (ST): see the policy.
//!
//! # Retry policy (the same at queue depth 1 and 32, queued or not)
//! - The command that failed (the *culprit*: the tag the log names, the only command
//!   outstanding, or the one that timed out) is retried **once** (`RETRIES`), alone; if it
//!   fails again it fails for good, with an error naming the port, the command's LBA and the
//!   device's status and error bits (and, for NCQ, the failing LBA from the log). Two kinds are
//!   never retried because a retry cannot succeed: a timeout (the port was reset; a second
//!   wait would double the time to report it) and IDNF (the address does not exist).
//! - Commands the device aborted only because another one failed are re-issued at once, as
//!   they were, and do not use up their retry.
//! - When the culprit cannot be known — several commands were outstanding and the device has
//!   no usable log (non-queued commands, or READ LOG EXT refused or with a bad checksum) —
//!   every outstanding command is re-issued *alone*, one after the other, each using its one
//!   retry: the one that fails again while alone is the culprit and fails.
//! - A log that names no outstanding command (NQ=1 while only queued commands were
//!   outstanding, or a tag that was not outstanding) cannot be trusted: every outstanding
//!   command fails with [`CommandError::UnmatchedNcqLog`], and the port goes on working.
//!
//! # What QEMU 7.2 does
//! Its AHCI (`hw/ide/ahci.c`, `ncq_err`) reports a failed queued command with ERR/ABRT in the
//! status and leaves its PxSACT bit set, lets the other queued commands run to completion, and
//! (a bug fixed in QEMU 8.1) also sets the tag's bit in PxSERR. Its ATA core has no READ LOG
//! EXT: 2Fh is not in `ide_cmd_table` (`hw/ide/core.c`), so `ide_exec_cmd` aborts it (ABRT).
//! Under QEMU this driver therefore completes the commands that finished, finds the log
//! refused, resets the port, and takes the "culprit unknown" path above. The log path itself
//! is tested against the simulated HBA (`sim.rs`), which implements log 10h.

use super::{
    COMMAND_HEADER_BYTES, Cause, Controller, DEVICE_READY_US, DataMapping, ENGINE_STOP_US, PRDT_ENTRIES, PRDT_OFFSET,
    PortRegs, bits, put,
};
use crate::ata::{AtaCommand, CommandKind, LOG_NCQ_COMMAND_ERROR, NcqErrorLog, TaskFile};
use crate::buffer::IoBuffer;
use crate::error::CommandError;
use crate::prdt::{PRD_ENTRY_BYTES, build_prdt};
use crate::regs::{cmd, is, port as preg, ssts, tfd};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use device_io::{Clock, Registers};
use dma::FromDevice;

/// How long READ LOG EXT may take.
const LOG_READ_US: u64 = 1_000_000;
/// The command slot whose header READ LOG EXT borrows (saved and restored around it).
const LOG_SLOT: u8 = 0;

/// What recovery learned about which command failed.
enum Culprit {
    /// This slot failed, with this error.
    Known { slot: u8, error: CommandError },
    /// Several were outstanding and nothing says which failed.
    Unknown,
    /// The NCQ error log names no outstanding queued command.
    Unmatched(NcqErrorLog),
}

/// Whether a retry could succeed: not after a timeout, and not for an address the device does
/// not have (IDNF, ACS-3 §6.3.5).
fn retryable(error: &CommandError) -> bool {
    const IDNF: u8 = 1 << 4;
    match error {
        CommandError::Timeout { .. } => false,
        CommandError::Device { task_file, .. } => task_file.error & IDNF == 0,
        CommandError::Queued { log, .. } => log.task_file.error & IDNF == 0,
        _ => true,
    }
}

impl<R: Registers, C: Clock> Controller<R, C> {
    /// Error recovery: see the module documentation for the steps and the retry policy.
    pub(super) fn recover(&mut self, index: usize, cause: Cause) {
        let n = self.ports[index].number;
        let p = PortRegs::new(&self.regs, n);
        let tfd_reg = p.read(preg::TFD);
        let serr = p.read(preg::SERR);
        let sact = p.read(preg::SACT);
        let ci = p.read(preg::CI);
        self.ports[index].stats.recoveries += 1;
        match cause {
            Cause::Error { port_is } => log::error!(
                "{} port {n}: error: {} ({}), PxSERR {serr:#x}, {} command(s) outstanding; resetting the port (§6.2.2)",
                self.name,
                crate::ata::describe_port_is(port_is),
                TaskFile::from_tfd(tfd_reg),
                self.ports[index].issued.count_ones()
            ),
            Cause::Timeout { slot } => log::error!(
                "{} port {n}: slot {slot} timed out (PxTFD {tfd_reg:#x}, PxCI {ci:#x}, PxSACT {sact:#x}); resetting the port (§6.2.2)",
                self.name,
            ),
        }
        let device_error = matches!(cause, Cause::Error { port_is } if port_is & is::TFES != 0);
        let queued_error = device_error && self.ports[index].queued != 0;
        // Step 1: queued commands whose PxSACT bit the device cleared finished without error.
        if queued_error {
            for slot in bits(self.ports[index].queued & !sact) {
                self.complete(index, slot, Ok(()));
            }
        }
        let outstanding = self.ports[index].issued;
        let queued_mask = self.ports[index].queued;

        // Step 2: stop the command list.
        let p = PortRegs::new(&self.regs, n);
        p.clear(preg::CMD, cmd::ST);
        let mut stopped = self.clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::CR == 0);
        p.write(preg::SERR, u32::MAX);
        p.write(preg::IS, u32::MAX);
        let busy = |p: &PortRegs<'_, R>| p.read(preg::TFD) & (tfd::BSY | tfd::DRQ) != 0;

        // Step 3: the NCQ Command Error log.
        let mut log = None;
        if queued_error && stopped && !busy(&p) {
            p.set(preg::CMD, cmd::ST);
            let read = self.read_ncq_error_log(index);
            let p = PortRegs::new(&self.regs, n);
            match &read {
                Ok(entry) => log::warn!("{} port {n}: NCQ Command Error log (10h): {entry}", self.name),
                Err(why) => log::warn!(
                    "{} port {n}: the NCQ Command Error log (READ LOG EXT 10h) is not available: {why}; \
                     falling back to resetting the port and re-issuing outstanding commands alone (the one \
                     that fails alone is the culprit)",
                    self.name
                ),
            }
            log = Some(read);
            if p.read(preg::CMD) & cmd::ST != 0 && log.as_ref().is_some_and(|l| l.is_err()) {
                p.clear(preg::CMD, cmd::ST);
                stopped = self.clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::CR == 0);
            }
        }
        let log_read = matches!(log, Some(Ok(_)));
        let p = PortRegs::new(&self.regs, n);

        // Step 4: COMRESET when the device is stuck busy or the engine would not stop
        // (§6.2.2.1), and after a device error the log did not clear: the device keeps ERR in
        // its status until it is reset or executes a new command, and an NCQ command issued
        // next would be answered with that stale status (QEMU's AHCI does exactly this).
        if !stopped || busy(&p) || (device_error && !log_read) {
            self.ports[index].stats.comresets += 1;
            log::warn!(
                "{} port {n}: sending COMRESET (engine stopped: {stopped}, PxTFD {:#x})",
                self.name,
                p.read(preg::TFD)
            );
            comreset(&p, &self.clock);
            stopped = self.clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::CR == 0);
            p.set(preg::CMD, cmd::FRE);
            let _ = self.clock.poll_until(DEVICE_READY_US, || !busy(&p));
            p.write(preg::SERR, u32::MAX);
            p.write(preg::IS, u32::MAX);
            p.write(preg::IE, is::ENABLED);
        }
        if !stopped || busy(&p) {
            log::error!(
                "{} port {n}: recovery failed (PxCMD {:#x}, PxTFD {:#x}); port disabled, outstanding buffers quarantined",
                self.name,
                p.read(preg::CMD),
                p.read(preg::TFD)
            );
            self.disable_port(index, stopped);
            return;
        }
        if p.read(preg::CMD) & cmd::ST == 0 {
            p.set(preg::CMD, cmd::ST);
        }

        // Step 5: decide.
        let port = &mut self.ports[index];
        let alone = (outstanding.count_ones() == 1).then(|| outstanding.trailing_zeros() as u8);
        let error_of = |slot: u8, port_is: u32| {
            let f = port.slots[usize::from(slot)].as_ref()?;
            Some(if port_is & is::TFES != 0 {
                CommandError::Device {
                    port: n,
                    command: f.command.kind,
                    lba: f.command.lba,
                    task_file: TaskFile::from_tfd(tfd_reg),
                    port_is,
                }
            } else {
                CommandError::Interface { port: n, command: f.command.kind, port_is, serr }
            })
        };
        let culprit = match (cause, log) {
            (Cause::Timeout { slot }, _) => {
                port.stats.timeouts += 1;
                match port.slots[usize::from(slot)].as_ref() {
                    Some(f) => Culprit::Known {
                        slot,
                        error: CommandError::Timeout {
                            port: n,
                            command: f.command.kind,
                            lba: f.command.lba,
                            after_us: f.timeout_us,
                        },
                    },
                    None => Culprit::Unknown,
                }
            }
            (Cause::Error { .. }, Some(Ok(entry))) => {
                let named = !entry.non_queued && queued_mask & outstanding & (1 << entry.tag) != 0;
                match port.slots[usize::from(entry.tag)].as_ref() {
                    Some(f) if named => Culprit::Known {
                        slot: entry.tag,
                        error: CommandError::Queued {
                            port: n,
                            command: f.command.kind,
                            lba: f.command.lba,
                            log: entry,
                        },
                    },
                    _ => Culprit::Unmatched(entry),
                }
            }
            (Cause::Error { port_is }, _) => match alone.and_then(|slot| Some((slot, error_of(slot, port_is)?))) {
                Some((slot, error)) => Culprit::Known { slot, error },
                None => Culprit::Unknown,
            },
        };
        port.issued = 0;
        port.queued = 0;
        let mut to_fail = Vec::new();
        let mut innocent = Vec::new();
        for slot in bits(outstanding) {
            let Some(f) = port.slots[usize::from(slot)].as_mut() else { continue };
            match &culprit {
                Culprit::Known { slot: failed, error } if *failed == slot => {
                    if retryable(error) && f.retries_left > 0 {
                        f.retries_left -= 1;
                        log::warn!(
                            "{} port {n}: {} at LBA {} failed; retrying it once, alone",
                            self.name,
                            f.command.kind,
                            f.command.lba
                        );
                        port.retry_queue.push_back(slot);
                    } else {
                        to_fail.push((slot, error.clone()));
                    }
                }
                Culprit::Known { .. } => innocent.push(slot),
                Culprit::Unmatched(entry) => to_fail.push((
                    slot,
                    CommandError::UnmatchedNcqLog { port: n, command: f.command.kind, lba: f.command.lba, log: *entry },
                )),
                Culprit::Unknown if f.retries_left > 0 => {
                    f.retries_left -= 1;
                    port.retry_queue.push_back(slot);
                }
                Culprit::Unknown => to_fail.push((
                    slot,
                    CommandError::Aborted {
                        port: n,
                        command: f.command.kind,
                        reason: "failed again when retried after a port error",
                    },
                )),
            }
        }
        if let Culprit::Unmatched(entry) = &culprit {
            log::error!(
                "{} port {n}: the NCQ error log ({entry}) names no outstanding queued command (outstanding {outstanding:#x}); \
                 failing all {} of them",
                self.name,
                to_fail.len()
            );
        }
        for (slot, error) in to_fail {
            self.complete(index, slot, Err(error));
        }
        for slot in innocent {
            self.reissue(index, slot);
        }
    }

    /// Hands `slot`'s command to the HBA again, as it was built (command table and PRDT are
    /// untouched): after an error aborted it, or from the retry queue.
    pub(super) fn reissue(&mut self, index: usize, slot: u8) {
        let n = self.ports[index].number;
        let now = self.clock.now_us();
        let port = &mut self.ports[index];
        let Some(f) = port.slots[usize::from(slot)].as_mut() else { return };
        f.issued_at = now;
        f.retries += 1;
        let queued = f.command.kind.is_queued();
        put(&mut port.command_list, usize::from(slot) * COMMAND_HEADER_BYTES + 4, 0);
        port.stats.retried += 1;
        super::submit::issue(&PortRegs::new(&self.regs, n), port, slot, queued);
        port.issued |= 1 << slot;
        if queued {
            port.queued |= 1 << slot;
        }
    }

    /// READ LOG EXT for page 0 of the NCQ Command Error log (ACS-3 §7.23, §9.13), as a
    /// non-queued PIO data-in command, waited for by polling. The engine must be running with
    /// nothing issued. It uses the port's own `log_table` and borrows slot [`LOG_SLOT`]'s
    /// command header, which it restores, so the outstanding commands' structures stay intact.
    fn read_ncq_error_log(&mut self, index: usize) -> Result<NcqErrorLog, String> {
        let addr64 = self.caps.addr64;
        let n = self.ports[index].number;
        let buffer = IoBuffer::pages(self.dev.memory(), 512).map_err(|e| format!("no buffer for the log: {e}"))?;
        let mapping =
            self.dev.map_sg(vec![buffer], FromDevice).map_err(|e| format!("cannot map the log buffer: {}", e.error))?;
        let mapping = DataMapping::FromDevice(mapping);
        let prdt = match build_prdt(mapping.segments(), PRDT_ENTRIES, addr64) {
            Ok(prdt) => prdt,
            Err(e) => {
                drop(mapping.unmap());
                return Err(format!("cannot describe the log buffer: {e}"));
            }
        };
        let command =
            AtaCommand { kind: CommandKind::ReadLogExt, lba: u64::from(LOG_NCQ_COMMAND_ERROR), count: 1, tag: 0 };
        let port = &mut self.ports[index];
        let mut cfis = [0u8; PRDT_OFFSET];
        cfis[..crate::ata::H2D_FIS_LEN].copy_from_slice(&command.to_fis());
        let _ = port.log_table.write_bytes(0, &cfis);
        for (i, entry) in prdt.iter().enumerate() {
            let _ = port.log_table.write_bytes(PRDT_OFFSET + i * PRD_ENTRY_BYTES, &entry.to_bytes());
        }
        let header = usize::from(LOG_SLOT) * COMMAND_HEADER_BYTES;
        let saved: Vec<u32> = (0..8).map(|dw| port.command_list.read::<u32>(header + dw * 4).unwrap_or(0)).collect();
        let ctba = port.log_table.bus_addr().as_u64();
        put(&mut port.command_list, header, (crate::ata::H2D_FIS_LEN / 4) as u32 | (prdt.len() as u32) << 16);
        put(&mut port.command_list, header + 4, 0);
        put(&mut port.command_list, header + 8, ctba as u32);
        put(&mut port.command_list, header + 12, if addr64 { (ctba >> 32) as u32 } else { 0 });
        for dw in 4..8 {
            put(&mut port.command_list, header + dw * 4, 0);
        }
        let p = PortRegs::new(&self.regs, n);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        p.write(preg::CI, 1 << LOG_SLOT);
        port.stats.issued += 1;
        let finished = self
            .clock
            .poll_until(LOG_READ_US, || p.read(preg::CI) & (1 << LOG_SLOT) == 0 || p.read(preg::IS) & is::ERRORS != 0);
        let port_is = p.read(preg::IS);
        let task_file = TaskFile::from_tfd(p.read(preg::TFD));
        // The HBA must be done with the buffer before it is unmapped: stop the engine if the
        // command is still there.
        let idle = p.read(preg::CI) & (1 << LOG_SLOT) == 0 || {
            p.clear(preg::CMD, cmd::ST);
            self.clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::CR == 0)
        };
        let port = &mut self.ports[index];
        for (dw, value) in saved.iter().enumerate() {
            put(&mut port.command_list, header + dw * 4, *value);
        }
        if !idle {
            // Quarantined: the HBA may still write into it.
            core::mem::forget(mapping);
            return Err(String::from("READ LOG EXT did not finish and the engine would not stop"));
        }
        let buffers = mapping.unmap();
        p.write(preg::IS, port_is);
        if !finished {
            return Err(format!("READ LOG EXT did not complete within {} ms", LOG_READ_US / 1000));
        }
        if port_is & is::ERRORS != 0 || u32::from(task_file.status) & tfd::ERR != 0 {
            return Err(format!("the device refused READ LOG EXT: {task_file}"));
        }
        let page = buffers.first().map(|b| &b[..]).unwrap_or(&[]);
        NcqErrorLog::parse(page).map_err(|e| format!("{e}"))
    }

    /// Takes a port out of service. If its engine stopped, outstanding commands fail and their
    /// buffers come back; if not, the HBA might still write into them, so their mappings and
    /// buffers are leaked on purpose (quarantined) and the completions carry no buffers.
    pub(super) fn disable_port(&mut self, index: usize, engine_stopped: bool) {
        let port = &mut self.ports[index];
        port.disabled = true;
        let n = port.number;
        let slots: Vec<u8> = (0..port.slots.len() as u8).filter(|&s| port.slots[usize::from(s)].is_some()).collect();
        port.retry_queue.clear();
        for slot in slots {
            if !engine_stopped {
                let port = &mut self.ports[index];
                if let Some(f) = port.slots[usize::from(slot)].as_mut() {
                    core::mem::forget(core::mem::replace(&mut f.mapping, DataMapping::None));
                }
            }
            let command = self.ports[index].slots[usize::from(slot)].as_ref().map(|f| f.command.kind);
            if let Some(command) = command {
                self.complete(
                    index,
                    slot,
                    Err(CommandError::Aborted {
                        port: n,
                        command,
                        reason: "the port could not be recovered and is disabled",
                    }),
                );
            }
        }
    }
}

/// Stops the command engine, then FIS receive (§10.1.2 step 3, §10.3.2): clear ST, wait for CR
/// to clear; clear FRE, wait for FR to clear; 500 ms each. False if either stays set.
pub(super) fn stop_engines<R: Registers, C: Clock>(p: &PortRegs<'_, R>, clock: &C) -> bool {
    if p.read(preg::CMD) & cmd::ST != 0 {
        p.clear(preg::CMD, cmd::ST);
    }
    if !clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::CR == 0) {
        return false;
    }
    if p.read(preg::CMD) & cmd::FRE != 0 {
        p.clear(preg::CMD, cmd::FRE);
    }
    clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::FR == 0)
}

/// COMRESET (§10.4.2): PxSCTL.DET = 1 for at least 1 ms, then 0; wait up to 1 s for the link
/// (PxSSTS.DET = 3); clear PxSERR.
pub(super) fn comreset<R: Registers, C: Clock>(p: &PortRegs<'_, R>, clock: &C) {
    let sctl = p.read(preg::SCTL) & !0xF;
    p.write(preg::SCTL, sctl | 1);
    clock.delay_us(1_000);
    p.write(preg::SCTL, sctl);
    let _ = clock.poll_until(1_000_000, || p.read(preg::SSTS) & 0xF == ssts::DET_PRESENT);
    p.write(preg::SERR, u32::MAX);
}
