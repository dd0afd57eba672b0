//! Fault recording (§7.3): reading and clearing the fault recording registers, and the
//! unit's fault history for views.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use super::Unit;
use crate::SourceId;
use crate::fault::FaultRecord;
use crate::regs::{self, fsts};

/// How many recent faults a unit keeps for its view.
const RECENT_FAULTS: usize = 64;

/// The faults a unit has seen.
#[derive(Default)]
pub(super) struct FaultLog {
    recent: VecDeque<FaultRecord>,
    per_source: BTreeMap<SourceId, u64>,
    pub(super) total: u64,
    pub(super) overflows: u64,
}

impl Unit {
    /// Reads and clears every pending fault record (§7.3.1): from FSTS.FRI on, each record
    /// with F set is decoded, logged with its device, counted, and cleared by writing F; then
    /// FSTS.PFO is cleared. Safe to call from the fault interrupt handler or by polling.
    pub fn poll_faults(&self) -> Vec<FaultRecord> {
        let mut log = self.faults.lock();
        let mut out = Vec::new();
        let status = self.regs.read32(regs::FSTS);
        if status & fsts::PPF != 0 {
            let n = self.cap.fault_records();
            let base = self.cap.fault_recording_offset();
            let first = fsts::fri(status) as usize % n;
            for i in 0..n {
                let off = base + ((first + i) % n) * 16;
                let hi = self.regs.read64(off + 8);
                let Some(rec) = FaultRecord::decode(self.regs.read64(off), hi) else {
                    continue;
                };
                // F is RW1C in the record's top dword; the other bits there are read-only.
                self.regs.write32(off + 12, 1 << 31);
                log::warn!("{}: {rec}", self.name);
                crate::trace::fault(&self.name, &rec);
                out.push(rec);
            }
        }
        if status & fsts::PFO != 0 {
            log.overflows += 1;
            log::warn!("{}: fault recording overflowed (FSTS.PFO); some faults were not recorded", self.name);
            self.regs.write32(regs::FSTS, fsts::PFO);
        }
        for rec in &out {
            log.total += 1;
            *log.per_source.entry(rec.source).or_insert(0) += 1;
            if log.recent.len() == RECENT_FAULTS {
                log.recent.pop_front();
            }
            log.recent.push_back(*rec);
        }
        out
    }

    /// The last faults seen (up to 64), oldest first, and counts per device.
    pub fn fault_history(&self) -> (Vec<FaultRecord>, Vec<(SourceId, u64)>, u64) {
        let log = self.faults.lock();
        (log.recent.iter().copied().collect(), log.per_source.iter().map(|(s, n)| (*s, *n)).collect(), log.overflows)
    }
}
