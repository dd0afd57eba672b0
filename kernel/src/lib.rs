//! The kernel as a library: every module the boot binary (`main.rs`) wires together.
//!
//! The library compiles for the host too, so the pure logic in it — the frame allocator, the ACPI
//! table walk — is tested by `cargo test -p kernel --lib` with simulated memory. Code that only
//! makes sense on the machine (the panic handler, the global allocator) is compiled only for
//! `target_os = "none"`.
#![cfg_attr(not(test), no_std)]
#![feature(abi_x86_interrupt)]

extern crate alloc;

pub mod arch;
pub mod bench;
pub mod boot;
pub mod firmware;
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
