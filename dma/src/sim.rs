//! A simulated machine for host tests: physical memory backed by host RAM, and a device that
//! reads and writes "bus" memory through the mapper's translation.
//!
//! [`SimMemory`] implements [`PhysMemory`] over one or more regions at chosen physical bases
//! (for example 1 MiB and 4 GiB, so tests can put buffers above a 32-bit device's reach). It
//! allocates top-down, like a frame allocator that keeps low memory for those who need it: an
//! unconstrained request lands in the highest region, a 32-bit request below 4 GiB.
//!
//! [`SimDevice`] plays the hardware: given a bus address it asks the device's mapper where that
//! goes (`bus_to_phys`), refuses addresses beyond the device's mask (a real device would drop the
//! high bits), and copies bytes. Tests use it to prove that data really flows between CPU and
//! device through each kind of mapping.
//!
//! This module is compiled in every build (it needs only `alloc`), so integration tests, doc
//! tests and benchmarks can use it; the kernel simply never calls it.
//!
//! # Example
//! A simulated NIC fetches a frame the CPU prepared and delivers one into a receive buffer;
//! the test checks both from the device's side. Accesses real hardware could not make are
//! faults, so a wrong address in a test fails loudly instead of scribbling on memory.
//! ```
//! use std::sync::Arc;
//! use dma::sim::{SimDevice, SimFault, SimMemory};
//! use dma::{BusAddr, DmaDevice, FromDevice, PageBuffer, PhysMemory, ToDevice, mapper::Direct};
//! let mem = SimMemory::low_and_high(1 << 20, 1 << 20); // RAM at 1 MiB and at 4 GiB
//! let phys: Arc<dyn PhysMemory> = mem.clone();
//! let dev = DmaDevice::new("00:03.0 sim-nic", phys.clone(), Arc::new(Direct::new(phys.clone())));
//! let nic = SimDevice::new(&dev);
//!
//! let mut frame = PageBuffer::alloc(&phys, 64, dev.mask()).unwrap();
//! frame[..5].copy_from_slice(b"hello");
//! let tx = dev.map(frame, ToDevice).unwrap();
//! let mut wire = [0u8; 5];
//! nic.read(tx.bus_addr(), &mut wire).unwrap(); // the NIC fetches the frame
//! assert_eq!(&wire, b"hello");
//!
//! let rx = dev.map(PageBuffer::alloc(&phys, 64, dev.mask()).unwrap(), FromDevice).unwrap();
//! nic.write(rx.bus_addr(), b"reply").unwrap(); // the NIC stores a received frame
//! assert_eq!(&rx.unmap()[..5], b"reply");
//!
//! // Beyond the default 32-bit mask, and where there is no RAM: faults, memory untouched.
//! let above = BusAddr(1 << 32);
//! assert_eq!(nic.write(above, b"x"), Err(SimFault::BeyondMask { bus: above }));
//! assert_eq!(nic.read(BusAddr(0x1000), &mut wire), Err(SimFault::Unmapped { bus: BusAddr(0x1000) }));
//! # let _ = tx.unmap();
//! ```

use alloc::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::device::DmaDevice;
use crate::phys::{BusAddr, FrameRequest, PAGE_SIZE, PhysAddr, PhysMemory};
use crate::sg::BusSegment;

/// One range of simulated RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimRegion {
    /// Physical address of the first byte (page aligned).
    pub base: u64,
    /// Size in bytes (whole pages).
    pub size: usize,
}

struct FrameMap {
    used: Vec<u64>,
    in_use: usize,
    /// Top-down search starts below this frame index (keeps repeated allocations O(1)).
    hint: usize,
}

struct Region {
    base: u64,
    frames: usize,
    ptr: *mut u8,
    layout: Layout,
    map: spin::Mutex<FrameMap>,
}

impl Region {
    fn end(&self) -> u64 {
        self.base + (self.frames * PAGE_SIZE) as u64
    }

    fn contains_va(&self, va: usize) -> bool {
        let start = self.ptr as usize;
        va >= start && va < start + self.frames * PAGE_SIZE
    }
}

/// Simulated physical memory. See the module documentation.
pub struct SimMemory {
    /// Sorted by base, highest first.
    regions: Vec<Region>,
}

// SAFETY: the region pointers are owned allocations; frame bookkeeping is behind locks, and the
// bytes themselves are shared the way physical memory is.
unsafe impl Send for SimMemory {}
// SAFETY: as above.
unsafe impl Sync for SimMemory {}

