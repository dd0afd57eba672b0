//! Poisoning (Linux's `DMAPOOL_DEBUG`): freed blocks are filled with [`POOL_POISON_FREED`] and
//! checked when handed out again; allocated ones get [`POOL_POISON_ALLOCATED`] unless zeroed. A
//! damaged byte is reported as a write after free. Every function here is out of line, so the
//! fast paths carry only a flag test.

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use super::free_list::{LINK_BYTES, PoolInner};
use super::{POOL_POISON_ALLOCATED, POOL_POISON_FREED};
use crate::debug::ReportKind;
use crate::phys::BusAddr;

impl PoolInner {
    /// Poisoning, at allocation: checks the freed poison of the block at `cpu` (all but the
    /// free-list link) and, unless the caller zeroes it, fills it with
    /// [`POOL_POISON_ALLOCATED`]. Out of line, and given scalars, so that the fast path keeps the
    /// block in registers and carries only a flag test.
    #[cold]
    #[inline(never)]
    pub(super) fn poison_on_alloc(&self, cpu: NonNull<u8>, bus: BusAddr, zero: bool) {
        // The first bytes hold the free-list link, not poison.
        self.check_freed_poison(cpu, bus, LINK_BYTES);
        if !zero {
            // SAFETY: the block is `block` bytes of our memory, now allocated to the caller.
            unsafe { core::ptr::write_bytes(cpu.as_ptr(), POOL_POISON_ALLOCATED, self.block) };
        }
    }

    /// Poisoning: checks that bytes `from..` of the block at `cpu` (bus address `bus`), about to
    /// be handed out, still hold [`POOL_POISON_FREED`], and reports the first byte that does
    /// not (a write after free). Cold: only poisoned pools call it.
    #[cold]
    #[inline(never)]
    pub(super) fn check_freed_poison(&self, cpu: NonNull<u8>, bus: BusAddr, from: usize) {
        // SAFETY: the block is `block` bytes of our memory, allocated to the caller, who has
        // not seen it yet.
        let bytes = unsafe { core::slice::from_raw_parts(cpu.as_ptr(), self.block) };
        if let Some(i) = bytes[from..].iter().position(|&x| x != POOL_POISON_FREED) {
            self.poison_failures.fetch_add(1, Ordering::Relaxed);
            self.dev.report(ReportKind::PoolWriteAfterFree {
                pool: self.name.clone(),
                bus,
                offset: from + i,
                found: bytes[from + i],
            });
        }
    }

    /// Poisoning, at free: fills the block at `cpu` with [`POOL_POISON_FREED`]. Out of line so
    /// that the push carries only the flag test.
    #[cold]
    #[inline(never)]
    pub(super) fn poison_freed(&self, cpu: *mut u8) {
        // SAFETY: `cpu` is a block being freed, `block` bytes of a live unit, reachable by no one
        // else now.
        unsafe { core::ptr::write_bytes(cpu, POOL_POISON_FREED, self.block) };
    }
}
