//! Shared set-up for the VT-d tests: simulated RAM, a simulated unit, and a driver brought up
//! on it.
#![allow(dead_code)]

use std::sync::Arc;

use dma::sim::SimMemory;
use dma::{FrameRequest, PhysAddr, PhysMemory};
use iommu_vtd::sim::{SimConfig, SimUnit};
use iommu_vtd::{Unit, UnitConfig};

pub const FOUR_GIB: u64 = 0x1_0000_0000;
pub const MIB2: u64 = 2 << 20;

pub struct Rig {
    pub mem: Arc<SimMemory>,
    pub phys: Arc<dyn PhysMemory>,
    pub sim: Arc<SimUnit>,
    pub unit: Arc<Unit>,
}

impl Rig {
    pub fn new(cfg: SimConfig) -> Rig {
        Rig::with(cfg, UnitConfig::default())
    }

    pub fn with(cfg: SimConfig, ucfg: UnitConfig) -> Rig {
        let mem = SimMemory::low_and_high(32 << 20, 32 << 20);
        let phys: Arc<dyn PhysMemory> = mem.clone();
        let sim = SimUnit::new(phys.clone(), cfg);
        let unit = Unit::bring_up("dmar0", sim.clone(), phys.clone(), ucfg).expect("bring-up");
        Rig { mem, phys, sim, unit }
    }

    /// `pages` frames aligned to `align` bytes, filled with `fill`.
    pub fn buffer(&self, pages: usize, align: u64, fill: u8) -> PhysAddr {
        let pa = self.phys.alloc_frames(FrameRequest { count: pages, max_addr: u64::MAX, align }).unwrap();
        assert!(self.mem.write_phys(pa, &vec![fill; pages * 4096]));
        pa
    }

    pub fn read(&self, pa: PhysAddr, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        assert!(self.mem.read_phys(pa, &mut v));
        v
    }

    pub fn assert_no_violations(&self) {
        let v = self.sim.violations();
        assert!(v.is_empty(), "spec violations: {v:#?}");
    }
}
