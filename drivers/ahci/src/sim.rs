//! A simulated AHCI HBA for host tests.
//!
//! It implements [`Registers`] with the behaviour the driver relies on (AHCI 1.3.1 §3), and
//! executes commands the way an HBA does: on a write to PxCI it reads the command header from
//! the command list at PxCLB, the command FIS and PRDT from the command table at CTBA, and moves
//! data between the PRD regions and a simulated disk — all through the DMA service's simulated
//! bus ([`dma::sim::SimDevice`]), so an address the device could not reach (beyond its mask,
//! or unmapped) is a fault here as it would be on the machine.
//!
//! It also checks the rules the driver must follow and records violations in `faults`:
//! PxCLB/PxFB written while the engines run, ST set without FRE or with the device busy, odd
//! PRD byte counts, regions over 4 MiB, misaligned structures.
//!
//! Fault injection: a range of LBAs whose reads fail with UNC (once, with `transient`), a port
//! that never completes
//! (hangs, BSY stays set), an engine that will not stop (until COMRESET, or never), deferred
//! execution (commands wait until `run_deferred`, which completes them in reverse order, as NCQ
//! allows), BIOS ownership for the handoff.
//!
//! NCQ errors follow ACS-3 §4.20.3 and SATA 3.x §13.6.4: the failed tag keeps its PxSACT bit,
//! the device records the failure in its NCQ Command Error log (log 10h, read with READ LOG
//! EXT) and aborts every queued command until that log is read (or a COMRESET). The HBA stops
//! fetching commands after a task-file error until PxCMD.ST is cleared (AHCI 1.3.1 §6.2.2).
//! [`LogBehaviour`] makes the log misbehave: refused (as QEMU 7.2 does), NQ=1, a wrong tag, or
//! a bad checksum.

use crate::ata::{NcqErrorLog, TaskFile};
use crate::identify::{DeviceInfo, build_identify};
use crate::regs::{bohc, cmd, ghc, hba, is, port as preg};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;
use device_io::Registers;
use dma::sim::SimDevice;
use dma::{BusAddr, DmaDevice};

/// A simulated disk.
pub struct SimDisk {
    pub data: Vec<u8>,
    pub info: DeviceInfo,
    /// (lba, count) of every write, in order.
    pub writes: Vec<(u64, u32)>,
    pub flushes: u32,
}

/// How the simulated device answers READ LOG EXT for the NCQ Command Error log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogBehaviour {
    /// As ACS-3 says.
    #[default]
    Spec,
    /// Aborts READ LOG EXT (ABRT), as QEMU 7.2 does.
    Unsupported,
    /// Sets NQ (the error was "non-queued").
    NonQueued,
    /// Names tag 31 whatever failed.
    WrongTag,
    /// Breaks the checksum.
    BadChecksum,
}

#[derive(Default)]
pub struct SimPort {
    clb: u64,
    fb: u64,
    is: u32,
    ie: u32,
    cmd: u32,
    tfd: u32,
    sig: u32,
    ssts: u32,
    sctl: u32,
    serr: u32,
    sact: u32,
    ci: u32,
    pub disk: Option<SimDisk>,
    pub fail_lbas: Option<Range<u64>>,
    /// `fail_lbas` fails one command only, then reads work.
    pub transient: bool,
    pub log: LogBehaviour,
    /// READ LOG EXT commands answered.
    pub log_reads: u32,
    /// The device's NCQ error state: set when a queued command fails, cleared by reading log 10h
    /// or by COMRESET.
    ncq_error: Option<NcqErrorLog>,
    /// The HBA stopped after a task-file error, until ST is cleared.
    halted: bool,
    pub hang: bool,
    /// CR stays set after ST is cleared; `Some(true)` until COMRESET, `Some(false)` forever.
    pub stuck: Option<bool>,
    pub defer: bool,
    /// With `defer`, hold non-queued commands too (PxCI stays set until `run_deferred`): a
    /// command still in flight. Off by default, so error recovery's own non-queued commands
    /// (READ LOG EXT, re-issues) run at once.
    pub defer_non_queued: bool,
    pending: Vec<u8>,
    /// Every command executed: (opcode, lba, PRD lengths).
    pub executed: Vec<(u8, u64, Vec<u32>)>,
}

