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
    /// The type asks for an alignment above one page; coherent memory is page aligned, no more.
    UnsupportedAlignment {
        /// The alignment asked for, in bytes.
        align: usize,
        /// The largest alignment coherent memory guarantees (one page).
        max: usize,
    },
    /// The frames were allocated, but the device's IOMMU domain could not map them (they were
    /// given back).
    Iommu(IommuError),
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
            AllocError::UnsupportedAlignment { align, max } => write!(
                f,
                "an alignment of {align} bytes is not supported for coherent memory (at most {max}); use a type with a smaller alignment"
            ),
            AllocError::Iommu(e) => write!(f, "the IOMMU could not map the coherent memory: {e}"),
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
    /// tables, or an invalidation that did not complete): the [`IommuError`] says which.
    Iommu(IommuError),
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
            MapError::Iommu(e) => write!(f, "the IOMMU could not map the buffer: {e}"),
        }
    }
}

/// Why an IOMMU domain refused a request, as the DMA service carries it.
///
/// The IOMMU drivers depend on this crate, not the other way round, so their own error types
/// cannot appear in [`MapError`] or [`AllocError`]; each driver converts its domain errors into
/// this one (the `iommu-vtd` crate implements `From<DomainError>`). Addresses are IOVAs (bus
/// addresses in the domain) unless a field says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuError {
    /// No free IOVA range of `len` bytes at or below `limit` (the device's mask, or the
    /// domain's width): the IOVA space is exhausted.
    IovaExhausted {
        /// Bytes asked for.
        len: u64,
        /// Highest usable address.
        limit: u64,
    },
    /// A fixed IOVA range overlaps a live or pending one (or IOVA 0).
    IovaInUse {
        /// Start of the range.
        iova: u64,
    },
    /// No free frame for a page table.
    TableAllocFailed,
    /// No free frame for the page a sub-page mapping is isolated in.
    IsolationPageAllocFailed {
        /// Bytes of the mapping.
        len: usize,
    },
    /// The address is beyond the domain's address width.
    BeyondWidth {
        /// The address.
        iova: u64,
        /// The domain's width in bits.
        width: u32,
    },
    /// An IOVA range is empty, not 4 KiB aligned, or beyond the domain's width.
    BadIovaRange {
        /// Start of the range.
        iova: u64,
        /// Its length (0 when the domain did not say).
        len: u64,
    },
    /// The physical address is not 4 KiB aligned, or needs more bits than an entry holds.
    BadPhysAddr {
        /// The physical address.
        phys: u64,
    },
    /// The physical range wraps around the address space.
    PhysRangeWraps,
    /// A mapping of zero bytes.
    ZeroLength,
    /// A mapping with neither read nor write permission would not be present.
    NoPermissions,
    /// The address is already mapped (overlapping mappings: a bug in the IOVA allocator).
    AlreadyMapped {
        /// The first mapped address.
        iova: u64,
    },
    /// The address is not a live mapping (a double unmap, or a wrong address).
    NotMapped {
        /// The address.
        iova: u64,
    },
    /// An unmap with a length different from the mapping's.
    LengthMismatch {
        /// The address.
        iova: u64,
        /// Bytes (page rounded) the mapping has.
        mapped: u64,
        /// Bytes (page rounded) asked for.
        asked: u64,
    },
    /// An unmap would cut a large page in two.
    SplitsLargePage {
        /// Where the large page starts.
        iova: u64,
    },
    /// The IOTLB or context-cache invalidation did not complete; the range stays quarantined.
    InvalidationFailed,
    /// The device (by PCI requester id) already belongs to another domain.
    DeviceAlreadyAttached {
        /// Requester id: bus in bits 15..8, device in 7..3, function in 2..0.
        requester: u16,
        /// The domain it belongs to.
        domain: u16,
    },
    /// The device (by PCI requester id) is not attached to this domain.
    DeviceNotAttached {
        /// Requester id: bus in bits 15..8, device in 7..3, function in 2..0.
        requester: u16,
    },
}

