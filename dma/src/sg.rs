//! Scatter-gather: several buffers mapped as one transfer (Linux's `dma_map_sg`).
//!
//! Devices with scatter-gather engines take a list of (bus address, length) segments. Mapping
//! the buffers one by one and handing the device one segment per buffer works, but wastes
//! descriptors when buffers happen to be adjacent on the bus; so adjacent pieces are merged.
//! Two device limits bound what one segment may be, and pieces are split to honour them:
//! - the **maximum segment size**: a descriptor's length field is only so wide;
//! - the **segment boundary**: some engines increment only the low address bits, so a segment
//!   must not cross a multiple of the boundary (a power of two).
//!
//! The buffers are owned by the [`SgMapping`] until `unmap()` returns them all.

use alloc::vec::Vec;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;

use crate::buffer::DmaBuf;
use crate::debug::{MappingKind, ReportKind};
use crate::device::DmaDevice;
use crate::direction::{Direction, DmaDirection};
use crate::error::{MapError, MapFailed};
use crate::mapper::{DeviceLimits, Mapped};
use crate::phys::BusAddr;
use crate::streaming::CpuAccess;
use crate::trace::{self, EventKind};

/// One piece the device is programmed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusSegment {
    /// Bus address of the first byte.
    pub bus: BusAddr,
    /// Length in bytes.
    pub len: usize,
}

/// Turns mapped pieces (bus address, length), in transfer order, into device segments:
/// adjacent pieces are merged, and no segment is longer than `max_segment_size` or crosses a
/// multiple of `segment_boundary`.
///
/// # Examples
/// ```
/// use dma::{BusAddr, BusSegment, mapper::DeviceLimits, sg::build_segments};
/// let limits = DeviceLimits { mask: u64::MAX, max_segment_size: 0x3000, segment_boundary: 0x1_0000 };
/// let pieces = [(BusAddr(0x1000), 0x1000), (BusAddr(0x2000), 0x1000), (BusAddr(0xf000), 0x2000)];
/// let segs = build_segments(&pieces, &limits);
/// assert_eq!(segs, [
///     BusSegment { bus: BusAddr(0x1000), len: 0x2000 },  // adjacent pieces merged
///     BusSegment { bus: BusAddr(0xf000), len: 0x1000 },  // split at the 64 KiB boundary
///     BusSegment { bus: BusAddr(0x1_0000), len: 0x1000 },
/// ]);
/// ```
pub fn build_segments(pieces: &[(BusAddr, usize)], limits: &DeviceLimits) -> Vec<BusSegment> {
    let max = limits.max_segment_size.max(1) as u64;
    let boundary = limits.segment_boundary.max(1);
    let mut out: Vec<BusSegment> = Vec::new();
    for &(bus, len) in pieces {
        let mut addr = bus.0;
        let mut left = len as u64;
        while left > 0 {
            // Room before the next boundary line.
            let to_boundary = boundary - (addr & (boundary - 1));
            let mut chunk = left.min(max).min(to_boundary);
            if let Some(last) = out.last_mut() {
                let last_end = last.bus.0 + last.len as u64;
                let same_window = (last.bus.0 / boundary) == (addr / boundary);
                if last_end == addr && same_window && (last.len as u64) < max {
                    let grow = chunk.min(max - last.len as u64);
                    last.len += grow as usize;
                    addr += grow;
                    left -= grow;
                    continue;
                }
            }
            chunk = chunk.max(1);
            out.push(BusSegment { bus: BusAddr(addr), len: chunk as usize });
            addr += chunk;
            left -= chunk;
        }
    }
    out
}

struct SgEntry<B> {
    buf: B,
    mapped: Mapped,
}

/// Several buffers lent to a device as one transfer.
pub struct SgMapping<B: DmaBuf, D: Direction> {
    dev: DmaDevice,
    entries: Vec<SgEntry<B>>,
    segments: Vec<BusSegment>,
    track: Option<u64>,
    _dir: PhantomData<D>,
}

impl DmaDevice {
    /// Maps every buffer of `bufs` (in order) as one transfer. On failure everything mapped so
    /// far is unmapped and all buffers come back in the error.
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use dma::{sim::{SimDevice, SimMemory}, mapper::Direct, DmaDevice, PhysMemory, PageBuffer};
    /// # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
    /// # let phys: Arc<dyn PhysMemory> = mem.clone();
    /// # let dev = DmaDevice::new("00:02.0 demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
    /// use dma::FromDevice;
    /// let hw = SimDevice::new(&dev);
    /// let bufs = vec![
    ///     PageBuffer::alloc(&phys, 512, 0xffff_ffff).unwrap(),
    ///     PageBuffer::alloc(&phys, 1024, 0xffff_ffff).unwrap(),
    /// ];
    /// let mut sg = dev.map_sg(bufs, FromDevice).unwrap();
    /// // Program these into the device (a PRDT, a descriptor chain); the device scatters into them.
    /// let written = hw.write_segments(sg.segments(), &[0xab; 1536]).unwrap();
    /// assert_eq!(written, 1536);
    /// let bufs = sg.unmap();
    /// assert!(bufs.iter().all(|b| b.iter().all(|&x| x == 0xab)));
    /// ```
    pub fn map_sg<B: DmaBuf, D: Direction>(&self, bufs: Vec<B>, _dir: D) -> Result<SgMapping<B, D>, MapFailed<Vec<B>>> {
        if bufs.is_empty() {
            return Err(MapFailed { error: MapError::ZeroLength, buffer: bufs });
        }
        let mut mapped: Vec<Mapped> = Vec::with_capacity(bufs.len());
        for buf in &bufs {
            match self.map_buffer_range(buf, 0, buf.dma_len(), D::DIRECTION) {
                Ok(m) => mapped.push(m),
                Err(error) => {
                    for m in &mapped {
                        // SAFETY: each `m` was just mapped by this mapper with this direction
                        // and is unmapped once; its buffer is still owned by `bufs`.
                        unsafe { self.mapper().unmap(m, D::DIRECTION) };
                        trace::streaming(self, EventKind::Unmap, m, D::DIRECTION, 0, m.len);
                    }
                    log::warn!("{}: DMA map_sg failed: {}", self.name(), error);
                    return Err(MapFailed { error, buffer: bufs });
                }
            }
        }
        let pieces: Vec<(BusAddr, usize)> = mapped.iter().map(|m| (m.bus, m.len)).collect();
        let segments = build_segments(&pieces, &self.limits());
        let total: usize = pieces.iter().map(|p| p.1).sum();
        let track = self.track(
            MappingKind::ScatterGather { segments: segments.len() },
            &Mapped {
                bus: segments[0].bus,
                phys: mapped[0].phys,
                len: total,
                bounce: mapped.iter().find_map(|m| m.bounce),
            },
            D::DIRECTION,
        );
        let entries = bufs.into_iter().zip(mapped).map(|(buf, mapped)| SgEntry { buf, mapped }).collect();
        Ok(SgMapping { dev: self.clone(), entries, segments, track, _dir: PhantomData })
    }
}

