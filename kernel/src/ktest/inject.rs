//! Break it: `inject NAME` makes one of the failures the guide explains happen on purpose, on
//! this machine, and prints what happened, the report or fault that caught it, and the guide
//! section that explains it. Every case is also an in-kernel test (`inject::NAME`) that checks
//! the report or fault record, and every case leaves the kernel working: the tests after them
//! in the same boot (the network and disk tests among them) show it.
//!
//! The device that misbehaves is the DMA probe of [`super::iommu`] (an 82574 no driver claims),
//! or, for the DMA-API and pool mistakes, the CPU playing driver and device.
//!
//! Lines meant for `cargo xtask test` to parse start with `inject NAME:`.

use super::iommu::{
    NO_VTD, descriptor, descriptor_done, frame_buffer, iommu_expected, mapped_dma_goes_through, probe, transmit_ring,
};
use super::{KernelTest, TestError, TestResult};
use crate::println;
use crate::registry::commands::Command;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use dma::{Bidirectional, DmaBuf, DmaDevice, DmaDirection, DmaPool, PageBuffer, ReportKind, ToDevice};
use pci::Bdf;

/// What one injected failure did.
pub struct Outcome {
    /// What the kernel made happen.
    pub happened: String,
    /// The report or fault that caught it.
    pub caught: String,
}

/// One failure the guide explains.
pub struct Case {
    /// What `inject` takes, and the test's name after `inject::`.
    pub name: &'static str,
    /// One line for the list.
    pub about: &'static str,
    /// The guide section that explains it: `file § heading`.
    pub guide: &'static str,
    /// Makes it happen and checks that it was caught.
    pub run: fn() -> Result<Outcome, TestError>,
}

/// Every case, in the order `inject` lists them.
pub static CASES: &[Case] = &[
    Case {
        name: "unmapped_iova",
        about: "the probe device DMAs to an IOVA nothing maps",
        guide: "docs/guide/05-the-iommu.md § Faults",
        run: unmapped_iova,
    },
    Case {
        name: "after_strict_unmap",
        about: "the probe device DMAs to a page after its strict unmap",
        guide: "docs/guide/05-the-iommu.md § IOTLB invalidation, and strict vs deferred unmap",
        run: after_strict_unmap,
    },
    Case {
        name: "pool_write_after_free",
        about: "a write into a freed block of a poisoned DMA pool",
        guide: "docs/guide/04-dma-pools.md § Poisoning",
        run: pool_write_after_free,
    },
    Case {
        name: "double_unmap",
        about: "a raw mapping unmapped twice (DMA-API debug)",
        guide: "docs/guide/02-types-carry-the-rules.md § When the types cannot know: the raw layer and the tracker",
        run: double_unmap,
    },
    Case {
        name: "unmap_wrong_direction",
        about: "a raw mapping unmapped with another direction (DMA-API debug)",
        guide: "docs/guide/02-types-carry-the-rules.md § When the types cannot know: the raw layer and the tracker",
        run: unmap_wrong_direction,
    },
    Case {
        name: "bounce_above_4g",
        about: "a 32-bit device given a buffer above 4 GiB (the 6 GiB machine without VT-d)",
        guide: "docs/guide/03-masks-and-bounce-buffers.md § Bounce buffers (Linux's swiotlb)",
        run: bounce_above_4g,
    },
    Case {
        name: "deferred_unmap_window",
        about: "deferred unmap: the device still reaches the page until the flush",
        guide: "docs/guide/05-the-iommu.md § IOTLB invalidation, and strict vs deferred unmap",
        run: deferred_unmap_window,
    },
];

/// The in-kernel tests: one per case, run in this order by `ktest`.
pub static TESTS: &[KernelTest] = &[
    KernelTest { name: "inject::unmapped_iova", run: || test_case(0) },
    KernelTest { name: "inject::after_strict_unmap", run: || test_case(1) },
    KernelTest { name: "inject::pool_write_after_free", run: || test_case(2) },
    KernelTest { name: "inject::double_unmap", run: || test_case(3) },
    KernelTest { name: "inject::unmap_wrong_direction", run: || test_case(4) },
    KernelTest { name: "inject::bounce_above_4g", run: || test_case(5) },
    KernelTest { name: "inject::deferred_unmap_window", run: || test_case(6) },
];

