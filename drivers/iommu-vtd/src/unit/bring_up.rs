//! Bring-up of a unit through its registers (§10.4), in the order the module documentation
//! of [`unit`](super) gives, and the fault interrupt's programming.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;

use dma::phys::{PhysMemory, mask_from_bits};

use super::faults::FaultLog;
use super::{ContextState, HwState, Unit, UnitConfig, UnitError, UnitStep};
use crate::invalidation::{ContextScope, Invalidator, IotlbScope};
use crate::regs::{self, Cap, Ecap, SAGAW_39, SAGAW_48, Version, VtdRegisters, gcmd};
use crate::tables::{CacheFlush, ContextTables, TableMemory};
use crate::walker::WalkCaps;

impl Unit {
    /// Brings up the unit behind `regs` (see the module documentation for the steps). `name`
    /// appears in logs and views.
    pub fn bring_up(
        name: &str,
        regs: impl VtdRegisters + 'static,
        phys: Arc<dyn PhysMemory>,
        config: UnitConfig,
    ) -> Result<Arc<Unit>, UnitError> {
        let regs: Box<dyn VtdRegisters> = Box::new(regs);
        let version = Version(regs.read32(regs::VER));
        let cap = Cap(regs.read64(regs::CAP));
        let ecap = Ecap(regs.read64(regs::ECAP));
        log::info!("{name}: VT-d {version}, cap {cap}, ecap {ecap}");

        let status = regs.read32(regs::GSTS);
        if status & gcmd::TE != 0 {
            log::warn!("{name}: translation was left enabled by firmware; disabling it");
            if !regs::set_gcmd(&*regs, gcmd::TE, false) {
                return Err(UnitError::Timeout { what: UnitStep::TranslationDisable });
            }
        }
        if status & gcmd::QIE != 0 && !regs::set_gcmd(&*regs, gcmd::QIE, false) {
            return Err(UnitError::Timeout { what: UnitStep::QueuedInvalidationDisable });
        }

        let levels = choose_levels(cap, config.max_width).ok_or(UnitError::UnsupportedWidth { sagaw: cap.sagaw() })?;
        let width = (12 + 9 * levels as u32).min(cap.mgaw());
        let flush = if ecap.coherent() { None } else { config.flush_cache.clone().or_else(default_flush) };
        let max_addr = mask_from_bits(config.host_address_width as u32);
        let mem = TableMemory::new(phys.clone(), flush.clone(), max_addr);

        let mut inval = if ecap.qi() && config.prefer_queued {
            Invalidator::enable_queue(name, &*regs, &*phys, cap, max_addr, flush)?
        } else {
            Invalidator::registers(cap, ecap)
        };

        let tables = ContextTables::new(&mem)?;
        regs.write64(regs::RTADDR, tables.root().0);
        if !regs::gcmd_oneshot(&*regs, gcmd::SRTP, true) {
            return Err(UnitError::Timeout { what: UnitStep::RootTablePointer });
        }
        inval.context(&*regs, &*phys, ContextScope::Global)?;
        inval.iotlb(&*regs, &*phys, IotlbScope::Global)?;
        inval.flush_write_buffer(&*regs)?;

        let ids = vec![1u64; (cap.domains() as usize).div_ceil(64)];
        let unit = Arc::new(Unit {
            name: String::from(name),
            regs,
            phys,
            version,
            cap,
            ecap,
            walk: WalkCaps::from_regs(cap, ecap),
            levels,
            width,
            large_pages: config.large_pages,
            mem,
            hw: spin::Mutex::new(HwState { inval, translation: false }),
            ctx: spin::Mutex::new(ContextState { tables, ids, attached: BTreeMap::new(), domains: 0 }),
            faults: spin::Mutex::new(FaultLog::default()),
            ir: spin::Mutex::new(None),
        });
        let stale = unit.poll_faults();
        if !stale.is_empty() {
            log::warn!("{name}: cleared {} fault record(s) left from before bring-up", stale.len());
        }
        if config.enable_translation {
            unit.enable_translation()?;
        }
        log::info!(
            "{name}: {}-level tables, {width}-bit IOVAs, {} invalidation{}",
            levels,
            if unit.hw.lock().inval.is_queued() { "queued" } else { "register" },
            if cap.caching_mode() { ", caching mode" } else { "" }
        );
        Ok(unit)
    }

    /// Turns translation on (GCMD.TE, wait GSTS.TES). From now on, devices without a context
    /// entry are blocked.
    pub fn enable_translation(&self) -> Result<(), UnitError> {
        let mut hw = self.hw.lock();
        hw.inval.flush_write_buffer(&*self.regs)?;
        if !regs::set_gcmd(&*self.regs, gcmd::TE, true) {
            return Err(UnitError::Timeout { what: UnitStep::TranslationEnable });
        }
        hw.translation = true;
        log::info!("{}: DMA remapping enabled", self.name);
        Ok(())
    }

    /// Programs the fault event interrupt (an MSI: `address`/`data` as for MSI) and unmasks
    /// it (§7.3.1, §10.4.10..13). The handler should call [`Unit::poll_faults`].
    pub fn configure_fault_interrupt(&self, address: u64, data: u32) {
        self.regs.write32(regs::FEDATA, data);
        self.regs.write32(regs::FEADDR, address as u32);
        self.regs.write32(regs::FEUADDR, (address >> 32) as u32);
        self.regs.write32(regs::FECTL, 0);
    }
}

/// Picks the table depth: the smallest supported AGAW covering min(MGAW, `max_width`), else
/// the widest supported one (then the IOVA space is bounded by MGAW instead).
fn choose_levels(cap: Cap, max_width: u32) -> Option<u8> {
    let need = cap.mgaw().min(max_width);
    let options = [(39u32, 3u8, SAGAW_39), (48, 4, SAGAW_48)];
    let supported = || options.iter().filter(|o| cap.sagaw() & o.2 != 0);
    supported().find(|o| o.0 >= need).or_else(|| supported().next_back()).map(|o| o.1)
}

fn default_flush() -> Option<CacheFlush> {
    #[cfg(target_arch = "x86_64")]
    {
        Some(Arc::new(crate::tables::clflush_range))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}
