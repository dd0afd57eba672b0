//! `DmaDevice`: the handle through which a driver gets DMA memory, and nothing else.
//!
//! Like Zircon's bus-transaction-initiator handle, a `DmaDevice` is the capability: it knows the
//! device's name, what addresses it can generate (its DMA mask), its scatter-gather limits, and
//! the mapper that turns CPU memory into bus addresses for it. Every allocation and mapping goes
//! through it, so every one of them can be checked against the mask and tracked.
//!
//! The handle is cheap to clone (an `Arc`); mappings, coherent allocations and pools hold a
//! clone, so the device's state outlives every object that refers to it.

use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::debug::{DebugReport, LiveAtTeardown, LiveMapping, MappingKind, ReportKind, Tracker};
use crate::direction::DmaDirection;
use crate::error::{LimitError, MapError, MaskError};
use crate::mapper::{BounceStats, DeviceLimits, DmaMapper, Mapped};
use crate::phys::{BusAddr, PAGE_SIZE, PhysAddr, PhysMemory, contiguous_phys, mask_from_bits};

/// Linux's default maximum segment size (64 KiB) for devices that never set one.
pub const DEFAULT_MAX_SEGMENT_SIZE: usize = 64 * 1024;
/// The default segment boundary: no segment crosses a 4 GiB line. This is what Linux gives every
/// *PCI* device (`pci_device_add` in `drivers/pci/probe.c` calls `dma_set_seg_boundary(dev,
/// 0xffffffff)`, Linux 6.x), and every device here is a PCI function. A Linux device that never
/// sets `dma_parms` has no boundary at all: `dma_get_seg_boundary` (`include/linux/dma-mapping.h`)
/// then returns `ULONG_MAX`.
pub const DEFAULT_SEGMENT_BOUNDARY: u64 = 1 << 32;
/// Linux's default DMA mask: 32 bits, until the driver says more.
pub const DEFAULT_MASK_BITS: u32 = 32;

pub(crate) struct DeviceInner {
    name: String,
    memory: Arc<dyn PhysMemory>,
    mapper: Arc<dyn DmaMapper>,
    mask: AtomicU64,
    max_segment_size: AtomicUsize,
    segment_boundary: AtomicU64,
    debug: AtomicBool,
    teardown_reported: AtomicBool,
    pub(crate) tracker: spin::Mutex<Tracker>,
}

static DEVICES: spin::Mutex<Vec<Weak<DeviceInner>>> = spin::Mutex::new(Vec::new());

/// A device's DMA handle. See the module documentation.
#[derive(Clone)]
pub struct DmaDevice {
    pub(crate) inner: Arc<DeviceInner>,
}

impl fmt::Debug for DmaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaDevice")
            .field("name", &self.inner.name)
            .field("mask", &format_args!("{:#x}", self.mask()))
            .field("mapper", &self.inner.mapper.kind())
            .finish()
    }
}

