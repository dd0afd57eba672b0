//! Page-table helpers: mapping device registers (MMIO) uncached.
//!
//! Device registers must not be cached: a cached read could return a stale status, and a cached
//! write might reach the device late or merged with others. x86 decides cacheability per page
//! through the PAT bits of the page-table entry; with the power-on PAT, setting PCD and PWT selects
//! UC (uncacheable). Intel SDM Vol. 3A §11.12.3 (Selecting a Memory Type from the PAT).
//!
//! MMIO gets a virtual window of its own — one 512 GiB slot of the top-level table that the
//! bootloader left empty — so a register page is never reached through two mappings of different
//! memory types (SDM §11.12.4 warns against such aliases).

use super::physical_memory_offset;
use core::fmt;
use dma::phys::{FrameRequest, PAGE_SIZE};
use spin::Mutex;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB, mapper::MapToError,
};
use x86_64::{PhysAddr, VirtAddr};

/// Size of the MMIO window: what one PML4 entry covers.
const MMIO_WINDOW_SIZE: u64 = 1 << 39;

/// The MMIO window as (next free address, end), chosen on first use.
static NEXT_MMIO: Mutex<Option<(u64, u64)>> = Mutex::new(None);

/// Why MMIO could not be mapped.
#[derive(Debug)]
pub enum MapError {
    /// The MMIO window is full.
    WindowFull,
    /// No frame for a page table.
    OutOfFrames,
    /// The page was mapped already (a kernel bug).
    AlreadyMapped,
    /// Every upper-half slot of the top-level page table is in use.
    NoFreeSlot,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::WindowFull => write!(f, "the MMIO window is full"),
            MapError::OutOfFrames => write!(f, "out of memory for page tables"),
            MapError::AlreadyMapped => write!(f, "page already mapped"),
            MapError::NoFreeSlot => write!(f, "no free top-level page-table slot for the MMIO window"),
        }
    }
}

/// Feeds page-table frames from the kernel's frame allocator.
struct PageTableFrames;

// SAFETY: frames come from the frame allocator, which never hands one out twice.
unsafe impl FrameAllocator<Size4KiB> for PageTableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let run = super::allocate_frames(FrameRequest { count: 1, max_addr: u64::MAX, align: PAGE_SIZE as u64 })?;
        // The x86_64 crate expects page-table frames to be zeroed by the caller.
        // SAFETY: the frame is ours alone and lies in the direct map.
        unsafe { core::ptr::write_bytes(super::phys_to_virt(run.0), 0, PAGE_SIZE) };
        PhysFrame::from_start_address(PhysAddr::new(run.0)).ok()
    }
}

/// The active page tables, seen through the direct map.
///
/// # Safety
/// The caller must hold [`NEXT_MMIO`]'s lock (the only code that changes page tables), so two
/// mutable views never exist at once.
unsafe fn active_page_table() -> OffsetPageTable<'static> {
    let offset = physical_memory_offset();
    let (pml4, _) = Cr3::read();
    let virt = offset + pml4.start_address().as_u64();
    // SAFETY: CR3 points at the live PML4, which the direct map covers; the caller guarantees
    // exclusivity.
    unsafe { OffsetPageTable::new(&mut *(virt as *mut PageTable), VirtAddr::new(offset)) }
}

/// Maps `size` bytes of device registers at physical `phys` uncached, returning the virtual
/// address of `phys` itself (which need not be page aligned).
pub fn map_mmio(phys: u64, size: u64) -> Result<*mut u8, MapError> {
    let page_size = PAGE_SIZE as u64;
    let first = phys & !(page_size - 1);
    let last = (phys + size.max(1) - 1) & !(page_size - 1);
    let pages = (last - first) / page_size + 1;

    let mut window = NEXT_MMIO.lock();
    // SAFETY: we hold NEXT_MMIO's lock.
    let mut table = unsafe { active_page_table() };
    let (next, end) = match *window {
        Some(w) => w,
        None => {
            // Upper half: PML4 entries 256..512; the address is sign-extended from bit 47.
            let slot = (256..512).find(|&i| table.level_4_table()[i].is_unused()).ok_or(MapError::NoFreeSlot)?;
            let start = 0xffff_0000_0000_0000 | ((slot as u64) << 39);
            (start, start + MMIO_WINDOW_SIZE)
        }
    };
    if next + pages * page_size > end {
        return Err(MapError::WindowFull);
    }
    let virt_base = next;
    let flags = PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::NO_CACHE
        | PageTableFlags::WRITE_THROUGH
        | PageTableFlags::NO_EXECUTE;
    for i in 0..pages {
        let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(first + i * page_size));
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt_base + i * page_size));
        // SAFETY: the virtual page is fresh (the window is handed out once, bump-style) and the
        // frame is device memory, not RAM the allocator owns, so no Rust object aliases it.
        let result = unsafe { table.map_to(page, frame, flags, &mut PageTableFrames) };
        match result {
            Ok(flush) => flush.flush(),
            Err(MapToError::FrameAllocationFailed) => return Err(MapError::OutOfFrames),
            Err(_) => return Err(MapError::AlreadyMapped),
        }
    }
    *window = Some((next + pages * page_size, end));
    Ok((virt_base + (phys - first)) as *mut u8)
}