/// The `inject` command.
pub static COMMANDS: &[Command] = &[Command {
    name: "inject",
    usage: "inject [NAME]",
    about: "make a DMA failure happen on purpose and show what caught it (no NAME: list them)",
    run: inject,
}];

fn test_case(index: usize) -> TestResult {
    let case = &CASES[index];
    let outcome = (case.run)()?;
    println!("inject {}: {} -> caught: {}", case.name, outcome.happened, outcome.caught);
    Ok(())
}

fn inject(args: &[&str]) {
    let Some(name) = args.first() else {
        println!("inject NAME, one of:");
        for c in CASES {
            println!("  {:<24} {}", c.name, c.about);
        }
        return;
    };
    let Some(case) = CASES.iter().find(|c| c.name == *name) else {
        return println!("inject: no case `{name}`; `inject` lists them");
    };
    match (case.run)() {
        Ok(outcome) => {
            println!("inject {}: what happened: {}", case.name, outcome.happened);
            println!("inject {}: caught by: {}", case.name, outcome.caught);
            println!("inject {}: read: {}", case.name, case.guide);
        }
        Err(TestError::Skipped(why)) => println!("inject {}: not on this machine: {why}", case.name),
        Err(TestError::Failed(why)) => println!("inject {}: NOT CAUGHT: {why}", case.name),
    }
}

fn vtd_only() -> Result<(), TestError> {
    if iommu_expected() { Ok(()) } else { Err(TestError::Skipped(NO_VTD)) }
}

/// The probe reads a descriptor at an IOVA with no mapping: VT-d blocks the read and records
/// a fault with the probe's requester id; the kernel and the probe go on.
fn unmapped_iova() -> Result<Outcome, TestError> {
    vtd_only()?;
    let _serial = crate::platform::iommu::FAULT_TEST_LOCK.lock();
    let p = probe()?;
    p.reset();
    let unmapped = 0x0dea_d000u64;
    if p.dev.mapper().bus_to_phys(dma::BusAddr(unmapped)).is_some() {
        return Err(format!("{unmapped:#x} is mapped after all").into());
    }
    p.transmit_one(unmapped);
    let fault = p.wait_fault();
    p.stop();
    let fault = fault.ok_or("the probe read an unmapped IOVA and no fault was recorded")?;
    if fault.address != unmapped || fault.source != p.source() {
        return Err(format!("fault {fault}, expected one at {unmapped:#x} from {}", p.source()).into());
    }
    let iommu = crate::services::watch::walk_text(p.source(), unmapped, iommu_vtd::AccessKind::Read);
    drop(_serial);
    mapped_dma_goes_through()?;
    Ok(Outcome {
        happened: format!(
            "{} {} read a transmit descriptor at IOVA {unmapped:#x}, which nothing maps",
            Bdf(p.function.address),
            "dma-probe"
        ),
        caught: format!("VT-d fault record: {fault}; the walk the unit made:\n{iommu}"),
    })
}

/// The probe reads its ring once through a mapping, the driver unmaps it (strict: the IOTLB is
/// invalidated before unmap returns), and the probe reads it again: a fault at the ring's page.
fn after_strict_unmap() -> Result<Outcome, TestError> {
    vtd_only()?;
    let _serial = crate::platform::iommu::FAULT_TEST_LOCK.lock();
    let p = probe()?;
    p.reset();
    let tx = p.dev.map(frame_buffer()?, ToDevice).map_err(|e| format!("{}", e.error))?;
    let ring = transmit_ring(tx.bus_addr().as_u64())?;
    let mut ring = p.dev.map(ring, Bidirectional).map_err(|e| format!("{}", e.error))?;
    let iova = ring.bus_addr().as_u64();
    p.transmit_one(iova);
    let first = crate::arch::time::poll_until(500_000, || descriptor_done(ring.sync_for_cpu().as_slice()));
    p.stop();
    let mut ring = ring.unmap();
    ring[12] = 0;
    p.transmit_one(iova);
    let fault = p.wait_fault();
    p.stop();
    let _ = tx.unmap();
    if !first {
        return Err("the first, mapped, transmit did not complete".into());
    }
    let fault = fault.ok_or("the probe reached its ring after a strict unmap")?;
    if fault.address != iova & !0xfff || descriptor_done(&ring) {
        return Err(format!("fault {fault} (ring IOVA {iova:#x}); descriptor done: {}", descriptor_done(&ring)).into());
    }
    drop(_serial);
    mapped_dma_goes_through()?;
    Ok(Outcome {
        happened: format!("the probe read its ring at IOVA {iova:#x} after the driver's strict unmap of it"),
        caught: format!("VT-d fault record: {fault} (strict unmap invalidated the IOTLB before returning)"),
    })
}

