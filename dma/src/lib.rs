//! The DMA service: how drivers give memory to devices, and get it back.
//!
//! A device that masters the bus reads and writes memory on its own, by address. Three facts
//! make that hard to do safely, and this crate is built around them (the same facts Linux's
//! Documentation/core-api/dma-api-howto.rst starts from):
//!
//! 1. **Devices see bus addresses, not physical or virtual ones.** Without an IOMMU a bus
//!    address equals the physical address; with one it is an IOVA the IOMMU translates. A device
//!    may also drive fewer address bits than the CPU (its *DMA mask*), so memory above its limit
//!    must be avoided or bounced. Drivers therefore never compute addresses: they ask their
//!    [`DmaDevice`], whose [mapper](mapper::DmaMapper) knows the answer.
//! 2. **Ownership passes between CPU and device.** While the device works on a buffer the CPU
//!    must keep out (its caches, or a bounce copy, would disagree with the device). A streaming
//!    [`Mapping`] *owns* the buffer while the device does; the CPU gets it back only through
//!    `sync_for_cpu` or `unmap`. The direction ([`ToDevice`], [`FromDevice`],
//!    [`Bidirectional`]) is part of the type and decides what the CPU may do in between.
//! 3. **Some memory is shared for good.** Descriptor rings are written by both sides while the
//!    device runs: that is [`Coherent`] memory, accessed with volatile reads and writes.
//!    Small blocks of it come from a [`DmaPool`].
//!
//! # A tour, on the simulated machine
//! [`sim`] (cargo feature `sim`, which host tests enable and the kernel does not) plays the
//! machine: RAM at physical addresses, and a device that reads and writes it by bus address.
//! ```
//! use std::sync::Arc;
//! use dma::sim::{SimDevice, SimMemory};
//! use dma::mapper::{BounceArea, Direct};
//! use dma::{DmaDevice, DmaPool, FromDevice, PageBuffer, PhysMemory, ToDevice};
//!
//! // 4 MiB of RAM at 1 MiB and 4 MiB at 4 GiB; a bounce area below 4 GiB.
//! let mem = SimMemory::low_and_high(4 << 20, 4 << 20);
//! let phys: Arc<dyn PhysMemory> = mem.clone();
//! let bounce = BounceArea::new(phys.clone(), 0xffff_ffff, 64 * 1024).unwrap();
//! let mapper = Arc::new(Direct::with_bounce(phys.clone(), bounce));
//! let dev = DmaDevice::new("00:02.0 e1000", phys.clone(), mapper);
//! dev.set_mask(32).unwrap();
//! let hw = SimDevice::new(&dev);
//!
//! // Coherent memory: below the mask, zeroed, shared for its whole life.
//! let mut status = dev.alloc_coherent::<u32>().unwrap();
//! assert!(status.bus_addr().as_u64() <= 0xffff_ffff);
//! hw.write(status.bus_addr(), &7u32.to_le_bytes()).unwrap();
//! assert_eq!(status.read(), 7);
//!
//! // Streaming, CPU -> device. The buffer is above 4 GiB, so it is bounced, transparently.
//! let mut buf = PageBuffer::alloc(&phys, 64, u64::MAX).unwrap();
//! buf[..5].copy_from_slice(b"hello");
//! let tx = dev.map(buf, ToDevice).unwrap();
//! let mut seen = [0u8; 5];
//! hw.read(tx.bus_addr(), &mut seen).unwrap();
//! assert_eq!(&seen, b"hello");
//! assert!(tx.is_bounced());
//! let _buf = tx.unmap();
//!
//! // Streaming, device -> CPU.
//! let buf = PageBuffer::alloc(&phys, 64, u64::MAX).unwrap();
//! let mut rx = dev.map(buf, FromDevice).unwrap();
//! hw.write(rx.bus_addr(), b"world").unwrap();
//! assert_eq!(&rx.sync_for_cpu().as_slice()[..5], b"world");
//! let buf = rx.unmap();
//! assert_eq!(&buf[..5], b"world");
//!
//! // A pool of small coherent blocks.
//! let pool = DmaPool::create("e1000-cmd", &dev, 32, 16, 4096).unwrap();
//! let block = pool.zalloc().unwrap();
//! assert_eq!(block.bus_addr().as_u64() % 16, 0);
//! drop(block);
//! assert!(dma::view("dma:pools").unwrap().contains("e1000-cmd"));
//! pool.destroy().unwrap();
//! ```
//!
//! # For the kernel
//! **Constructing a device** for a PCI function: wrap the kernel's `PhysMemory` implementation
//! in an `Arc`, build one mapper (shared by all devices without an IOMMU), then one handle per
//! function, named by BDF and driver:
//! ```ignore
//! let phys: Arc<dyn dma::PhysMemory> = Arc::new(KernelPhysMemory);
//! let bounce = dma::mapper::BounceArea::new(phys.clone(), 0xffff_ffff, 256 * 1024)?; // swiotlb
//! let mapper: Arc<dyn dma::mapper::DmaMapper> =
//!     Arc::new(dma::mapper::Direct::with_bounce(phys.clone(), bounce));
//! let dev = dma::DmaDevice::new("00:02.0 e1000", phys.clone(), mapper.clone());
//! dev.set_mask(64)?; // what the device's datasheet says; the default is 32 bits
//! ```
//! **Views** for the shell: [`view`] renders `dma:pools`, `dma:mappings` and `dma:errors`
//! (or call [`pool::render_pools`], [`device::render_mappings`], [`debug::render_errors`]).
//!
//! # Rules of use
//! - All calls may be made from any CPU; they take spin locks briefly and never sleep. Pool and
//!   bounce-area growth allocate frames, so avoid them in interrupt handlers (pre-allocate).
//! - Every failure is an `Err` value naming what to do; nothing panics on input a user or a
//!   device can produce.
//! - Objects that a device may still use when they are torn down (mappings at device teardown,
//!   pool blocks at pool destruction) are reported and their memory is quarantined, never reused.
#![no_std]
#![warn(missing_docs)]
extern crate alloc;

