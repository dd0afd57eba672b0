//! A unit's interrupt remapping table: enabling (§5.1, §10.4.4, §10.4.29), and the entries
//! drivers' interrupts are routed through (§9.10).
//!
//! # Enabling (Linux 6.1 `intel_setup_irq_remapping` and `iommu_set_irq_remapping` follow
//! the same order)
//! 1. Interrupt remapping needs queued invalidation: the interrupt entry cache has no register
//!    interface (§6.5). A unit without `ECAP.IR`, or without a running queue, keeps it off.
//! 2. Turn IRE off if firmware left it on, allocate one zeroed 4 KiB table (256 entries, none
//!    present), write IRTA (base, S = 7, EIME = 0: xAPIC destinations), GCMD.SIRTP and wait for
//!    GSTS.IRTPS.
//! 3. Invalidate the interrupt entry cache globally: whatever the unit cached from an earlier
//!    table is gone.
//! 4. Set GCMD.IRE and wait for GSTS.IRES; then, if firmware left GSTS.CFIS set, clear CFI in a
//!    write of its own (one GCMD field per write, §10.4.4) and wait for CFIS to clear.
//!
//! # Why CFI stays clear
//! With CFI set, a message in the old *compatibility* format (address 0xFEEx_xxxx with bit 4
//! clear: the vector in the data, the CPU in the address) bypasses the table. That is exactly
//! the message a rogue device forges, so leaving CFI clear makes the unit block every one of
//! them with fault 25h. Every interrupt this kernel programs after enabling is in remappable
//! format, so nothing legitimate depends on CFI. (The unit's own fault event interrupt is not
//! a device request and is not remapped, §7.3.1.)
//!
//! # Changing an entry (§9.10, §6.5.2.7)
//! An entry is 128 bits and the unit may read it at any time, so a new entry is written high
//! half first and the low half (with P) last; a removed one loses P first. Each change is
//! followed by an index-selective interrupt-entry-cache invalidation, so the unit never uses a
//! cached copy of an entry software has changed.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use dma::phys::PhysAddr;

use super::Unit;
use crate::interrupt_remap::{IecScope, Irte, IrteAllocator, irta};
use crate::invalidation::InvalidationError;
use crate::regs::{self, gcmd};
use crate::tables::TableError;

/// A unit's table, once remapping is on.
pub(super) struct InterruptTable {
    base: PhysAddr,
    allocator: IrteAllocator,
    /// The entries in use and who owns each (a device name for the `iommu:irte` view).
    entries: BTreeMap<u16, (Irte, String)>,
    iec_invalidations: u64,
}

/// Why interrupt remapping could not be set up, or an entry not changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InterruptRemapError {
    /// The unit has no interrupt remapping (ECAP.IR clear; QEMU `intremap=off`).
    NotSupported,
    /// The unit runs register-based invalidation; the interrupt entry cache needs the queue.
    NeedsQueuedInvalidation,
    /// Remapping is not on for this unit.
    NotEnabled,
    /// A GSTS bit never changed (IRTPS or IRES).
    Timeout {
        /// What was waited for.
        what: &'static str,
    },
    /// No memory for the table.
    Table(TableError),
    /// The interrupt entry cache could not be invalidated.
    Invalidation(InvalidationError),
    /// All 256 entries are in use.
    TableFull,
    /// The index names no entry in use.
    NoSuchEntry {
        /// The index.
        index: u16,
    },
}

impl fmt::Display for InterruptRemapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterruptRemapError::NotSupported => f.write_str("the unit has no interrupt remapping (ECAP.IR clear)"),
            InterruptRemapError::NeedsQueuedInvalidation => {
                f.write_str("interrupt remapping needs queued invalidation, which this unit is not using")
            }
            InterruptRemapError::NotEnabled => f.write_str("interrupt remapping is off on this unit"),
            InterruptRemapError::Timeout { what } => write!(f, "the IOMMU did not acknowledge {what}"),
            InterruptRemapError::Table(e) => write!(f, "interrupt remapping table: {e}"),
            InterruptRemapError::Invalidation(e) => write!(f, "interrupt entry cache: {e}"),
            InterruptRemapError::TableFull => f.write_str("all 256 interrupt remapping entries are in use"),
            InterruptRemapError::NoSuchEntry { index } => write!(f, "no interrupt remapping entry {index} in use"),
        }
    }
}

/// One row of the `iommu:irte` view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrteInfo {
    /// The handle.
    pub index: u16,
    /// The entry as the unit reads it from memory.
    pub entry: Irte,
    /// Who it was allocated for.
    pub owner: String,
}

