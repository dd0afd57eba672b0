//! Bring-up: the HBA (AHCI 1.3.1 §10.1.2, BIOS/OS handoff §10.6.3, HBA reset §10.4.3) and each
//! port with a disk (§10.1.2, §10.3.1), ending with a polled IDENTIFY DEVICE.

use super::recover::{comreset, stop_engines};
use super::submit::submit_reason;
use super::{
    COMMAND_LIST_BYTES, COMMAND_TABLE_BYTES, Capabilities, Completion, Controller, DEVICE_READY_US, DeviceKind, Port,
    PortRegs, PortStats, RECEIVED_FIS_BYTES, Request, RequestId, SubmitOptions, bits, device_present,
};
use crate::ata::CommandKind;
use crate::buffer::IoBuffer;
use crate::error::{CommandError, InitError, PortError};
use crate::identify::{DeviceInfo, parse_identify};
use crate::prdt::MAX_PRD_BYTES;
use crate::regs::{bohc, cap2, cmd, ghc, hba, is, port as preg, tfd};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use device_io::{Clock, Registers};
use dma::{DmaDevice, DmaPool};

impl<R: Registers, C: Clock> Controller<R, C> {
    /// Brings the HBA up (AHCI 1.3.1 §10.1.2) and every port with an ATA disk on it:
    /// 1. BIOS/OS handoff when CAP2.BOH is set (§10.6.3);
    /// 2. GHC.AE, then HBA reset through GHC.HR (§10.4.3), then GHC.AE again;
    /// 3. CAP and PI decide the ports and slots; CAP.S64A decides the DMA mask (64 or 32 bits);
    /// 4. per implemented port: device detection, engine stop, structures, FRE, errors cleared,
    ///    ST, IDENTIFY DEVICE (`init_port`).
    ///
    /// `name` names the device in every log line ("00:1f.2 ahci"). Interrupts stay off until
    /// [`Controller::enable_interrupts`].
    pub fn init(name: &str, regs: R, clock: C, dev: DmaDevice) -> Result<Self, InitError> {
        let cap_reg = regs.read32(hba::CAP);
        if cap_reg == u32::MAX {
            return Err(InitError::NotResponding);
        }
        if regs.read32(hba::CAP2) & cap2::BOH != 0 {
            bios_handoff(&regs, &clock, name)?;
        }
        regs.set_bits(hba::GHC, ghc::AE);
        regs.write32(hba::GHC, ghc::AE | ghc::HR);
        if !clock.poll_until(1_000_000, || regs.read32(hba::GHC) & ghc::HR == 0) {
            return Err(InitError::ResetTimeout);
        }
        // The reset clears GHC.AE (§10.4.3); interrupts stay off for now.
        regs.write32(hba::GHC, ghc::AE);
        let caps = Capabilities::decode(
            regs.read32(hba::CAP),
            regs.read32(hba::CAP2),
            regs.read32(hba::PI),
            regs.read32(hba::VS),
        );
        log::info!(
            "{name}: AHCI {}.{} HBA, {} ports (PI {:#x}), {} slots, {}-bit DMA, NCQ {}",
            caps.version >> 16,
            (caps.version >> 8) & 0xFF,
            caps.ports,
            caps.implemented,
            caps.slots,
            if caps.addr64 { 64 } else { 32 },
            if caps.ncq { "yes" } else { "no" }
        );
        if let Some(lab) = crate::lab::lab_build() {
            log::warn!("{name}: lab build: {lab} (docs/labs)");
        }
        // A 32-bit HBA ignores the upper address registers: everything it touches must lie
        // below 4 GiB, which the mask makes the DMA service guarantee (or bounce).
        dev.set_mask(if caps.addr64 { 64 } else { 32 }).map_err(InitError::DmaMask)?;
        let _ = dev.set_max_segment_size(MAX_PRD_BYTES);
        let page = dma::PAGE_SIZE;
        let command_lists =
            DmaPool::create("ahci-cmd-list", &dev, COMMAND_LIST_BYTES, 1024, page).map_err(InitError::Pool)?;
        let received_fis =
            DmaPool::create("ahci-rx-fis", &dev, RECEIVED_FIS_BYTES, 256, page).map_err(InitError::Pool)?;
        let command_tables =
            DmaPool::create("ahci-cmd-table", &dev, COMMAND_TABLE_BYTES, 128, page).map_err(InitError::Pool)?;
        let mut controller = Controller {
            name: name.into(),
            regs,
            clock,
            ports: Vec::new(),
            skipped: Vec::new(),
            command_lists,
            received_fis,
            command_tables,
            dev,
            caps,
            completions: BTreeMap::new(),
            next_id: 1,
            interrupts: 0,
        };
        for n in bits(caps.implemented) {
            if let Err(e) = controller.init_port(n) {
                match e {
                    PortError::NoDevice { .. } => log::info!("{name} port {n}: {e}; skipped"),
                    _ => log::warn!("{name} port {n}: {e}"),
                }
                controller.skipped.push((n, e));
            }
        }
        controller.regs.write32(hba::IS, u32::MAX);
        Ok(controller)
    }

