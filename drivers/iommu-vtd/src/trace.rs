//! What a VT-d unit tells the DMA event trace ([`dma::trace`]): every IOTLB invalidation, with
//! its granularity (§6.5.1: global, domain-selective, page-selective with an address mask),
//! and every fault record (§7.3). `dma` cannot name this crate, so the unit records through
//! `dma`'s public trace seam, as the mapper does through `DmaMapper`.
//!
//! Both hooks cost one relaxed load when the trace is off ([`dma::trace::hook`]).

use dma::PAGE_SIZE;
use dma::trace::{self, Detail, DeviceName, Event, EventKind, Granularity};

use crate::AccessKind;
use crate::fault::FaultRecord;
use crate::invalidation::IotlbScope;

/// An IOTLB invalidation `unit` is about to send.
#[inline(always)]
pub(crate) fn iotlb(unit: &str, scope: IotlbScope) {
    trace::hook(|| {
        let (granularity, domain, iova, am) = match scope {
            IotlbScope::Global => (Granularity::Global, 0, 0, 0),
            IotlbScope::Domain(d) => (Granularity::Domain, d, 0, 0),
            IotlbScope::Pages { domain, iova, am, .. } => (Granularity::Page, domain, iova, am),
        };
        let pages = if granularity == Granularity::Page { 1u64 << am } else { 0 };
        Event::new(EventKind::Invalidate, unit, "iommu")
            .at(iova, 0, pages * PAGE_SIZE as u64)
            .detail(Detail::Invalidation { granularity, domain, am })
    });
}

/// A fault record `unit` reported: the device is the requester id, the bus address the
/// faulting page's IOVA.
#[inline(always)]
pub(crate) fn fault(unit: &str, rec: &FaultRecord) {
    trace::hook(|| Event {
        device: DeviceName::from_args(format_args!("{} via {unit}", rec.source)),
        ..Event::new(EventKind::Fault, "", "iommu")
            .at(rec.address, 0, PAGE_SIZE as u64)
            .detail(Detail::Fault { reason: rec.reason.0, write: rec.access == AccessKind::Write })
    });
}
