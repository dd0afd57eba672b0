//! The kernel heap: `linked_list_allocator`'s first-fit heap behind a lock that masks
//! interrupts.
//!
//! # Why the lock masks interrupts
//! This kernel has one CPU and no scheduler. Suppose the shell is inside `Vec::push`, holding
//! the heap lock, when a device interrupts, and the handler allocates. The handler spins on the
//! lock, but the holder can only release it once the handler returns: the CPU spins forever
//! with interrupts off. (`linked_list_allocator::LockedHeap` is a plain spin lock, so this is
//! exactly what happened when the AHCI handler once completed commands itself.)
//!
//! Two rules keep that from happening, and the kernel follows both:
//! - interrupt handlers are top halves that do not allocate (see `block::interrupt` and
//!   `net::irq`), and
//! - every lock an interrupt handler *could* take is taken with interrupts off. For the heap
//!   that costs one `pushfq; cli` … `popfq` pair per allocation, which is what this type adds.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use linked_list_allocator::Heap;
use spin::Mutex;

/// A heap whose lock is always held with interrupts disabled.
pub struct InterruptSafeHeap {
    heap: Mutex<Heap>,
}

impl InterruptSafeHeap {
    /// A heap with no memory yet; see [`InterruptSafeHeap::init`].
    pub const fn empty() -> Self {
        InterruptSafeHeap { heap: Mutex::new(Heap::empty()) }
    }

    /// Hands the heap its memory.
    ///
    /// # Safety
    /// `start..start + size` must be writable memory used by nothing else, for as long as the
    /// heap exists; call this once.
    pub unsafe fn init(&self, start: *mut u8, size: usize) {
        // SAFETY: the caller's contract is Heap::init's.
        with_heap(&self.heap, |heap| unsafe { heap.init(start, size) })
    }

    /// Bytes in use and bytes free.
    pub fn usage(&self) -> (usize, usize) {
        with_heap(&self.heap, |heap| (heap.used(), heap.free()))
    }

    /// Runs `f` with the heap's lock held (and interrupts off), as an allocation in progress
    /// would. For the test that a crash taken there is still reported: `f` must not allocate.
    pub fn while_locked<T>(&self, f: impl FnOnce() -> T) -> T {
        with_heap(&self.heap, |_heap| f())
    }
}

/// Runs `f` on the heap with interrupts off (on the machine; host builds have no interrupts to
/// mask and use this type only in tests).
fn with_heap<T>(heap: &Mutex<Heap>, f: impl FnOnce(&mut Heap) -> T) -> T {
    #[cfg(target_os = "none")]
    {
        x86_64::instructions::interrupts::without_interrupts(|| f(&mut heap.lock()))
    }
    #[cfg(not(target_os = "none"))]
    {
        f(&mut heap.lock())
    }
}

// SAFETY: allocation and deallocation go to `linked_list_allocator::Heap`, which hands out
// non-overlapping blocks of at least the requested size and alignment, or null on failure; the
// mutex serialises all access to it.
unsafe impl GlobalAlloc for InterruptSafeHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        with_heap(&self.heap, |heap| heap.allocate_first_fit(layout).map_or(ptr::null_mut(), NonNull::as_ptr))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` on this heap with `layout`,
        // so it is non-null and a block of this heap.
        with_heap(&self.heap, |heap| unsafe { heap.deallocate(NonNull::new_unchecked(ptr), layout) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_aligned_blocks_and_takes_them_back() {
        let mut arena = vec![0u64; 4096];
        let heap = InterruptSafeHeap::empty();
        // SAFETY: the arena is ours, outlives the heap, and nothing else uses it.
        unsafe { heap.init(arena.as_mut_ptr().cast(), arena.len() * 8) };
        let (used0, free0) = heap.usage();
        let layout = Layout::from_size_align(100, 64).unwrap();
        // SAFETY: a non-zero-size layout.
        let a = unsafe { heap.alloc(layout) };
        assert!(!a.is_null() && a as usize % 64 == 0);
        assert!(heap.usage().0 > used0);
        // SAFETY: `a` came from this heap with `layout`.
        unsafe { heap.dealloc(a, layout) };
        assert_eq!(heap.usage(), (used0, free0));
        // Exhaustion is a null pointer, not a panic.
        let huge = Layout::from_size_align(1 << 20, 8).unwrap();
        // SAFETY: a non-zero-size layout.
        assert!(unsafe { heap.alloc(huge) }.is_null());
    }
}
