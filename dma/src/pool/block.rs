//! [`PoolBlock`]: one allocated block, with its CPU and bus addresses, that frees itself when
//! dropped.

use core::fmt;
use core::mem::{ManuallyDrop, MaybeUninit, size_of};
use core::ptr::NonNull;

use super::free_list::{BlockAddrs, PoolInner};
use crate::coherent::DmaSafe;
use crate::error::{OutOfBounds, check_range};
use crate::phys::BusAddr;
use crate::trace::{self, EventKind};

/// One block of a pool; returns to its pool when dropped.
///
/// The handle points at its pool without a reference count (an `Arc` per block would double
/// the cost of alloc+free); the pool stays alive while any block is allocated (see
/// `PoolState::orphaned`).
pub struct PoolBlock {
    pub(super) pool: NonNull<PoolInner>,
    pub(super) at: BlockAddrs,
}

// SAFETY: the block's memory belongs to this handle alone; the pool is Sync.
unsafe impl Send for PoolBlock {}
// SAFETY: shared access only reads (volatile).
unsafe impl Sync for PoolBlock {}

impl fmt::Debug for PoolBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBlock").field("pool", &self.pool().name).field("bus", &self.at.bus).finish()
    }
}

impl PoolBlock {
    pub(super) fn pool(&self) -> &PoolInner {
        // SAFETY: the pool outlives every allocated block (module invariant).
        unsafe { self.pool.as_ref() }
    }

    /// The device's address of the block.
    pub fn bus_addr(&self) -> BusAddr {
        self.at.bus
    }

    /// CPU pointer to the block.
    pub fn as_ptr(&self) -> *mut u8 {
        self.at.cpu.as_ptr()
    }

    /// Usable bytes (the pool's block size).
    pub fn len(&self) -> usize {
        self.pool().block
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Volatile read of a `T` at byte `offset` (any alignment).
    pub fn read<T: DmaSafe>(&self, offset: usize) -> Result<T, OutOfBounds> {
        check_range(offset, size_of::<T>(), self.len())?;
        let mut v = MaybeUninit::<T>::uninit();
        let dst = v.as_mut_ptr().cast::<u8>();
        for i in 0..size_of::<T>() {
            // SAFETY: `offset + i` is inside the block (checked); `dst` has room for `T`.
            unsafe { dst.add(i).write(self.as_ptr().add(offset + i).read_volatile()) };
        }
        // SAFETY: every byte was written, and every bit pattern is a valid `T` (`DmaSafe`).
        Ok(unsafe { v.assume_init() })
    }

    /// Volatile write of a `T` at byte `offset` (any alignment).
    pub fn write<T: DmaSafe>(&mut self, offset: usize, value: T) -> Result<(), OutOfBounds> {
        check_range(offset, size_of::<T>(), self.len())?;
        let src = (&raw const value).cast::<u8>();
        for i in 0..size_of::<T>() {
            // SAFETY: inside the block (checked); `src` points to a live `T`.
            unsafe { self.as_ptr().add(offset + i).write_volatile(src.add(i).read()) };
        }
        Ok(())
    }

    /// Volatile copy out of the block.
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        check_range(offset, dst.len(), self.len())?;
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: inside the block (checked).
            *d = unsafe { self.as_ptr().add(offset + i).read_volatile() };
        }
        Ok(())
    }

    /// Volatile copy into the block.
    pub fn write_bytes(&mut self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        check_range(offset, src.len(), self.len())?;
        for (i, s) in src.iter().enumerate() {
            // SAFETY: inside the block (checked).
            unsafe { self.as_ptr().add(offset + i).write_volatile(*s) };
        }
        Ok(())
    }

    /// The block as a byte slice.
    ///
    /// # Safety
    /// The device must not access the block while the slice lives.
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the block is `len()` bytes we own; the caller excludes the device.
        unsafe { core::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }

    /// Gives up the handle; the block must be returned with
    /// [`DmaPool::free_raw`](super::DmaPool::free_raw).
    pub fn into_raw(self) -> (NonNull<u8>, BusAddr) {
        let this = ManuallyDrop::new(self);
        let pool = this.pool();
        let (w, m) = pool.bit_of(this.at.unit, this.at.index);
        pool.state.lock().raw[w] |= m;
        (this.at.cpu, this.at.bus)
    }
}

impl Drop for PoolBlock {
    #[inline]
    fn drop(&mut self) {
        if trace::enabled() {
            self.pool().trace_block(EventKind::PoolFree, self.at.cpu.as_ptr(), self.at.bus);
        }
        // SAFETY: the block is allocated to this handle, which is going away.
        unsafe { PoolInner::free_handle(self.pool, self.at.unit, self.at.index, self.at.cpu) };
    }
}
