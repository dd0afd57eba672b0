//! In-kernel tests of the DMA service on the machine's real physical memory.
//!
//! Until a driver makes a real device do DMA, "the device" here is the CPU reading and writing
//! at the bus address — which is only meaningful when the bus address *is* the physical address
//! (the Direct mapper, with or without bounce). Each test checks that first.

use super::{KernelTest, TestResult};
use crate::check;
use crate::services::dma_service;
use alloc::boxed::Box;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use dma::{Bidirectional, BusAddr, DmaDevice, DmaPool, FromDevice, PageBuffer, ToDevice};

pub static TESTS: &[KernelTest] = &[
    KernelTest { name: "dma::coherent_is_zeroed_and_below_the_mask", run: coherent_is_zeroed_and_below_the_mask },
    KernelTest { name: "dma::to_device_mapping_shows_cpu_data", run: to_device_mapping_shows_cpu_data },
    KernelTest { name: "dma::from_device_data_reaches_the_cpu", run: from_device_data_reaches_the_cpu },
    KernelTest { name: "dma::bidirectional_round_trip", run: bidirectional_round_trip },
    KernelTest { name: "dma::scatter_gather_covers_every_byte", run: scatter_gather_covers_every_byte },
    KernelTest { name: "dma::pool_blocks_aligned_within_boundary", run: pool_blocks_aligned_within_boundary },
    KernelTest { name: "dma::pool_destroy_with_live_blocks_refused", run: pool_destroy_with_live_blocks_refused },
    KernelTest { name: "dma::pool_cache_serves_device_visible_blocks", run: pool_cache_serves_device_visible_blocks },
    KernelTest { name: "dma::high_buffer_bounced_for_32bit_device", run: high_buffer_bounced_for_32bit_device },
    KernelTest { name: "dma::views_are_published", run: views_are_published },
];

/// The bytes "the device" sees at `bus`: only valid while bus address == physical address.
fn device_bytes(bus: BusAddr, len: usize) -> &'static mut [u8] {
    // SAFETY: under the Direct mapper the bus address is a physical address of RAM the mapping
    // keeps alive for the test; the direct map covers all RAM.
    unsafe { core::slice::from_raw_parts_mut(crate::mm::memory::phys_to_virt(bus.as_u64()), len) }
}

