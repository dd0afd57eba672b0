//! The kernel as a library: every module the boot binary (`main.rs`) wires together.
//!
//! The library compiles for the host too, so the pure logic in it — the frame allocator, the ACPI
//! table walk — is tested by `cargo test -p kernel --lib` with simulated memory. Code that only
//! makes sense on the machine (the panic handler, the global allocator) is compiled only for
//! `target_os = "none"`.
//!
//! # Layers
//!
//! The modules are grouped in layers, each a folder, listed here from the bottom up. A module
//! imports only from its own layer and the layers below it (`cargo test -p xtask` checks this:
//! `xtask/src/layers.rs`); where a lower layer must reach up, the upper one registers a function
//! with it at boot.
//!
//! | layer | what it is for |
//! |---|---|
//! | [`registry`] | name tables: views (`scheme`) and shell commands (`commands`) |
//! | [`mm`] | physical frames, the heap, MMIO mappings |
//! | [`firmware`] | ACPI tables |
//! | [`arch`] | the CPU: GDT, IDT and interrupts, APICs, time, serial, backtraces, crashes |
//! | [`platform`] | PCI and the VT-d IOMMU |
//! | [`services`] | the DMA service and the drivers on it: network, disks |
//! | [`ui`] | console, log format, shell, hardware report |
//! | `ktest`, `bench` | the in-kernel tests and benchmarks (cargo feature `test-support`) |
//! | [`boot`] | wires the layers together, in order |
#![cfg_attr(not(test), no_std)]
#![feature(abi_x86_interrupt)]

extern crate alloc;

pub mod arch;
#[cfg(feature = "test-support")]
pub mod bench;
pub mod boot;
pub mod firmware;
#[cfg(feature = "test-support")]
pub mod ktest;
pub mod mm;
pub mod platform;
pub mod registry;
pub mod services;
pub mod ui;

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    arch::crash::panicked(info)
}