    /// Port bring-up (§10.1.2, §10.3.1): a device must be present and active (PxSSTS.DET = 3,
    /// IPM = 1); the command engine and FIS receive are stopped before PxCLB/PxFB change
    /// (ST cleared → wait CR clear; FRE cleared → wait FR clear, 500 ms each); the structures are
    /// programmed; FRE is set, PxSERR and PxIS cleared; once the device's status shows neither
    /// BSY nor DRQ, PxSIG says what it is; ST is set; an ATA disk is identified.
    fn init_port(&mut self, n: u8) -> Result<(), PortError> {
        let p = PortRegs::new(&self.regs, n);
        if self.caps.staggered_spin_up {
            p.set(preg::CMD, cmd::SUD | cmd::POD);
        }
        if !self.clock.poll_until(10_000, || device_present(p.read(preg::SSTS))) {
            return Err(PortError::NoDevice { ssts: p.read(preg::SSTS) });
        }
        if !stop_engines(&p, &self.clock) {
            comreset(&p, &self.clock);
            if !stop_engines(&p, &self.clock) {
                return Err(PortError::EngineWillNotStop);
            }
        }
        let command_list = self.command_lists.zalloc().map_err(PortError::NoMemory)?;
        let received_fis = self.received_fis.zalloc().map_err(PortError::NoMemory)?;
        let slots = usize::from(self.caps.slots).min(32);
        let mut tables = Vec::with_capacity(slots);
        for _ in 0..slots {
            tables.push(self.command_tables.zalloc().map_err(PortError::NoMemory)?);
        }
        let log_table = self.command_tables.zalloc().map_err(PortError::NoMemory)?;
        let clb = command_list.bus_addr().as_u64();
        let fb = received_fis.bus_addr().as_u64();
        p.write(preg::CLB, clb as u32);
        p.write(preg::FB, fb as u32);
        if self.caps.addr64 {
            p.write(preg::CLBU, (clb >> 32) as u32);
            p.write(preg::FBU, (fb >> 32) as u32);
        }
        p.set(preg::CMD, cmd::FRE);
        p.write(preg::SERR, u32::MAX);
        p.write(preg::IS, u32::MAX);
        let ready = |p: &PortRegs<'_, R>| p.read(preg::TFD) & (tfd::BSY | tfd::DRQ) == 0;
        if !self.clock.poll_until(DEVICE_READY_US, || ready(&p)) {
            let tfd_reg = p.read(preg::TFD);
            let _ = stop_engines(&p, &self.clock);
            return Err(PortError::DeviceBusy { tfd: tfd_reg });
        }
        let signature = p.read(preg::SIG);
        if DeviceKind::from_signature(signature) != DeviceKind::Ata {
            let _ = stop_engines(&p, &self.clock);
            return Err(PortError::Unsupported { signature });
        }
        p.write(preg::IE, is::ENABLED);
        p.set(preg::CMD, cmd::ST);
        self.ports.push(Port {
            number: n,
            info: None,
            command_list,
            received_fis,
            tables,
            log_table,
            slots: (0..slots).map(|_| None).collect(),
            issued: 0,
            queued: 0,
            retry_queue: VecDeque::new(),
            disabled: false,
            ncq_depth: 0,
            pending_is: 0,
            stats: PortStats::default(),
        });
        let index = self.ports.len() - 1;
        match self.identify(index) {
            Ok(info) => {
                let depth = if self.caps.ncq && info.ncq { info.queue_depth.min(slots as u8) } else { 0 };
                log::info!(
                    "{} port {n}: ATA disk \"{}\" serial \"{}\" firmware \"{}\", {} sectors of {} B ({} MiB), NCQ depth {}",
                    self.name,
                    info.model,
                    info.serial,
                    info.firmware,
                    info.sectors,
                    info.logical_sector_size,
                    info.capacity_mib(),
                    depth
                );
                let port = &mut self.ports[index];
                port.ncq_depth = depth;
                port.info = Some(info);
                Ok(())
            }
            Err(e) => {
                let _ = stop_engines(&PortRegs::new(&self.regs, n), &self.clock);
                self.ports.pop();
                Err(e)
            }
        }
    }

    /// IDENTIFY DEVICE by polling, during bring-up.
    fn identify(&mut self, index: usize) -> Result<DeviceInfo, PortError> {
        let buffer = IoBuffer::pages(self.dev.memory(), 512).map_err(PortError::NoMemory)?;
        let id = self.submit_at(index, Request::Identify { buffer }, SubmitOptions::default()).map_err(|e| {
            PortError::Identify(CommandError::Aborted {
                port: self.ports[index].number,
                command: CommandKind::Identify,
                reason: submit_reason(&e),
            })
        })?;
        let done = self.wait_polled(index, id);
        done.result.map_err(PortError::Identify)?;
        let data = done.buffers.first().map(|b| &b[..]).unwrap_or(&[]);
        parse_identify(data).map_err(PortError::BadIdentify)
    }

    /// Services `index` by polling until request `id` completes (deadlines make this finite).
    fn wait_polled(&mut self, index: usize, id: RequestId) -> Completion {
        loop {
            self.service_port(index);
            if let Some(c) = self.completions.remove(&id) {
                return c;
            }
            core::hint::spin_loop();
        }
    }
}

/// BIOS/OS handoff (§10.6.3): set BOHC.OOS; the BIOS clears BOS when it lets go. If it sets BB
/// (busy finishing commands) within 25 ms, allow it 2 s.
fn bios_handoff<R: Registers, C: Clock>(regs: &R, clock: &C, name: &str) -> Result<(), InitError> {
    regs.set_bits(hba::BOHC, bohc::OOS);
    let released = || regs.read32(hba::BOHC) & bohc::BOS == 0;
    if clock.poll_until(25_000, released) {
        log::info!("{name}: BIOS/OS handoff done");
        return Ok(());
    }
    // Whether or not BB is set (a BIOS may not set it), allow the 2 s a busy BIOS gets.
    let busy = regs.read32(hba::BOHC) & bohc::BB != 0;
    if clock.poll_until(2_000_000, released) {
        log::info!("{name}: BIOS/OS handoff done (BIOS busy: {busy})");
        return Ok(());
    }
    Err(InitError::HandoffTimeout)
}
