//! Completion: the interrupt *top half* (AHCI 1.3.1 §10.7.2), the *bottom half* that services ports
//! in thread context, deadlines, and finishing a command (unmapping its buffers).

use super::{Cause, Completion, Controller, PortRegs, RequestId, bits};
use crate::ata::CommandKind;
use crate::error::CommandError;
use crate::regs::{hba, is, port as preg};
use alloc::vec::Vec;
use device_io::{Clock, Registers};

impl<R: Registers, C: Clock> Controller<R, C> {
    /// Takes the completion of `id`, if it has completed.
    pub fn take_completion(&mut self, id: RequestId) -> Option<Completion> {
        self.completions.remove(&id)
    }

    /// Takes every completion waiting.
    pub fn drain_completions(&mut self) -> Vec<Completion> {
        core::mem::take(&mut self.completions).into_values().collect()
    }

    /// The interrupt handler's work: the *top half* (AHCI 1.3.1 §10.7.2 steps 1–3). Reads IS;
    /// for each port with its bit set, reads PxIS and clears it, and remembers the bits; then
    /// clears those IS bits, which lowers an INTx line. False when no port of this HBA asked
    /// for attention (a shared line, or a spurious interrupt).
    ///
    /// It deliberately does *not* complete commands. Completing means unmapping buffers (IOMMU
    /// page tables, invalidation queue, bounce slots) and allocating the completion record, and
    /// every one of those takes a lock that code interrupted by this handler may be holding: on
    /// a single CPU that is a deadlock, not a wait. So the handler touches only this HBA's
    /// registers and its own fields, and [`Controller::service`] (the *bottom half*, called by
    /// waiters in thread context) finishes the work. Linux splits drivers the same way (hard
    /// IRQ handler versus threaded handler or NAPI poll).
    pub fn handle_interrupt(&mut self) -> bool {
        let pending = self.regs.read32(hba::IS);
        if pending == 0 || pending == u32::MAX {
            return false;
        }
        self.interrupts += 1;
        for port in self.ports.iter_mut() {
            if pending & (1 << port.number) != 0 {
                let p = PortRegs::new(&self.regs, port.number);
                let port_is = p.read(preg::IS);
                if port_is != 0 && port_is != u32::MAX {
                    p.write(preg::IS, port_is);
                    port.pending_is |= port_is;
                }
            }
        }
        self.regs.write32(hba::IS, pending);
        true
    }

    /// Whether the interrupt handler left work for [`Controller::service`].
    pub fn has_pending_work(&self) -> bool {
        self.ports.iter().any(|p| p.pending_is != 0)
    }

    /// The *bottom half*: looks at every port, completes finished commands (unmapping their
    /// buffers), recovers from errors, enforces deadlines and re-issues retries. Call it from
    /// thread context: after an interrupt (see [`Controller::has_pending_work`]) or, without
    /// interrupts, to poll. Returns completions now waiting.
    pub fn service(&mut self) -> usize {
        let pending = self.regs.read32(hba::IS);
        for index in 0..self.ports.len() {
            self.service_port(index);
        }
        if pending != 0 && pending != u32::MAX {
            self.regs.write32(hba::IS, pending);
        }
        self.completions.len()
    }

    /// Checks deadlines only (no register access unless one passed). For waiters that rely on
    /// the interrupt for completions.
    pub fn check_timeouts(&mut self) {
        let now = self.clock.now_us();
        for index in 0..self.ports.len() {
            let late = self.ports[index].slots.iter().flatten().any(|f| now.saturating_sub(f.issued_at) > f.timeout_us);
            if late {
                self.service_port(index);
            }
        }
    }

    pub(super) fn service_port(&mut self, index: usize) {
        if self.ports[index].disabled {
            self.ports[index].pending_is = 0;
            return;
        }
        let n = self.ports[index].number;
        let p = PortRegs::new(&self.regs, n);
        // Read and clear PxIS *before* snapshotting CI and SACT (AHCI 1.3.1 §10.7.2 order).
        // The other order loses completions: a command that finishes after the CI snapshot but
        // before PxIS is cleared has its interrupt status cleared while it still looks busy, and
        // with MSI nothing ever signals it again. In this order, anything that completes after
        // the clear sets PxIS anew and interrupts again; a command that fails keeps its CI bit
        // (the HBA stops on error, §6.2.2), so it is never mistaken for a success, and its error
        // bits in PxIS bring us back here for recovery.
        let snapshot = crate::lab::complete::acknowledge_and_snapshot(&self.regs, n);
        let fresh = snapshot.interrupt_status;
        // What the interrupt handler already cleared counts too (it cleared it before this
        // snapshot, so the same order holds).
        let port_is =
            if fresh == u32::MAX { fresh } else { fresh | core::mem::take(&mut self.ports[index].pending_is) };
        if port_is != u32::MAX && port_is & is::ERRORS != 0 {
            self.recover(index, Cause::Error { port_is });
        } else if port_is & (is::PCS | is::PRCS) != 0 {
            log::warn!("{} port {n}: link change (PxIS {port_is:#x}, PxSERR {:#x})", self.name, p.read(preg::SERR));
            p.write(preg::SERR, u32::MAX);
        }
        if port_is & is::ERRORS == 0 {
            let port = &self.ports[index];
            let done = crate::lab::complete::finished_slots(port.issued, &snapshot);
            for slot in bits(done) {
                self.complete(index, slot, Ok(()));
            }
        }
        // Deadlines.
        let now = self.clock.now_us();
        let late = self.ports[index]
            .slots
            .iter()
            .enumerate()
            .find(|(_, f)| f.as_ref().is_some_and(|f| now.saturating_sub(f.issued_at) > f.timeout_us))
            .map(|(s, _)| s as u8);
        if let Some(slot) = late {
            self.recover(index, Cause::Timeout { slot });
        }
        // Re-issue, one at a time, what an error interrupted.
        let port = &mut self.ports[index];
        if port.issued == 0 && !port.disabled {
            while let Some(slot) = port.retry_queue.pop_front() {
                if port.slots[usize::from(slot)].is_some() {
                    self.reissue(index, slot);
                    break;
                }
            }
        }
    }

    /// Finishes `slot`: unmaps its buffers (the HBA is done with them) and records the result.
    pub(super) fn complete(&mut self, index: usize, slot: u8, result: Result<(), CommandError>) {
        let port = &mut self.ports[index];
        port.issued &= !(1 << slot);
        port.queued &= !(1 << slot);
        let Some(f) = port.slots[usize::from(slot)].take() else { return };
        let bytes_transferred = crate::lab::complete::bytes_transferred(&port.command_list, slot);
        match &result {
            Ok(()) => {
                port.stats.completed += 1;
                match f.command.kind {
                    CommandKind::ReadDmaExt | CommandKind::ReadFpdmaQueued => {
                        port.stats.sectors_read += u64::from(f.command.count)
                    }
                    CommandKind::WriteDmaExt | CommandKind::WriteFpdmaQueued => {
                        port.stats.sectors_written += u64::from(f.command.count)
                    }
                    _ => {}
                }
            }
            Err(e) => {
                port.stats.failed += 1;
                log::error!("{}: {e}", self.name);
            }
        }
        let completion = Completion {
            id: f.id,
            port: port.number,
            command: f.command,
            result,
            buffers: f.mapping.unmap(),
            bytes_transferred,
            retries: f.retries,
            latency_us: self.clock.now_us().saturating_sub(f.submitted_at),
        };
        self.completions.insert(completion.id, completion);
    }
}
