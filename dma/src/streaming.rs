//! Streaming mappings: lend one buffer to a device for one transfer (Linux's `dma_map_single`,
//! `dma_map_page`).
//!
//! Ownership passes back and forth, and the types follow it:
//! 1. `dev.map(buf, dir)` *consumes* the buffer. From now on the device owns it; the CPU has no
//!    way to reach it (the CPU's caches, or a bounce slot, would otherwise disagree with what the
//!    device sees).
//! 2. `mapping.sync_for_cpu()` gives it to the CPU for a while, returning a borrow that only
//!    allows what the direction makes meaningful: read for `FromDevice`/`Bidirectional`, write
//!    for `ToDevice`/`Bidirectional`. `sync_for_device()` hands it back (the borrow must be gone).
//! 3. `mapping.unmap()` ends the transfer and returns the buffer, with the device's data in it.
//!
//! ```compile_fail,E0382
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, mapper::Direct, DmaDevice, ToDevice};
//! # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
//! # let dev = DmaDevice::new("00:02.0 demo", mem.clone(), Arc::new(Direct::new(mem)));
//! let mut buf = vec![0u8; 64];
//! let mapping = dev.map(buf, ToDevice).unwrap();
//! buf[0] = 1; // the buffer was moved into the mapping: the device owns it now
//! ```
//!
//! ```compile_fail,E0599
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, mapper::Direct, DmaDevice, ToDevice, PageBuffer};
//! # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
//! # let dev = DmaDevice::new("00:02.0 demo", mem.clone(), Arc::new(Direct::new(mem.clone())));
//! let buf = PageBuffer::alloc(&(mem as Arc<dyn dma::PhysMemory>), 64, u64::MAX).unwrap();
//! let mut mapping = dev.map(buf, ToDevice).unwrap();
//! // The device only reads a ToDevice buffer: there is nothing for the CPU to read back.
//! let first = mapping.sync_for_cpu().as_slice()[0];
//! ```
//!
//! ```compile_fail,E0599
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, mapper::Direct, DmaDevice, FromDevice, PageBuffer};
//! # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
//! # let dev = DmaDevice::new("00:02.0 demo", mem.clone(), Arc::new(Direct::new(mem.clone())));
//! let buf = PageBuffer::alloc(&(mem as Arc<dyn dma::PhysMemory>), 64, u64::MAX).unwrap();
//! let mut mapping = dev.map(buf, FromDevice).unwrap();
//! // The device overwrites a FromDevice buffer: CPU writes would be lost.
//! mapping.sync_for_cpu().write_at(0, &[1, 2, 3]).unwrap();
//! ```
//!
//! ```compile_fail,E0499
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, mapper::Direct, DmaDevice, Bidirectional, PageBuffer};
//! # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
//! # let dev = DmaDevice::new("00:02.0 demo", mem.clone(), Arc::new(Direct::new(mem.clone())));
//! let buf = PageBuffer::alloc(&(mem as Arc<dyn dma::PhysMemory>), 64, u64::MAX).unwrap();
//! let mut mapping = dev.map(buf, Bidirectional).unwrap();
//! let view = mapping.sync_for_cpu();
//! mapping.sync_for_device(); // cannot give it to the device while the CPU still looks at it
//! let _ = view.as_slice();
//! ```
//!
//! # Dropping a mapping
//! A `Mapping` dropped without `unmap()` is unmapped by its destructor (bounce data is copied
//! back, the bounce slot or IOMMU entry released) and then its buffer is dropped. The tracker
//! records a `DroppedWhileMapped` report naming the device, because the driver should have
//! stopped the device and unmapped explicitly: after the drop the memory may be reused while a
//! misbehaving device still holds its address.

use core::marker::PhantomData;
use core::mem::ManuallyDrop;

use crate::buffer::DmaBuf;
use crate::debug::{MappingKind, ReportKind};
use crate::device::DmaDevice;
use crate::direction::{CpuReadable, CpuWritable, Direction, DmaDirection};
use crate::error::{MapError, MapFailed, OutOfBounds, check_range};
use crate::mapper::Mapped;
use crate::phys::BusAddr;
use crate::trace::{self, EventKind};

/// A buffer lent to a device. See the module documentation.
pub struct Mapping<B: DmaBuf, D: Direction> {
    dev: DmaDevice,
    buf: B,
    /// Offset of the mapped range inside the buffer.
    offset: usize,
    mapped: Mapped,
    track: Option<u64>,
    cpu_owns: bool,
    _dir: PhantomData<D>,
}

