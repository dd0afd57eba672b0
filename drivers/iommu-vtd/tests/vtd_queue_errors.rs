//! Invalidation queue errors (FSTS.IQE, VT-d §6.5.2.10) against the simulated unit: a bad
//! descriptor stops the queue as on hardware, and the driver finds it at IQH, reports it
//! decoded, replaces it, restarts the queue and fails only the batch it belonged to. The queue
//! keeps working afterwards, on a unit that resumes when IQE is cleared (hardware) and on one
//! that resumes only on an IQT write (QEMU 7.2).

mod vtd_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dma::{PhysAddr, PhysMemory};
use iommu_vtd::invalidation::{
    ContextScope, DescriptorType, InvalidationError, IotlbScope, QueueErrorCause, check_descriptor, context_descriptor,
    iotlb_descriptor, page_scope, wait_descriptor,
};
use iommu_vtd::regs::{self, VtdRegisters, fsts};
use iommu_vtd::sim::{SimConfig, SimUnit};
use iommu_vtd::{DomainError, Perms, SourceId, Unit, UnitConfig, UnmapPolicy};
use vtd_common::Rig;

const NIC: SourceId = SourceId::new(0, 2, 0);

/// Maps a page for the NIC, lets it read it (so the IOTLB caches it), unmaps strictly and
/// checks the device is cut off: the strict unmap's invalidation went through the queue.
fn queue_still_invalidates(rig: &Rig) {
    let d = rig.unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    let pa = rig.buffer(1, 4096, 0x5a);
    let iova = d.map(None, pa, 4096, Perms::READ, u64::MAX).unwrap();
    let mut b = [0u8; 4];
    rig.sim.dma_read(NIC, iova, &mut b).unwrap();
    assert_eq!(b, [0x5a; 4]);
    d.unmap(iova, 4096).expect("strict unmap after the queue error");
    assert!(rig.sim.dma_read(NIC, iova, &mut b).is_err(), "the IOTLB still translates an unmapped page");
    assert_eq!(rig.sim.read32(regs::FSTS) & fsts::IQE, 0, "FSTS.IQE left set");
}

#[test]
fn unknown_descriptor_type_is_reported_replaced_and_the_queue_goes_on() {
    let rig = Rig::new(SimConfig::default());
    let bad = [0xf, 0x1234];
    let err = rig.unit.submit_raw_invalidation(bad).unwrap_err();
    let InvalidationError::QueueError(fault) = err else { panic!("expected a queue error, got {err:?}") };
    assert_eq!(fault.descriptor, bad);
    assert_eq!(fault.kind, DescriptorType::Other(0xf));
    assert_eq!(fault.cause, QueueErrorCause::InvalidType);
    assert!(fault.from_unit, "a rev-3 unit gives IQERCD.IQEI");
    assert_eq!(rig.unit.queue_errors(), vec![fault]);
    assert_eq!(rig.unit.invalidation_stats().queue_errors, 1);
    let text = err.to_string();
    assert!(text.contains("FSTS.IQE") && text.contains("type 0xf") && text.contains("slot"), "{text}");
    queue_still_invalidates(&rig);
    rig.assert_no_violations();
}

#[test]
fn reserved_bits_on_a_qemu_like_unit_are_decoded_by_the_driver() {
    // QEMU 7.2: no IQERCD, and the queue resumes only when IQT is written again.
    let rig = Rig::new(SimConfig::qemu_caching_mode());
    let bad = [context_descriptor(ContextScope::Global)[0] | 1 << 63, 0];
    let Err(InvalidationError::QueueError(fault)) = rig.unit.submit_raw_invalidation(bad) else {
        panic!("a reserved bit went unnoticed")
    };
    assert_eq!(fault.kind, DescriptorType::ContextCache);
    assert_eq!(fault.cause, QueueErrorCause::ReservedBits { lo: 1 << 63, hi: 0 });
    assert!(!fault.from_unit, "QEMU gives no IQEI: the driver's decode names the bits");
    // Twice in a row: recovery leaves nothing behind that breaks the next one.
    let bad_wait = [5, 0]; // a wait asking for nothing
    let Err(InvalidationError::QueueError(second)) = rig.unit.submit_raw_invalidation(bad_wait) else {
        panic!("an empty wait went unnoticed")
    };
    assert_eq!((second.kind, second.cause), (DescriptorType::Wait, QueueErrorCause::WaitDoesNothing));
    assert_eq!(rig.unit.queue_errors(), vec![fault, second]);
    queue_still_invalidates(&rig);
    rig.assert_no_violations();
}