pub struct State {
    cap: u32,
    cap2: u32,
    ghc: u32,
    is: u32,
    pi: u32,
    bohc: u32,
    pub ports: Vec<SimPort>,
    pub faults: Vec<String>,
}

pub struct SimHba {
    pub state: spin::Mutex<State>,
    bus: SimDevice,
}

const PRESENT: u32 = 0x113; // DET=3, SPD=1, IPM=1

pub fn disk_info(sectors: u64) -> DeviceInfo {
    DeviceInfo {
        model: "SIM HARDDISK".into(),
        serial: "SIM0001".into(),
        firmware: "1.0".into(),
        sectors,
        lba48: true,
        logical_sector_size: 512,
        logical_per_physical: 1,
        ncq: true,
        queue_depth: 32,
    }
}

impl SimHba {
    /// An HBA with `ports` ports (all implemented), 32 slots, NCQ, and 64-bit addressing if
    /// `addr64`. `dev` is the DMA handle the driver will use: the sim sees memory through it.
    pub fn new(dev: &DmaDevice, ports: u8, addr64: bool) -> SimHba {
        let mut cap = u32::from(ports - 1) | (31 << 8) | (1 << 30);
        if addr64 {
            cap |= 1 << 31;
        }
        let state = State {
            cap,
            cap2: 0,
            ghc: 0,
            is: 0,
            pi: (1u32 << ports) - 1,
            bohc: 0,
            ports: (0..ports).map(|_| SimPort { sig: 0xFFFF_FFFF, tfd: 0x7F, ..Default::default() }).collect(),
            faults: Vec::new(),
        };
        SimHba { state: spin::Mutex::new(state), bus: SimDevice::new(dev) }
    }

    pub fn attach_disk(&self, port: usize, sectors: u64) {
        let mut st = self.state.lock();
        let p = &mut st.ports[port];
        p.disk = Some(SimDisk {
            data: vec![0; sectors as usize * 512],
            info: disk_info(sectors),
            writes: Vec::new(),
            flushes: 0,
        });
        p.ssts = PRESENT;
    }

    pub fn bios_owned(&self) {
        let mut st = self.state.lock();
        st.cap2 |= 1;
        st.bohc = bohc::BOS;
    }

    pub fn bohc(&self) -> u32 {
        self.state.lock().bohc
    }

    pub fn with_port<T>(&self, port: usize, f: impl FnOnce(&mut SimPort) -> T) -> T {
        f(&mut self.state.lock().ports[port])
    }

    pub fn faults(&self) -> Vec<String> {
        self.state.lock().faults.clone()
    }

    pub fn clb(&self, port: usize) -> u64 {
        self.state.lock().ports[port].clb
    }

    /// Executes deferred commands, last issued first.
    pub fn run_deferred(&self, port: usize) {
        let mut st = self.state.lock();
        let pending: Vec<u8> = core::mem::take(&mut st.ports[port].pending);
        for slot in pending.into_iter().rev() {
            // An NCQ error aborts everything else (ATA8-ACS §4.20.3): stop at the first one.
            if st.ports[port].halted {
                break;
            }
            self.execute(&mut st, port, slot);
        }
    }

    /// The device accepts the deferred NCQ commands: the HBA has sent their command FISes, so
    /// their PxCI bits clear; PxSACT keeps them until they finish (`run_deferred`).
    pub fn accept_queued(&self, port: usize) {
        let mut st = self.state.lock();
        let p = &mut st.ports[port];
        p.ci &= !p.sact;
    }

    fn update_global_is(st: &mut State, port: usize) {
        let p = &st.ports[port];
        if p.is & p.ie != 0 {
            st.is |= 1 << port;
        }
    }