impl SimMemory {
    /// Simulated RAM made of `regions`.
    ///
    /// # Panics
    /// On a region that is not page aligned, empty or overlapping another, and when the host
    /// cannot provide the memory (test setup errors, not run-time input).
    pub fn new(regions: &[SimRegion]) -> Arc<SimMemory> {
        let mut out: Vec<Region> = Vec::new();
        for r in regions {
            assert!(
                r.base % PAGE_SIZE as u64 == 0 && r.size % PAGE_SIZE == 0 && r.size > 0,
                "sim region {r:?} must be non-empty whole pages"
            );
            let layout = Layout::from_size_align(r.size, PAGE_SIZE).expect("sim region layout");
            // SAFETY: the layout has non-zero size.
            let ptr = unsafe { alloc_zeroed(layout) };
            if ptr.is_null() {
                handle_alloc_error(layout);
            }
            let frames = r.size / PAGE_SIZE;
            out.push(Region {
                base: r.base,
                frames,
                ptr,
                layout,
                map: spin::Mutex::new(FrameMap { used: vec![0; frames.div_ceil(64)], in_use: 0, hint: frames }),
            });
        }
        out.sort_by_key(|r| core::cmp::Reverse(r.base));
        for w in out.windows(2) {
            assert!(w[1].end() <= w[0].base, "sim regions overlap");
        }
        Arc::new(SimMemory { regions: out })
    }

    /// `low` bytes at 1 MiB and `high` bytes at 4 GiB: the usual shape of a PC with more than
    /// 4 GiB of RAM, small.
    pub fn low_and_high(low: usize, high: usize) -> Arc<SimMemory> {
        SimMemory::new(&[SimRegion { base: 0x10_0000, size: low }, SimRegion { base: 0x1_0000_0000, size: high }])
    }

    /// Frames currently allocated, all regions.
    pub fn frames_in_use(&self) -> usize {
        self.regions.iter().map(|r| r.map.lock().in_use).sum()
    }

    fn region_of(&self, pa: u64) -> Option<&Region> {
        self.regions.iter().find(|r| pa >= r.base && pa < r.end())
    }

    /// Copies simulated RAM at `pa` into `out`; `false` if the range is not all RAM.
    pub fn read_phys(&self, pa: PhysAddr, out: &mut [u8]) -> bool {
        match self.span(pa, out.len()) {
            Some(src) => {
                // SAFETY: `span` checked the range lies in one region.
                unsafe { core::ptr::copy(src, out.as_mut_ptr(), out.len()) };
                true
            }
            None => false,
        }
    }

    /// Copies `data` into simulated RAM at `pa`; `false` if the range is not all RAM.
    pub fn write_phys(&self, pa: PhysAddr, data: &[u8]) -> bool {
        match self.span(pa, data.len()) {
            Some(dst) => {
                // SAFETY: `span` checked the range lies in one region.
                unsafe { core::ptr::copy(data.as_ptr(), dst, data.len()) };
                true
            }
            None => false,
        }
    }

    fn span(&self, pa: PhysAddr, len: usize) -> Option<*mut u8> {
        let r = self.region_of(pa.0)?;
        let end = pa.0.checked_add(len as u64)?;
        if end > r.end() {
            return None;
        }
        // SAFETY: the offset is inside the region's allocation.
        Some(unsafe { r.ptr.add((pa.0 - r.base) as usize) })
    }

    fn try_alloc_in(r: &Region, req: &FrameRequest) -> Option<PhysAddr> {
        if req.count == 0 || req.count > r.frames || req.max_addr < r.base {
            return None;
        }
        // Highest frame index (exclusive) the run may end at.
        let limit_end = if req.max_addr >= r.end() - 1 {
            r.frames
        } else {
            ((req.max_addr - r.base + 1) / PAGE_SIZE as u64) as usize
        };
        if limit_end < req.count {
            return None;
        }
        let align = req.align.max(PAGE_SIZE as u64);
        let mut map = r.map.lock();
        let free = |m: &FrameMap, s: usize| (s..s + req.count).all(|i| m.used[i / 64] & (1 << (i % 64)) == 0);
        let align_down = |s: usize| -> Option<usize> {
            let pa = r.base + (s * PAGE_SIZE) as u64;
            let aligned = pa / align * align;
            (aligned >= r.base).then(|| ((aligned - r.base) / PAGE_SIZE as u64) as usize)
        };
        let top = limit_end - req.count;
        let mut found = None;
        for first in [map.hint.min(top + 1).checked_sub(1), Some(top)] {
            let Some(mut s) = first.and_then(align_down) else {
                continue;
            };
            loop {
                if free(&map, s) {
                    found = Some(s);
                    break;
                }
                let Some(next) = s.checked_sub(1).and_then(align_down) else {
                    break;
                };
                s = next;
            }
            if found.is_some() {
                break;
            }
        }
        let s = found?;
        for i in s..s + req.count {
            map.used[i / 64] |= 1 << (i % 64);
        }
        map.in_use += req.count;
        map.hint = s;
        Some(PhysAddr(r.base + (s * PAGE_SIZE) as u64))
    }
}

impl Drop for SimMemory {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: allocated in `new` with this layout, freed once.
            unsafe { dealloc(r.ptr, r.layout) };
        }
    }
}

// SAFETY: a run is marked used in the bitmap until `free_frames`, so it is never handed out
// twice; `phys_to_virt` points into the region's host allocation, which lives as long as `self`.
unsafe impl PhysMemory for SimMemory {
    fn alloc_frames(&self, req: FrameRequest) -> Option<PhysAddr> {
        self.regions.iter().find_map(|r| SimMemory::try_alloc_in(r, &req))
    }

