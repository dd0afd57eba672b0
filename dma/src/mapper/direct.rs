//! The Direct mapper: bus address = physical address, with a swiotlb-style fallback.
//!
//! # Example
//! A device with a 32-bit DMA mask (Documentation/core-api/dma-api-howto.rst, "DMA addressing
//! capabilities") on a machine with RAM above 4 GiB. A buffer below 4 GiB is given to it in
//! place; a buffer above is served from a bounce slot below 4 GiB, and the device's data
//! reaches the buffer when the mapping ends (a `FromDevice` mapping is copied back at unmap).
//! ```
//! # use std::sync::Arc;
//! # use dma::sim::{SimDevice, SimMemory};
//! # use dma::{DmaDevice, FromDevice, PageBuffer, PhysMemory, ToDevice};
//! use dma::mapper::{BounceArea, Direct};
//! let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(1 << 20, 1 << 20);
//! let area = BounceArea::new(phys.clone(), 0xffff_ffff, 16 * 1024).unwrap();
//! let mapper = Arc::new(Direct::with_bounce(phys.clone(), area));
//! let dev = DmaDevice::new("00:04.0 direct-demo", phys.clone(), mapper);
//! dev.set_mask(32).unwrap();
//! let hw = SimDevice::new(&dev);
//!
//! // Below the mask: the bus address is the physical one, nothing is copied.
//! let low = PageBuffer::alloc(&phys, 64, 0xffff_ffff).unwrap();
//! let low_phys = low.phys().as_u64();
//! let tx = dev.map(low, ToDevice).unwrap();
//! assert_eq!((tx.bus_addr().as_u64(), tx.is_bounced()), (low_phys, false));
//! # let _ = tx.unmap();
//!
//! // Above it: the device gets a slot below 4 GiB instead.
//! let high = PageBuffer::alloc(&phys, 64, u64::MAX).unwrap();
//! assert!(high.phys().as_u64() >= 1 << 32);
//! let rx = dev.map(high, FromDevice).unwrap();
//! assert!(rx.is_bounced() && rx.bus_addr().as_u64() < 1 << 32);
//! hw.write(rx.bus_addr(), b"pong").unwrap(); // lands in the slot...
//! let high = rx.unmap(); // ...and is copied into the buffer here
//! assert_eq!(&high[..4], b"pong");
//! assert_eq!(dev.bounce_stats().unwrap().copies_from_slot, 1);
//! ```

use alloc::sync::Arc;

use super::{BounceArea, BounceStats, CoherentRegion, DeviceLimits, DmaMapper, Mapped};
use crate::direction::DmaDirection;
use crate::error::{AllocError, MapError, MaskUnsupported};
use crate::phys::{BusAddr, FrameRequest, PAGE_SIZE, PhysAddr, PhysMemory, frames_for};

/// Bus address equals physical address (a PC without an IOMMU, or with the IOMMU in
/// pass-through). When a buffer lies beyond a device's mask, it is bounced through the optional
/// [`BounceArea`], as Linux's dma-direct falls back to swiotlb.
pub struct Direct {
    memory: Arc<dyn PhysMemory>,
    bounce: Option<Arc<BounceArea>>,
}

impl Direct {
    /// A direct mapper without bounce area: buffers beyond a device's mask fail to map with
    /// [`MapError::BeyondMask`].
    pub fn new(memory: Arc<dyn PhysMemory>) -> Direct {
        Direct { memory, bounce: None }
    }

    /// A direct mapper that bounces buffers beyond a device's mask through `area`.
    pub fn with_bounce(memory: Arc<dyn PhysMemory>, area: Arc<BounceArea>) -> Direct {
        Direct { memory, bounce: Some(area) }
    }

    /// The bounce area, if any.
    pub fn bounce_area(&self) -> Option<&Arc<BounceArea>> {
        self.bounce.as_ref()
    }
}

/// Whether `phys..phys+len` lies at or below `mask`.
fn reachable(phys: PhysAddr, len: usize, mask: u64) -> bool {
    match phys.0.checked_add(len as u64 - 1) {
        Some(last) => last <= mask,
        None => false,
    }
}

