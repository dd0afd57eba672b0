//! The IOMMU mapper: bus addresses are IOVAs in a VT-d domain.
//!
//! Behind an IOMMU a device can reach only what its domain's page tables map, and only with the
//! permission the mapping's direction gives (a `ToDevice` buffer is read-only for the device).
//! This mapper turns the `DmaMapper` calls into domain operations:
//!
//! * `map` → allocate an IOVA below the device's mask, write page-table entries;
//! * `unmap` → clear them and invalidate the IOTLB (strict domains wait for the invalidation
//!   before returning, so the device has lost access when `unmap` returns);
//! * `alloc_coherent` → frames anywhere in RAM (the IOVA, not the physical address, must fit the
//!   mask, so a 32-bit device can use memory above 4 GiB without bouncing), mapped read/write.
//!
//! ## Sub-page isolation
//! An IOMMU protects whole 4 KiB pages. Mapping a 64-byte buffer exposes the rest of its page —
//! other kernel data — to the device for as long as the mapping lives. With isolation on (the
//! default), a streaming mapping that does not cover whole pages is copied into a page of its
//! own (initialised from the buffer, whatever the direction, so the device never sees stale
//! data), and only that page is mapped; the data moves back at sync and unmap as the direction
//! requires. This is the same trade Linux makes with `iommu.strict` plus swiotlb bouncing of
//! untrusted devices: a copy, for the guarantee that a device reaches nothing it was not given.
//!
//! ## Deferred unmaps
//! In a deferred domain an IOVA stays reachable until the next domain flush. Pages this mapper
//! owns (isolation pages, coherent frames) are therefore freed only after a flush it forces
//! itself once [`PENDING_PAGES_LIMIT`] of them wait, never before.
//!
//! # Example
//! A 32-bit NIC behind a simulated VT-d unit. Its buffer lies above 4 GiB, yet it is mapped
//! in place: only the IOVA has to fit the mask. The mapping lets the device read and not
//! write (`ToDevice`), and a strict unmap takes the page away from the device before it
//! returns. `sim` plays the hardware: every access it makes is translated by the unit.
//! ```
//! # use std::sync::Arc;
//! # use dma::sim::SimMemory;
//! # use dma::{DmaDevice, PageBuffer, PhysMemory, ToDevice};
//! use iommu_vtd::Iommu;
//! use iommu_vtd::sim::{SimConfig, SimUnit};
//! use iommu_vtd::{FaultReason, SourceId, Unit, UnitConfig, UnmapPolicy};
//! let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
//! let sim = SimUnit::new(phys.clone(), SimConfig::default());
//! let unit = Unit::bring_up("dmar0", sim.clone(), phys.clone(), UnitConfig::default()).unwrap();
//! let (nic, domain) = (SourceId::new(0, 2, 0), unit.create_domain(UnmapPolicy::Strict).unwrap());
//! domain.attach(nic).unwrap();
//! let mapper = Arc::new(Iommu::new(domain, phys.clone(), true, UnmapPolicy::Strict));
//! let dev = DmaDevice::new("00:02.0 iommu-demo", phys.clone(), mapper);
//! dev.set_mask(32).unwrap();
//!
//! let mut buf = PageBuffer::alloc(&phys, 4096, u64::MAX).unwrap(); // above 4 GiB
//! buf[..4].copy_from_slice(b"ping");
//! let buf_phys = buf.phys();
//! let tx = dev.map(buf, ToDevice).unwrap();
//! let iova = tx.bus_addr();
//! assert!(!tx.is_bounced() && iova.as_u64() < 1 << 32);
//! assert_eq!(dev.mapper().bus_to_phys(iova), Some(buf_phys)); // walks the domain's tables
//! let mut seen = [0u8; 4];
//! sim.dma_read(nic, iova.as_u64(), &mut seen).unwrap();
//! assert_eq!(&seen, b"ping");
//!
//! assert!(sim.dma_write(nic, iova.as_u64(), b"evil").is_err()); // read-only for the device
//! assert_eq!(unit.poll_faults()[0].reason, FaultReason::WRITE_DENIED);
//! let buf = tx.unmap();
//! assert!(sim.dma_read(nic, iova.as_u64(), &mut seen).is_err()); // gone once unmap returned
//! assert_eq!(&buf[..4], b"ping");
//! ```

use crate::{AccessKind, Domain, Perms, UnmapPolicy};
use alloc::sync::Arc;
use alloc::vec::Vec;
use dma::direction::DmaDirection;
use dma::error::{AllocError, IommuError, MapError, MaskUnsupported};
use dma::mapper::{CoherentRegion, DeviceLimits, DmaMapper, Mapped};
use dma::phys::{BusAddr, FrameRequest, PAGE_SIZE, PhysAddr, PhysMemory};
use spin::Mutex;

const PAGE: u64 = PAGE_SIZE as u64;

