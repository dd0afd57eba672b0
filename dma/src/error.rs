//! Error types shared by the DMA service. Each variant says what went wrong in terms a driver
//! author can act on; none of them is a sentinel address.
//!
//! # Example
//! Linux's `dma_map_single` returns an address the driver must test with
//! `dma_mapping_error` (Documentation/core-api/dma-api.rst); here a failed map is an `Err`
//! that says why and gives the buffer back. A 32-bit device, a buffer above 4 GiB and a mapper
//! with no bounce area: the map fails with [`MapError::BeyondMask`], and the driver recovers
//! by copying the data below the mask and mapping again.
//! ```
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, mapper::Direct, DmaDevice, PhysMemory};
//! # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
//! # let phys: Arc<dyn PhysMemory> = mem.clone();
//! # let dev = DmaDevice::new("00:02.0 demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
//! use dma::{MapError, MaskError, PageBuffer, ToDevice};
//! let mut high = PageBuffer::alloc(&phys, 64, u64::MAX).unwrap(); // lands above 4 GiB
//! high[..4].copy_from_slice(b"ping");
//!
//! let failed = dev.map(high, ToDevice).unwrap_err();
//! assert!(matches!(failed.error, MapError::BeyondMask { mask: 0xffff_ffff, .. }));
//! assert!(failed.to_string().contains("allocate it below the mask")); // what to do about it
//!
//! // The buffer came back untouched inside the error.
//! let mut low = PageBuffer::alloc(&phys, 64, dev.mask()).unwrap();
//! low.copy_from_slice(&failed.buffer);
//! let tx = dev.map(low, ToDevice).unwrap();
//! assert!(!tx.is_bounced());
//! # let _ = tx.unmap();
//!
//! // Other calls refuse bad input the same way, leaving state unchanged.
//! assert_eq!(dev.set_mask(8), Err(MaskError::BelowPage { bits: 8 }));
//! assert_eq!(dev.mask(), 0xffff_ffff);
//! ```

use core::fmt;

use crate::phys::PhysAddr;

/// Why memory for DMA could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// No run of free frames satisfies the request (size and the device's address limit).
    OutOfMemory {
        /// Bytes requested.
        bytes: usize,
        /// Highest physical/bus address the memory could have used.
        limit: u64,
    },
    /// The requested size overflows the address space or exceeds what one allocation may hold.
    TooLarge {
        /// Bytes requested.
        bytes: usize,
    },
    /// The physical memory returned memory outside the requested limit (a bug in the
    /// `PhysMemory` implementation); it was given back.
    BadFrames {
        /// What the allocator returned.
        phys: PhysAddr,
    },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AllocError::OutOfMemory { bytes, limit } => write!(
                f,
                "no {bytes} contiguous bytes free at or below {limit:#x}; free DMA memory or widen the device's DMA mask"
            ),
            AllocError::TooLarge { bytes } => {
                write!(f, "{bytes} bytes is too large for one DMA allocation; split it")
            }
            AllocError::BadFrames { phys } => write!(
                f,
                "the physical memory provider returned frames at {phys} outside the requested limit (provider bug)"
            ),
        }
    }
}

