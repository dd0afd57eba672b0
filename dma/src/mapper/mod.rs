//! Mappers: how a physical range becomes something a device can put on the bus.
//!
//! A device does not see CPU physical addresses; it sees bus addresses. On a plain PC the two
//! are equal ([`Direct`]); a device that cannot reach a buffer (its DMA mask is too narrow) can
//! be served by copying through a bounce area below its limit ([`Bounce`], Linux's swiotlb);
//! behind an IOMMU, bus addresses are IOVAs that a translation table turns into physical ones.
//!
//! The [`DmaMapper`] trait is the table of operations behind every `DmaDevice`, as Linux's
//! `struct dma_map_ops` is behind every `struct device`. One mapper may be shared by many devices
//! (every device behind one bridge, every device in one IOMMU domain), so a mapper never keeps
//! per-device state; the device passes its [`DeviceLimits`] in.
//!
//! The IOMMU mapper (`iommu_vtd::Iommu`: VT-d second-level tables, in the `iommu-vtd` crate,
//! which depends on this one) implements the same trait from outside: `map` allocates an IOVA
//! range within `limits.mask` and writes page-table entries with read/write permission from the
//! direction, `unmap` clears them and invalidates the IOTLB, `bus_to_phys` walks the tables, and
//! `alloc_coherent` allocates frames anywhere and maps them. Its failures arrive as
//! [`MapError::Iommu`] and [`AllocError::Iommu`], carrying an [`IommuError`](crate::IommuError).
//!
//! # Example
//! Drivers never call a mapper themselves (their [`DmaDevice`](crate::DmaDevice) does), but
//! calling one by hand shows what the trait answers. The same buffer below 4 GiB, mapped for
//! a 32-bit device by two mappers: [`Direct`] hands out its physical address, [`Bounce`]
//! (`swiotlb=force`) the address of a slot holding a copy. Either way
//! [`DmaMapper::bus_to_phys`] says where a device access to the bus address lands.
//! ```
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, PhysMemory, PageBuffer};
//! # let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(1 << 20, 1 << 20);
//! use dma::DmaDirection::ToDevice;
//! use dma::mapper::{Bounce, BounceArea, DeviceLimits, Direct, DmaMapper};
//! let limits = DeviceLimits { mask: 0xffff_ffff, max_segment_size: 65536, segment_boundary: 0xffff_ffff };
//! let buf = PageBuffer::alloc(&phys, 64, 0xffff_ffff).unwrap();
//!
//! let direct = Direct::new(phys.clone());
//! let m = direct.map(&limits, buf.phys(), 64, ToDevice).unwrap();
//! assert_eq!(m.bus.as_u64(), buf.phys().as_u64()); // bus address = physical address
//! assert_eq!(direct.bus_to_phys(m.bus), Some(buf.phys()));
//! // SAFETY: `m` came from `direct.map` with this direction; `buf` is alive and unused.
//! unsafe { direct.unmap(&m, ToDevice) };
//!
//! let bounce = Bounce::new(phys.clone(), BounceArea::new(phys.clone(), 0xffff_ffff, 8192).unwrap());
//! let m = bounce.map(&limits, buf.phys(), 64, ToDevice).unwrap();
//! assert_eq!(m.bounce.map(|slot| slot.as_u64()), Some(m.bus.as_u64())); // the device sees the slot
//! assert_eq!(bounce.bus_to_phys(m.bus), m.bounce); // its accesses land in the slot, not in `buf`
//! // SAFETY: as above, for `bounce`.
//! unsafe { bounce.unmap(&m, ToDevice) };
//! assert_eq!((direct.kind(), bounce.kind()), ("direct", "bounce"));
//! ```

mod bounce;
mod direct;

pub use bounce::{BOUNCE_SLOT_SIZE, Bounce, BounceArea, BounceStats};
pub use direct::Direct;

use crate::direction::DmaDirection;
use crate::error::{AllocError, MapError, MaskUnsupported};
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
    fn check_mask(&self, mask: u64) -> Result<(), MaskUnsupported>;

    /// Makes `len` bytes at `phys` reachable by a device with `limits`, moving data for
    /// `dir` as the map hand-over requires (the device owns the memory afterwards).
    fn map(&self, limits: &DeviceLimits, phys: PhysAddr, len: usize, dir: DmaDirection) -> Result<Mapped, MapError>;

    /// Ends a mapping, bringing device data back for `dir` as needed.
    ///
    /// # Safety
    /// `mapped` must have been returned by `self.map` with the same `dir` and not unmapped yet;
    /// the CPU buffer it names must still be valid; the device must be done with it.
    unsafe fn unmap(&self, mapped: &Mapped, dir: DmaDirection);

    /// Ends several mappings at once (a scatter-gather list): as [`DmaMapper::unmap`] on each,
    /// which is what this default does. A mapper whose unmap must wait for hardware (a strict
    /// IOMMU) overrides it to wait once for the lot.
    ///
    /// # Safety
    /// As for [`DmaMapper::unmap`], for every mapping.
    unsafe fn unmap_many(&self, mapped: &[Mapped], dir: DmaDirection) {
        for m in mapped {
            // SAFETY: the caller's contract, per mapping.
            unsafe { self.unmap(m, dir) };
        }
    }

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