impl DmaDevice {
    /// Maps all of `buf` for the device (Linux's `dma_map_single`). On failure the buffer
    /// comes back inside the error.
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use dma::{sim::{SimDevice, SimMemory}, mapper::Direct, DmaDevice, PhysMemory, PageBuffer};
    /// # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
    /// # let phys: Arc<dyn PhysMemory> = mem.clone();
    /// # let dev = DmaDevice::new("00:02.0 demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
    /// use dma::ToDevice;
    /// let hw = SimDevice::new(&dev);
    /// let mut buf = PageBuffer::alloc(&phys, 64, 0xffff_ffff).unwrap();
    /// buf[..4].copy_from_slice(b"ping");
    /// let tx = dev.map(buf, ToDevice).unwrap(); // `buf` now belongs to the mapping
    /// let mut seen = [0u8; 4];
    /// hw.read(tx.bus_addr(), &mut seen).unwrap(); // what the device reads at the bus address
    /// assert_eq!(&seen, b"ping");
    /// let buf = tx.unmap(); // and back to the CPU
    /// assert_eq!(&buf[..4], b"ping");
    /// ```
    pub fn map<B: DmaBuf, D: Direction>(&self, buf: B, dir: D) -> Result<Mapping<B, D>, MapFailed<B>> {
        let len = buf.dma_len();
        self.map_range(buf, 0, len, dir)
    }

    /// Maps `len` bytes of `buf` starting at `offset` (Linux's `dma_map_page` with page,
    /// offset and size). The whole buffer is still owned by the mapping.
    pub fn map_range<B: DmaBuf, D: Direction>(
        &self,
        buf: B,
        offset: usize,
        len: usize,
        _dir: D,
    ) -> Result<Mapping<B, D>, MapFailed<B>> {
        match self.map_buffer_range(&buf, offset, len, D::DIRECTION) {
            Ok(mapped) => {
                let track = self.track(MappingKind::Single, &mapped, D::DIRECTION);
                Ok(Mapping { dev: self.clone(), buf, offset, mapped, track, cpu_owns: false, _dir: PhantomData })
            }
            Err(error) => {
                log::warn!("{}: DMA map of {} bytes failed: {}", self.name(), len, error);
                Err(MapFailed { error, buffer: buf })
            }
        }
    }

    /// Alias of [`DmaDevice::map_range`] under Linux's name, for a page buffer and an offset.
    pub fn map_page<B: DmaBuf, D: Direction>(
        &self,
        page: B,
        offset: usize,
        len: usize,
        dir: D,
    ) -> Result<Mapping<B, D>, MapFailed<B>> {
        self.map_range(page, offset, len, dir)
    }

    pub(crate) fn map_buffer_range<B: DmaBuf>(
        &self,
        buf: &B,
        offset: usize,
        len: usize,
        dir: DmaDirection,
    ) -> Result<Mapped, MapError> {
        if len == 0 {
            return Err(MapError::ZeroLength);
        }
        check_range(offset, len, buf.dma_len()).map_err(|_| MapError::RangeOutOfBounds {
            offset,
            len,
            buffer_len: buf.dma_len(),
        })?;
        // `offset <= dma_len`, so this stays inside (or one past) the buffer.
        let va = buf.dma_ptr().wrapping_add(offset);
        let phys = self.buffer_phys(va, len)?;
        let mapped = self.mapper().map(&self.limits(), phys, len, dir)?;
        trace::streaming(self, EventKind::Map, &mapped, dir, 0, len);
        Ok(mapped)
    }
}

impl<B: DmaBuf, D: Direction> Mapping<B, D> {
    /// What to program into the device.
    pub fn bus_addr(&self) -> BusAddr {
        self.mapped.bus
    }

    /// Mapped length in bytes.
    pub fn len(&self) -> usize {
        self.mapped.len
    }

    /// Always false: empty mappings are refused.
    pub fn is_empty(&self) -> bool {
        self.mapped.len == 0
    }

    /// The direction, as a value.
    pub fn direction(&self) -> DmaDirection {
        D::DIRECTION
    }

    /// Whether the data goes through a bounce slot.
    pub fn is_bounced(&self) -> bool {
        self.mapped.bounce.is_some()
    }

    /// Whether the CPU owns the buffer now (between `sync_for_cpu` and `sync_for_device`).
    pub fn cpu_owns(&self) -> bool {
        self.cpu_owns
    }

