//! The `disk:slots` view: every command slot of every port, as the HBA would read it.
//!
//! For each port: PxCI (a set bit: the HBA still owns that slot's command; it clears when the
//! command's D2H Register FIS arrives without BSY, which for a non-queued command is at its
//! completion, AHCI 1.3.1 §3.3.14) and PxSACT (NCQ tags the device has not finished, cleared by
//! its Set Device Bits FIS, §3.3.13). For each slot: the command header (§4.2.2: CFL, W, PRDTL,
//! PRDBC, CTBA), the command FIS in its command table (the Register H2D FIS, SATA 3.x §10.3.4,
//! decoded: command, LBA, count or NCQ tag), and each PRDT entry (§4.2.3.3: data base address,
//! byte count, I). A slot whose header was never written shows as unused. What the view reads
//! is memory the HBA reads too, at one moment: a snapshot.

use alloc::string::String;
use core::fmt::Write as _;

use device_io::{Clock, Registers};

use super::{COMMAND_HEADER_BYTES, Controller, PRDT_OFFSET, Port, PortRegs};
use crate::ata::{FIS_TYPE_REG_H2D, opcode as command};
use crate::prdt::PRD_ENTRY_BYTES;
use crate::regs::port;

/// A command opcode's name (ATA8-ACS), for the ones this driver issues.
fn command_name(opcode: u8) -> &'static str {
    match opcode {
        command::READ_DMA_EXT => "READ DMA EXT",
        command::WRITE_DMA_EXT => "WRITE DMA EXT",
        command::FLUSH_CACHE_EXT => "FLUSH CACHE EXT",
        command::IDENTIFY_DEVICE => "IDENTIFY DEVICE",
        command::READ_FPDMA_QUEUED => "READ FPDMA QUEUED",
        command::WRITE_FPDMA_QUEUED => "WRITE FPDMA QUEUED",
        _ => "?",
    }
}

/// Decodes a Register H2D FIS (AHCI §4.2.3.1 layout): command, LBA(47:0), and the count, which
/// FPDMA QUEUED commands carry in FEATURE(15:0) with the NCQ tag in COUNT(7:3) (ATA8-ACS §7.28.1).
pub fn describe_cfis(fis: &[u8; 20]) -> String {
    if fis[0] != FIS_TYPE_REG_H2D {
        return alloc::format!("cfis type={:#04x} (not a Register H2D FIS)", fis[0]);
    }
    let lba = u64::from_le_bytes([fis[4], fis[5], fis[6], fis[8], fis[9], fis[10], 0, 0]);
    let opcode = fis[2];
    let queued = matches!(opcode, command::READ_FPDMA_QUEUED | command::WRITE_FPDMA_QUEUED);
    let mut out = alloc::format!("cfis {:#04x} {} lba={lba}", opcode, command_name(opcode));
    if queued {
        let count = u16::from_le_bytes([fis[3], fis[11]]);
        let _ = write!(out, " count={count} tag={}", fis[12] >> 3);
    } else {
        let _ = write!(out, " count={}", u16::from_le_bytes([fis[12], fis[13]]));
    }
    out
}

fn read_u32(block: &dma::PoolBlock, offset: usize) -> u32 {
    block.read::<u32>(offset).unwrap_or(0)
}

fn render_port<R: Registers>(out: &mut String, regs: &PortRegs<'_, R>, p: &Port) {
    let (ci, sact) = (regs.read(port::CI), regs.read(port::SACT));
    let _ = writeln!(
        out,
        "port {}: PxCI={ci:#010x} PxSACT={sact:#010x} PxIS={:#010x} PxTFD={:#06x} command list at bus {:#x}, {} slots{}",
        p.number,
        regs.read(port::IS),
        regs.read(port::TFD),
        p.command_list.bus_addr().as_u64(),
        p.slots.len(),
        if p.disabled { " (disabled)" } else { "" }
    );
    for slot in 0..p.slots.len() {
        let header = slot * COMMAND_HEADER_BYTES;
        let dw0 = read_u32(&p.command_list, header);
        let prdbc = read_u32(&p.command_list, header + 4);
        let ctba =
            u64::from(read_u32(&p.command_list, header + 8)) | u64::from(read_u32(&p.command_list, header + 12)) << 32;
        let bit = 1u32 << slot;
        let state = match (ci & bit != 0, sact & bit != 0, p.slots[slot].is_some()) {
            (true, _, _) => "issued (HBA owns it: PxCI)",
            (false, true, _) => "queued (device owes its SDB FIS: PxSACT)",
            (false, false, true) => "done, not yet reaped by the driver",
            (false, false, false) => "free",
        };
        if ctba == 0 {
            let _ = writeln!(out, "  slot {slot:2}: unused ({state})");
            continue;
        }
        let prdtl = (dw0 >> 16) as usize;
        let _ = writeln!(
            out,
            "  slot {slot:2}: {state}; header CFL={} W={} PRDTL={prdtl} PRDBC={prdbc} CTBA={ctba:#x}",
            dw0 & 0x1f,
            (dw0 >> 6) & 1,
        );
        let Some(table) = p.tables.get(slot) else { continue };
        let mut fis = [0u8; 20];
        let _ = table.read_bytes(0, &mut fis);
        let _ = writeln!(out, "           {}", describe_cfis(&fis));
        for i in 0..prdtl {
            let at = PRDT_OFFSET + i * PRD_ENTRY_BYTES;
            let dba = u64::from(read_u32(table, at)) | u64::from(read_u32(table, at + 4)) << 32;
            let dw3 = read_u32(table, at + 12);
            let _ = writeln!(out, "           prd[{i}] dba={dba:#x} bytes={} I={}", (dw3 & 0x3f_ffff) + 1, dw3 >> 31);
        }
    }
}