fn test_device(name: &str) -> Result<DmaDevice, alloc::string::String> {
    let dev = dma_service::device_named(name);
    let kind = dev.mapper().kind();
    check!(kind.starts_with("direct"), "these tests need the Direct mapper, not {kind}");
    Ok(dev)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn coherent_is_zeroed_and_below_the_mask() -> TestResult {
    let dev = test_device("ktest coherent")?;
    dev.set_mask(32).map_err(|e| format!("{e}"))?;
    let mut ring = dev.alloc_coherent_slice::<u64>(2048).map_err(|e| format!("{e}"))?;
    check!(
        ring.bus_addr().as_u64() + 2048 * 8 <= 1 << 32,
        "coherent memory at {:?} above a 32-bit mask",
        ring.bus_addr()
    );
    check!((0..2048).all(|i| ring.read(i) == Some(0)), "coherent memory not zeroed");
    ring.write(5, 0xfeed_f00d).map_err(|e| format!("{e}"))?;
    let seen = device_bytes(ring.bus_addr_of(5).ok_or("no index 5")?, 8);
    check!(u64::from_le_bytes(seen.try_into().unwrap_or([0; 8])) == 0xfeed_f00d, "device does not see the CPU's write");
    Ok(())
}

fn to_device_mapping_shows_cpu_data() -> TestResult {
    let dev = test_device("ktest to-device")?;
    let data = pattern(3000, 7);
    let buf: Box<[u8]> = data.clone().into_boxed_slice();
    let mapping = dev.map(buf, ToDevice).map_err(|e| format!("{}", e.error))?;
    check!(device_bytes(mapping.bus_addr(), 3000) == &data[..], "device reads other bytes than the CPU wrote");
    let back = mapping.unmap();
    check!(back[..] == data[..], "buffer changed by a ToDevice mapping");
    Ok(())
}

fn from_device_data_reaches_the_cpu() -> TestResult {
    let dev = test_device("ktest from-device")?;
    let mut mapping = dev.map(vec![0u8; 1500], FromDevice).map_err(|e| format!("{}", e.error))?;
    let data = pattern(1500, 99);
    device_bytes(mapping.bus_addr(), 1500).copy_from_slice(&data);
    check!(mapping.sync_for_cpu().as_slice() == &data[..], "sync_for_cpu does not show the device's data");
    mapping.sync_for_device();
    device_bytes(mapping.bus_addr(), 4).copy_from_slice(b"late");
    let back = mapping.unmap();
    check!(&back[..4] == b"late" && back[4..] == data[4..], "unmap lost device data");
    Ok(())
}

fn bidirectional_round_trip() -> TestResult {
    let dev = test_device("ktest bidirectional")?;
    let mut mapping = dev.map(pattern(512, 1), Bidirectional).map_err(|e| format!("{}", e.error))?;
    let seen = device_bytes(mapping.bus_addr(), 512);
    check!(seen[..] == pattern(512, 1)[..], "device does not see the initial data");
    for b in seen.iter_mut() {
        *b = b.wrapping_add(1);
    }
    {
        let mut cpu = mapping.sync_for_cpu();
        check!(cpu.as_slice()[..] == pattern(512, 2)[..], "CPU does not see the device's update");
        cpu.fill(0x55);
    }
    mapping.sync_for_device();
    check!(device_bytes(mapping.bus_addr(), 512).iter().all(|&b| b == 0x55), "device does not see the CPU's fill");
    let back = mapping.unmap();
    check!(back.iter().all(|&b| b == 0x55), "unmap returned other bytes");
    Ok(())
}

fn scatter_gather_covers_every_byte() -> TestResult {
    let dev = test_device("ktest sg")?;
    let pieces: Vec<Vec<u8>> =
        [700usize, 4096, 33, 9000].iter().enumerate().map(|(i, &n)| pattern(n, i as u8)).collect();
    let total: usize = pieces.iter().map(Vec::len).sum();
    let sg = dev.map_sg(pieces.clone(), ToDevice).map_err(|e| format!("{}", e.error))?;
    let segments = sg.segments().to_vec();
    check!(
        segments.iter().map(|s| s.len).sum::<usize>() == total,
        "segments cover {} of {total} bytes",
        segments.iter().map(|s| s.len).sum::<usize>()
    );
    let seen: Vec<u8> = segments.iter().flat_map(|s| device_bytes(s.bus, s.len).iter().copied()).collect();
    let expected: Vec<u8> = pieces.concat();
    check!(seen == expected, "the device reading the segments in order sees other bytes");
    let back = sg.unmap();
    check!(back == pieces, "unmap returned other buffers");
    Ok(())
}

fn pool_blocks_aligned_within_boundary() -> TestResult {
    let dev = test_device("ktest pool")?;
    let pool = DmaPool::create("ktest-pool", &dev, 48, 64, 1024).map_err(|e| format!("{e}"))?;
    let mut blocks = Vec::new();
    for i in 0..300u32 {
        let mut b = pool.zalloc().map_err(|e| format!("{e}"))?;
        let bus = b.bus_addr().as_u64();
        check!(bus % 64 == 0, "block {i} at {bus:#x} not 64-byte aligned");
        check!(bus / 1024 == (bus + 47) / 1024, "block {i} at {bus:#x} crosses a 1 KiB boundary");
        let mut zero = [1u8; 48];
        b.read_bytes(0, &mut zero).map_err(|e| format!("{e}"))?;
        check!(zero.iter().all(|&x| x == 0), "zalloc block {i} not zero");
        b.write(0, i).map_err(|e| format!("{e}"))?;
        blocks.push(b);
    }
    for (i, b) in blocks.iter().enumerate() {
        let seen = device_bytes(b.bus_addr(), 4);
        check!(u32::from_le_bytes([seen[0], seen[1], seen[2], seen[3]]) == i as u32, "block {i} overlaps another");
    }
    let stats = pool.stats();
    check!(stats.blocks_in_use == 300, "pool says {} blocks in use", stats.blocks_in_use);
    drop(blocks);
    check!(pool.stats().blocks_in_use == 0, "freed blocks still counted");
    pool.destroy().map_err(|e| format!("{e}"))?;
    Ok(())
}

/// A per-owner cache on real memory: its blocks obey the pool's rules, are where the device
/// looks, are counted as cached while on the cache's stack, and all come back when it drops.
fn pool_cache_serves_device_visible_blocks() -> TestResult {
    let dev = test_device("ktest pool-cache")?;
    let pool = DmaPool::create("ktest-cache", &dev, 96, 32, 512).map_err(|e| format!("{e}"))?;
    {
        let mut cache = pool.cache(16);
        let mut blocks = Vec::new();
        for round in 0..3u32 {
            for i in 0..40u32 {
                let mut b = cache.zalloc().map_err(|e| format!("{e}"))?;
                let bus = b.bus_addr().as_u64();
                check!(bus % 32 == 0, "block at {bus:#x} not 32-byte aligned");
                check!(bus / 512 == (bus + 95) / 512, "block at {bus:#x} crosses a 512-byte boundary");
                check!(device_bytes(b.bus_addr(), 96).iter().all(|&x| x == 0), "zalloc block at {bus:#x} not zero");
                b.write(0, round << 16 | i).map_err(|e| format!("{e}"))?;
                blocks.push(b);
            }
            for (i, b) in blocks.iter().enumerate() {
                let seen = device_bytes(b.bus_addr(), 4);
                let want = round << 16 | i as u32;
                check!(u32::from_le_bytes([seen[0], seen[1], seen[2], seen[3]]) == want, "block {i} overlaps another");
            }
            for b in blocks.drain(..) {
                cache.free(b);
            }
            check!(cache.len() <= cache.capacity(), "cache holds {} of {}", cache.len(), cache.capacity());
        }
        check!(
            pool.stats().blocks_in_use == cache.len(),
            "in use {} != cached {}",
            pool.stats().blocks_in_use,
            cache.len()
        );
    }
    check!(pool.stats().blocks_in_use == 0, "dropping the cache left {} blocks out", pool.stats().blocks_in_use);
    pool.destroy().map_err(|e| format!("{e}"))?;
    Ok(())
}

fn pool_destroy_with_live_blocks_refused() -> TestResult {
    let dev = test_device("ktest pool-busy")?;
    let pool = DmaPool::create("ktest-busy", &dev, 256, 256, 4096).map_err(|e| format!("{e}"))?;
    let block = pool.alloc().map_err(|e| format!("{e}"))?;
    let busy = pool.destroy();
    check!(busy.is_err(), "a pool with a live block was destroyed");
    drop(block);
    Ok(())
}

fn high_buffer_bounced_for_32bit_device() -> TestResult {
    let dev = test_device("ktest 32-bit")?;
    dev.set_mask(32).map_err(|e| format!("{e}"))?;
    let memory = dma_service::memory();
    let mut buf = PageBuffer::alloc(&memory, 8192, u64::MAX).map_err(|e| format!("{e}"))?;
    let data = pattern(8192, 42);
    buf.copy_from_slice(&data);
    let high = buf.phys().as_u64() >= 1 << 32;
    if crate::mm::memory::end_of_ram() > 1 << 33 {
        // Unconstrained allocations are served top-down, so with RAM above 4 GiB this one is there.
        check!(high, "with RAM to {:#x}, the buffer still landed at {:?}", crate::mm::memory::end_of_ram(), buf.phys());
    }
    let tx = dev.map(buf, ToDevice).map_err(|e| format!("{}", e.error))?;
    check!(tx.is_bounced() == high, "bounced: {}, buffer above 4 GiB: {high}", tx.is_bounced());
    check!(tx.bus_addr().as_u64() + 8192 <= 1 << 32, "bus address {:?} beyond the 32-bit mask", tx.bus_addr());
    check!(device_bytes(tx.bus_addr(), 8192) == &data[..], "device does not see the data through the bounce slot");
    let buf = tx.unmap();
    let mut rx = dev.map(buf, FromDevice).map_err(|e| format!("{}", e.error))?;
    // A FromDevice bounce slot starts as a copy of the buffer, never a previous user's data.
    check!(device_bytes(rx.bus_addr(), 8192) == &data[..], "FromDevice slot does not start as the buffer's contents");
    device_bytes(rx.bus_addr(), 6).copy_from_slice(b"device");
    let _ = rx.sync_for_cpu();
    let back = rx.unmap();
    check!(&back[..6] == b"device", "device data did not come back through the bounce slot");
    if high {
        crate::println!("  (buffer at {:?}, bounced through {:?})", back.phys(), "the bounce area below 4 GiB");
    }
    Ok(())
}

fn views_are_published() -> TestResult {
    let dev = test_device("ktest views")?;
    let pool = DmaPool::create("ktest-view-pool", &dev, 32, 32, 4096).map_err(|e| format!("{e}"))?;
    let block = pool.alloc().map_err(|e| format!("{e}"))?;
    let pools = crate::registry::scheme::read("dma:pools").ok_or("no dma:pools view")?;
    let line =
        pools.lines().find(|l| l.starts_with("ktest-view-pool")).ok_or(format!("pool missing from:\n{pools}"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    check!(fields.len() >= 5 && fields[1] == "1" && fields[3] == "32", "poolinfo line {line:?}");
    drop(block);
    pool.destroy().map_err(|e| format!("{e}"))?;
    check!(crate::registry::scheme::read("dma:mappings").is_some(), "no dma:mappings view");
    check!(crate::registry::scheme::read("dma:errors").is_some(), "no dma:errors view");
    Ok(())
}
