//! Error handling: recovery (AHCI 1.3.1 §6.2.2), taking a port out of service, stopping the
//! engines (§10.3.2) and COMRESET (§10.4.2).

use super::{Cause, Controller, DEVICE_READY_US, DataMapping, ENGINE_STOP_US, PortRegs, bits};
use crate::ata::TaskFile;
use crate::error::CommandError;
use crate::regs::{cmd, is, port as preg, ssts, tfd};
use alloc::vec::Vec;
use device_io::{Clock, Registers};

impl<R: Registers, C: Clock> Controller<R, C> {
    /// Error recovery (AHCI 1.3.1 §6.2.2): stop the command list (clear PxCMD.ST, wait for CR
    /// to clear), clear PxSERR and PxIS, send COMRESET (PxSCTL.DET, §10.4.2) if the device is
    /// still busy or the engine would not stop, restart (ST), then fail the command at fault and
    /// re-issue the others one at a time — a command that fails while alone is the culprit.
    pub(super) fn recover(&mut self, index: usize, cause: Cause) {
        let n = self.ports[index].number;
        let p = PortRegs::new(&self.regs, n);
        let tfd_reg = p.read(preg::TFD);
        let serr = p.read(preg::SERR);
        let outstanding = self.ports[index].issued;
        self.ports[index].stats.recoveries += 1;
        match cause {
            Cause::Error { port_is } => log::error!(
                "{} port {n}: error: {} ({}), PxSERR {serr:#x}, {} command(s) outstanding; resetting the port (§6.2.2)",
                self.name,
                crate::ata::describe_port_is(port_is),
                TaskFile::from_tfd(tfd_reg),
                outstanding.count_ones()
            ),
            Cause::Timeout { slot } => log::error!(
                "{} port {n}: slot {slot} timed out (PxTFD {tfd_reg:#x}, PxCI {:#x}, PxSACT {:#x}); resetting the port (§6.2.2)",
                self.name,
                p.read(preg::CI),
                p.read(preg::SACT)
            ),
        }
        p.clear(preg::CMD, cmd::ST);
        let mut stopped = self.clock.poll_until(ENGINE_STOP_US, || p.read(preg::CMD) & cmd::CR == 0);
        p.write(preg::SERR, u32::MAX);
        p.write(preg::IS, u32::MAX);
        let busy = |p: &PortRegs<'_, R>| p.read(preg::TFD) & (tfd::BSY | tfd::DRQ) != 0;
        // COMRESET when the device is stuck busy or the engine would not stop (§6.2.2.1), and
        // also after a device error: the device keeps ERR in its status until it is reset or
        // executes a new non-queued command, and an NCQ command issued next would be answered
        // with that stale status (QEMU's AHCI does exactly this).
        let device_error = matches!(cause, Cause::Error { port_is } if port_is & is::TFES != 0);
        if !stopped || busy(&p) || device_error {
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
        p.set(preg::CMD, cmd::ST);

        let port = &mut self.ports[index];
        let alone = (outstanding.count_ones() == 1).then(|| outstanding.trailing_zeros() as u8);
        let culprit = match cause {
            Cause::Timeout { slot } => Some(slot),
            Cause::Error { .. } => alone,
        };
        port.issued = 0;
        port.queued = 0;
        let mut to_fail = Vec::new();
        for slot in bits(outstanding) {
            let Some(f) = port.slots[usize::from(slot)].as_mut() else { continue };
            if Some(slot) == culprit {
                let error = match cause {
                    Cause::Timeout { .. } => {
                        port.stats.timeouts += 1;
                        CommandError::Timeout {
                            port: n,
                            command: f.command.kind,
                            lba: f.command.lba,
                            after_us: f.timeout_us,
                        }
                    }
                    Cause::Error { port_is } if port_is & is::TFES != 0 => CommandError::Device {
                        port: n,
                        command: f.command.kind,
                        lba: f.command.lba,
                        task_file: TaskFile::from_tfd(tfd_reg),
                        port_is,
                    },
                    Cause::Error { port_is } => {
                        CommandError::Interface { port: n, command: f.command.kind, port_is, serr }
                    }
                };
                to_fail.push((slot, error));
            } else if f.retries_left > 0 {
                f.retries_left -= 1;
                port.retry_queue.push_back(slot);
            } else {
                to_fail.push((
                    slot,
                    CommandError::Aborted {
                        port: n,
                        command: f.command.kind,
                        reason: "failed again when retried after a port error",
                    },
                ));
            }
        }
        for (slot, error) in to_fail {
            self.complete(index, slot, Err(error));
        }
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
