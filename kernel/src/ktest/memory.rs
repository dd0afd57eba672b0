//! In-kernel tests of physical memory: the frame allocator's runs are real, writable RAM.

use super::{KernelTest, TestResult};
use crate::check;
use crate::mm::memory;
use dma::phys::{FrameRequest, PAGE_SIZE, PhysAddr};

pub static TESTS: &[KernelTest] = &[
    KernelTest { name: "memory::runs_are_writable_ram", run: runs_are_writable_ram },
    KernelTest { name: "memory::runs_below_4gib", run: runs_below_4gib },
    KernelTest { name: "memory::free_restores_counts", run: free_restores_counts },
    KernelTest { name: "memory::double_free_refused", run: double_free_refused },
    KernelTest { name: "memory::heap_is_physically_contiguous", run: heap_is_physically_contiguous },
    KernelTest { name: "memory::mmio_mapping_reads_device", run: mmio_mapping_reads_device },
];

fn runs_are_writable_ram() -> TestResult {
    let req = FrameRequest { count: 16, max_addr: u64::MAX, align: PAGE_SIZE as u64 };
    let base = memory::allocate_frames(req).ok_or("no 16-frame run")?;
    let ptr = memory::phys_to_virt(base.0) as *mut u64;
    let words = 16 * PAGE_SIZE / 8;
    // SAFETY: the run is ours until freed below; the direct map covers it.
    let ok = unsafe {
        for i in 0..words {
            ptr.add(i).write_volatile(base.0 ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        (0..words).all(|i| ptr.add(i).read_volatile() == base.0 ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    };
    memory::free_frames(base, 16).map_err(|e| alloc::format!("{e}"))?;
    check!(ok, "pattern written to the run at {:#x} did not read back", base.0);
    Ok(())
}

fn runs_below_4gib() -> TestResult {
    let req = FrameRequest { count: 8, max_addr: 0xffff_ffff, align: 64 * 1024 };
    let base = memory::allocate_frames(req).ok_or("no run below 4 GiB")?;
    let end = base.0 + 8 * PAGE_SIZE as u64;
    memory::free_frames(base, 8).map_err(|e| alloc::format!("{e}"))?;
    check!(end <= 1 << 32, "run {:#x}..{end:#x} crosses 4 GiB", base.0);
    check!(base.0 % (64 * 1024) == 0, "run {:#x} not 64 KiB aligned", base.0);
    Ok(())
}

fn free_restores_counts() -> TestResult {
    let before = memory::frame_stats().free_frames;
    let runs: alloc::vec::Vec<PhysAddr> = (1..=8)
        .map(|n| memory::allocate_frames(FrameRequest { count: n, max_addr: u64::MAX, align: 4096 }))
        .collect::<Option<_>>()
        .ok_or("allocation failed")?;
    let during = memory::frame_stats().free_frames;
    for (i, base) in runs.into_iter().enumerate() {
        memory::free_frames(base, i + 1).map_err(|e| alloc::format!("{e}"))?;
    }
    let after = memory::frame_stats().free_frames;
    check!(during == before - 36, "36 frames allocated but free count went {before} -> {during}");
    check!(after == before, "free count {after} after freeing everything, {before} before");
    Ok(())
}

fn double_free_refused() -> TestResult {
    let base = memory::allocate_frames(FrameRequest { count: 2, max_addr: u64::MAX, align: 4096 }).ok_or("oom")?;
    memory::free_frames(base, 2).map_err(|e| alloc::format!("{e}"))?;
    let before = memory::frame_stats();
    let second = memory::free_frames(base, 2);
    check!(second.is_err(), "a double free was accepted");
    check!(memory::frame_stats() == before, "a refused free changed the allocator");
    Ok(())
}

fn heap_is_physically_contiguous() -> TestResult {
    use dma::phys::PhysMemory;
    let buf = alloc::vec![0u8; 64 * 1024];
    let kernel_memory = memory::KernelMemory;
    let start = kernel_memory.virt_to_phys(buf.as_ptr()).ok_or("heap pointer not in the direct map")?;
    let (heap_start, heap_end) = memory::heap_range().ok_or("no heap range")?;
    check!(
        start.0 >= heap_start && start.0 + buf.len() as u64 <= heap_end,
        "heap buffer at phys {:#x} outside the heap {heap_start:#x}..{heap_end:#x}",
        start.0
    );
    Ok(())
}

fn mmio_mapping_reads_device() -> TestResult {
    // The local APIC's version register: a device register every x86 machine has at 0xFEE00030
    // (Intel SDM Vol. 3A §11.4.8). Version is in bits 0..8; integrated APICs report 0x10..0x15.
    let base = memory::paging::map_mmio(0xfee0_0000, 4096).map_err(|e| alloc::format!("{e}"))?;
    // SAFETY: the page maps the local APIC's registers uncached; reading the version register has
    // no side effects.
    let version = unsafe { (base.add(0x30) as *const u32).read_volatile() };
    check!((0x10..=0x15).contains(&(version & 0xff)), "local APIC version register reads {version:#x}");
    Ok(())
}