impl Unit {
    /// Sets up the table and turns interrupt remapping on (see the module documentation).
    /// From here, an interrupt message not in remappable format, or naming an entry its sender
    /// may not use, is blocked and recorded as a fault.
    pub fn enable_interrupt_remapping(&self) -> Result<(), InterruptRemapError> {
        if !self.ecap.ir() {
            return Err(InterruptRemapError::NotSupported);
        }
        let mut hw = self.hw.lock();
        if !hw.inval.is_queued() {
            return Err(InterruptRemapError::NeedsQueuedInvalidation);
        }
        let mut ir = self.ir.lock();
        if ir.is_some() {
            return Ok(());
        }
        if self.regs.read32(regs::GSTS) & gcmd::IRE != 0 && !regs::set_gcmd(&*self.regs, gcmd::IRE, false) {
            return Err(InterruptRemapError::Timeout { what: "interrupt remapping disable (GSTS.IRES)" });
        }
        let base = self.mem.alloc_table().map_err(InterruptRemapError::Table)?;
        self.regs.write64(crate::interrupt_remap::IRTA_REG, irta(base.0));
        if !regs::gcmd_oneshot(&*self.regs, gcmd::SIRTP, true) {
            // Leak the table: the unit may have latched its address.
            return Err(InterruptRemapError::Timeout { what: "set interrupt remap table pointer (GSTS.IRTPS)" });
        }
        hw.inval
            .interrupt_entries(&*self.regs, &*self.phys, IecScope::Global)
            .map_err(InterruptRemapError::Invalidation)?;
        if !regs::set_gcmd(&*self.regs, gcmd::IRE, true) {
            return Err(InterruptRemapError::Timeout { what: "interrupt remapping enable (GSTS.IRES)" });
        }
        if self.regs.read32(regs::GSTS) & gcmd::CFI != 0 && !regs::set_gcmd(&*self.regs, gcmd::CFI, false) {
            return Err(InterruptRemapError::Timeout { what: "compatibility format interrupts off (GSTS.CFIS)" });
        }
        *ir = Some(InterruptTable {
            base,
            allocator: IrteAllocator::new(),
            entries: BTreeMap::new(),
            iec_invalidations: 1,
        });
        log::info!(
            "{}: interrupt remapping enabled (xAPIC, 256 entries at {:#x}; compatibility format blocked)",
            self.name,
            base.0
        );
        Ok(())
    }

    /// Whether interrupt remapping is on.
    pub fn interrupt_remapping(&self) -> bool {
        self.ir.lock().is_some()
    }

    /// Physical address of the interrupt remapping table, when remapping is on.
    pub fn interrupt_table(&self) -> Option<PhysAddr> {
        self.ir.lock().as_ref().map(|t| t.base)
    }

    /// Allocates an entry, writes `entry` into it for `owner` (a device name, for views) and
    /// invalidates its cached copy. Returns the handle to program into the device's MSI
    /// address or the I/O APIC's redirection entry.
    pub fn allocate_irte(&self, entry: Irte, owner: &str) -> Result<u16, InterruptRemapError> {
        self.allocate_irte_where(entry, owner, |a| a.allocate().ok_or(InterruptRemapError::TableFull))
    }

    /// Like [`Unit::allocate_irte`], at the lowest free index at or above `from` (tests use it
    /// to place an entry at a handle of their choosing).
    pub fn allocate_irte_from(&self, from: u16, entry: Irte, owner: &str) -> Result<u16, InterruptRemapError> {
        self.allocate_irte_where(entry, owner, |a| a.allocate_from(from).ok_or(InterruptRemapError::TableFull))
    }

    fn allocate_irte_where(
        &self,
        entry: Irte,
        owner: &str,
        pick: impl FnOnce(&mut IrteAllocator) -> Result<u16, InterruptRemapError>,
    ) -> Result<u16, InterruptRemapError> {
        let mut hw = self.hw.lock();
        let mut guard = self.ir.lock();
        let table = guard.as_mut().ok_or(InterruptRemapError::NotEnabled)?;
        let index = pick(&mut table.allocator)?;
        self.write_irte(table.base, index, entry);
        table.entries.insert(index, (entry, String::from(owner)));
        table.iec_invalidations += 1;
        let scope = IecScope::Index { index, mask: 0 };
        hw.inval.interrupt_entries(&*self.regs, &*self.phys, scope).map_err(InterruptRemapError::Invalidation)?;
        Ok(index)
    }

    /// Clears entry `index` (P first) and invalidates its cached copy; the index is free again.
    pub fn free_irte(&self, index: u16) -> Result<(), InterruptRemapError> {
        let mut hw = self.hw.lock();
        let mut guard = self.ir.lock();
        let table = guard.as_mut().ok_or(InterruptRemapError::NotEnabled)?;
        if table.entries.remove(&index).is_none() || !table.allocator.free(index) {
            return Err(InterruptRemapError::NoSuchEntry { index });
        }
        self.write_irte(table.base, index, Irte::ABSENT);
        table.iec_invalidations += 1;
        let scope = IecScope::Index { index, mask: 0 };
        hw.inval.interrupt_entries(&*self.regs, &*self.phys, scope).map_err(InterruptRemapError::Invalidation)
    }

    /// Every entry in use, read back from the table in memory (what the unit sees), with its
    /// owner; and the number of interrupt-entry-cache invalidations so far.
    pub fn irte_table(&self) -> Option<(Vec<IrteInfo>, u64)> {
        let guard = self.ir.lock();
        let table = guard.as_ref()?;
        let rows = table
            .entries
            .iter()
            .map(|(&index, (_, owner))| {
                let i = usize::from(index) * 2;
                let entry = Irte::decode([self.mem.read(table.base, i), self.mem.read(table.base, i + 1)]);
                IrteInfo { index, entry, owner: owner.clone() }
            })
            .collect();
        Some((rows, table.iec_invalidations))
    }

    /// Writes entry `index`: when it becomes present, the high half (SID checks) lands before
    /// the low half that sets P; when it goes away, P is cleared first.
    fn write_irte(&self, base: PhysAddr, index: u16, entry: Irte) {
        let [lo, hi] = entry.encode();
        let i = usize::from(index) * 2;
        if entry.present {
            self.mem.write(base, i + 1, hi);
            self.mem.write(base, i, lo);
        } else {
            self.mem.write(base, i, lo);
            self.mem.write(base, i + 1, hi);
        }
    }
}
