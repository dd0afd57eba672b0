//! Layer 4, **platform**: the buses and the IOMMU that devices sit behind.
//!
//! PCI (configuration access, enumeration, BAR mapping) and the Intel VT-d policy: what the
//! DMA service needs to know before it can hand out a single `DmaDevice`.

pub mod iommu;
pub mod pci;