    fn fault(st: &mut State, what: String) {
        st.faults.push(what);
    }

    fn read_bus(&self, st: &mut State, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut out = vec![0u8; len];
        match self.bus.read(BusAddr(addr), &mut out) {
            Ok(()) => Some(out),
            Err(e) => {
                Self::fault(st, format!("HBA read at {addr:#x}: {e}"));
                None
            }
        }
    }

    fn addr(st: &State, low: u32, high: u32) -> u64 {
        if st.cap & (1 << 31) != 0 { u64::from(low) | (u64::from(high) << 32) } else { u64::from(low) }
    }

    fn execute(&self, st: &mut State, port: usize, slot: u8) {
        if st.ports[port].halted {
            return; // the HBA fetches nothing more until ST is cleared (§6.2.2)
        }
        let clb = st.ports[port].clb;
        let Some(header) = self.read_bus(st, clb + u64::from(slot) * 32, 32) else {
            return self.host_bus_fatal(st, port);
        };
        let dw = |b: &[u8], i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        let dw0 = dw(&header, 0);
        let prdtl = (dw0 >> 16) as usize;
        let ctba = Self::addr(st, dw(&header, 2), dw(&header, 3));
        if ctba % 128 != 0 {
            Self::fault(st, format!("CTBA {ctba:#x} not 128-byte aligned"));
        }
        if dw0 & 0x1F != 5 {
            Self::fault(st, format!("CFL {} is not 5", dw0 & 0x1F));
        }
        let Some(cfis) = self.read_bus(st, ctba, 20) else { return self.host_bus_fatal(st, port) };
        if cfis[0] != 0x27 || cfis[1] & 0x80 == 0 {
            Self::fault(st, format!("bad command FIS {:02x} {:02x}", cfis[0], cfis[1]));
        }
        let mut prds = Vec::new();
        for i in 0..prdtl {
            let Some(e) = self.read_bus(st, ctba + 0x80 + i as u64 * 16, 16) else {
                return self.host_bus_fatal(st, port);
            };
            let dba = Self::addr(st, dw(&e, 0), dw(&e, 1));
            let dbc = dw(&e, 3) & 0x3F_FFFF;
            if dbc & 1 == 0 {
                Self::fault(st, format!("PRD {i}: DBC {dbc:#x} has bit 0 clear (odd byte count)"));
            }
            if dba & 1 != 0 {
                Self::fault(st, format!("PRD {i}: odd address {dba:#x}"));
            }
            prds.push((dba, dbc + 1));
        }
        let opcode = cfis[2];
        let lba = u64::from_le_bytes([cfis[4], cfis[5], cfis[6], cfis[8], cfis[9], cfis[10], 0, 0]);
        let queued = opcode == 0x60 || opcode == 0x61;
        let raw_count =
            if queued { u16::from_le_bytes([cfis[3], cfis[11]]) } else { u16::from_le_bytes([cfis[12], cfis[13]]) };
        let count = if raw_count == 0 { 65536 } else { u64::from(raw_count) };
        if queued && cfis[12] >> 3 != slot {
            Self::fault(st, format!("NCQ tag {} in slot {slot}", cfis[12] >> 3));
        }
        st.ports[port].executed.push((opcode, lba, prds.iter().map(|p| p.1).collect()));
        let prd_total: u64 = prds.iter().map(|p| u64::from(p.1)).sum();

        let mut error: u8 = 0;
        let mut failed_lba = lba;
        let mut moved = 0u64;
        let Some(disk) = st.ports[port].disk.as_ref() else { return };
        let sectors = disk.info.sectors;
        match opcode {
            0xEC => {
                let data = build_identify(&disk.info);
                moved = self.scatter(st, &prds, &data).unwrap_or(0);
            }
            0x60 | 0x61 if st.ports[port].ncq_error.is_some() => error = 0x04, // aborted: error state
            0x2F => {
                let behaviour = st.ports[port].log;
                if behaviour == LogBehaviour::Unsupported || lba & 0xFF != 0x10 {
                    error = 0x04;
                } else {
                    let quiet = NcqErrorLog {
                        non_queued: false,
                        tag: 0,
                        task_file: TaskFile { status: 0x50, error: 0 },
                        lba: 0,
                        count: 0,
                    };
                    let mut entry = st.ports[port].ncq_error.take().unwrap_or(quiet);
                    match behaviour {
                        LogBehaviour::NonQueued => entry.non_queued = true,
                        LogBehaviour::WrongTag => entry.tag = 31,
                        _ => {}
                    }
                    let mut page = entry.to_page();
                    if behaviour == LogBehaviour::BadChecksum {
                        page[511] ^= 1;
                    }
                    st.ports[port].log_reads += 1;
                    moved = self.scatter(st, &prds, &page).unwrap_or(0);
                }
            }
            0x25 | 0x60 | 0x35 | 0x61 => {
                let bytes = count * 512;
                let range = st.ports[port].fail_lbas.clone();
                let fail = range.clone().is_some_and(|r| r.start < lba + count && lba < r.end);
                if fail {
                    failed_lba = range.map_or(lba, |r| r.start.max(lba));
                }
                if lba + count > sectors {
                    error = 0x10; // IDNF
                } else if prd_total < bytes {
                    Self::fault(st, format!("PRDT holds {prd_total} bytes for a {bytes}-byte transfer"));
                    error = 0x04;
                } else if fail && (opcode == 0x25 || opcode == 0x60) {
                    error = 0x40; // UNC
                    if st.ports[port].transient {
                        st.ports[port].fail_lbas = None;
                    }
                } else if opcode == 0x25 || opcode == 0x60 {
                    let start = (lba * 512) as usize;
                    let data = st.ports[port].disk.as_ref().unwrap().data[start..start + bytes as usize].to_vec();
                    moved = self.scatter(st, &prds, &data).unwrap_or(0);
                } else {
                    match self.gather(st, &prds, bytes as usize) {
                        Some(data) => {
                            let start = (lba * 512) as usize;
                            let disk = st.ports[port].disk.as_mut().unwrap();
                            disk.data[start..start + bytes as usize].copy_from_slice(&data);
                            disk.writes.push((lba, count as u32));
                            moved = bytes;
                        }
                        None => return self.host_bus_fatal(st, port),
                    }
                }
            }
            0xEA => st.ports[port].disk.as_mut().unwrap().flushes += 1,
            _ => error = 0x04, // ABRT
        }
        let p = &mut st.ports[port];
        if !queued {
            // PRDBC (§4.2.2 DW1).
            let _ = self.bus.write(BusAddr(clb + u64::from(slot) * 32 + 4), &(moved as u32).to_le_bytes());
        }
        if error != 0 {
            p.tfd = (u32::from(error) << 8) | 0x51;
            p.is |= is::TFES;
            p.halted = true;
            if queued {
                p.ci &= !(1 << slot);
                if p.ncq_error.is_none() {
                    p.ncq_error = Some(NcqErrorLog {
                        non_queued: false,
                        tag: slot,
                        task_file: TaskFile { status: 0x51, error },
                        lba: failed_lba,
                        count: raw_count,
                    });
                }
            }
            // Non-queued: PxCI stays set; the HBA stops (§6.2.2).
        } else if queued {
            p.ci &= !(1 << slot);
            p.sact &= !(1 << slot);
            p.tfd = 0x50;
            p.is |= is::SDBS | is::DHRS;
        } else {
            p.ci &= !(1 << slot);
            p.tfd = 0x50;
            p.is |= is::DHRS;
        }
        Self::update_global_is(st, port);
    }

