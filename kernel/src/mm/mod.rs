//! Layer 1, **mm**: physical memory, the kernel heap and MMIO mappings.
//!
//! Knows the bootloader's memory map and the direct map of physical memory, and nothing else of
//! the kernel: every layer above may allocate frames, map registers or use the heap. The heap
//! itself, the global allocator, is declared here.

pub mod memory;

#[cfg(target_os = "none")]
#[global_allocator]
static HEAP: memory::heap::InterruptSafeHeap = memory::heap::InterruptSafeHeap::empty();

/// Hands the heap its memory. Called once by [`memory::init`] during boot.
#[cfg(target_os = "none")]
pub(crate) fn init_heap(start: *mut u8, size: usize) {
    // SAFETY: `start..start+size` is RAM reserved for the heap alone (memory::init removes it from
    // the frame allocator) and mapped writable by the bootloader's direct map; init runs once.
    unsafe { HEAP.init(start, size) };
}

/// Host builds have the host allocator; the heap memory is left alone.
#[cfg(not(target_os = "none"))]
pub(crate) fn init_heap(_start: *mut u8, _size: usize) {}

/// Runs `f` with the heap's lock held, as if interrupted in the middle of an allocation. Only
/// the test that crash reports never need the heap uses it; `f` must not allocate.
#[cfg(target_os = "none")]
pub fn while_heap_locked<T>(f: impl FnOnce() -> T) -> T {
    HEAP.while_locked(f)
}

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
