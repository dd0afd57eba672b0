//! IOTLB invalidation plumbing between a domain and its unit's invalidator (§6.5), and what
//! the unit remembers of invalidation queue errors (§6.5.2.10).

use alloc::vec::Vec;

use super::Unit;
use crate::invalidation::{InvalidationError, IotlbScope, QueueFault, page_scope};

impl Unit {
    pub(super) fn invalidate_iotlb(&self, scope: IotlbScope) -> Result<(), InvalidationError> {
        crate::trace::iotlb(&self.name, scope);
        let mut hw = self.hw.lock();
        hw.inval.iotlb(&*self.regs, &*self.phys, scope)
    }

    /// Invalidates the IOTLB for `iova..iova+len` of `domain`: page-selective when the unit
    /// can do it in one request, else the whole domain.
    pub(super) fn invalidate_range(
        &self,
        domain: u16,
        iova: u64,
        len: u64,
        leaf_only: bool,
    ) -> Result<(), InvalidationError> {
        let scope = match page_scope(domain, iova, len, self.cap.mamv(), leaf_only) {
            Some(s) if self.cap.psi() => s,
            _ => IotlbScope::Domain(domain),
        };
        self.invalidate_iotlb(scope)
    }

    /// The invalidation queue errors (FSTS.IQE) this unit recovered from, the last 8, oldest
    /// first. Each was also logged with the unit's name when it happened.
    pub fn queue_errors(&self) -> Vec<QueueFault> {
        self.hw.lock().inval.queue_errors().copied().collect()
    }

    /// Fault injection: puts `descriptor` in the invalidation queue exactly as given, followed
    /// by a wait, and waits. A malformed one comes back as
    /// [`InvalidationError::QueueError`] after the unit stopped on it and the driver
    /// recovered (see [`crate::invalidation`]); the queue keeps working. A unit without a
    /// queue answers [`InvalidationError::Rejected`].
    pub fn submit_raw_invalidation(&self, descriptor: [u64; 2]) -> Result<(), InvalidationError> {
        let mut hw = self.hw.lock();
        hw.inval.submit_raw(&*self.regs, &*self.phys, descriptor)
    }
}