/// A device (the CPU plays it) writes into a pool block after the driver freed it. The pool is
/// poisoned, so the freed block was filled with 0xa7, and the next allocation of that block
/// finds the damaged byte and reports a write after free.
fn pool_write_after_free() -> Result<Outcome, TestError> {
    let dev = crate::services::dma_service::device_named("ktest inject-pool");
    let pool = DmaPool::create_poisoned("inject-poison", &dev, 64, 64, 0).map_err(|e| format!("{e}"))?;
    let block = pool.alloc().map_err(|e| format!("{e}"))?;
    let (cpu, bus) = (block.as_ptr(), block.bus_addr());
    drop(block);
    let before = dev.report_count();
    // SAFETY: deliberately the bug being shown: a stale pointer into a freed pool block. The
    // write stays inside memory the live pool owns (a pool never gives a unit back while it
    // lives), and nothing else holds the block until the allocation below.
    unsafe { cpu.add(24).write_volatile(0x42) };
    let again = pool.alloc().map_err(|e| format!("{e}"))?;
    let same = again.bus_addr() == bus;
    drop(again);
    pool.destroy().map_err(|e| format!("{e}"))?;
    if !same {
        return Err("the pool did not hand the freed block out again (its free list is LIFO)".into());
    }
    if dev.report_count() != before + 1 {
        return Err(
            format!("{} reports after the write after free, expected {}", dev.report_count(), before + 1).into()
        );
    }
    let errors = crate::registry::scheme::read("dma:errors").unwrap_or_default();
    let line = errors.lines().rev().find(|l| l.contains("inject-poison") && l.contains("written after free"));
    let line = line.ok_or_else(|| format!("dma:errors does not show the write after free:\n{errors}"))?;
    Ok(Outcome {
        happened: format!("byte 24 of pool block {bus} was written after the block was freed"),
        caught: format!("pool poisoning, at the next allocation of the block: {}", line.trim()),
    })
}

/// A page mapped with the raw layer, for the DMA-API debug cases.
fn raw_mapping(dev: &DmaDevice, dir: DmaDirection) -> Result<(PageBuffer, dma::BusAddr), TestError> {
    let buf = PageBuffer::alloc(dev.memory(), 4096, u64::MAX).map_err(|e| format!("{e}"))?;
    // SAFETY: `buf` outlives the mapping (the callers unmap it before dropping `buf`) and the
    // CPU does not touch it meanwhile.
    let bus = unsafe { dev.map_single_raw(buf.dma_ptr(), 4096, dir) }.map_err(|e| format!("{e}"))?;
    Ok((buf, bus))
}

/// `dma_unmap_single` twice on one address: the tracker refuses the second and reports it.
fn double_unmap() -> Result<Outcome, TestError> {
    let dev = crate::services::dma_service::device_named("ktest inject-debug");
    let (buf, bus) = raw_mapping(&dev, DmaDirection::ToDevice)?;
    dev.unmap_single_raw(bus, 4096, DmaDirection::ToDevice).map_err(|r| format!("first unmap refused: {r}"))?;
    let report = dev.unmap_single_raw(bus, 4096, DmaDirection::ToDevice).err();
    drop(buf);
    let report = report.ok_or("the second unmap was accepted")?;
    if !matches!(report.kind, ReportKind::DoubleUnmap { .. }) {
        return Err(format!("reported as {report}, expected a double unmap").into());
    }
    Ok(Outcome {
        happened: format!("the driver unmapped {bus} twice"),
        caught: format!("DMA-API debug report (second unmap refused, nothing freed twice): {report}"),
    })
}