    fn host_bus_fatal(&self, st: &mut State, port: usize) {
        st.ports[port].is |= is::HBFS;
        Self::update_global_is(st, port);
    }

    fn scatter(&self, st: &mut State, prds: &[(u64, u32)], data: &[u8]) -> Option<u64> {
        let mut done = 0usize;
        for &(addr, len) in prds {
            if done == data.len() {
                break;
            }
            let n = (len as usize).min(data.len() - done);
            if let Err(e) = self.bus.write(BusAddr(addr), &data[done..done + n]) {
                Self::fault(st, format!("HBA write at {addr:#x}: {e}"));
                return None;
            }
            done += n;
        }
        Some(done as u64)
    }

    fn gather(&self, st: &mut State, prds: &[(u64, u32)], bytes: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(bytes);
        for &(addr, len) in prds {
            if out.len() == bytes {
                break;
            }
            let n = (len as usize).min(bytes - out.len());
            out.extend(self.read_bus(st, addr, n)?);
        }
        Some(out)
    }

    fn reset(st: &mut State) {
        st.ghc = 0;
        st.is = 0;
        for p in &mut st.ports {
            p.cmd = 0;
            p.is = 0;
            p.ie = 0;
            p.ci = 0;
            p.sact = 0;
            p.serr = 0;
            p.pending.clear();
            p.halted = false;
            p.ncq_error = None;
            p.tfd = 0x7F;
            p.sig = 0xFFFF_FFFF;
        }
    }
}

