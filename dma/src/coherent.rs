//! Coherent memory: shared by CPU and device for its whole life (Linux's `dma_alloc_coherent`).
//!
//! Descriptor rings, mailboxes and command tables are read and written by both sides while the
//! device runs, so there is no hand-over point at which to flush or copy. Coherent memory is
//! memory where none is needed: the platform keeps CPU caches and device views consistent (on
//! x86 the bus snoops the caches). It is zeroed, physically contiguous, and below the device's
//! DMA mask.
//!
//! # How the CPU may touch it
//! The device can write coherent memory at any moment. A Rust reference (`&T`, `&mut T`) tells
//! the compiler the bytes do not change behind its back, so it may cache or merge accesses;
//! with a device writing concurrently that is undefined behaviour. The safe accessors therefore
//! use volatile reads and writes of whole values ([`Coherent::read`], [`Coherent::write`]), which
//! the compiler performs exactly as written. Ordering between the CPU's accesses and the device
//! (for example "write the descriptor, then ring the doorbell") still needs a fence or the MMIO
//! write's own ordering. References are available through `unsafe` accessors for the times the
//! driver knows the device is stopped.
//!
//! Only [`DmaSafe`] types may live in DMA memory: the device can write any bit pattern, and all
//! of them must be valid values.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use crate::debug::MappingKind;
use crate::device::DmaDevice;
use crate::direction::{CpuReadable, CpuWritable, Direction};
use crate::error::{AllocError, OutOfBounds, check_range};
use crate::mapper::{CoherentRegion, Mapped};
use crate::phys::{BusAddr, PAGE_SIZE, PhysAddr};
use crate::trace::{self, EventKind};

/// Plain data that may live in memory a device writes.
///
/// # Safety
/// Implementors promise that every bit pattern of `size_of::<Self>()` bytes (including all
/// zeroes) is a valid value, and that the type holds no pointers, references or handles (a device
/// could forge them). Integers and arrays of them qualify; `bool`, `char`, enums and references
/// do not. `#[repr(C)]` structs of `DmaSafe` fields qualify:
///
/// ```
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct RxDescriptor { addr: u64, len: u16, csum: u16, status: u8, errors: u8, special: u16 }
/// // SAFETY: repr(C), integer fields only, no padding: every bit pattern is a valid value.
/// unsafe impl dma::DmaSafe for RxDescriptor {}
/// ```
pub unsafe trait DmaSafe: Copy + Send + Sync + 'static {}

macro_rules! dma_safe {
    ($($t:ty),*) => { $(
        // SAFETY: every bit pattern of a primitive integer is a valid value.
        unsafe impl DmaSafe for $t {}
    )* };
}
dma_safe!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);
// SAFETY: an array of values valid for every bit pattern is valid for every bit pattern.
unsafe impl<T: DmaSafe, const N: usize> DmaSafe for [T; N] {}

/// Allocates coherent memory for `bytes` with alignment `align`.
fn alloc_region(dev: &DmaDevice, bytes: usize, align: usize) -> Result<(CoherentRegion, NonNull<u8>), AllocError> {
    if align > PAGE_SIZE {
        return Err(AllocError::UnsupportedAlignment { align, max: PAGE_SIZE });
    }
    let region = dev.mapper().alloc_coherent(&dev.limits(), bytes)?;
    let Some(ptr) = NonNull::new(dev.memory().phys_to_virt(region.phys)) else {
        // SAFETY: just allocated, unused.
        unsafe { dev.mapper().free_coherent(&region) };
        return Err(AllocError::BadFrames { phys: region.phys });
    };
    log::debug!("{}: coherent {} bytes at bus {}", dev.name(), bytes, region.bus);
    trace::coherent(dev, EventKind::CoherentAlloc, &region);
    Ok((region, ptr))
}

/// One `T` in coherent memory. Freed on drop.
pub struct Coherent<T: DmaSafe> {
    dev: DmaDevice,
    region: CoherentRegion,
    ptr: NonNull<T>,
}

