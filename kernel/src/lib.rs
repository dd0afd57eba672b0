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
#[global_allocator]
static HEAP: mm::memory::heap::InterruptSafeHeap = mm::memory::heap::InterruptSafeHeap::empty();

/// Hands the heap its memory. Called once by [`mm::memory::init`] during boot.
#[cfg(target_os = "none")]
fn init_heap(start: *mut u8, size: usize) {
    // SAFETY: `start..start+size` is RAM reserved for the heap alone (memory::init removes it from
    // the frame allocator) and mapped writable by the bootloader's direct map; init runs once.
    unsafe { HEAP.init(start, size) };
}

/// Host builds have the host allocator; the heap memory is left alone.
#[cfg(not(target_os = "none"))]
fn init_heap(_start: *mut u8, _size: usize) {}

/// Bytes used and free in the heap.
pub fn heap_usage() -> (usize, usize) {
    #[cfg(target_os = "none")]
    {
        HEAP.usage()
    }
    #[cfg(not(target_os = "none"))]
    {
        (0, 0)
    }
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    ktest::panicked(info)
}