    unsafe fn free_frames(&self, base: PhysAddr, count: usize) {
        let Some(r) = self.region_of(base.0) else {
            return;
        };
        let first = ((base.0 - r.base) / PAGE_SIZE as u64) as usize;
        let mut map = r.map.lock();
        for i in first..(first + count).min(r.frames) {
            if map.used[i / 64] & (1 << (i % 64)) != 0 {
                map.used[i / 64] &= !(1 << (i % 64));
                map.in_use -= 1;
            }
        }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        match self.region_of(pa.0) {
            // SAFETY: the offset is inside the region's allocation.
            Some(r) => unsafe { r.ptr.add((pa.0 - r.base) as usize) },
            None => core::ptr::null_mut(),
        }
    }

    fn virt_to_phys(&self, va: *const u8) -> Option<PhysAddr> {
        let va = va as usize;
        self.regions.iter().find(|r| r.contains_va(va)).map(|r| PhysAddr(r.base + (va - r.ptr as usize) as u64))
    }

    fn max_phys_addr(&self) -> u64 {
        self.regions.first().map_or(0, |r| r.end() - 1)
    }
}

/// A device access that real hardware could not have made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimFault {
    /// The address needs more bits than the device's mask has.
    BeyondMask {
        /// The offending bus address.
        bus: BusAddr,
    },
    /// The mapper translates the address to nothing (an IOMMU fault, or no RAM there).
    Unmapped {
        /// The offending bus address.
        bus: BusAddr,
    },
}

impl fmt::Display for SimFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimFault::BeyondMask { bus } => write!(f, "bus address {bus} is beyond the device's DMA mask"),
            SimFault::Unmapped { bus } => write!(f, "bus address {bus} translates to no memory"),
        }
    }
}

/// A simulated bus-mastering device. See the module documentation.
pub struct SimDevice {
    dev: DmaDevice,
}

impl SimDevice {
    /// The hardware behind `dev`.
    pub fn new(dev: &DmaDevice) -> SimDevice {
        SimDevice { dev: dev.clone() }
    }

    /// Calls `f(cpu_pointer, offset_in_access, chunk_len)` for each page-sized piece of the
    /// access, after translation.
    fn walk(&self, bus: BusAddr, len: usize, mut f: impl FnMut(*mut u8, usize, usize)) -> Result<(), SimFault> {
        if len == 0 {
            return Ok(());
        }
        let last = bus.0.checked_add(len as u64 - 1).ok_or(SimFault::BeyondMask { bus })?;
        if last > self.dev.mask() {
            return Err(SimFault::BeyondMask { bus });
        }
        // Translate everything first so a fault leaves memory untouched.
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < len {
            let addr = BusAddr(bus.0 + done as u64);
            let in_page = PAGE_SIZE - (addr.0 as usize % PAGE_SIZE);
            let chunk = in_page.min(len - done);
            let phys = self.dev.mapper().bus_to_phys(addr).ok_or(SimFault::Unmapped { bus: addr })?;
            let ptr = self.dev.memory().phys_to_virt(phys);
            if ptr.is_null() {
                return Err(SimFault::Unmapped { bus: addr });
            }
            pieces.push((ptr, done, chunk));
            done += chunk;
        }
        for (ptr, off, chunk) in pieces {
            f(ptr, off, chunk);
        }
        Ok(())
    }

    /// The device reads `out.len()` bytes at `bus`.
    pub fn read(&self, bus: BusAddr, out: &mut [u8]) -> Result<(), SimFault> {
        let dst = out.as_mut_ptr();
        self.walk(bus, out.len(), |p, off, n| {
            // SAFETY: `p` points to `n` bytes of simulated RAM (translated above); `dst + off`
            // to `n` bytes of `out`.
            unsafe { core::ptr::copy(p, dst.add(off), n) }
        })
    }

    /// The device writes `data` at `bus`.
    pub fn write(&self, bus: BusAddr, data: &[u8]) -> Result<(), SimFault> {
        let src = data.as_ptr();
        self.walk(bus, data.len(), |p, off, n| {
            // SAFETY: as in `read`, the other way round.
            unsafe { core::ptr::copy(src.add(off), p, n) }
        })
    }

    /// The device reads every segment in order (a gather).
    pub fn read_segments(&self, segments: &[BusSegment]) -> Result<Vec<u8>, SimFault> {
        let mut out = Vec::new();
        for s in segments {
            let start = out.len();
            out.resize(start + s.len, 0);
            self.read(s.bus, &mut out[start..])?;
        }
        Ok(out)
    }

    /// The device writes `data` across the segments in order (a scatter), stopping when either
    /// runs out. Returns the bytes written.
    pub fn write_segments(&self, segments: &[BusSegment], data: &[u8]) -> Result<usize, SimFault> {
        let mut done = 0;
        for s in segments {
            if done == data.len() {
                break;
            }
            let n = s.len.min(data.len() - done);
            self.write(s.bus, &data[done..done + n])?;
            done += n;
        }
        Ok(done)
    }
}