/// Writes a PCI requester id as `bus:device.function`.
fn write_bdf(f: &mut fmt::Formatter<'_>, requester: u16) -> fmt::Result {
    write!(f, "{:02x}:{:02x}.{}", requester >> 8, (requester >> 3) & 0x1f, requester & 7)
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IommuError::IovaExhausted { len, limit } => write!(
                f,
                "no free IOVA range of {len:#x} bytes below {limit:#x}; unmap buffers, or flush deferred unmaps"
            ),
            IommuError::IovaInUse { iova } => write!(f, "IOVA range at {iova:#x} overlaps a live mapping or IOVA 0"),
            IommuError::TableAllocFailed => {
                f.write_str("no free frame for an IOMMU page table; free memory or mappings")
            }
            IommuError::IsolationPageAllocFailed { len } => {
                write!(f, "no memory for a sub-page isolation page ({len} bytes); free memory or mappings")
            }
            IommuError::BeyondWidth { iova, width } => {
                write!(f, "IOVA {iova:#x} is beyond the domain's {width}-bit address width")
            }
            IommuError::BadIovaRange { iova, len } => {
                write!(f, "IOVA range {iova:#x}+{len:#x} is empty, unaligned or beyond the domain's address width")
            }
            IommuError::BadPhysAddr { phys } => {
                write!(f, "physical address {phys:#x} is not 4 KiB aligned or beyond what an IOMMU entry can hold")
            }
            IommuError::PhysRangeWraps => f.write_str("physical range wraps around the address space"),
            IommuError::ZeroLength => f.write_str("zero-length IOMMU mapping"),
            IommuError::NoPermissions => f.write_str("IOMMU mapping with neither read nor write permission"),
            IommuError::AlreadyMapped { iova } => {
                write!(f, "IOVA {iova:#x} is already mapped (overlapping mappings: an IOVA allocator bug)")
            }
            IommuError::NotMapped { iova } => {
                write!(f, "IOVA {iova:#x} is not mapped in this domain (double unmap, or a wrong address)")
            }
            IommuError::LengthMismatch { iova, mapped, asked } => write!(
                f,
                "unmap of IOVA {iova:#x} with {asked:#x} bytes, but it was mapped with {mapped:#x}; unmap what was mapped"
            ),
            IommuError::SplitsLargePage { iova } => {
                write!(f, "unmap would split the large page at IOVA {iova:#x}; unmap whole mappings")
            }
            IommuError::InvalidationFailed => f.write_str(
                "the IOMMU invalidation did not complete (the unit is not responding); the range stays quarantined",
            ),
            IommuError::DeviceAlreadyAttached { requester, domain } => {
                write_bdf(f, requester)?;
                write!(f, " is already attached to IOMMU domain {domain}; detach it first")
            }
            IommuError::DeviceNotAttached { requester } => {
                write_bdf(f, requester)?;
                f.write_str(" is not attached to this IOMMU domain")
            }
        }
    }
}

/// Why a mapper cannot serve a device with a given DMA mask
/// ([`DmaMapper::check_mask`](crate::mapper::DmaMapper::check_mask)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskUnsupported {
    /// RAM extends above the mask and the mapper has no bounce area below it.
    RamAboveMask,
    /// The mapper's bounce area lies above the mask.
    BounceAreaAboveMask,
    /// An IOMMU domain needs IOVA space for page tables, coherent memory and isolation pages:
    /// a mask of at least `min_bits`.
    IommuNeedsWiderMask {
        /// The narrowest mask, in bits, an IOMMU domain accepts.
        min_bits: u32,
    },
}

impl fmt::Display for MaskUnsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MaskUnsupported::RamAboveMask => f.write_str("RAM extends above the mask and no bounce area lies below it"),
            MaskUnsupported::BounceAreaAboveMask => f.write_str("the bounce area lies above the mask"),
            MaskUnsupported::IommuNeedsWiderMask { min_bits } => {
                write!(f, "an IOMMU domain needs a DMA mask of at least {min_bits} bits")
            }
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
        reason: MaskUnsupported,
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