// SAFETY: the memory is owned by this value; `T: Send`.
unsafe impl<T: DmaSafe> Send for Coherent<T> {}
// SAFETY: shared access only reads (volatile); writes need `&mut self`.
unsafe impl<T: DmaSafe> Sync for Coherent<T> {}

impl DmaDevice {
    /// A zeroed `T` in coherent memory below this device's mask.
    pub fn alloc_coherent<T: DmaSafe>(&self) -> Result<Coherent<T>, AllocError> {
        let (region, ptr) = alloc_region(self, size_of::<T>(), align_of::<T>())?;
        Ok(Coherent { dev: self.clone(), region, ptr: ptr.cast() })
    }

    /// `len` zeroed `T`s in coherent memory below this device's mask (a descriptor ring).
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use dma::{sim::{SimDevice, SimMemory}, mapper::Direct, DmaDevice, PhysMemory, PageBuffer};
    /// # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
    /// # let phys: Arc<dyn PhysMemory> = mem.clone();
    /// # let dev = DmaDevice::new("00:02.0 demo", phys.clone(), Arc::new(Direct::new(phys.clone())));
    /// let hw = SimDevice::new(&dev);
    /// let mut ring = dev.alloc_coherent_slice::<[u64; 2]>(8).unwrap(); // 8 descriptors
    /// ring.write(0, [0x1000, 0]).unwrap();
    /// // The device sees the write at once, and its write-back is seen at once: no syncs.
    /// let mut first = [0u8; 8];
    /// hw.read(ring.bus_addr(), &mut first).unwrap();
    /// assert_eq!(u64::from_le_bytes(first), 0x1000);
    /// hw.write(ring.bus_addr_of(1).unwrap(), &7u64.to_le_bytes()).unwrap();
    /// assert_eq!(ring.read(1), Some([7, 0]));
    /// ```
    pub fn alloc_coherent_slice<T: DmaSafe>(&self, len: usize) -> Result<CoherentSlice<T>, AllocError> {
        let bytes = len.checked_mul(size_of::<T>()).ok_or(AllocError::TooLarge { bytes: usize::MAX })?;
        let (region, ptr) = alloc_region(self, bytes, align_of::<T>())?;
        Ok(CoherentSlice { dev: self.clone(), region, ptr: ptr.cast(), len })
    }

    /// A zeroed `T` in non-coherent memory, owned by the CPU until the first `sync_for_device`.
    pub fn alloc_noncoherent<T: DmaSafe, D: Direction>(&self, _dir: D) -> Result<NonCoherent<T, D>, AllocError> {
        let (region, ptr) = alloc_region(self, size_of::<T>(), align_of::<T>())?;
        let track = self.track(
            MappingKind::NonCoherent,
            &Mapped { bus: region.bus, phys: region.phys, len: size_of::<T>(), bounce: None },
            D::DIRECTION,
        );
        Ok(NonCoherent { dev: self.clone(), region, ptr: ptr.cast(), device_owns: false, track, _dir: PhantomData })
    }
}

impl<T: DmaSafe> Coherent<T> {
    /// Reads the whole value with one volatile access.
    pub fn read(&self) -> T {
        // SAFETY: `ptr` is valid, aligned memory we own for life; every bit pattern is a valid
        // `T` (`DmaSafe`), so whatever the device wrote is readable.
        unsafe { self.ptr.as_ptr().read_volatile() }
    }

    /// Writes the whole value with one volatile access.
    pub fn write(&mut self, value: T) {
        // SAFETY: as in `read`; `&mut self` excludes other CPU accessors.
        unsafe { self.ptr.as_ptr().write_volatile(value) }
    }

    /// Reads, changes and writes back the value (not atomic with respect to the device).
    pub fn update(&mut self, f: impl FnOnce(T) -> T) {
        let v = self.read();
        self.write(f(v));
    }