/// A `ToDevice` mapping unmapped as `FromDevice`: reported and refused (so no wrong bounce copy
/// overwrites the buffer); the right unmap then succeeds.
fn unmap_wrong_direction() -> Result<Outcome, TestError> {
    let dev = crate::services::dma_service::device_named("ktest inject-debug");
    let (buf, bus) = raw_mapping(&dev, DmaDirection::ToDevice)?;
    let report = dev.unmap_single_raw(bus, 4096, DmaDirection::FromDevice).err();
    let fixed = dev.unmap_single_raw(bus, 4096, DmaDirection::ToDevice);
    drop(buf);
    let report = report.ok_or("an unmap with the wrong direction was accepted")?;
    if !matches!(report.kind, ReportKind::DirectionMismatch { .. }) {
        return Err(format!("reported as {report}, expected a direction mismatch").into());
    }
    fixed.map_err(|r| format!("the correct unmap after the refused one failed: {r}"))?;
    Ok(Outcome {
        happened: format!("the driver unmapped {bus}, mapped DMA_TO_DEVICE, as DMA_FROM_DEVICE"),
        caught: format!("DMA-API debug report (unmap refused; the right one then succeeded): {report}"),
    })
}

/// The probe (a 32-bit device: its mask was never widened) transmits from a buffer above
/// 4 GiB. Without an IOMMU the Direct mapper bounces it through a slot below 4 GiB; the device
/// reads the slot, never the buffer.
fn bounce_above_4g() -> Result<Outcome, TestError> {
    let _serial = crate::platform::iommu::FAULT_TEST_LOCK.lock();
    let p = probe()?;
    if !p.dev.mapper().kind().starts_with("direct") {
        return Err(TestError::Skipped("the probe maps through VT-d here, which needs no bounce"));
    }
    let mut frame = frame_buffer()?;
    if frame.phys().as_u64() <= 0xffff_ffff {
        return Err(TestError::Skipped("no RAM above 4 GiB on this machine (the 6 GiB job has it)"));
    }
    frame[14..30].copy_from_slice(b"bounced frame!!!");
    let mask = p.dev.mask();
    let before = p.dev.bounce_stats().map_or(0, |s| s.copies_to_slot);
    let buffer_phys = frame.phys();
    p.reset();
    let tx = p.dev.map(frame, ToDevice).map_err(|e| format!("{}", e.error))?;
    let ring = transmit_ring(tx.bus_addr().as_u64())?;
    let mut ring = p.dev.map(ring, Bidirectional).map_err(|e| format!("{}", e.error))?;
    p.transmit_one(ring.bus_addr().as_u64());
    let done = crate::arch::time::poll_until(500_000, || descriptor_done(ring.sync_for_cpu().as_slice()));
    p.stop();
    let (bounced, bus) = (tx.is_bounced(), tx.bus_addr());
    let _ = ring.unmap();
    let _ = tx.unmap();
    let after = p.dev.bounce_stats().map_or(0, |s| s.copies_to_slot);
    if !bounced || bus.as_u64() > mask {
        return Err(format!("the buffer at {buffer_phys} was given to a device with mask {mask:#x} as {bus}").into());
    }
    if !done {
        return Err("the device did not complete the transmit from the bounce slot".into());
    }
    Ok(Outcome {
        happened: format!("a device with DMA mask {mask:#x} was given a buffer at {buffer_phys}, above its reach"),
        caught: format!(
            "the mapper bounced it: the device read a copy at {bus} (bounce copies to device +{}), and transmitted it",
            after - before
        ),
    })
}