impl Registers for SimHba {
    fn read32(&self, offset: usize) -> u32 {
        let st = self.state.lock();
        match offset {
            hba::CAP => st.cap,
            hba::GHC => st.ghc,
            hba::IS => st.is,
            hba::PI => st.pi,
            hba::VS => 0x0001_0301,
            hba::CAP2 => st.cap2,
            hba::BOHC => st.bohc,
            o if o >= 0x100 => {
                let n = (o - 0x100) / 0x80;
                let Some(p) = st.ports.get(n) else { return 0 };
                match (o - 0x100) % 0x80 {
                    preg::CLB => p.clb as u32,
                    preg::CLBU => (p.clb >> 32) as u32,
                    preg::FB => p.fb as u32,
                    preg::FBU => (p.fb >> 32) as u32,
                    preg::IS => p.is,
                    preg::IE => p.ie,
                    preg::CMD => {
                        let mut v = p.cmd;
                        if p.cmd & cmd::ST != 0 || p.stuck.is_some() && p.cmd & cmd::CR != 0 {
                            v |= cmd::CR;
                        } else {
                            v &= !cmd::CR;
                        }
                        if p.cmd & cmd::FRE != 0 {
                            v |= cmd::FR;
                        }
                        v
                    }
                    preg::TFD => p.tfd,
                    preg::SIG => p.sig,
                    preg::SSTS => p.ssts,
                    preg::SCTL => p.sctl,
                    preg::SERR => p.serr,
                    preg::SACT => p.sact,
                    preg::CI => p.ci,
                    _ => 0,
                }
            }
            _ => 0,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        match offset {
            hba::GHC => {
                if value & ghc::HR != 0 {
                    Self::reset(st);
                } else {
                    st.ghc = value & (ghc::AE | ghc::IE);
                }
            }
            hba::IS => st.is &= !value,
            hba::BOHC => {
                if value & bohc::OOS != 0 {
                    st.bohc = bohc::OOS;
                }
            }
            o if o >= 0x100 => {
                let n = (o - 0x100) / 0x80;
                if n >= st.ports.len() {
                    return;
                }
                let addr64 = st.cap & (1 << 31) != 0;
                let running = {
                    let p = &st.ports[n];
                    p.cmd & (cmd::ST | cmd::FRE | cmd::CR) != 0
                };
                match (o - 0x100) % 0x80 {
                    r @ (preg::CLB | preg::CLBU | preg::FB | preg::FBU) => {
                        if running {
                            Self::fault(st, format!("port {n}: register {r:#x} written while ST/FRE/CR set (§10.1.2)"));
                        }
                        let p = &mut st.ports[n];
                        match r {
                            preg::CLB => p.clb = (p.clb & !0xFFFF_FFFF) | u64::from(value & !0x3FF),
                            preg::FB => p.fb = (p.fb & !0xFFFF_FFFF) | u64::from(value & !0xFF),
                            preg::CLBU if addr64 => p.clb = (p.clb & 0xFFFF_FFFF) | (u64::from(value) << 32),
                            preg::FBU if addr64 => p.fb = (p.fb & 0xFFFF_FFFF) | (u64::from(value) << 32),
                            _ => {} // upper halves are read-only zero without S64A
                        }
                        if value & 0x3FF != 0 && r == preg::CLB || value & 0xFF != 0 && r == preg::FB {
                            Self::fault(st, format!("port {n}: misaligned base {value:#x} in register {r:#x}"));
                        }
                    }
                    preg::IS => {
                        st.ports[n].is &= !value;
                    }
                    preg::IE => st.ports[n].ie = value,
                    preg::SERR => st.ports[n].serr &= !value,
                    preg::SCTL => {
                        let p = &mut st.ports[n];
                        let was = p.sctl & 0xF;
                        p.sctl = value;
                        if value & 0xF == 1 {
                            p.ssts = 0;
                        } else if was == 1 && value & 0xF == 0 {
                            // COMRESET done: link up, device ready, commands dropped.
                            if p.disk.is_some() {
                                p.ssts = PRESENT;
                            }
                            p.tfd = 0x50;
                            p.hang = false;
                            if p.stuck == Some(true) {
                                p.stuck = None;
                                p.cmd &= !cmd::CR;
                            }
                            p.ci = 0;
                            p.sact = 0;
                            p.pending.clear();
                            p.ncq_error = None;
                            p.halted = false;
                        }
                    }
                    preg::CMD => {
                        let p = &mut st.ports[n];
                        let old = p.cmd;
                        let keep_cr = p.stuck.is_some() && old & (cmd::ST | cmd::CR) != 0;
                        p.cmd = value & (cmd::ST | cmd::SUD | cmd::POD | cmd::FRE) | if keep_cr { cmd::CR } else { 0 };
                        if old & cmd::FRE == 0 && value & cmd::FRE != 0 && p.disk.is_some() && p.fb != 0 {
                            // The device's first D2H Register FIS arrives: signature and status.
                            p.sig = 0x101;
                            p.tfd = 0x50;
                        }
                        if old & cmd::ST != 0 && value & cmd::ST == 0 {
                            p.ci = 0;
                            p.sact = 0;
                            p.pending.clear();
                            p.halted = false;
                        }
                        if old & cmd::ST == 0 && value & cmd::ST != 0 {
                            let busy = p.tfd & 0x88 != 0;
                            let fre = value & cmd::FRE != 0;
                            if busy || !fre {
                                Self::fault(
                                    st,
                                    format!("port {n}: ST set with FRE={fre} and device busy={busy} (§10.3.1)"),
                                );
                            }
                        }
                    }
                    preg::SACT => {
                        let p = &mut st.ports[n];
                        if p.cmd & cmd::ST != 0 {
                            p.sact |= value;
                        }
                    }
                    preg::CI => {
                        if st.ports[n].cmd & cmd::ST == 0 {
                            Self::fault(st, format!("port {n}: PxCI written with ST clear"));
                            return;
                        }
                        let new = value & !st.ports[n].ci;
                        st.ports[n].ci |= value;
                        for slot in 0..32u8 {
                            if new & (1 << slot) == 0 {
                                continue;
                            }
                            let p = &mut st.ports[n];
                            if p.hang {
                                p.tfd = 0x80;
                            } else if p.defer && (p.sact & (1 << slot) != 0 || p.defer_non_queued) {
                                // The command FIS is sent now (PxCI clears for NCQ); data later.
                                p.pending.push(slot);
                            } else {
                                self.execute(st, n, slot);
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}