/// Allocates zeroed frames at or below `mask`, aligned to their power-of-two size. Shared by
/// the mappers whose bus address equals the physical one.
pub(super) fn alloc_low_coherent(
    memory: &dyn PhysMemory,
    mask: u64,
    bytes: usize,
) -> Result<CoherentRegion, AllocError> {
    let frames = frames_for(bytes);
    let align_frames = frames.checked_next_power_of_two().ok_or(AllocError::TooLarge { bytes })?;
    let align = (align_frames as u64).checked_mul(PAGE_SIZE as u64).ok_or(AllocError::TooLarge { bytes })?;
    let size = (frames as u64) * PAGE_SIZE as u64;
    let req = FrameRequest { count: frames, max_addr: mask, align };
    let phys = memory.alloc_frames(req).ok_or(AllocError::OutOfMemory { bytes, limit: mask })?;
    if !reachable(phys, size as usize, mask) || phys.0 % align != 0 {
        // SAFETY: the run was just returned by `alloc_frames` with this count and nobody has
        // seen it yet.
        unsafe { memory.free_frames(phys, frames) };
        return Err(AllocError::BadFrames { phys });
    }
    let va = memory.phys_to_virt(phys);
    // SAFETY: `PhysMemory` promises the whole run is writable through `phys_to_virt` while it
    // is allocated, and nothing else uses it yet. Coherent memory is handed out zeroed so no
    // earlier user's data leaks to the new owner or its device.
    unsafe { core::ptr::write_bytes(va, 0, frames * PAGE_SIZE) };
    Ok(CoherentRegion { phys, bus: BusAddr(phys.0), frames })
}

impl DmaMapper for Direct {
    fn kind(&self) -> &'static str {
        if self.bounce.is_some() { "direct+bounce" } else { "direct" }
    }

    fn check_mask(&self, mask: u64) -> Result<(), MaskUnsupported> {
        if mask >= self.memory.max_phys_addr() {
            return Ok(());
        }
        if self.bounce.as_ref().is_some_and(|a| a.last_addr() <= mask) {
            return Ok(());
        }
        // The kernel keeps a zone below 4 GiB, so coherent memory can still be found for a
        // 32-bit device; its streaming buffers above 4 GiB fail with BeyondMask.
        if mask >= 0xffff_ffff {
            return Ok(());
        }
        Err(MaskUnsupported::RamAboveMask)
    }

    fn map(&self, limits: &DeviceLimits, phys: PhysAddr, len: usize, dir: DmaDirection) -> Result<Mapped, MapError> {
        if len == 0 {
            return Err(MapError::ZeroLength);
        }
        if reachable(phys, len, limits.mask) {
            return Ok(Mapped { bus: BusAddr(phys.0), phys, len, bounce: None });
        }
        match &self.bounce {
            Some(area) if area.last_addr() <= limits.mask => {
                let slot = area.bounce_in(phys, len, dir)?;
                Ok(Mapped { bus: BusAddr(slot.0), phys, len, bounce: Some(slot) })
            }
            _ => Err(MapError::BeyondMask { phys, len, mask: limits.mask }),
        }
    }

    unsafe fn unmap(&self, mapped: &Mapped, dir: DmaDirection) {
        if let (Some(area), Some(_)) = (&self.bounce, mapped.bounce) {
            // SAFETY: the caller guarantees `mapped` is live and came from this mapper, so its
            // bounce slot came from `area`.
            unsafe { area.bounce_out(mapped, dir) };
        }
    }

    unsafe fn sync_for_cpu(&self, mapped: &Mapped, offset: usize, len: usize, dir: DmaDirection) {
        if let (Some(area), Some(_)) = (&self.bounce, mapped.bounce) {
            // SAFETY: as in `unmap`; the caller checked the range.
            unsafe { area.sync_for_cpu(mapped, offset, len, dir) };
        }
        // x86 DMA snoops the caches: only order the CPU's later reads after the device's
        // completion was observed.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    unsafe fn sync_for_device(&self, mapped: &Mapped, offset: usize, len: usize, dir: DmaDirection) {
        // Make the CPU's writes visible before the device is told to look.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        if let (Some(area), Some(_)) = (&self.bounce, mapped.bounce) {
            // SAFETY: as in `unmap`; the caller checked the range.
            unsafe { area.sync_for_device(mapped, offset, len, dir) };
        }
    }

    fn alloc_coherent(&self, limits: &DeviceLimits, bytes: usize) -> Result<CoherentRegion, AllocError> {
        alloc_low_coherent(&*self.memory, limits.mask, bytes)
    }

    unsafe fn free_coherent(&self, region: &CoherentRegion) {
        // SAFETY: the caller guarantees the region came from `alloc_coherent`, which got it
        // from `alloc_frames` with this count, and that nothing uses it any more.
        unsafe { self.memory.free_frames(region.phys, region.frames) };
    }

    fn bus_to_phys(&self, bus: BusAddr) -> Option<PhysAddr> {
        Some(PhysAddr(bus.0))
    }

    fn bounce_stats(&self) -> Option<BounceStats> {
        self.bounce.as_ref().map(|a| a.stats())
    }
}
