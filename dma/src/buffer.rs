//! Buffers that can be handed to a device: owned, heap-stable, physically contiguous bytes.
//!
//! A streaming mapping takes ownership of its buffer for as long as the device does, so the
//! buffer type must be something that can be *moved* without its bytes moving (the device has
//! their address) and that nobody else can reach meanwhile. Owned heap buffers qualify
//! (`Box<[u8]>`, `Vec<u8>`: the kernel heap lives in the direct map, so it is physically
//! contiguous and translatable), and so does [`PageBuffer`], whole frames from `PhysMemory`
//! with an address limit of your choosing. Stack arrays and borrowed slices do not: their
//! address dies with the frame or the borrow, while the device may still be writing.
//!
//! # Example
//! A [`PageBuffer`] for a 32-bit device: whole zeroed frames below 4 GiB that the CPU uses as a
//! byte slice. Moving the value (into a mapping, for instance) does not move its bytes, which
//! is what [`DmaBuf`] promises.
//! ```
//! # use std::sync::Arc;
//! # use dma::{PhysMemory, sim::SimMemory};
//! use dma::{AllocError, DmaBuf, PageBuffer};
//! // Simulated RAM: 1 MiB at 1 MiB and 1 MiB at 4 GiB.
//! let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(1 << 20, 1 << 20);
//!
//! let mut buf = PageBuffer::alloc(&phys, 100, 0xffff_ffff).unwrap();
//! assert!(buf.phys().as_u64() + 100 <= 1 << 32);
//! assert_eq!(buf.len(), 100);
//! assert!(buf.iter().all(|&b| b == 0)); // no earlier owner's data
//! buf[..3].copy_from_slice(b"abc");
//!
//! let before = buf.dma_ptr();
//! let moved = buf; // the value moves; the frames stay put
//! assert_eq!(moved.dma_ptr(), before);
//! assert_eq!(moved.dma_len(), 100);
//!
//! // This machine has no RAM below 1 MiB: an impossible limit is an error, not a panic.
//! let err = PageBuffer::alloc(&phys, 64, 0xf_ffff).unwrap_err();
//! assert!(matches!(err, AllocError::OutOfMemory { limit: 0xf_ffff, .. }));
//! ```

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::error::AllocError;
use crate::phys::{FrameRequest, PAGE_SIZE, PhysAddr, PhysMemory, frames_for};

/// An owned buffer whose bytes can be given to a device.
///
/// # Safety
/// Implementors promise that:
/// - `dma_ptr()`/`dma_mut_ptr()` point to `dma_len()` bytes that stay at the same address when
///   the value is moved, and stay valid until it is dropped;
/// - while the value is owned (for instance by a mapping), no other code accesses those bytes;
/// - the pointers are the same for every call as long as the value is not mutated through its
///   own API.
///
/// Physical contiguity is *not* promised; mapping checks it page by page and fails with
/// `MapError::NotContiguous` or `MapError::NotDmaMemory`.
pub unsafe trait DmaBuf: Send + 'static {
    /// Start of the bytes.
    fn dma_ptr(&self) -> *const u8;
    /// Start of the bytes, for writing.
    fn dma_mut_ptr(&mut self) -> *mut u8;
    /// Number of bytes.
    fn dma_len(&self) -> usize;
}

// SAFETY: a boxed slice owns its heap bytes; moving the box does not move them.
unsafe impl DmaBuf for Box<[u8]> {
    fn dma_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn dma_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn dma_len(&self) -> usize {
        self.len()
    }
}

// SAFETY: a vector owns its heap bytes; while it is owned by a mapping nobody can push to it,
// so it never reallocates. Only `len` bytes (not the spare capacity) are mapped.
unsafe impl DmaBuf for Vec<u8> {
    fn dma_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn dma_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn dma_len(&self) -> usize {
        self.len()
    }
}

/// Whole frames allocated from `PhysMemory`, physically contiguous by construction. The CPU
/// uses it as a byte slice while it owns it.
pub struct PageBuffer {
    memory: Arc<dyn PhysMemory>,
    phys: PhysAddr,
    frames: usize,
    len: usize,
    ptr: NonNull<u8>,
}

// SAFETY: the buffer owns its frames exclusively; the raw pointer is only a view of them.
unsafe impl Send for PageBuffer {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for PageBuffer {}

impl PageBuffer {
    /// `len` zeroed bytes (rounded up to whole frames) at or below physical address
    /// `max_addr` (`u64::MAX` for anywhere).
    pub fn alloc(memory: &Arc<dyn PhysMemory>, len: usize, max_addr: u64) -> Result<PageBuffer, AllocError> {
        let frames = frames_for(len);
        if frames.checked_mul(PAGE_SIZE).is_none() {
            return Err(AllocError::TooLarge { bytes: len });
        }
        let phys = memory
            .alloc_frames(FrameRequest { count: frames, max_addr, align: PAGE_SIZE as u64 })
            .ok_or(AllocError::OutOfMemory { bytes: len, limit: max_addr })?;
        let Some(ptr) = NonNull::new(memory.phys_to_virt(phys)) else {
            // SAFETY: just allocated with this count and unused.
            unsafe { memory.free_frames(phys, frames) };
            return Err(AllocError::BadFrames { phys });
        };
        // SAFETY: the run is ours and writable through `phys_to_virt` (PhysMemory contract);
        // zeroing keeps an earlier owner's data from leaking.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, frames * PAGE_SIZE) };
        Ok(PageBuffer { memory: memory.clone(), phys, frames, len, ptr })
    }

    /// Physical address of the first byte.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }
}

impl Deref for PageBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` addresses `frames * PAGE_SIZE >= len` bytes we own and initialised.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PageBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` is exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl core::fmt::Debug for PageBuffer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageBuffer").field("phys", &self.phys).field("len", &self.len).finish()
    }
}

// SAFETY: the frames belong to the buffer alone and do not move with it.
unsafe impl DmaBuf for PageBuffer {
    fn dma_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn dma_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn dma_len(&self) -> usize {
        self.len
    }
}

impl Drop for PageBuffer {
    fn drop(&mut self) {
        // SAFETY: the run came from `alloc_frames` with this count; a mapping owning this
        // buffer is always unmapped before the buffer can be dropped.
        unsafe { self.memory.free_frames(self.phys, self.frames) };
    }
}
