//! Mappers: how a physical range becomes something a device can put on the bus.
//!
//! A device does not see CPU physical addresses; it sees bus addresses. On a plain PC the two
//! are equal ([`Direct`]); a device that cannot reach a buffer (its DMA mask is too narrow) can
//! be served by copying through a bounce area below its limit ([`Bounce`], Linux's swiotlb);
//! behind an IOMMU, bus addresses are IOVAs that a translation table turns into physical ones.
//!
//! The [`DmaMapper`] trait is the vtable behind every `DmaDevice` (the "dev_dma whatsit" of the
//! 2002 proposal that became Linux's `dma_map_ops`). One mapper may be shared by many devices
//! (every device behind one bridge, every device in one IOMMU domain), so a mapper never keeps
//! per-device state; the device passes its [`DeviceLimits`] in.
//!
//! An IOMMU mapper (VT-d second-level tables) fits the same trait: `map` allocates an IOVA range
//! within `limits.mask` and writes page-table entries with read/write permission from the
//! direction, `unmap` clears them and invalidates the IOTLB, `bus_to_phys` walks the tables,
//! `alloc_coherent` allocates frames anywhere and maps them.

mod bounce;
mod direct;
mod iommu;

pub use bounce::{BOUNCE_SLOT_SIZE, Bounce, BounceArea, BounceStats};
pub use direct::Direct;
pub use iommu::{Iommu, PENDING_PAGES_LIMIT};

use crate::direction::DmaDirection;
use crate::error::{AllocError, MapError};
use crate::phys::{BusAddr, PhysAddr};

/// What a mapper must know about the device it maps for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Highest bus address the device can generate.
    pub mask: u64,
    /// Largest segment the device accepts in one scatter-gather descriptor.
    pub max_segment_size: usize,
    /// No segment may cross a multiple of this (a power of two).
    pub segment_boundary: u64,
}

/// One live streaming mapping, as the mapper created it. The device layer keeps it and hands it
/// back for sync and unmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// What the device is programmed with.
    pub bus: BusAddr,
    /// Where the CPU's buffer is.
    pub phys: PhysAddr,
    /// Length in bytes.
    pub len: usize,
    /// If the data goes through a bounce slot: the slot's physical address.
    pub bounce: Option<PhysAddr>,
}

/// A coherent allocation: frames the CPU and the device share for their whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoherentRegion {
    /// Physical address of the first frame.
    pub phys: PhysAddr,
    /// The device's address for it.
    pub bus: BusAddr,
    /// Number of 4 KiB frames.
    pub frames: usize,
}

/// The operations a device's DMA goes through.
///
/// Implementations must be shareable between devices and callable from any CPU; they keep no
/// per-device state.
pub trait DmaMapper: Send + Sync {
    /// Short name for views and logs ("direct", "bounce", "iommu").
    fn kind(&self) -> &'static str;

    /// Whether a device with `mask` can be served. `Err` carries the reason a user reads.
    fn check_mask(&self, mask: u64) -> Result<(), &'static str>;

    /// Makes `len` bytes at `phys` reachable by a device with `limits`, moving data for
    /// `dir` as the map hand-over requires (the device owns the memory afterwards).
    fn map(&self, limits: &DeviceLimits, phys: PhysAddr, len: usize, dir: DmaDirection) -> Result<Mapped, MapError>;

    /// Ends a mapping, bringing device data back for `dir` as needed.
    ///
    /// # Safety
    /// `mapped` must have been returned by `self.map` with the same `dir` and not unmapped yet;
    /// the CPU buffer it names must still be valid; the device must be done with it.
    unsafe fn unmap(&self, mapped: &Mapped, dir: DmaDirection);

    /// Gives `offset..offset+len` of a mapping to the CPU (invalidate caches, copy back a
    /// bounce slot).
    ///
    /// # Safety
    /// As for [`DmaMapper::unmap`], and the range must lie inside the mapping.
    unsafe fn sync_for_cpu(&self, mapped: &Mapped, offset: usize, len: usize, dir: DmaDirection);

    /// Gives `offset..offset+len` of a mapping back to the device (write back caches, refresh a
    /// bounce slot).
    ///
    /// # Safety
    /// As for [`DmaMapper::sync_for_cpu`].
    unsafe fn sync_for_device(&self, mapped: &Mapped, offset: usize, len: usize, dir: DmaDirection);

    /// Allocates zeroed, physically contiguous memory the device can reach at all times. The
    /// bus address is aligned to the allocation size rounded up to a power of two of frames
    /// (as Linux's `dma_alloc_coherent` promises), which DMA pools rely on.
    fn alloc_coherent(&self, limits: &DeviceLimits, bytes: usize) -> Result<CoherentRegion, AllocError>;

    /// Frees a coherent allocation.
    ///
    /// # Safety
    /// `region` must come from `self.alloc_coherent` and must not be used by CPU or device
    /// afterwards.
    unsafe fn free_coherent(&self, region: &CoherentRegion);

    /// The physical address a device access to `bus` reaches, or `None` if nothing is mapped
    /// there. Used by simulated devices and by the debug views.
    fn bus_to_phys(&self, bus: BusAddr) -> Option<PhysAddr>;

    /// Bounce statistics, for mappers that bounce.
    fn bounce_stats(&self) -> Option<BounceStats> {
        None
    }
}