    /// Raw pointer, for volatile field access (`&raw mut (*p).field`).
    pub fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }

    /// The device's address for the value.
    pub fn bus_addr(&self) -> BusAddr {
        self.region.bus
    }

    /// Physical address of the value.
    pub fn phys(&self) -> PhysAddr {
        self.region.phys
    }

    /// A shared reference.
    ///
    /// # Safety
    /// The device must not write the memory while the reference lives.
    pub unsafe fn as_ref(&self) -> &T {
        // SAFETY: valid and aligned; the caller excludes device writes.
        unsafe { self.ptr.as_ref() }
    }

    /// An exclusive reference.
    ///
    /// # Safety
    /// The device must not access the memory while the reference lives.
    pub unsafe fn as_mut(&mut self) -> &mut T {
        // SAFETY: valid and aligned; `&mut self` excludes the CPU, the caller the device.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: DmaSafe> Drop for Coherent<T> {
    fn drop(&mut self) {
        // SAFETY: the region came from this device's mapper and is dropped once; the owner
        // stopped the device from using it (documented rule of coherent memory).
        unsafe { self.dev.mapper().free_coherent(&self.region) };
        trace::coherent(&self.dev, EventKind::CoherentFree, &self.region);
    }
}

/// An array of `T` in coherent memory (a descriptor ring). Freed on drop.
pub struct CoherentSlice<T: DmaSafe> {
    dev: DmaDevice,
    region: CoherentRegion,
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: as for `Coherent`.
unsafe impl<T: DmaSafe> Send for CoherentSlice<T> {}
// SAFETY: as for `Coherent`.
unsafe impl<T: DmaSafe> Sync for CoherentSlice<T> {}

impl<T: DmaSafe> CoherentSlice<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slice has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Volatile read of element `index`, `None` past the end.
    pub fn read(&self, index: usize) -> Option<T> {
        if index >= self.len {
            return None;
        }
        // SAFETY: in bounds of memory we own; `T: DmaSafe` accepts any device-written bits.
        Some(unsafe { self.ptr.as_ptr().add(index).read_volatile() })
    }

    /// Volatile write of element `index`.
    pub fn write(&mut self, index: usize, value: T) -> Result<(), OutOfBounds> {
        check_range(index, 1, self.len)?;
        // SAFETY: in bounds; `&mut self` excludes other CPU accessors.
        unsafe { self.ptr.as_ptr().add(index).write_volatile(value) };
        Ok(())
    }

    /// Volatile copy of `src` into the elements from `start` on.
    pub fn write_from(&mut self, start: usize, src: &[T]) -> Result<(), OutOfBounds> {
        check_range(start, src.len(), self.len)?;
        for (i, v) in src.iter().enumerate() {
            // SAFETY: `start + i < len`, checked above.
            unsafe { self.ptr.as_ptr().add(start + i).write_volatile(*v) };
        }
        Ok(())
    }

    /// Volatile copy of the elements from `start` on into `dst`.
    pub fn read_into(&self, start: usize, dst: &mut [T]) -> Result<(), OutOfBounds> {
        check_range(start, dst.len(), self.len)?;
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: `start + i < len`, checked above.
            *d = unsafe { self.ptr.as_ptr().add(start + i).read_volatile() };
        }
        Ok(())
    }

    /// Raw pointer to the first element.
    pub fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }

    /// The device's address of the first element.
    pub fn bus_addr(&self) -> BusAddr {
        self.region.bus
    }

    /// The device's address of element `index`, `None` past the end.
    pub fn bus_addr_of(&self, index: usize) -> Option<BusAddr> {
        if index >= self.len {
            return None;
        }
        self.region.bus.checked_add((index * size_of::<T>()) as u64)
    }

    /// Physical address of the first element.
    pub fn phys(&self) -> PhysAddr {
        self.region.phys
    }
}

impl<T: DmaSafe> Drop for CoherentSlice<T> {
    fn drop(&mut self) {
        // SAFETY: as for `Coherent`.
        unsafe { self.dev.mapper().free_coherent(&self.region) };
        trace::coherent(&self.dev, EventKind::CoherentFree, &self.region);
    }
}

