//! Layer 5, **services**: the DMA service and the drivers that use it.
//!
//! `dma_service` gives every PCI function its `DmaDevice`; `net` (e1000 + smoltcp) and `block`
//! (AHCI disks) are its clients. Each service publishes views and shell commands through
//! [`crate::registry`], so the user interface above finds them without importing them.

pub mod block;
pub mod dma_service;
pub mod net;
pub mod watch;

use crate::registry::commands;

/// Brings the services up in order, the DMA service first (the drivers need it), and registers
/// each service's shell commands and idle work, so the shell finds them without naming them.
pub fn init() {
    dma_service::init();
    net::init();
    commands::register(net::COMMANDS);
    commands::register_idle(net::poll_idle);
    block::init();
    commands::register(block::COMMANDS);
    watch::init();
    commands::register(watch::COMMANDS);
}