#[test]
fn a_valid_raw_descriptor_just_works() {
    let rig = Rig::new(SimConfig::default());
    rig.unit.submit_raw_invalidation(iotlb_descriptor(IotlbScope::Global, false, false)).unwrap();
    assert!(rig.unit.queue_errors().is_empty());
}

#[test]
fn a_register_only_unit_has_no_queue_to_inject_into() {
    let rig = Rig::new(SimConfig::register_only());
    assert!(matches!(rig.unit.submit_raw_invalidation([0xf, 0]), Err(InvalidationError::Rejected { .. })));
}

/// Registers that corrupt a descriptor of the next batch, once armed: as if memory or a
/// driver bug garbled a descriptor the driver itself built. The first one of the batch gets
/// bit 40 set (reserved in an IOTLB descriptor); with `wait`, the batch's last one, its wait,
/// gets bit 8 (reserved there).
struct Corrupting {
    sim: Arc<SimUnit>,
    phys: Arc<dyn PhysMemory>,
    armed: Arc<AtomicBool>,
    wait: bool,
}

impl VtdRegisters for Corrupting {
    fn read32(&self, offset: usize) -> u32 {
        self.sim.read32(offset)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.sim.read64(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.sim.write32(offset, value)
    }
    fn write64(&self, offset: usize, value: u64) {
        if offset == regs::IQT && self.armed.swap(false, Ordering::SeqCst) {
            let (at, bit) = if self.wait {
                ((value & 0xff0).wrapping_sub(16) & 0xff0, 8)
            } else {
                (self.sim.read64(regs::IQH) & 0xff0, 40)
            };
            let slot = PhysAddr((self.sim.read64(regs::IQA) & !0xfff) + at);
            let p = self.phys.phys_to_virt(slot) as *mut u64;
            // SAFETY: the slot lies in the simulated queue page the driver allocated.
            unsafe { p.write_volatile(p.read_volatile() | 1 << bit) };
        }
        self.sim.write64(offset, value)
    }
}

#[test]
fn a_strict_unmap_whose_invalidation_is_refused_keeps_its_iova_quarantined() {
    let rig = Rig::new(SimConfig::default());
    let armed = Arc::new(AtomicBool::new(false));
    let regs = Corrupting { sim: rig.sim.clone(), phys: rig.phys.clone(), armed: armed.clone(), wait: false };
    let unit = Unit::bring_up("dmar1", regs, rig.phys.clone(), UnitConfig::default()).unwrap();
    let d = unit.create_domain(UnmapPolicy::Strict).unwrap();
    d.attach(NIC).unwrap();
    let pa = rig.buffer(1, 4096, 0x11);
    let iova = d.map(None, pa, 4096, Perms::READ, u64::MAX).unwrap();
    rig.sim.dma_read(NIC, iova, &mut [0; 4]).unwrap();

    armed.store(true, Ordering::SeqCst);
    let err = d.unmap(iova, 4096).unwrap_err();
    let DomainError::Invalidation(InvalidationError::QueueError(fault)) = err else { panic!("{err:?}") };
    assert_eq!(fault.kind, DescriptorType::Iotlb);
    assert_eq!(fault.cause, QueueErrorCause::ReservedBits { lo: 1 << 40, hi: 0 });
    assert!(fault.from_unit);
    assert!(d.is_pending(iova), "the IOVA was released although its invalidation failed");
    // The window is still open (the refused invalidation did nothing) until a flush succeeds.
    assert!(rig.sim.dma_read(NIC, iova, &mut [0; 4]).is_ok());
    d.flush().expect("the queue works again");
    assert!(!d.is_pending(iova));
    assert!(rig.sim.dma_read(NIC, iova, &mut [0; 4]).is_err());
    assert_eq!(dma::error::IommuError::from(err), dma::error::IommuError::InvalidationFailed);
}

#[test]
fn a_refused_wait_descriptor_is_replaced_and_the_batch_still_drains() {
    let rig = Rig::new(SimConfig::qemu_caching_mode());
    let armed = Arc::new(AtomicBool::new(false));
    let regs = Corrupting { sim: rig.sim.clone(), phys: rig.phys.clone(), armed: armed.clone(), wait: true };
    let unit = Unit::bring_up("dmar2", regs, rig.phys.clone(), UnitConfig::default()).unwrap();
    armed.store(true, Ordering::SeqCst);
    let err = unit.submit_raw_invalidation(iotlb_descriptor(IotlbScope::Global, false, false)).unwrap_err();
    let InvalidationError::QueueError(fault) = err else { panic!("{err:?}") };
    assert_eq!(fault.kind, DescriptorType::Wait);
    assert_eq!(fault.cause, QueueErrorCause::ReservedBits { lo: 1 << 8, hi: 0 });
    // A fresh wait drained the batch: the next invalidation completes normally.
    unit.submit_raw_invalidation(iotlb_descriptor(IotlbScope::Global, false, false)).unwrap();
    assert_eq!(unit.queue_errors().len(), 1);
}

/// Registers of a unit whose queue is stopped for good: FSTS always says IQE, and the unit
/// never fetches (IQT writes are lost).
struct AlwaysStopped(Arc<SimUnit>);

impl VtdRegisters for AlwaysStopped {
    fn read32(&self, offset: usize) -> u32 {
        let v = self.0.read32(offset);
        if offset == regs::FSTS { v | fsts::IQE } else { v }
    }
    fn read64(&self, offset: usize) -> u64 {
        self.0.read64(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.0.write32(offset, value)
    }
    fn write64(&self, offset: usize, value: u64) {
        if offset != regs::IQT {
            self.0.write64(offset, value)
        }
    }
}

#[test]
fn a_queue_that_keeps_stopping_is_given_up_on_not_spun_on() {
    let rig = Rig::new(SimConfig::default());
    let sick = SimUnit::new(rig.phys.clone(), SimConfig::default());
    let config = UnitConfig { enable_translation: false, ..UnitConfig::default() };
    let result = Unit::bring_up("dmar9", AlwaysStopped(sick), rig.phys.clone(), config);
    assert!(
        matches!(result, Err(iommu_vtd::UnitError::Invalidation(InvalidationError::Broken))),
        "bring-up on a queue that never recovers: {:?}",
        result.err()
    );
}

#[test]
fn every_descriptor_the_driver_builds_passes_its_own_check() {
    let src = SourceId::new(0, 3, 0);
    for scope in [ContextScope::Global, ContextScope::Domain(7), ContextScope::Device { domain: 7, source: src }] {
        assert_eq!(check_descriptor(context_descriptor(scope), 18), None, "{scope:?}");
    }
    let pages = page_scope(7, 0x5000, 3 * 4096, 18, true).unwrap();
    for scope in [IotlbScope::Global, IotlbScope::Domain(7), pages] {
        for (dr, dw) in [(false, false), (true, true)] {
            assert_eq!(check_descriptor(iotlb_descriptor(scope, dr, dw), 18), None, "{scope:?}");
        }
    }
    assert_eq!(check_descriptor(wait_descriptor(PhysAddr(0x1000), 9), 18), None);
    // And the checks bite.
    assert_eq!(check_descriptor([0, 0], 18), Some(QueueErrorCause::InvalidType));
    assert_eq!(check_descriptor([0x2, 0], 18), Some(QueueErrorCause::ReservedGranularity));
    let wide = iotlb_descriptor(page_scope(7, 0, 1 << 30, 18, false).unwrap(), false, false);
    assert_eq!(check_descriptor(wide, 9), Some(QueueErrorCause::MaskAboveMamv { am: 18 }));
    assert_eq!(
        check_descriptor([context_descriptor(ContextScope::Global)[0], 1], 18),
        Some(QueueErrorCause::ReservedBits { lo: 0, hi: 1 })
    );
}
