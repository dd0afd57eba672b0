//! IOTLB invalidation plumbing between a domain and its unit's invalidator (§6.5).

use super::Unit;
use crate::invalidation::{InvalidationError, IotlbScope, page_scope};

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
}
