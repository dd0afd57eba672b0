//! What every driver needs to talk to its device, and nothing more: register access and time.
//!
//! Drivers are written against two small traits so the same code runs on the machine and in host
//! tests:
//! * [`Registers`] — 32-bit reads and writes at byte offsets of a device's register block. On the
//!   machine that is [`Mmio`], a BAR mapped uncached by the kernel; in tests it is a simulated
//!   device whose registers have behaviour.
//! * [`Clock`] — microseconds, for the timeouts every datasheet prescribes ("poll until the bit
//!   clears, for at most 10 ms").
#![no_std]

use core::ptr::NonNull;

/// 32-bit register access at byte offsets.
///
/// Device registers have side effects on read as well as write (reading e1000's ICR clears it),
/// so implementations must perform exactly one access per call, in program order.
pub trait Registers {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);

    /// Sets `bits` in the register at `offset` (read-modify-write).
    fn set_bits(&self, offset: usize, bits: u32) {
        self.write32(offset, self.read32(offset) | bits);
    }

    /// Clears `bits` in the register at `offset` (read-modify-write).
    fn clear_bits(&self, offset: usize, bits: u32) {
        self.write32(offset, self.read32(offset) & !bits);
    }
}

impl<R: Registers + ?Sized> Registers for &R {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
}

/// A device's memory-mapped register block (a BAR), mapped uncached.
///
/// Offsets are checked: an access outside the block is a driver bug, logged, and turned into a
/// read of all-ones (what a PCI master abort returns) or a dropped write — never a stray access
/// to whatever lies after the BAR.
#[derive(Debug)]
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: an `Mmio` is a window onto device registers; the device serialises accesses itself
// and the driver that owns the `Mmio` decides who touches which register.
unsafe impl Send for Mmio {}
// SAFETY: as above; every access is a single volatile read or write.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// A register block of `len` bytes at virtual address `base`.
    ///
    /// # Safety
    /// `base..base + len` must be mapped uncached to the device's registers for as long as the
    /// `Mmio` exists, and nothing else may treat that memory as ordinary memory.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Mmio {
        Mmio { base, len }
    }

    /// Size of the block in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn in_range(&self, offset: usize) -> bool {
        offset % 4 == 0 && offset.checked_add(4).is_some_and(|end| end <= self.len)
    }
}

impl Registers for Mmio {
    fn read32(&self, offset: usize) -> u32 {
        if !self.in_range(offset) {
            log::error!("MMIO read at {offset:#x} outside the {:#x}-byte register block (driver bug)", self.len);
            return u32::MAX;
        }
        // SAFETY: the offset is 4-byte aligned and inside the block, which `new`'s contract
        // says is mapped uncached to the device for our lifetime.
        unsafe { self.base.as_ptr().add(offset).cast::<u32>().read_volatile() }
    }

    fn write32(&self, offset: usize, value: u32) {
        if !self.in_range(offset) {
            log::error!("MMIO write at {offset:#x} outside the {:#x}-byte register block (driver bug)", self.len);
            return;
        }
        // SAFETY: as in `read32`.
        unsafe { self.base.as_ptr().add(offset).cast::<u32>().write_volatile(value) }
    }
}

/// A monotonic clock in microseconds.
pub trait Clock {
    /// Microseconds since an arbitrary fixed point.
    fn now_us(&self) -> u64;

    /// Busy-waits `us` microseconds.
    fn delay_us(&self, us: u64) {
        let end = self.now_us().saturating_add(us);
        while self.now_us() < end {
            core::hint::spin_loop();
        }
    }

    /// Polls `done` until it is true or `timeout_us` passes. True if it completed.
    fn poll_until(&self, timeout_us: u64, mut done: impl FnMut() -> bool) -> bool
    where
        Self: Sized,
    {
        let end = self.now_us().saturating_add(timeout_us);
        loop {
            if done() {
                return true;
            }
            if self.now_us() >= end {
                return done();
            }
            core::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[test]
    fn mmio_accesses_inside_the_block_only() {
        let mut backing = vec![0u32; 4];
        // SAFETY: `backing` is 16 bytes of ordinary memory that outlives `mmio`, and nothing else
        // touches it while `mmio` is in use; it stands in for a device's register block.
        let mmio = unsafe { Mmio::new(NonNull::new(backing.as_mut_ptr().cast()).unwrap(), 16) };
        mmio.write32(4, 0xdead_beef);
        assert_eq!(mmio.read32(4), 0xdead_beef);
        mmio.write32(16, 1); // past the end: dropped
        mmio.write32(2, 1); // misaligned: dropped
        assert_eq!(mmio.read32(16), u32::MAX);
        assert_eq!(mmio.read32(usize::MAX - 1), u32::MAX);
        mmio.set_bits(0, 0b101);
        mmio.clear_bits(0, 0b001);
        assert_eq!(mmio.read32(0), 0b100);
        let _ = mmio;
        assert_eq!(backing, [0b100, 0xdead_beef, 0, 0]);
    }

    struct FakeClock(core::cell::Cell<u64>);
    impl Clock for FakeClock {
        fn now_us(&self) -> u64 {
            let t = self.0.get();
            self.0.set(t + 10);
            t
        }
    }

    #[test]
    fn poll_until_times_out_and_succeeds() {
        let clock = FakeClock(core::cell::Cell::new(0));
        assert!(!clock.poll_until(100, || false));
        let mut n = 0;
        assert!(clock.poll_until(1000, || {
            n += 1;
            n == 3
        }));
    }
}
