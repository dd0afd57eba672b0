//! Layer 1, **mm**: physical memory, the kernel heap and MMIO mappings.
//!
//! Knows the bootloader's memory map and the direct map of physical memory, and nothing else of
//! the kernel: every layer above may allocate frames, map registers or use the heap.

pub mod memory;
