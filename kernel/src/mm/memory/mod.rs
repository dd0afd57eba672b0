//! Memory: the physical frame allocator, the heap, and page-table helpers.
//!
//! The bootloader hands us a memory map and maps *all* physical memory at one virtual offset
//! (`BootInfo::physical_memory_offset`), so the CPU can reach physical address `p` at
//! `offset + p`. The kernel builds on that:
//!
//! 1. [`init`] carves the heap out of one contiguous run of RAM, *inside* that direct map. The
//!    heap is therefore physically contiguous and `virt_to_phys` of any heap pointer is a
//!    subtraction — which is what lets the DMA service map a `Box<[u8]>` for a device.
//! 2. The rest of usable RAM goes to the [`FrameAllocator`].
//! 3. [`paging::map_mmio`] maps device registers uncached in a window of their own.

pub mod frames;
pub mod heap;
pub mod paging;

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use dma::phys::{FrameRequest, PAGE_SIZE, PhysAddr, PhysMemory};
pub use frames::{FrameAllocator, FrameStats, FreeError};
use spin::{Mutex, Once};

/// Heap size in bytes. Big enough for the page-table and mapping bookkeeping benchmarks use.
pub const HEAP_SIZE: u64 = 64 * 1024 * 1024;

/// The one frame allocator.
static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator::new());

/// Where physical memory is mapped, set once at boot.
static PHYS_OFFSET: Once<u64> = Once::new();

/// Physical range of the heap, for `meminfo`.
static HEAP_RANGE: Once<(u64, u64)> = Once::new();

/// Virtual address at which physical address `pa` is mapped.
pub fn phys_to_virt(pa: u64) -> *mut u8 {
    (physical_memory_offset() + pa) as *mut u8
}

/// The direct map's offset. Panics only if called before [`init`], which is a kernel bug.
pub fn physical_memory_offset() -> u64 {
    *PHYS_OFFSET.get().expect("memory::init has not run")
}

/// Why memory could not be set up.
#[derive(Debug)]
pub enum MemoryInitError {
    /// The bootloader did not map physical memory (the kernel's BootloaderConfig asks it to).
    NoPhysicalMapping,
    /// No usable region is large enough for the heap.
    NoRoomForHeap,
}

/// Builds the heap and the frame allocator from the boot memory map.
///
/// `init_heap` receives the heap's virtual start and size; it is a parameter so host tests can
/// run this logic without installing a global allocator.
pub fn init(
    regions: &MemoryRegions,
    physical_memory_offset: Option<u64>,
    init_heap: impl FnOnce(*mut u8, usize),
) -> Result<(), MemoryInitError> {
    let offset = physical_memory_offset.ok_or(MemoryInitError::NoPhysicalMapping)?;
    PHYS_OFFSET.call_once(|| offset);

    // Usable RAM, leaving the first MiB alone (real-mode IVT, BIOS data, option ROMs).
    const LOW_RESERVED: u64 = 1 << 20;
    let usable = || {
        regions
            .iter()
            .filter(|r| r.kind == MemoryRegionKind::Usable)
            .map(|r| (r.start.max(LOW_RESERVED), r.end))
            .filter(|&(s, e)| s < e)
    };

    // The heap: the top of the largest usable region below 4 GiB if it fits (so the early heap
    // works even for 32-bit devices' bookkeeping), else of the largest region.
    let (start, end) = usable()
        .filter(|&(s, e)| e - s >= HEAP_SIZE)
        .max_by_key(|&(s, e)| ((e <= 1 << 32) as u8, e - s))
        .ok_or(MemoryInitError::NoRoomForHeap)?;
    let _ = start;
    let heap_end = end & !(PAGE_SIZE as u64 - 1);
    let heap_start = heap_end - HEAP_SIZE;
    init_heap(phys_to_virt(heap_start), HEAP_SIZE as usize);
    HEAP_RANGE.call_once(|| (heap_start, heap_end));

    // Now that there is a heap, the allocator's maps can grow.
    let mut frames = FRAMES.lock();
    for (s, e) in usable() {
        frames.add_region(s, e);
    }
    frames.reserve(heap_start, heap_end);
    Ok(())
}

/// Allocates a run of frames (see [`FrameAllocator::allocate`]).
pub fn allocate_frames(req: FrameRequest) -> Option<PhysAddr> {
    x86_64::instructions::interrupts::without_interrupts(|| FRAMES.lock().allocate(req))
}

/// Frees a run of frames, refusing (and reporting) a bad free.
pub fn free_frames(base: PhysAddr, count: usize) -> Result<(), FreeError> {
    x86_64::instructions::interrupts::without_interrupts(|| FRAMES.lock().free(base, count))
}

/// Frame allocator counters.
pub fn frame_stats() -> FrameStats {
    x86_64::instructions::interrupts::without_interrupts(|| FRAMES.lock().stats())
}

/// The heap's physical range.
pub fn heap_range() -> Option<(u64, u64)> {
    HEAP_RANGE.get().copied()
}

/// End of RAM (exclusive).
pub fn end_of_ram() -> u64 {
    x86_64::instructions::interrupts::without_interrupts(|| FRAMES.lock().end_of_ram())
}

/// The kernel's side of the DMA service's seam: frames from [`FRAMES`], addresses through the
/// direct map.
pub struct KernelMemory;

// SAFETY: runs come from the frame allocator, which hands a frame out at most once until it is
// freed; every run lies in RAM, which the bootloader's direct map covers entirely.
unsafe impl PhysMemory for KernelMemory {
    fn alloc_frames(&self, req: FrameRequest) -> Option<PhysAddr> {
        allocate_frames(req)
    }

    unsafe fn free_frames(&self, base: PhysAddr, count: usize) {
        if let Err(e) = free_frames(base, count) {
            log::error!("DMA service returned frames wrongly: {e}");
        }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        phys_to_virt(pa.0)
    }

    fn virt_to_phys(&self, va: *const u8) -> Option<PhysAddr> {
        let offset = physical_memory_offset();
        let pa = (va as u64).checked_sub(offset)?;
        (pa < end_of_ram()).then_some(PhysAddr(pa))
    }

    fn max_phys_addr(&self) -> u64 {
        end_of_ram().saturating_sub(1)
    }
}