/// The probe moves to a domain with deferred unmap. After the ring's unmap returns, its IOVA is
/// pending and the IOTLB still holds the translation: the probe reads the ring and writes its
/// status there again. Only the flush (a domain-wide IOTLB invalidation) closes the window: then
/// the same access faults. The probe goes back to its own strict domain afterwards.
fn deferred_unmap_window() -> Result<Outcome, TestError> {
    vtd_only()?;
    let _serial = crate::platform::iommu::FAULT_TEST_LOCK.lock();
    let p = probe()?;
    let home = crate::platform::iommu::domain_of(p.function).ok_or("the probe has no domain")?;
    let source = p.source();
    let sharing = crate::platform::pci::functions()
        .iter()
        .filter(|f| crate::platform::iommu::domain_of(f).is_some_and(|d| Arc::ptr_eq(&d, &home)))
        .count();
    if sharing > 1 {
        // Behind a PCIe-to-PCI bridge the probe's requester id is also the NIC's: moving it to
        // another domain would move the NIC too.
        return Err(TestError::Skipped("the probe shares its requester id (and domain) with another device"));
    }
    let deferred = home
        .unit()
        .create_domain(iommu_vtd::UnmapPolicy::Deferred { batch: 64 })
        .map_err(|e| format!("no deferred domain: {e}"))?;
    home.detach(source).map_err(|e| format!("{e}"))?;
    let result = match deferred.attach(source) {
        Ok(()) => {
            let outcome = deferred_window_on(p, &deferred);
            p.stop();
            let _ = deferred.detach(source);
            outcome
        }
        Err(e) => Err(format!("cannot attach the probe to a deferred domain: {e}").into()),
    };
    home.attach(source).map_err(|e| format!("the probe could not go back to its domain: {e}"))?;
    let outcome = result?;
    drop(_serial);
    mapped_dma_goes_through()?;
    Ok(outcome)
}

fn deferred_window_on(p: &super::iommu::Probe, domain: &Arc<iommu_vtd::Domain>) -> Result<Outcome, TestError> {
    let memory = crate::services::dma_service::memory();
    let mapper = Arc::new(iommu_vtd::Iommu::new(
        domain.clone(),
        memory.clone(),
        true,
        iommu_vtd::UnmapPolicy::Deferred { batch: 64 },
    ));
    let dev = DmaDevice::new(format!("{} dma-probe-deferred", Bdf(p.function.address)), memory, mapper);
    p.reset();
    let tx = dev.map(frame_buffer()?, ToDevice).map_err(|e| format!("{}", e.error))?;
    let ring = dev.map(transmit_ring(tx.bus_addr().as_u64())?, Bidirectional).map_err(|e| format!("{}", e.error))?;
    let iova = ring.bus_addr().as_u64();
    p.transmit_one(iova);
    let ring_done = |ring: &PageBuffer| {
        // SAFETY: byte 12 of the page the ring buffer owns; volatile because the device writes it.
        unsafe { ring.dma_ptr().add(12).read_volatile() & 1 != 0 }
    };
    let mut ring = ring;
    let first = crate::arch::time::poll_until(500_000, || descriptor_done(ring.sync_for_cpu().as_slice()));
    p.stop();
    if !first {
        let _ = (ring.unmap(), tx.unmap());
        return Err("the first, mapped, transmit did not complete".into());
    }
    // Deferred unmap: the entry is cleared, the IOVA waits for a flush, the IOTLB is untouched.
    let mut ring = ring.unmap();
    let pending = domain.is_pending(iova);
    ring[..16].copy_from_slice(&descriptor(tx.bus_addr().as_u64(), 60));
    ring[12] = 0;
    p.transmit_one(iova);
    let reached = crate::arch::time::poll_until(500_000, || ring_done(&ring));
    p.stop();
    let in_window = crate::platform::iommu::poll_faults().into_iter().find(|f| f.source == p.source());
    // The flush closes the window.
    domain.flush().map_err(|e| format!("flush failed: {e}"))?;
    let released = !domain.is_pending(iova);
    ring[12] = 0;
    p.transmit_one(iova);
    let fault = p.wait_fault();
    p.stop();
    let _ = tx.unmap();
    if !pending {
        return Err(format!("IOVA {iova:#x} was not pending after a deferred unmap").into());
    }
    if !reached || in_window.is_some() {
        return Err(format!(
            "inside the window the device should still reach the page: descriptor done {reached}, fault {in_window:?}"
        )
        .into());
    }
    let fault = fault.ok_or("after the flush the device still reached the page")?;
    if fault.address != iova & !0xfff || !released || ring_done(&ring) {
        return Err(format!("after the flush: fault {fault}, IOVA released {released}").into());
    }
    Ok(Outcome {
        happened: format!(
            "after the deferred unmap of the probe's ring at IOVA {iova:#x} returned, the probe read it and wrote its status into the page (through the stale IOTLB entry)"
        ),
        caught: format!(
            "nothing until the flush: the domain-wide invalidation released the IOVA, and the next access faulted: {fault}"
        ),
    })
}
