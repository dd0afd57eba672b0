//! The seam between the DMA service and the kernel: physical addresses and the memory they name.
//!
//! The DMA service never touches page tables or the frame allocator itself. The kernel (or, in host
//! tests, a simulated physical memory) implements [`PhysMemory`], and every allocation the service
//! makes goes through it.
//!
//! # Example
//! The service asks for frames with constraints (how many, how high, how aligned) and reaches
//! them through `phys_to_virt`. Here [`SimMemory`](crate::sim::SimMemory) plays the kernel,
//! with RAM at 1 MiB and at 4 GiB, so a limit really decides where frames land.
//! ```
//! use dma::phys::{frames_for, mask_from_bits};
//! use dma::{FrameRequest, PAGE_SIZE, PhysMemory};
//! let mem = dma::sim::SimMemory::low_and_high(1 << 20, 1 << 20);
//!
//! // 12,000 bytes for a 32-bit device: three frames, below 4 GiB, aligned to 16 KiB.
//! let req = FrameRequest { count: frames_for(12_000), max_addr: mask_from_bits(32), align: 16 * 1024 };
//! assert_eq!(req.count, 3);
//! let pa = mem.alloc_frames(req).unwrap();
//! assert!(pa.as_u64() + 3 * PAGE_SIZE as u64 - 1 <= 0xffff_ffff);
//! assert_eq!(pa.as_u64() % (16 * 1024), 0);
//!
//! // The CPU reaches the run through the kernel's mapping of it, and can translate back.
//! let va = mem.phys_to_virt(pa);
//! assert_eq!(mem.virt_to_phys(va.wrapping_add(5000)), pa.checked_add(5000));
//!
//! // With no limit the allocator picks high memory, keeping low frames for narrow devices.
//! let high = mem.alloc_frames(FrameRequest { count: 1, max_addr: u64::MAX, align: 4096 }).unwrap();
//! assert!(high.as_u64() >= 1 << 32);
//!
//! // SAFETY: both runs came from `alloc_frames` with these counts and nothing uses them.
//! unsafe {
//!     mem.free_frames(pa, 3);
//!     mem.free_frames(high, 1);
//! }
//! assert_eq!(mem.frames_in_use(), 0);
//! ```

use core::fmt;

/// Size of one page frame, the unit of physical allocation and of IOMMU protection.
pub const PAGE_SIZE: usize = 4096;

/// A CPU physical address: what the memory controller sees.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(pub u64);

/// A bus (device) address: what a device puts on the bus. Equal to the physical address only
/// under the Direct mapper; under an IOMMU it is an IOVA.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct BusAddr(pub u64);

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

impl fmt::Debug for BusAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BusAddr({:#x})", self.0)
    }
}

/// Constraints on a run of physical frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRequest {
    /// Number of contiguous 4 KiB frames.
    pub count: usize,
    /// Every byte of the run must lie at or below this physical address (e.g. `0xffff_ffff` for
    /// a 32-bit device). `u64::MAX` for no limit.
    pub max_addr: u64,
    /// Required alignment of the first frame in bytes (a power of two, at least `PAGE_SIZE`).
    pub align: u64,
}

/// What the kernel lends the DMA service: frames and the CPU's view of them.
///
/// # Safety
/// Implementors promise that a run returned by `alloc_frames` is not handed out again until
/// `free_frames` is called for it, and that `phys_to_virt` returns a pointer through which the
/// whole run can be read and written for as long as it is allocated.
pub unsafe trait PhysMemory: Send + Sync {
    /// Allocates a contiguous run of frames meeting `req`, or `None` when none is free.
    fn alloc_frames(&self, req: FrameRequest) -> Option<PhysAddr>;

    /// Returns a run to the allocator.
    ///
    /// # Safety
    /// `base` and `count` must describe exactly a run returned by `alloc_frames`, and nothing
    /// (CPU or device) may use it afterwards.
    unsafe fn free_frames(&self, base: PhysAddr, count: usize);

    /// The CPU virtual address at which physical address `pa` is mapped.
    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8;

    /// The physical address behind a CPU virtual address, if it is in memory this trait knows
    /// (the direct map, the heap). `None` for anything else.
    fn virt_to_phys(&self, va: *const u8) -> Option<PhysAddr>;

    /// The highest physical address of RAM, so a device mask can be checked against it.
    fn max_phys_addr(&self) -> u64;
}