impl DmaDevice {
    /// A handle for the device called `name` (give it the PCI address and the driver, e.g.
    /// `"00:02.0 e1000"`: it appears in every log line and report), using `memory` for
    /// translations and `mapper` for bus addresses. The mask starts at 32 bits, debugging on.
    pub fn new(name: impl Into<String>, memory: Arc<dyn PhysMemory>, mapper: Arc<dyn DmaMapper>) -> DmaDevice {
        let inner = Arc::new(DeviceInner {
            name: name.into(),
            memory,
            mapper,
            mask: AtomicU64::new(mask_from_bits(DEFAULT_MASK_BITS)),
            max_segment_size: AtomicUsize::new(DEFAULT_MAX_SEGMENT_SIZE),
            segment_boundary: AtomicU64::new(DEFAULT_SEGMENT_BOUNDARY),
            debug: AtomicBool::new(true),
            teardown_reported: AtomicBool::new(false),
            tracker: spin::Mutex::new(Tracker::default()),
        });
        let mut devices = DEVICES.lock();
        devices.retain(|w| w.strong_count() > 0);
        devices.push(Arc::downgrade(&inner));
        drop(devices);
        log::info!("{}: DMA device registered, mapper {}", inner.name, inner.mapper.kind());
        DmaDevice { inner }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The physical memory this device's buffers come from.
    pub fn memory(&self) -> &Arc<dyn PhysMemory> {
        &self.inner.memory
    }

    /// The device's mapper.
    pub fn mapper(&self) -> &Arc<dyn DmaMapper> {
        &self.inner.mapper
    }

    /// The highest bus address the device can generate.
    pub fn mask(&self) -> u64 {
        self.inner.mask.load(Ordering::Relaxed)
    }

    /// Declares how many address bits the device drives (Linux's `dma_set_mask_and_coherent`).
    ///
    /// Why it matters: a device with a 32-bit DMA engine that is given a bus address above
    /// 4 GiB silently drops the high bits and writes somewhere else. The mask lets every
    /// allocation and mapping stay below what the device can reach (or bounce).
    ///
    /// Refused, with the mask unchanged, when the width is outside 12..=64 bits or the mapper
    /// cannot serve it (for example no bounce area below the mask while RAM extends above it).
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use dma::{sim::{SimDevice, SimMemory}, mapper::Direct, DmaDevice, PhysMemory, PageBuffer};
    /// # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
    /// # let phys: Arc<dyn PhysMemory> = mem.clone();
    /// # let dev = DmaDevice::new("00:02.0 demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
    /// assert_eq!(dev.mask(), 0xffff_ffff); // 32 bits until the driver says more
    /// dev.set_mask(64).unwrap();
    /// assert_eq!(dev.mask(), u64::MAX);
    /// // RAM reaches above 4 GiB and this Direct mapper has no bounce area: 24 bits cannot work.
    /// assert!(dev.set_mask(24).is_err());
    /// assert_eq!(dev.mask(), u64::MAX); // unchanged
    /// ```
    pub fn set_mask(&self, bits: u32) -> Result<(), MaskError> {
        if bits == 0 || bits > 64 {
            return Err(MaskError::OutOfRange { bits });
        }
        if bits < 12 {
            return Err(MaskError::BelowPage { bits });
        }
        let mask = mask_from_bits(bits);
        self.inner.mapper.check_mask(mask).map_err(|reason| MaskError::Unsupported { bits, reason })?;
        self.inner.mask.store(mask, Ordering::Relaxed);
        log::info!("{}: DMA mask set to {} bits", self.name(), bits);
        Ok(())
    }

    /// Largest segment the device accepts in one scatter-gather descriptor
    /// (Linux's `dma_set_max_seg_size`).
    pub fn set_max_segment_size(&self, bytes: usize) -> Result<(), LimitError> {
        if bytes == 0 {
            return Err(LimitError::ZeroSegmentSize);
        }
        self.inner.max_segment_size.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// No scatter-gather segment may cross a multiple of `boundary` (a power of two, at least a
    /// page; Linux's `dma_set_seg_boundary`, which takes `boundary - 1`). Devices whose address
    /// counters carry only the low bits need this.
    pub fn set_segment_boundary(&self, boundary: u64) -> Result<(), LimitError> {
        if !boundary.is_power_of_two() {
            return Err(LimitError::BoundaryNotPowerOfTwo { boundary });
        }
        if boundary < PAGE_SIZE as u64 {
            return Err(LimitError::BoundaryBelowPage { boundary });
        }
        self.inner.segment_boundary.store(boundary, Ordering::Relaxed);
        Ok(())
    }

    /// The device's current limits, as mappers see them.
    pub fn limits(&self) -> DeviceLimits {
        DeviceLimits {
            mask: self.mask(),
            max_segment_size: self.inner.max_segment_size.load(Ordering::Relaxed),
            segment_boundary: self.inner.segment_boundary.load(Ordering::Relaxed),
        }
    }

    /// Turns tracking of typed mappings on or off (raw mappings are always tracked, since the
    /// raw layer needs the record to unmap).
    pub fn set_debug(&self, on: bool) {
        self.inner.debug.store(on, Ordering::Relaxed);
    }

    /// Whether typed mappings are tracked.
    pub fn debug_enabled(&self) -> bool {
        self.inner.debug.load(Ordering::Relaxed)
    }

    /// Reports recorded for this device so far.
    pub fn report_count(&self) -> u64 {
        self.inner.tracker.lock().reports
    }

    /// Every mapping the tracker knows to be live.
    pub fn live_mappings(&self) -> Vec<LiveMapping> {
        self.inner.tracker.lock().live()
    }

    /// Bounce statistics of the device's mapper, if it bounces.
    pub fn bounce_stats(&self) -> Option<BounceStats> {
        self.inner.mapper.bounce_stats()
    }

    /// Declares the device stopped (driver unbind). If mappings are still live they are
    /// reported and left in place: the device might still write to them, so their memory is not
    /// reused (quarantine).
    pub fn teardown(&self) -> Result<(), LiveAtTeardown> {
        let live = self.live_mappings();
        if live.is_empty() {
            return Ok(());
        }
        self.inner.teardown_reported.store(true, Ordering::Relaxed);
        self.report(ReportKind::LiveAtTeardown { live: live.len() });
        Err(LiveAtTeardown { device: self.name().into(), live })
    }

    /// Records a report against this device.
    pub(crate) fn report(&self, kind: ReportKind) -> DebugReport {
        self.inner.tracker.lock().reports += 1;
        let report = DebugReport { device: self.name().into(), kind };
        crate::debug::record(&report);
        report
    }

    /// Records a typed mapping if debugging is on.
    pub(crate) fn track(&self, kind: MappingKind, m: &Mapped, dir: DmaDirection) -> Option<u64> {
        if !self.debug_enabled() {
            return None;
        }
        Some(self.inner.tracker.lock().insert(kind, m.bus, m.len, dir, m.bounce.is_some(), None))
    }

    pub(crate) fn untrack(&self, id: Option<u64>) {
        if let Some(id) = id {
            self.inner.tracker.lock().remove(id);
        }
    }

    /// Translates and checks a CPU buffer for mapping.
    pub(crate) fn buffer_phys(&self, va: *const u8, len: usize) -> Result<PhysAddr, MapError> {
        match contiguous_phys(&*self.inner.memory, va, len) {
            None => Err(MapError::NotDmaMemory),
            Some(Err(offset)) => Err(MapError::NotContiguous { offset }),
            Some(Ok(pa)) => Ok(pa),
        }
    }

    // ----- The raw, Linux-shaped layer --------------------------------------------------

    /// Maps `len` bytes at CPU address `ptr` and returns the bare bus address (Linux's
    /// `dma_map_single`). The C-shaped escape hatch: nothing ties the buffer's life to the
    /// mapping, so misuse is caught at run time by the tracker instead of by types.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay valid, and must not be accessed by the CPU except between
    /// `sync_single_raw_for_cpu` and `sync_single_raw_for_device`, until
    /// [`DmaDevice::unmap_single_raw`] succeeds for the returned address.
    pub unsafe fn map_single_raw(&self, ptr: *const u8, len: usize, dir: DmaDirection) -> Result<BusAddr, MapError> {
        if len == 0 {
            return Err(MapError::ZeroLength);
        }
        let phys = self.buffer_phys(ptr, len)?;
        // SAFETY: the caller's contract is the same as ours.
        unsafe { self.map_phys_raw(phys, len, dir) }
    }

    /// Maps a physical range (Linux's `dma_map_page` with page + offset folded into `phys`).
    ///
    /// # Safety
    /// As for [`DmaDevice::map_single_raw`], for the physical range.
    pub unsafe fn map_phys_raw(&self, phys: PhysAddr, len: usize, dir: DmaDirection) -> Result<BusAddr, MapError> {
        let m = self.inner.mapper.map(&self.limits(), phys, len, dir)?;
        crate::trace::streaming(self, crate::trace::EventKind::Map, &m, dir, 0, len);
        self.inner.tracker.lock().insert(MappingKind::Raw, m.bus, len, dir, m.bounce.is_some(), Some(m));
        Ok(m.bus)
    }

    /// Unmaps a raw mapping (Linux's `dma_unmap_single`). An address that is not mapped, a size
    /// or direction that differs from the map, or a second unmap is reported and refused:
    /// nothing is freed and the tracker is unchanged.
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use dma::{sim::{SimDevice, SimMemory}, mapper::Direct, DmaDevice, PhysMemory, PageBuffer};
    /// # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
    /// # let phys: Arc<dyn PhysMemory> = mem.clone();
    /// # let dev = DmaDevice::new("00:02.0 demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
    /// use dma::{DmaBuf, DmaDirection, ReportKind};
    /// let buf = PageBuffer::alloc(&phys, 64, 0xffff_ffff).unwrap();
    /// // SAFETY: `buf` outlives the mapping and the CPU leaves it alone meanwhile.
    /// let bus = unsafe { dev.map_single_raw(buf.dma_ptr(), 64, DmaDirection::ToDevice) }.unwrap();
    /// // Unmapping with another size is the classic C mistake: refused and reported.
    /// let report = dev.unmap_single_raw(bus, 32, DmaDirection::ToDevice).unwrap_err();
    /// assert!(matches!(report.kind, ReportKind::SizeMismatch { mapped_len: 64, unmap_len: 32, .. }));
    /// dev.unmap_single_raw(bus, 64, DmaDirection::ToDevice).unwrap();
    /// assert!(dev.unmap_single_raw(bus, 64, DmaDirection::ToDevice).is_err()); // twice: DoubleUnmap
    /// ```
    pub fn unmap_single_raw(&self, bus: BusAddr, len: usize, dir: DmaDirection) -> Result<(), DebugReport> {
        let mut tracker = self.inner.tracker.lock();
        match tracker.check_unmap(bus, len, dir) {
            Ok((id, m)) => {
                tracker.remove(id);
                drop(tracker);
                // SAFETY: the tracker held `m` as a live mapping made by this device's mapper
                // with this direction; it was just removed, so this is its only unmap. The
                // buffer's validity is `map_single_raw`'s caller's promise.
                unsafe { self.inner.mapper.unmap(&m, dir) };
                crate::trace::streaming(self, crate::trace::EventKind::Unmap, &m, dir, 0, m.len);
                Ok(())
            }
            Err(kind) => {
                drop(tracker);
                Err(self.report(kind))
            }
        }
    }

    /// Gives a raw mapping to the CPU (Linux's `dma_sync_single_for_cpu`).
    pub fn sync_single_raw_for_cpu(&self, bus: BusAddr, len: usize, dir: DmaDirection) -> Result<(), DebugReport> {
        self.sync_raw(bus, 0, len, dir, true)
    }

    /// Gives a raw mapping back to the device (Linux's `dma_sync_single_for_device`).
    pub fn sync_single_raw_for_device(&self, bus: BusAddr, len: usize, dir: DmaDirection) -> Result<(), DebugReport> {
        self.sync_raw(bus, 0, len, dir, false)
    }

    /// Gives part of a raw mapping to the CPU (Linux's `dma_sync_single_range_for_cpu`).
    pub fn sync_single_range_raw_for_cpu(
        &self,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DebugReport> {
        self.sync_raw(bus, offset, len, dir, true)
    }

    /// Gives part of a raw mapping back to the device.
    pub fn sync_single_range_raw_for_device(
        &self,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), DebugReport> {
        self.sync_raw(bus, offset, len, dir, false)
    }

    fn sync_raw(
        &self,
        bus: BusAddr,
        offset: usize,
        len: usize,
        dir: DmaDirection,
        for_cpu: bool,
    ) -> Result<(), DebugReport> {
        let checked = self.inner.tracker.lock().check_sync(bus, offset, len, dir, for_cpu);
        match checked {
            Ok((m, map_dir)) => {
                // The mapping's own direction decides what moves (a Bidirectional mapping
                // synced "ToDevice" still bounces both ways as mapped).
                // SAFETY: `m` is a live raw mapping of this device's mapper and the range was
                // checked to lie inside it.
                unsafe {
                    if for_cpu {
                        self.inner.mapper.sync_for_cpu(&m, offset, len, map_dir);
                    } else {
                        self.inner.mapper.sync_for_device(&m, offset, len, map_dir);
                    }
                }
                let step =
                    if for_cpu { crate::trace::EventKind::SyncForCpu } else { crate::trace::EventKind::SyncForDevice };
                crate::trace::streaming(self, step, &m, map_dir, offset, len);
                Ok(())
            }
            Err(kind) => Err(self.report(kind)),
        }
    }
}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        let live = self.tracker.get_mut().live();
        if !live.is_empty() && !self.teardown_reported.load(Ordering::Relaxed) {
            let report =
                DebugReport { device: self.name.clone(), kind: ReportKind::LiveAtTeardown { live: live.len() } };
            crate::debug::record(&report);
        }
    }
}

/// Renders the `dma:mappings` view: each live device with its mapper and mask, then its live
/// mappings (kind, bus address, length, direction).
pub fn render_mappings() -> String {
    let devices: Vec<DmaDevice> =
        DEVICES.lock().iter().filter_map(|w| w.upgrade()).map(|inner| DmaDevice { inner }).collect();
    let mut out = String::new();
    for dev in &devices {
        let live = dev.live_mappings();
        let _ = writeln!(
            out,
            "{} mapper={} mask={:#x} live={} reports={}",
            dev.name(),
            dev.mapper().kind(),
            dev.mask(),
            live.len(),
            dev.report_count()
        );
        for m in &live {
            let _ = writeln!(out, "  {m}");
        }
        crate::arena::render_for(dev, &mut out);
    }
    out
}