impl<R: Registers, C: Clock> Controller<R, C> {
    /// The `disk:slots` text: every port's PxCI and PxSACT, then every slot's command header,
    /// command FIS and PRDT entries.
    pub fn render_slots(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "controller {}", self.name);
        for p in &self.ports {
            render_port(&mut out, &PortRegs::new(&self.regs, p.number), p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::sim::SimHba;
    use crate::{IoBuffer, Request, SubmitOptions};
    use alloc::sync::Arc;
    use dma::mapper::Direct;
    use dma::{DmaDevice, PhysMemory};

    fn slot_lines(text: &str, slot: usize) -> alloc::vec::Vec<&str> {
        let start = text.lines().position(|l| l.starts_with(&alloc::format!("  slot {slot:2}:"))).unwrap();
        let mut lines = alloc::vec![text.lines().nth(start).unwrap()];
        lines.extend(text.lines().skip(start + 1).take_while(|l| l.starts_with("           ")));
        lines
    }

    /// Checked against the simulated HBA: an NCQ read held by the device shows its PxSACT bit,
    /// header, FIS and PRDT; once completed, the slot is free and the bits are clear.
    #[test]
    fn the_view_shows_an_outstanding_ncq_read_as_the_hba_sees_it() {
        let mem = dma::sim::SimMemory::low_and_high(8 << 20, 8 << 20);
        let phys: Arc<dyn PhysMemory> = mem;
        let dev = DmaDevice::new("00:1f.2 ahci-slots", phys.clone(), Arc::new(Direct::new(phys.clone())));
        dev.set_mask(64).unwrap();
        let sim: &'static SimHba = alloc::boxed::Box::leak(alloc::boxed::Box::new(SimHba::new(&dev, 1, true)));
        sim.attach_disk(0, 4096);
        let mut ctl = Controller::init("00:1f.2 ahci-slots", sim, crate::tests::TestClock::default(), dev).unwrap();
        sim.with_port(0, |p| p.defer = true);
        let buffer = dma::PageBuffer::alloc(&phys, 4096, u64::MAX).unwrap();
        let buffer_phys = buffer.phys().as_u64();
        let buffer = IoBuffer::Pages(buffer);
        let opts = SubmitOptions { queued: true, timeout_us: 1_000_000, check_range: true };
        let id = ctl.submit_with(0, Request::Read { lba: 8, buffers: alloc::vec![buffer] }, opts).unwrap();

        let text = ctl.render_slots();
        let regs = PortRegs::new(&sim, 0);
        let (ci, sact) = (regs.read(port::CI), regs.read(port::SACT));
        assert_eq!(sact & 1, 1, "the simulated device should still owe tag 0");
        assert!(text.contains(&alloc::format!("PxCI={ci:#010x} PxSACT={sact:#010x}")), "{text}");
        let slot0 = slot_lines(&text, 0);
        assert!(slot0[0].contains("PRDTL=1") && slot0[0].contains("W=0") && slot0[0].contains("CFL=5"), "{slot0:?}");
        assert!(slot0[0].contains("PxSACT") || slot0[0].contains("PxCI"), "{slot0:?}");
        assert_eq!(slot0[1].trim(), "cfis 0x60 READ FPDMA QUEUED lba=8 count=8 tag=0");
        // Direct mapper, 64-bit device: the PRD's address is the buffer's physical address.
        assert_eq!(slot0[2].trim(), alloc::format!("prd[0] dba={buffer_phys:#x} bytes=4096 I=0"));
        assert!(slot_lines(&text, 1)[0].contains("unused (free)"), "{text}");

        sim.run_deferred(0);
        for _ in 0..1000 {
            ctl.service();
            if ctl.take_completion(id).is_some() {
                break;
            }
        }
        let text = ctl.render_slots();
        assert!(text.contains("PxCI=0x00000000 PxSACT=0x00000000"), "{text}");
        assert!(slot_lines(&text, 0)[0].contains(": free;"), "{text}");
    }
}