    /// Takes the whole mapped range back for the CPU (the device must be done with it) and
    /// returns the CPU's view.
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
    /// let mut rx = dev.map(PageBuffer::alloc(&phys, 64, 0xffff_ffff).unwrap(), FromDevice).unwrap();
    /// hw.write(rx.bus_addr(), b"frame").unwrap(); // the device fills the buffer
    /// let view = rx.sync_for_cpu(); // the CPU's turn: FromDevice may be read
    /// assert_eq!(&view.as_slice()[..5], b"frame");
    /// rx.sync_for_device(); // the view is gone; the device may write again
    /// let _buf = rx.unmap();
    /// ```
    pub fn sync_for_cpu(&mut self) -> CpuAccess<'_, D> {
        let len = self.mapped.len;
        self.view_after_cpu_sync(0, len)
    }

    /// Takes `offset..offset+len` of the mapping back for the CPU (Linux's
    /// `dma_sync_single_range_for_cpu`): only that range is synced and visible.
    pub fn sync_range_for_cpu(&mut self, offset: usize, len: usize) -> Result<CpuAccess<'_, D>, OutOfBounds> {
        check_range(offset, len, self.mapped.len)?;
        Ok(self.view_after_cpu_sync(offset, len))
    }

    fn view_after_cpu_sync(&mut self, offset: usize, len: usize) -> CpuAccess<'_, D> {
        // SAFETY: `mapped` is live and came from this device's mapper with direction
        // `D::DIRECTION`; the range was checked by the callers.
        unsafe { self.dev.mapper().sync_for_cpu(&self.mapped, offset, len, D::DIRECTION) };
        trace::streaming(&self.dev, EventKind::SyncForCpu, &self.mapped, D::DIRECTION, offset, len);
        self.cpu_owns = true;
        let start = self.offset + offset;
        // SAFETY: `start + len <= dma_len` (map checked the mapping's range, callers the
        // sub-range); the CPU owns these bytes now and the returned borrow of `self` keeps
        // `sync_for_device`/`unmap` from running while it lives.
        let bytes = unsafe { core::slice::from_raw_parts_mut(self.buf.dma_mut_ptr().add(start), len) };
        CpuAccess { bytes, _dir: PhantomData }
    }

    /// Gives the whole mapping back to the device (CPU writes become visible to it).
    pub fn sync_for_device(&mut self) {
        let len = self.mapped.len;
        // SAFETY: live mapping of this mapper, range inside it.
        unsafe { self.dev.mapper().sync_for_device(&self.mapped, 0, len, D::DIRECTION) };
        trace::streaming(&self.dev, EventKind::SyncForDevice, &self.mapped, D::DIRECTION, 0, len);
        self.cpu_owns = false;
    }

    /// Gives `offset..offset+len` back to the device (Linux's
    /// `dma_sync_single_range_for_device`).
    pub fn sync_range_for_device(&mut self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        check_range(offset, len, self.mapped.len)?;
        // SAFETY: live mapping of this mapper, range checked.
        unsafe { self.dev.mapper().sync_for_device(&self.mapped, offset, len, D::DIRECTION) };
        trace::streaming(&self.dev, EventKind::SyncForDevice, &self.mapped, D::DIRECTION, offset, len);
        self.cpu_owns = false;
        Ok(())
    }

    fn release(&mut self) {
        // SAFETY: `mapped` is live (release runs once, from unmap or drop), made by this
        // device's mapper with `D::DIRECTION`; the buffer is still owned by us.
        unsafe { self.dev.mapper().unmap(&self.mapped, D::DIRECTION) };
        trace::streaming(&self.dev, EventKind::Unmap, &self.mapped, D::DIRECTION, 0, self.mapped.len);
        self.dev.untrack(self.track.take());
    }

    /// Ends the mapping and returns the buffer with the device's data in it (Linux's
    /// `dma_unmap_single`). The device must be done with it.
    pub fn unmap(self) -> B {
        let mut this = ManuallyDrop::new(self);
        this.release();
        // SAFETY: `this` is never dropped or used again; each field that owns something is
        // moved out exactly once.
        unsafe {
            let buf = core::ptr::read(&this.buf);
            drop(core::ptr::read(&this.dev));
            buf
        }
    }
}

impl<B: DmaBuf, D: Direction> Drop for Mapping<B, D> {
    fn drop(&mut self) {
        let (bus, len) = (self.mapped.bus, self.mapped.len);
        self.release();
        self.dev.report(ReportKind::DroppedWhileMapped { bus, len });
    }
}

/// The CPU's view of (part of) a mapped buffer between `sync_for_cpu` and `sync_for_device`.
pub struct CpuAccess<'a, D: Direction> {
    bytes: &'a mut [u8],
    _dir: PhantomData<D>,
}

impl<'a, D: Direction> CpuAccess<'a, D> {
    pub(crate) fn new(bytes: &'a mut [u8]) -> CpuAccess<'a, D> {
        CpuAccess { bytes, _dir: PhantomData }
    }

    /// Number of bytes in view.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl<D: CpuReadable> CpuAccess<'_, D> {
    /// The bytes, as the device left them.
    pub fn as_slice(&self) -> &[u8] {
        self.bytes
    }
}

impl<D: CpuWritable> CpuAccess<'_, D> {
    /// Copies `src` into the view at `offset`, for the device to read after
    /// `sync_for_device`.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        check_range(offset, src.len(), self.bytes.len())?;
        self.bytes[offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }

    /// Fills the whole view with `byte`.
    pub fn fill(&mut self, byte: u8) {
        self.bytes.fill(byte);
    }
}

impl<D: CpuReadable + CpuWritable> CpuAccess<'_, D> {
    /// The bytes, to read and change in place (Bidirectional only).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.bytes
    }
}

impl<B: DmaBuf, D: Direction> core::fmt::Debug for Mapping<B, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mapping")
            .field("device", &self.dev.name())
            .field("bus", &self.mapped.bus)
            .field("len", &self.mapped.len)
            .field("dir", &D::DIRECTION)
            .field("bounced", &self.mapped.bounce.is_some())
            .finish()
    }
}