/// A `T` in memory that is *not* kept coherent: ownership passes explicitly between CPU and
/// device, as with a streaming mapping (Linux's `dma_alloc_noncoherent`). On platforms whose
/// caches are not snooped this is cheaper than coherent memory for data that moves one way in
/// bursts. On x86 the syncs are fences, but the rules are the same and are enforced: the CPU
/// can only reach the value through the view `sync_for_cpu` returns, and only in the ways the
/// direction allows:
///
/// ```compile_fail,E0599
/// # use std::sync::Arc;
/// # use dma::{sim::SimMemory, mapper::Direct, DmaDevice, ToDevice};
/// # let mem = SimMemory::low_and_high(1 << 20, 1 << 20);
/// # let dev = DmaDevice::new("00:02.0 demo", mem.clone(), Arc::new(Direct::new(mem)));
/// let mut tx = dev.alloc_noncoherent::<u32, ToDevice>(ToDevice).unwrap();
/// let stale = tx.sync_for_cpu().read(); // the device never writes a ToDevice buffer
/// ```
pub struct NonCoherent<T: DmaSafe, D: Direction> {
    dev: DmaDevice,
    region: CoherentRegion,
    ptr: NonNull<T>,
    device_owns: bool,
    track: Option<u64>,
    _dir: PhantomData<D>,
}

// SAFETY: the memory is owned by this value.
unsafe impl<T: DmaSafe, D: Direction> Send for NonCoherent<T, D> {}
// SAFETY: `&self` methods do not touch the memory.
unsafe impl<T: DmaSafe, D: Direction> Sync for NonCoherent<T, D> {}

impl<T: DmaSafe, D: Direction> NonCoherent<T, D> {
    /// The device's address.
    pub fn bus_addr(&self) -> BusAddr {
        self.region.bus
    }

    /// Whether the device owns the memory (after `sync_for_device`, before `sync_for_cpu`).
    pub fn device_owns(&self) -> bool {
        self.device_owns
    }

    /// Takes the memory back for the CPU (invalidate caches so the device's writes are seen)
    /// and returns the CPU's view of it.
    pub fn sync_for_cpu(&mut self) -> NonCoherentView<'_, T, D> {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.device_owns = false;
        NonCoherentView { ptr: self.ptr, _owner: PhantomData }
    }

    /// Hands the memory to the device (write back caches so it sees the CPU's writes).
    pub fn sync_for_device(&mut self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.device_owns = true;
    }
}

impl<T: DmaSafe, D: Direction> Drop for NonCoherent<T, D> {
    fn drop(&mut self) {
        self.dev.untrack(self.track);
        // SAFETY: as for `Coherent`.
        unsafe { self.dev.mapper().free_coherent(&self.region) };
        trace::coherent(&self.dev, EventKind::CoherentFree, &self.region);
    }
}

/// The CPU's access to a [`NonCoherent`] value while it owns it.
pub struct NonCoherentView<'a, T: DmaSafe, D: Direction> {
    ptr: NonNull<T>,
    _owner: PhantomData<&'a mut NonCoherent<T, D>>,
}

impl<T: DmaSafe, D: CpuReadable> NonCoherentView<'_, T, D> {
    /// Reads what the device wrote.
    pub fn read(&self) -> T {
        // SAFETY: the CPU owns the memory (sync_for_cpu was called and `&mut` to the owner is
        // held); any bit pattern is a valid `T`.
        unsafe { self.ptr.as_ptr().read_volatile() }
    }
}

impl<T: DmaSafe, D: CpuWritable> NonCoherentView<'_, T, D> {
    /// Writes data for the device to read after the next `sync_for_device`.
    pub fn write(&mut self, value: T) {
        // SAFETY: the CPU owns the memory, exclusively through this view.
        unsafe { self.ptr.as_ptr().write_volatile(value) }
    }
}

impl<T: DmaSafe> core::fmt::Debug for Coherent<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Coherent").field("device", &self.dev.name()).field("bus", &self.region.bus).finish()
    }
}

impl<T: DmaSafe> core::fmt::Debug for CoherentSlice<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CoherentSlice")
            .field("device", &self.dev.name())
            .field("bus", &self.region.bus)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: DmaSafe, D: Direction> core::fmt::Debug for NonCoherent<T, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NonCoherent")
            .field("device", &self.dev.name())
            .field("bus", &self.region.bus)
            .field("device_owns", &self.device_owns)
            .finish()
    }
}