/// A second-level 2 MiB page (§9.8).
const LARGE_PAGE: usize = 2 << 20;

/// Pages waiting for a deferred domain's flush before they can be freed.
pub const PENDING_PAGES_LIMIT: usize = 64;

/// A DMA mapper whose bus addresses are IOVAs of one VT-d domain.
pub struct Iommu {
    domain: Arc<Domain>,
    memory: Arc<dyn PhysMemory>,
    isolate_sub_page: bool,
    deferred: bool,
    /// (frame, count) runs to free after the next flush (deferred domains only).
    pending: Mutex<Vec<(PhysAddr, usize)>>,
}

fn perms(dir: DmaDirection) -> Perms {
    match dir {
        DmaDirection::ToDevice => Perms::READ,
        DmaDirection::FromDevice => Perms::WRITE,
        DmaDirection::Bidirectional => Perms::READ_WRITE,
    }
}

/// The narrowest DMA mask, in bits, a device behind an IOMMU domain may have.
const MIN_MASK_BITS: u32 = 24;

impl Iommu {
    /// A mapper for the devices attached to `domain`. `isolate_sub_page` bounces streaming
    /// mappings that do not cover whole pages into pages of their own (see the module docs).
    pub fn new(domain: Arc<Domain>, memory: Arc<dyn PhysMemory>, isolate_sub_page: bool, policy: UnmapPolicy) -> Iommu {
        Iommu {
            domain,
            memory,
            isolate_sub_page,
            deferred: matches!(policy, UnmapPolicy::Deferred { .. }),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// The domain behind this mapper.
    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// Whether a mapping of `len` bytes at `phys` would share a page with other data.
    fn shares_a_page(phys: PhysAddr, len: usize) -> bool {
        !phys.0.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE_SIZE)
    }

    /// Frees `count` frames at `base` now (strict) or after the next flush (deferred).
    fn release_frames(&self, base: PhysAddr, count: usize) {
        if !self.deferred {
            // SAFETY: the frames came from `alloc_frames` here; the strict unmap that preceded
            // this call completed its IOTLB invalidation, so no device can reach them.
            unsafe { self.memory.free_frames(base, count) };
            return;
        }
        let mut pending = self.pending.lock();
        pending.push((base, count));
        if pending.len() >= PENDING_PAGES_LIMIT {
            match self.domain.flush() {
                Ok(()) => {
                    for (b, c) in pending.drain(..) {
                        // SAFETY: the domain flush invalidated every earlier unmap, so no device
                        // can reach these frames any more.
                        unsafe { self.memory.free_frames(b, c) };
                    }
                }
                Err(e) => log::error!("iommu: domain {} flush failed ({e}); pages stay quarantined", self.domain.id()),
            }
        }
    }

    fn copy(&self, from: PhysAddr, to: PhysAddr, len: usize) {
        let src = self.memory.phys_to_virt(from);
        let dst = self.memory.phys_to_virt(to);
        // SAFETY: both ranges are RAM this mapping owns (the caller's buffer, which the mapping
        // keeps alive, and the isolation page); they never overlap.
        unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
    }
}

impl DmaMapper for Iommu {
    fn kind(&self) -> &'static str {
        if self.isolate_sub_page { "iommu+isolation" } else { "iommu" }
    }

    fn check_mask(&self, mask: u64) -> Result<(), MaskUnsupported> {
        // Page tables, coherent memory and isolation pages all need a few MiB of IOVA space.
        if mask < (1 << MIN_MASK_BITS) - 1 {
            return Err(MaskUnsupported::IommuNeedsWiderMask { min_bits: MIN_MASK_BITS });
        }
        Ok(())
    }

    fn map(&self, limits: &DeviceLimits, phys: PhysAddr, len: usize, dir: DmaDirection) -> Result<Mapped, MapError> {
        if len == 0 {
            return Err(MapError::ZeroLength);
        }
        let (target, bounce) = if self.isolate_sub_page && Self::shares_a_page(phys, len) {
            let frames = len.div_ceil(PAGE_SIZE);
            let page = self
                .memory
                .alloc_frames(FrameRequest { count: frames, max_addr: u64::MAX, align: PAGE })
                .ok_or(MapError::Iommu(IommuError::IsolationPageAllocFailed { len }))?;
            // Initialise from the buffer for every direction: a FromDevice page must not show
            // the device whatever the page held before (the swiotlb information leak).
            self.copy(phys, page, len);
            // Zero the tail of the last page: it is the device's to see, and must hold nothing.
            let tail = frames * PAGE_SIZE - len;
            // SAFETY: the page run is ours; `len..frames*PAGE_SIZE` lies inside it.
            unsafe { core::ptr::write_bytes(self.memory.phys_to_virt(page).add(len), 0, tail) };
            (page, Some(page))
        } else {
            (phys, None)
        };
        match self.domain.map(None, target, len, perms(dir), limits.mask) {
            Ok(iova) => Ok(Mapped { bus: BusAddr(iova), phys, len, bounce }),
            Err(e) => {
                if let Some(page) = bounce {
                    // SAFETY: never mapped, so no device can reach it.
                    unsafe { self.memory.free_frames(page, len.div_ceil(PAGE_SIZE)) };
                }
                Err(MapError::Iommu(e.into()))
            }
        }
    }