pub mod arena;
pub mod buffer;
pub mod coherent;
pub mod debug;
pub mod device;
pub mod direction;
pub mod error;
pub mod mapper;
pub mod phys;
pub mod pool;
pub mod sg;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod streaming;
mod sync;
pub mod trace;

pub use arena::{ArenaBuf, ArenaError, ArenaStats, DmaArena};
pub use buffer::{DmaBuf, PageBuffer};
pub use coherent::{Coherent, CoherentSlice, DmaSafe, NonCoherent, NonCoherentView};
pub use debug::{BadFree, DebugReport, ReportKind};
pub use device::DmaDevice;
pub use direction::{Bidirectional, CpuReadable, CpuWritable, Direction, DmaDirection, FromDevice, ToDevice};
pub use error::{AllocError, IommuError, LimitError, MapError, MapFailed, MaskError, MaskUnsupported, OutOfBounds};
pub use phys::{BusAddr, FrameRequest, PAGE_SIZE, PhysAddr, PhysMemory};
pub use pool::{DmaPool, PoolBlock, PoolBusy, PoolCache, PoolError, PoolStats};
pub use sg::{BusSegment, SgMapping};
pub use streaming::{CpuAccess, Mapping};

/// Renders one of the DMA service's introspection views by its scheme path: `dma:pools`
/// (Linux's poolinfo columns), `dma:mappings` (live mappings per device) or `dma:errors`
/// (DMA-API debug reports) or `dma:trace` (the event trace). `None` for any other path.
pub fn view(path: &str) -> Option<alloc::string::String> {
    match path {
        "dma:pools" => Some(pool::render_pools()),
        "dma:mappings" => Some(device::render_mappings()),
        "dma:errors" => Some(debug::render_errors()),
        "dma:trace" => Some(trace::render(None)),
        _ => None,
    }
}
