//! The kernel's DMA service: one `DmaDevice` per PCI function, all built on the same memory and
//! (for now) the same mapper.
//!
//! The `dma` crate holds every rule; this module gives it the machine:
//! * memory: [`KernelMemory`] (frames from the frame allocator, addresses via the direct map);
//! * a mapper: each PCI function's VT-d domain when the IOMMU is on (see `crate::platform::iommu`), else
//!   `Direct` (bus address = physical address) with a 1 MiB bounce area below 4 GiB, so a 32-bit
//!   device can still use a buffer that lies above 4 GiB (Linux's swiotlb);
//! * views: `dma:pools`, `dma:mappings`, `dma:errors` for the shell and the tests.
//!
//! Drivers get a handle from [`device_for`] and nothing else: the handle is the capability to
//! do DMA, named after the device so every report says which device misbehaved.

use crate::mm::memory::KernelMemory;
use alloc::format;
use alloc::sync::Arc;
use dma::mapper::{BounceArea, Direct, DmaMapper};
use dma::{DmaDevice, PhysMemory};
use pci::{Bdf, PciFunction};
use spin::Once;

/// Size of the bounce area (swiotlb) below 4 GiB.
pub const BOUNCE_AREA_BYTES: usize = 1 << 20;

struct Service {
    memory: Arc<dyn PhysMemory>,
    mapper: Arc<dyn DmaMapper>,
}

static SERVICE: Once<Service> = Once::new();

/// Sets up memory, the bounce area and the mapper, and publishes the views.
pub fn init() {
    SERVICE.call_once(|| {
        let memory: Arc<dyn PhysMemory> = Arc::new(KernelMemory);
        let mapper: Arc<dyn DmaMapper> = match BounceArea::new(memory.clone(), 0xffff_ffff, BOUNCE_AREA_BYTES) {
            Ok(area) => Arc::new(Direct::with_bounce(memory.clone(), area)),
            Err(e) => {
                log::error!("dma: no bounce area ({e}); 32-bit devices cannot use memory above 4 GiB");
                Arc::new(Direct::new(memory.clone()))
            }
        };
        log::info!("dma: Direct mapper, {} KiB bounce area below 4 GiB", BOUNCE_AREA_BYTES / 1024);
        Service { memory, mapper }
    });
    for name in ["dma:pools", "dma:mappings", "dma:errors"] {
        let about = match name {
            "dma:pools" => "DMA pools: name, blocks in use, total blocks, block size, pages",
            "dma:mappings" => "live streaming mappings per device",
            _ => "DMA-API misuse reports",
        };
        crate::registry::scheme::register(name, about, view_for(name));
    }
    crate::platform::iommu::init(service().memory.clone());
}

fn view_for(name: &str) -> crate::registry::scheme::Render {
    match name {
        "dma:pools" => || dma::view("dma:pools").unwrap_or_default(),
        "dma:mappings" => || dma::view("dma:mappings").unwrap_or_default(),
        _ => || dma::view("dma:errors").unwrap_or_default(),
    }
}

fn service() -> &'static Service {
    SERVICE.call_once(|| {
        // `init` was not called; build the service on first use anyway.
        let memory: Arc<dyn PhysMemory> = Arc::new(KernelMemory);
        let mapper: Arc<dyn DmaMapper> = Arc::new(Direct::new(memory.clone()));
        Service { memory, mapper }
    })
}

/// The kernel's physical memory, as the DMA service sees it.
pub fn memory() -> Arc<dyn PhysMemory> {
    service().memory.clone()
}

/// A DMA handle for `function`, named `"bb:dd.f driver"`. The mask starts at 32 bits; the driver
/// widens it when its device can address more.
///
/// With VT-d on, the handle's mapper is the function's own IOMMU domain; otherwise the shared
/// Direct mapper.
pub fn device_for(function: &PciFunction, driver: &str) -> DmaDevice {
    let s = service();
    let mapper = crate::platform::iommu::mapper_for(function).unwrap_or_else(|| s.mapper.clone());
    DmaDevice::new(format!("{} {driver}", Bdf(function.address)), s.memory.clone(), mapper)
}

/// A DMA handle for something that is not a PCI function (tests, the CPU playing device).
pub fn device_named(name: &str) -> DmaDevice {
    let s = service();
    DmaDevice::new(name, s.memory.clone(), s.mapper.clone())
}
