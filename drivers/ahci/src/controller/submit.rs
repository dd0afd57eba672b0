//! Submission (AHCI 1.3.1): checking a request, mapping its buffers, filling the command header
//! (§4.2.2), the command table and its PRDT (§4.2.3), and issuing it (§5.3.2).

use super::{
    Controller, DataMapping, InFlight, MAX_SECTORS_PER_COMMAND, PRDT_ENTRIES, Port, PortRegs, RETRIES, Request,
    RequestId, SubmitOptions,
};
use crate::ata::{AtaCommand, CommandKind};
use crate::error::SubmitError;
use crate::prdt::build_prdt;
use alloc::vec;
use alloc::vec::Vec;
use device_io::{Clock, Registers};
use dma::{FromDevice, ToDevice};

impl<R: Registers, C: Clock> Controller<R, C> {
    /// Sends `request` to port `port` with default options. See [`Controller::submit_with`].
    pub fn submit(&mut self, port: u8, request: Request) -> Result<RequestId, SubmitError> {
        self.submit_with(port, request, SubmitOptions::default())
    }

    /// Checks `request`, maps its buffers, fills a command table and issues it.
    ///
    /// Refused before anything reaches the device (the buffers are dropped): an unknown or
    /// disabled port, zero length, a length that is not whole sectors, an odd buffer length
    /// or address, a range past the end, more than 65,535 sectors, a full queue, or a mix of
    /// queued and non-queued commands (which SATA forbids).
    pub fn submit_with(&mut self, port: u8, request: Request, opts: SubmitOptions) -> Result<RequestId, SubmitError> {
        let index = self.ports.iter().position(|p| p.number == port).ok_or(SubmitError::NoDisk { port })?;
        self.submit_at(index, request, opts)
    }

    pub(super) fn submit_at(
        &mut self,
        index: usize,
        request: Request,
        opts: SubmitOptions,
    ) -> Result<RequestId, SubmitError> {
        let addr64 = self.caps.addr64;
        let port = &mut self.ports[index];
        let n = port.number;
        if port.disabled {
            return Err(SubmitError::PortDisabled { port: n });
        }
        let (sector_size, capacity) = match &port.info {
            Some(info) => (info.logical_sector_size, info.sectors),
            None if matches!(request, Request::Identify { .. }) => (512, 0),
            None => return Err(SubmitError::NoDisk { port: n }),
        };
        let (mut kind, lba, buffers) = match request {
            Request::Read { lba, buffers } => (CommandKind::ReadDmaExt, lba, buffers),
            Request::Write { lba, buffers } => (CommandKind::WriteDmaExt, lba, buffers),
            Request::Flush => (CommandKind::FlushCacheExt, 0, Vec::new()),
            Request::Identify { buffer } => (CommandKind::Identify, 0, vec![buffer]),
        };
        let bytes: usize = buffers.iter().map(|b| b.len()).sum();
        let mut count = 0u64;
        if kind.has_data() {
            if bytes == 0 {
                return Err(SubmitError::ZeroLength);
            }
            if kind == CommandKind::Identify {
                if bytes != 512 {
                    return Err(SubmitError::Misaligned { bytes, sector_size: 512 });
                }
            } else {
                if !bytes.is_multiple_of(sector_size as usize) {
                    return Err(SubmitError::Misaligned { bytes, sector_size });
                }
                count = (bytes / sector_size as usize) as u64;
                if count > MAX_SECTORS_PER_COMMAND {
                    return Err(SubmitError::TooLarge { count, max: MAX_SECTORS_PER_COMMAND });
                }
                if opts.check_range && lba.checked_add(count).is_none_or(|end| end > capacity) {
                    return Err(SubmitError::PastEnd { lba, count, capacity });
                }
            }
            if let Some((segment, b)) = buffers.iter().enumerate().find(|(_, b)| b.len() % 2 != 0) {
                return Err(SubmitError::Prdt(crate::prdt::PrdtError::OddLength { segment, len: b.len() }));
            }
        }
        let queued =
            opts.queued && port.ncq_depth > 0 && matches!(kind, CommandKind::ReadDmaExt | CommandKind::WriteDmaExt);
        if queued {
            kind = if kind == CommandKind::ReadDmaExt {
                CommandKind::ReadFpdmaQueued
            } else {
                CommandKind::WriteFpdmaQueued
            };
        }
        let slot = port.free_slot(queued)?;

        let mapping = if !kind.has_data() {
            DataMapping::None
        } else {
            match DataMapping::premapped(buffers, &self.dev) {
                Ok(premapped) => {
                    port.stats.premapped += 1;
                    premapped
                }
                Err(buffers) => {
                    port.stats.mapped += 1;
                    if kind.writes_to_device() {
                        DataMapping::ToDevice(
                            self.dev.map_sg(buffers, ToDevice).map_err(|e| SubmitError::Map(e.error))?,
                        )
                    } else {
                        DataMapping::FromDevice(
                            self.dev.map_sg(buffers, FromDevice).map_err(|e| SubmitError::Map(e.error))?,
                        )
                    }
                }
            }
        };
        let prdt = if kind.has_data() {
            match build_prdt(mapping.segments(), PRDT_ENTRIES, addr64) {
                Ok(prdt) => prdt,
                Err(e) => {
                    drop(mapping.unmap());
                    return Err(SubmitError::Prdt(e));
                }
            }
        } else {
            Vec::new()
        };
        let command = AtaCommand { kind, lba, count: count as u32, tag: slot };

        // The command table and header (slot.rs, or a lab's version).
        let (list, table) = (&mut port.command_list, &mut port.tables[usize::from(slot)]);
        crate::lab::issue::fill_slot(list, table, slot, &command.to_fis(), &prdt, kind.writes_to_device(), addr64);

        let id = self.next_id;
        self.next_id += 1;
        let now = self.clock.now_us();
        port.slots[usize::from(slot)] = Some(InFlight {
            id,
            command,
            mapping,
            submitted_at: now,
            issued_at: now,
            timeout_us: opts.timeout_us,
            retries_left: RETRIES,
            retries: 0,
        });
        issue(&PortRegs::new(&self.regs, n), port, slot, queued);
        port.issued |= 1 << slot;
        if queued {
            port.queued |= 1 << slot;
        }
        Ok(id)
    }

    /// Whether port `port` would accept a command now (queued: a read or write with NCQ, when
    /// the disk has it). The same checks [`Controller::submit_with`] makes about the queue.
    pub fn can_accept(&self, port: u8, queued: bool) -> Result<(), SubmitError> {
        let p = self.port(port).ok_or(SubmitError::NoDisk { port })?;
        p.free_slot(queued && p.ncq_depth > 0).map(|_| ())
    }
}

pub(super) fn submit_reason(e: &SubmitError) -> &'static str {
    match e {
        SubmitError::Map(_) => "buffer could not be mapped",
        _ => "refused",
    }
}

/// Hands `slot` to the HBA: PxSACT first for a queued command (§5.3.2, SATA §13.6), then PxCI.
pub(super) fn issue<R: Registers>(p: &PortRegs<'_, R>, port: &mut Port, slot: u8, queued: bool) {
    // Fence, PxSACT for NCQ, PxCI (slot.rs, or a lab's version).
    crate::lab::issue::issue_slot(p.regs, port.number, slot, queued);
    port.stats.issued += 1;
    let outstanding = (port.issued | 1 << slot).count_ones();
    port.stats.max_outstanding = port.stats.max_outstanding.max(outstanding);
}
