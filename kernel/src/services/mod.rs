//! Layer 5, **services**: the DMA service and the drivers that use it.
//!
//! `dma_service` gives every PCI function its `DmaDevice`; `net` (e1000 + smoltcp) and `block`
//! (AHCI disks) are its clients. Each service publishes views and shell commands through
//! [`crate::registry`], so the user interface above finds them without importing them.

pub mod block;
pub mod dma_service;
pub mod net;
