//! The DMA event trace of one disk read on the simulated HBA, for a 32-bit device whose buffer
//! lies above 4 GiB: the buffer is mapped (through a bounce slot below 4 GiB, filled at map so
//! the device never sees stale bytes), the PRD entry carries the slot's bus address, and at
//! completion the data is copied back from the slot before the unmap. The only test in this
//! binary that turns the trace on; it keeps only its own device's events.

extern crate std;

use alloc::sync::Arc;
use dma::mapper::{BounceArea, Direct};
use dma::trace::{self, Detail, EventKind, MapperKind};
use dma::{DmaDevice, DmaDirection, PageBuffer, PhysMemory};

use crate::pattern::{check_sector, fill_sector};
use crate::sim::SimHba;
use crate::{Controller, IoBuffer, Request, SubmitOptions};

#[test]
fn one_disk_read_is_map_bounce_in_then_bounce_out_unmap_at_the_prd_address() {
    const NAME: &str = "00:1e.2 ahci-trace";
    let mem = dma::sim::SimMemory::low_and_high(8 << 20, 8 << 20);
    let phys: Arc<dyn PhysMemory> = mem;
    let bounce = BounceArea::new(phys.clone(), 0xffff_ffff, 256 * 1024).unwrap();
    let dev = DmaDevice::new(NAME, phys.clone(), Arc::new(Direct::with_bounce(phys.clone(), bounce)));
    // An HBA without 64-bit addressing (CAP.S64A clear): the driver keeps a 32-bit mask.
    let sim: &'static SimHba = alloc::boxed::Box::leak(alloc::boxed::Box::new(SimHba::new(&dev, 1, false)));
    sim.attach_disk(0, 4096);
    let mut ctl = Controller::init(NAME, sim, crate::tests::TestClock::default(), dev).unwrap();
    // Sector 8 holds a known pattern.
    let mut sector = alloc::vec![0u8; 512];
    fill_sector(&mut sector, 8, 77);
    sim.with_port(0, |p| p.disk.as_mut().unwrap().data[8 * 512..9 * 512].copy_from_slice(&sector));
    sim.with_port(0, |p| p.defer = true);

    let buffer = PageBuffer::alloc(&phys, 512, u64::MAX).unwrap();
    let buffer_phys = buffer.phys().as_u64();
    assert!(buffer_phys > 0xffff_ffff, "the point of the test: the 32-bit device cannot reach it");
    trace::enable(Some("00:1e.2"));
    let mark = trace::mark();
    let opts = SubmitOptions { queued: true, timeout_us: 1_000_000, check_range: true };
    let id = ctl.submit_with(0, Request::Read { lba: 8, buffers: alloc::vec![IoBuffer::Pages(buffer)] }, opts).unwrap();
    // What the HBA will DMA to: the first PRD entry of the slot's command table, as the
    // `disk:slots` view reads it.
    let slots = ctl.render_slots();
    let dba = slots.split("prd[0] dba=0x").nth(1).and_then(|rest| rest.split_whitespace().next());
    let prd_dba = dba.and_then(|hex| u64::from_str_radix(hex, 16).ok()).expect(&slots);
    sim.run_deferred(0);
    let done = loop {
        ctl.service();
        if let Some(done) = ctl.take_completion(id) {
            break done;
        }
    };
    let events = trace::since(mark);
    trace::disable();
    done.result.expect("read failed");
    assert_eq!(check_sector(&done.buffers[0][..512], 8, 77), Ok(()), "the data did not arrive");

    let kinds: alloc::vec::Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    use EventKind::*;
    assert_eq!(kinds, [Map, BounceCopy, BounceCopy, Unmap], "{events:#?}");
    for e in &events {
        assert_eq!((e.bus, e.phys, e.size), (prd_dba, buffer_phys, 512), "{e:?}");
        assert_eq!((e.dir, e.mapper), (Some(DmaDirection::FromDevice), MapperKind::Bounce));
        assert_eq!(e.device.as_str(), NAME);
    }
    assert!(prd_dba <= 0xffff_ffff, "the PRD must hold an address the device can reach");
    assert_eq!(events[1].detail, Detail::Bounce { to_slot: true, slot: prd_dba });
    assert_eq!(events[2].detail, Detail::Bounce { to_slot: false, slot: prd_dba });
    assert!(events.windows(2).all(|w| w[0].time < w[1].time));
}
