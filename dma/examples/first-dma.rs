//! Your first DMA, on the simulated machine: `cargo run -p dma --example first-dma`.
//!
//! Three kinds of DMA memory, one after the other (guide chapters 1, 2 and 4): a coherent buffer
//! both sides share, a streaming mapping that lends an ordinary buffer to the device, and a pool
//! of small coherent blocks. `dma::sim` plays the hardware: RAM at physical addresses, and a
//! device that reads and writes it by *bus* address, as a real one would.
use std::sync::Arc;

use dma::mapper::Direct;
use dma::sim::{SimDevice, SimMemory, SimRegion};
use dma::{DmaDevice, DmaPool, FromDevice, PageBuffer, PhysMemory, ToDevice};

/// Every error of the DMA service says what went wrong in its `Display` text.
fn why(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs the three steps and returns the lines `main` prints (the host test
/// `dma/tests/first_dma_example.rs` runs it too).
pub fn run() -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    // The machine: 4 MiB of RAM at 1 MiB. Without an IOMMU a bus address is the physical address.
    let mem = SimMemory::new(&[SimRegion { base: 0x10_0000, size: 4 << 20 }]);
    let phys: Arc<dyn PhysMemory> = mem.clone();
    let dev = DmaDevice::new("00:02.0 first-dma", phys.clone(), Arc::new(Direct::new(phys.clone())));
    let hw = SimDevice::new(&dev); // the device: it knows only bus addresses

    // 1. Coherent: a status word the device writes while the driver watches (a ring, in real life).
    let status = dev.alloc_coherent::<u32>().map_err(why)?;
    hw.write(status.bus_addr(), &0xd0u32.to_le_bytes()).map_err(why)?;
    out.push(format!("coherent u32 at bus {}: the device wrote {:#x}", status.bus_addr(), status.read()));

    // 2. Streaming, CPU -> device. In the kernel any heap `Vec` will do; here the buffer must live
    //    in the simulated RAM, so it is a `PageBuffer`. `map` consumes it: the device owns it now.
    let mut buf = PageBuffer::alloc(&phys, 64, u64::MAX).map_err(why)?;
    buf[..13].copy_from_slice(b"hello, device");
    let tx = dev.map(buf, ToDevice).map_err(why)?;
    let mut seen = [0u8; 13];
    hw.read(tx.bus_addr(), &mut seen).map_err(why)?;
    out.push(format!(
        "streaming ToDevice at bus {}: the device read {:?}",
        tx.bus_addr(),
        String::from_utf8_lossy(&seen)
    ));
    let buf = tx.unmap(); // the CPU owns the bytes again

    //    Streaming, device -> CPU: the CPU looks only through `sync_for_cpu` (or after `unmap`).
    let mut rx = dev.map(buf, FromDevice).map_err(why)?;
    hw.write(rx.bus_addr(), b"hello, CPU").map_err(why)?;
    let got = String::from_utf8_lossy(&rx.sync_for_cpu().as_slice()[..10]).into_owned();
    out.push(format!("streaming FromDevice at bus {}: the CPU read {got:?}", rx.bus_addr()));
    let _buf = rx.unmap();

    // 3. A pool: 32-byte blocks, 16-byte aligned, never crossing 4 KiB, carved from coherent pages.
    let pool = DmaPool::create("first-cmd", &dev, 32, 16, 4096).map_err(why)?;
    let (a, b) = (pool.zalloc().map_err(why)?, pool.zalloc().map_err(why)?);
    out.push(format!("pool blocks at bus {} and {}", a.bus_addr(), b.bus_addr()));
    let pools = dma::view("dma:pools").unwrap_or_default();
    out.extend(pools.lines().filter(|l| l.starts_with("first-cmd")).map(str::to_string));
    drop((a, b)); // a block goes back to its pool when dropped
    pool.destroy().map_err(why)?;
    Ok(out)
}

#[allow(dead_code)] // the host test includes this file as a module and calls `run` itself
fn main() {
    match run() {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err(e) => {
            eprintln!("first-dma: {e}");
            std::process::exit(1);
        }
    }
}