impl PhysAddr {
    /// The raw address.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The address `bytes` further on, or `None` if that would wrap around the address space.
    pub const fn checked_add(self, bytes: u64) -> Option<PhysAddr> {
        match self.0.checked_add(bytes) {
            Some(a) => Some(PhysAddr(a)),
            None => None,
        }
    }
}

impl BusAddr {
    /// The raw address, as a device would be programmed with it.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The address `bytes` further on, or `None` if that would wrap around the address space.
    pub const fn checked_add(self, bytes: u64) -> Option<BusAddr> {
        match self.0.checked_add(bytes) {
            Some(a) => Some(BusAddr(a)),
            None => None,
        }
    }
}

impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for BusAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The mask with the low `bits` bits set: the highest address a device with a `bits`-bit DMA
/// engine can put on the bus. `bits` above 64 saturate at `u64::MAX`; 0 gives 0.
pub const fn mask_from_bits(bits: u32) -> u64 {
    if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 }
}

/// Number of frames needed to hold `bytes` (at least one, so a zero-sized object still has an
/// address of its own).
pub const fn frames_for(bytes: usize) -> usize {
    if bytes == 0 { 1 } else { bytes.div_ceil(PAGE_SIZE) }
}

/// Translates a CPU virtual range to one physical range, checking page by page that the range is
/// physically contiguous (a device sees physical memory; a buffer that is contiguous only in
/// virtual memory would be scattered on the bus).
///
/// Returns `None` if some page is not memory `mem` knows, or `Some(Err(offset))` with the offset
/// of the first byte where physical contiguity breaks.
pub fn contiguous_phys(mem: &dyn PhysMemory, va: *const u8, len: usize) -> Option<Result<PhysAddr, usize>> {
    let start = mem.virt_to_phys(va)?;
    let va_u = va as usize;
    let mut next_page = (va_u / PAGE_SIZE + 1) * PAGE_SIZE;
    while next_page < va_u.saturating_add(len) {
        let off = next_page - va_u;
        let pa = mem.virt_to_phys(next_page as *const u8)?;
        if Some(pa) != start.checked_add(off as u64) {
            return Some(Err(off));
        }
        next_page += PAGE_SIZE;
    }
    Some(Ok(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two virtual pages whose physical frames are swapped: contiguous for the CPU, not for
    /// a device.
    struct Scrambled {
        va: usize,
    }

    // SAFETY: test double; never allocates.
    unsafe impl PhysMemory for Scrambled {
        fn alloc_frames(&self, _req: FrameRequest) -> Option<PhysAddr> {
            None
        }
        unsafe fn free_frames(&self, _base: PhysAddr, _count: usize) {}
        fn phys_to_virt(&self, _pa: PhysAddr) -> *mut u8 {
            core::ptr::null_mut()
        }
        fn virt_to_phys(&self, va: *const u8) -> Option<PhysAddr> {
            let off = (va as usize).checked_sub(self.va)?;
            match off / PAGE_SIZE {
                0 => Some(PhysAddr(0x20_0000 + off as u64)),
                1 => Some(PhysAddr(0x10_0000 + (off - PAGE_SIZE) as u64)),
                _ => None,
            }
        }
        fn max_phys_addr(&self) -> u64 {
            0x30_0000
        }
    }

    #[test]
    fn contiguity_is_checked_page_by_page() {
        let mem = Scrambled { va: 0x4000_0000 };
        let va = 0x4000_0000usize as *const u8;
        assert_eq!(contiguous_phys(&mem, va, PAGE_SIZE), Some(Ok(PhysAddr(0x20_0000))));
        assert_eq!(contiguous_phys(&mem, va.wrapping_add(100), 2 * PAGE_SIZE - 200), Some(Err(PAGE_SIZE - 100)));
        assert_eq!(contiguous_phys(&mem, va.wrapping_add(3 * PAGE_SIZE), 8), None);
    }

    #[test]
    fn masks_and_frame_counts() {
        assert_eq!(mask_from_bits(32), 0xffff_ffff);
        assert_eq!(mask_from_bits(64), u64::MAX);
        assert_eq!(mask_from_bits(0), 0);
        assert_eq!(frames_for(0), 1);
        assert_eq!(frames_for(4096), 1);
        assert_eq!(frames_for(4097), 2);
        assert_eq!(PhysAddr(u64::MAX).checked_add(1), None);
        assert_eq!(BusAddr(1).checked_add(1), Some(BusAddr(2)));
    }
}