impl<B: DmaBuf, D: Direction> SgMapping<B, D> {
    /// The segments to program into the device, in transfer order.
    pub fn segments(&self) -> &[BusSegment] {
        &self.segments
    }

    /// Number of buffers.
    pub fn buffer_count(&self) -> usize {
        self.entries.len()
    }

    /// The direction, as a value.
    pub fn direction(&self) -> DmaDirection {
        D::DIRECTION
    }

    /// Takes every buffer back for the CPU and returns a view of them.
    pub fn sync_for_cpu(&mut self) -> SgCpuAccess<'_, B, D> {
        for e in &self.entries {
            // SAFETY: each entry is a live mapping of this mapper with this direction; the
            // range is the whole mapping.
            unsafe { self.dev.mapper().sync_for_cpu(&e.mapped, 0, e.mapped.len, D::DIRECTION) };
            trace::streaming(&self.dev, EventKind::SyncForCpu, &e.mapped, D::DIRECTION, 0, e.mapped.len);
        }
        SgCpuAccess { entries: &mut self.entries, _dir: PhantomData }
    }

    /// Gives every buffer back to the device.
    pub fn sync_for_device(&mut self) {
        for e in &self.entries {
            // SAFETY: as in `sync_for_cpu`.
            unsafe { self.dev.mapper().sync_for_device(&e.mapped, 0, e.mapped.len, D::DIRECTION) };
            trace::streaming(&self.dev, EventKind::SyncForDevice, &e.mapped, D::DIRECTION, 0, e.mapped.len);
        }
    }

    fn release(&mut self) {
        let mapped: Vec<Mapped> = self.entries.iter().map(|e| e.mapped).collect();
        // SAFETY: each entry is live and unmapped exactly once (release runs once). One call
        // for the whole list: a strict IOMMU waits for one invalidation round trip, not one
        // per entry.
        unsafe { self.dev.mapper().unmap_many(&mapped, D::DIRECTION) };
        for e in &self.entries {
            trace::streaming(&self.dev, EventKind::Unmap, &e.mapped, D::DIRECTION, 0, e.mapped.len);
        }
        self.dev.untrack(self.track.take());
    }

    /// Ends the transfer and returns all buffers, in the order they were given.
    pub fn unmap(self) -> Vec<B> {
        let mut this = ManuallyDrop::new(self);
        this.release();
        // SAFETY: `this` is never dropped or used again; owning fields are moved out once.
        let (entries, _dev, _segments) =
            unsafe { (core::ptr::read(&this.entries), core::ptr::read(&this.dev), core::ptr::read(&this.segments)) };
        entries.into_iter().map(|e| e.buf).collect()
    }
}

impl<B: DmaBuf, D: Direction> Drop for SgMapping<B, D> {
    fn drop(&mut self) {
        self.release();
        let len = self.entries.iter().map(|e| e.mapped.len).sum();
        let bus = self.segments.first().map_or(BusAddr(0), |s| s.bus);
        self.dev.report(ReportKind::DroppedWhileMapped { bus, len });
    }
}

/// The CPU's view of the buffers of an [`SgMapping`] it has taken back.
pub struct SgCpuAccess<'a, B: DmaBuf, D: Direction> {
    entries: &'a mut Vec<SgEntry<B>>,
    _dir: PhantomData<D>,
}

impl<B: DmaBuf, D: Direction> SgCpuAccess<'_, B, D> {
    /// The view of buffer `index`, `None` past the end.
    pub fn buffer(&mut self, index: usize) -> Option<CpuAccess<'_, D>> {
        let e = self.entries.get_mut(index)?;
        let len = e.buf.dma_len();
        // SAFETY: the CPU owns every buffer (synced for CPU), and the view borrows `self`
        // mutably so no second view of the same buffer exists.
        let bytes = unsafe { core::slice::from_raw_parts_mut(e.buf.dma_mut_ptr(), len) };
        Some(CpuAccess::new(bytes))
    }
}

impl<B: DmaBuf, D: Direction> core::fmt::Debug for SgMapping<B, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SgMapping")
            .field("device", &self.dev.name())
            .field("segments", &self.segments)
            .field("dir", &D::DIRECTION)
            .finish()
    }
}