    unsafe fn unmap(&self, mapped: &Mapped, dir: DmaDirection) {
        if let Err(e) = self.domain.unmap(mapped.bus.0, mapped.len) {
            log::error!("iommu: unmap of {:?} (+{}) failed: {e}", mapped.bus, mapped.len);
            // The page may still be reachable: keep it (and the buffer copy-back) as it is.
            return;
        }
        if let Some(page) = mapped.bounce {
            if dir != DmaDirection::ToDevice {
                self.copy(page, mapped.phys, mapped.len);
            }
            self.release_frames(page, mapped.len.div_ceil(PAGE_SIZE));
        }
    }

    unsafe fn unmap_many(&self, mapped: &[Mapped], dir: DmaDirection) {
        let ranges: Vec<(u64, usize)> = mapped.iter().map(|m| (m.bus.0, m.len)).collect();
        if let Err(e) = self.domain.unmap_many(&ranges) {
            log::error!("iommu: unmap of {} mappings failed: {e}", mapped.len());
            // Some may still be reachable: keep every isolation page (and skip copy-backs).
            return;
        }
        for m in mapped {
            if let Some(page) = m.bounce {
                if dir != DmaDirection::ToDevice {
                    self.copy(page, m.phys, m.len);
                }
                self.release_frames(page, m.len.div_ceil(PAGE_SIZE));
            }
        }
    }

    unsafe fn sync_for_cpu(&self, mapped: &Mapped, offset: usize, len: usize, dir: DmaDirection) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        if let Some(page) = mapped.bounce
            && dir != DmaDirection::ToDevice
        {
            self.copy(PhysAddr(page.0 + offset as u64), PhysAddr(mapped.phys.0 + offset as u64), len);
        }
    }

    unsafe fn sync_for_device(&self, mapped: &Mapped, offset: usize, len: usize, dir: DmaDirection) {
        if let Some(page) = mapped.bounce
            && dir != DmaDirection::FromDevice
        {
            self.copy(PhysAddr(mapped.phys.0 + offset as u64), PhysAddr(page.0 + offset as u64), len);
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    fn alloc_coherent(&self, limits: &DeviceLimits, bytes: usize) -> Result<CoherentRegion, AllocError> {
        let frames = bytes.max(1).div_ceil(PAGE_SIZE);
        let size = frames.checked_mul(PAGE_SIZE).ok_or(AllocError::TooLarge { bytes })?;
        // Whole 2 MiB multiples (DMA arena chunks, large pools) are placed on a 2 MiB boundary,
        // so that, with an IOVA the buddy allocator aligns naturally, the tables map them with
        // 2 MiB second-level pages (§9.8, PS = 1): one entry instead of 512, and one IOTLB entry
        // covers the lot. Fall back to page alignment when no aligned run is free.
        let large = size.is_multiple_of(LARGE_PAGE);
        let phys = large
            .then(|| {
                self.memory.alloc_frames(FrameRequest { count: frames, max_addr: u64::MAX, align: LARGE_PAGE as u64 })
            })
            .flatten()
            .or_else(|| self.memory.alloc_frames(FrameRequest { count: frames, max_addr: u64::MAX, align: PAGE }))
            .ok_or(AllocError::OutOfMemory { bytes, limit: u64::MAX })?;
        // SAFETY: the run is ours and mapped in the direct map.
        unsafe { core::ptr::write_bytes(self.memory.phys_to_virt(phys), 0, size) };
        match self.domain.map(None, phys, size, Perms::READ_WRITE, limits.mask) {
            Ok(iova) => Ok(CoherentRegion { phys, bus: BusAddr(iova), frames }),
            Err(e) => {
                log::warn!("iommu: coherent mapping of {size} bytes failed: {e}");
                // SAFETY: never mapped.
                unsafe { self.memory.free_frames(phys, frames) };
                Err(AllocError::Iommu(e.into()))
            }
        }
    }

    unsafe fn free_coherent(&self, region: &CoherentRegion) {
        match self.domain.unmap(region.bus.0, region.frames * PAGE_SIZE) {
            Ok(()) => self.release_frames(region.phys, region.frames),
            Err(e) => log::error!("iommu: coherent unmap of {:?} failed ({e}); frames quarantined", region.bus),
        }
    }

    fn bus_to_phys(&self, bus: BusAddr) -> Option<PhysAddr> {
        self.domain
            .translate(bus.0, AccessKind::Read)
            .or_else(|_| self.domain.translate(bus.0, AccessKind::Write))
            .ok()
            .map(|t| t.phys)
    }
}
