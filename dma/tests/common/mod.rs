//! Shared set-up for the integration tests: a simulated PC with RAM below and above 4 GiB.
#![allow(dead_code)]

use std::sync::Arc;

use dma::mapper::{Bounce, BounceArea, Direct, DmaMapper};
use dma::sim::{SimDevice, SimMemory};
use dma::{DmaDevice, PageBuffer, PhysMemory};

pub const FOUR_GIB: u64 = 0x1_0000_0000;

pub struct Machine {
    pub sim: Arc<SimMemory>,
    pub phys: Arc<dyn PhysMemory>,
    pub area: Option<Arc<BounceArea>>,
    pub dev: DmaDevice,
    pub hw: SimDevice,
}

impl Machine {
    /// A device behind a Direct mapper, with a bounce area of `bounce_bytes` below 4 GiB if
    /// non-zero, and a DMA mask of `mask_bits`.
    pub fn direct(name: &str, mask_bits: u32, bounce_bytes: usize) -> Machine {
        let sim = SimMemory::low_and_high(8 << 20, 8 << 20);
        let phys: Arc<dyn PhysMemory> = sim.clone();
        let area = (bounce_bytes > 0).then(|| BounceArea::new(phys.clone(), 0xffff_ffff, bounce_bytes).unwrap());
        let mapper: Arc<dyn DmaMapper> = match &area {
            Some(a) => Arc::new(Direct::with_bounce(phys.clone(), a.clone())),
            None => Arc::new(Direct::new(phys.clone())),
        };
        let dev = DmaDevice::new(name, phys.clone(), mapper);
        dev.set_mask(mask_bits).unwrap();
        let hw = SimDevice::new(&dev);
        Machine { sim, phys, area, dev, hw }
    }

    /// A device behind a mapper that bounces everything.
    pub fn forced_bounce(name: &str, bounce_bytes: usize) -> Machine {
        let sim = SimMemory::low_and_high(8 << 20, 8 << 20);
        let phys: Arc<dyn PhysMemory> = sim.clone();
        let area = BounceArea::new(phys.clone(), 0xffff_ffff, bounce_bytes).unwrap();
        let dev = DmaDevice::new(name, phys.clone(), Arc::new(Bounce::new(phys.clone(), area.clone())));
        dev.set_mask(32).unwrap();
        let hw = SimDevice::new(&dev);
        Machine { sim, phys, area: Some(area), dev, hw }
    }

    /// A page buffer above 4 GiB.
    pub fn high_buffer(&self, len: usize) -> PageBuffer {
        let b = PageBuffer::alloc(&self.phys, len, u64::MAX).unwrap();
        assert!(b.phys().as_u64() >= FOUR_GIB);
        b
    }

    /// A page buffer below 4 GiB.
    pub fn low_buffer(&self, len: usize) -> PageBuffer {
        let b = PageBuffer::alloc(&self.phys, len, 0xffff_ffff).unwrap();
        assert!(b.phys().as_u64() < FOUR_GIB);
        b
    }

    pub fn stats(&self) -> dma::mapper::BounceStats {
        self.dev.bounce_stats().unwrap()
    }
}

/// Whether the global error log holds a report for `device` whose text contains `needle`.
pub fn reported(device: &str, needle: &str) -> bool {
    dma::debug::recent_reports().iter().any(|r| r.device == device && r.to_string().contains(needle))
}