/// Why a buffer could not be mapped for DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// A mapping of zero bytes (or an empty scatter list) has no bus address.
    ZeroLength,
    /// The buffer is not in memory the kernel can translate to physical addresses (for example
    /// stack or MMIO); allocate it from the heap or as a `PageBuffer`.
    NotDmaMemory,
    /// The buffer is contiguous only in virtual memory; physical contiguity breaks at `offset`.
    NotContiguous {
        /// Offset into the buffer of the first byte on a non-adjacent frame.
        offset: usize,
    },
    /// The requested sub-range is not inside the buffer.
    RangeOutOfBounds {
        /// Start of the requested range.
        offset: usize,
        /// Length of the requested range.
        len: usize,
        /// Length of the buffer.
        buffer_len: usize,
    },
    /// The buffer lies above what the device can address and the device's mapper has no bounce
    /// area below the mask to copy through.
    BeyondMask {
        /// Physical address of the buffer.
        phys: PhysAddr,
        /// Its length.
        len: usize,
        /// The device's DMA mask.
        mask: u64,
    },
    /// Every bounce slot is in use (Linux: "swiotlb buffer is full"); unmap something or give
    /// the bounce area more slots.
    BounceExhausted {
        /// Bytes that needed bouncing.
        len: usize,
    },
    /// The mapping is larger than the mapper can handle in one piece.
    TooLarge {
        /// Bytes requested.
        len: usize,
    },
    /// The IOMMU refused the mapping (no IOVA space left below the mask, no memory for page
    /// tables, or an invalidation that did not complete).
    Iommu {
        /// What the IOMMU code reported.
        reason: &'static str,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MapError::ZeroLength => f.write_str("cannot map zero bytes for DMA"),
            MapError::NotDmaMemory => {
                f.write_str("buffer is not in memory with a known physical address; use a heap buffer or a PageBuffer")
            }
            MapError::NotContiguous { offset } => write!(
                f,
                "buffer is not physically contiguous (break at offset {offset}); use a PageBuffer or a scatter list"
            ),
            MapError::RangeOutOfBounds { offset, len, buffer_len } => {
                write!(f, "range {offset}+{len} is outside the {buffer_len}-byte buffer")
            }
            MapError::BeyondMask { phys, len, mask } => write!(
                f,
                "buffer at {phys} (+{len}) is beyond the device's DMA mask {mask:#x} and no bounce area is available; allocate it below the mask or give the mapper a bounce area"
            ),
            MapError::BounceExhausted { len } => write!(
                f,
                "bounce area exhausted: no free slot run for {len} bytes; unmap buffers or enlarge the bounce area"
            ),
            MapError::TooLarge { len } => {
                write!(f, "{len} bytes is too large to map in one piece; use a scatter list")
            }
            MapError::Iommu { reason } => write!(f, "the IOMMU could not map the buffer: {reason}"),
        }
    }
}

/// A failed map hands the buffer back: the caller still owns it and may retry or free it.
pub struct MapFailed<B> {
    /// Why the mapping failed.
    pub error: MapError,
    /// The buffer, untouched.
    pub buffer: B,
}

impl<B> fmt::Debug for MapFailed<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapFailed").field("error", &self.error).finish_non_exhaustive()
    }
}

impl<B> fmt::Display for MapFailed<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl<B> From<MapFailed<B>> for MapError {
    fn from(e: MapFailed<B>) -> MapError {
        e.error
    }
}

/// Why a DMA mask was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskError {
    /// A mask is at most 64 bits wide (and, see [`MaskError::BelowPage`], at least 12).
    OutOfRange {
        /// The width asked for.
        bits: u32,
    },
    /// A mask narrower than 12 bits cannot address even one page frame.
    BelowPage {
        /// The width asked for.
        bits: u32,
    },
    /// The device's mapper cannot give this device memory it can reach.
    Unsupported {
        /// The width asked for.
        bits: u32,
        /// Why, from the mapper.
        reason: &'static str,
    },
}

impl fmt::Display for MaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MaskError::OutOfRange { bits } => {
                write!(f, "a {bits}-bit DMA mask is impossible; use 12..=64 bits")
            }
            MaskError::BelowPage { bits } => {
                write!(f, "a {bits}-bit DMA mask cannot address a single 4 KiB page; use at least 12 bits")
            }
            MaskError::Unsupported { bits, reason } => {
                write!(f, "a {bits}-bit DMA mask cannot be satisfied on this platform: {reason}")
            }
        }
    }
}

/// Why a device's scatter-gather limits were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitError {
    /// A segment must hold at least one byte.
    ZeroSegmentSize,
    /// Segment boundaries are powers of two (the device compares high address bits).
    BoundaryNotPowerOfTwo {
        /// The boundary asked for.
        boundary: u64,
    },
    /// A boundary below one page would split every page.
    BoundaryBelowPage {
        /// The boundary asked for.
        boundary: u64,
    },
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LimitError::ZeroSegmentSize => f.write_str("maximum segment size must be at least 1 byte"),
            LimitError::BoundaryNotPowerOfTwo { boundary } => {
                write!(f, "segment boundary {boundary:#x} is not a power of two")
            }
            LimitError::BoundaryBelowPage { boundary } => {
                write!(f, "segment boundary {boundary:#x} is below one page (4 KiB)")
            }
        }
    }
}

/// A range given to a partial sync or an indexed access does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfBounds {
    /// Start of the requested range (or the index).
    pub offset: usize,
    /// Length of the requested range.
    pub len: usize,
    /// Size of the object accessed.
    pub size: usize,
}

impl fmt::Display for OutOfBounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "range {}+{} is outside an object of size {}", self.offset, self.len, self.size)
    }
}

/// Checks that `offset..offset+len` lies inside `size`.
pub(crate) fn check_range(offset: usize, len: usize, size: usize) -> Result<(), OutOfBounds> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(OutOfBounds { offset, len, size }),
    }
}
