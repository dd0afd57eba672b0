//! The DMA event trace of one ping on the simulated 8254x: the echo request goes out through a
//! transmit-buffer pool block (allocated when the frame is queued, from a coherent unit the
//! pool takes on its first frame, and freed when the device has set DD), and the reply comes back into a receive buffer that is recycled in place, which
//! the trace shows by showing nothing. The only test in this binary that turns the trace on;
//! it keeps only its own device's events, so other tests running meanwhile do not disturb it.

extern crate std;

use alloc::sync::Arc;

use dma::PhysMemory;
use dma::mapper::Direct;
use dma::trace::{self, EventKind, MapperKind};

use crate::desc::TxDescriptor;
use crate::sim::{SIM_MAC, SimE1000};
use crate::tests::TestClock;
use crate::{BUFFER_BYTES, Config, E1000, INTEL, model_for};

#[test]
fn one_ping_is_a_transmit_block_allocated_then_freed_at_the_address_the_descriptor_held() {
    const NAME: &str = "00:0e.0 e1000-trace";
    let memory = dma::sim::SimMemory::low_and_high(8 << 20, 8 << 20);
    let phys: Arc<dyn PhysMemory> = memory.clone();
    let dev = dma::DmaDevice::new(NAME, phys.clone(), Arc::new(Direct::new(phys)));
    dev.set_mask(64).unwrap();
    let sim = SimE1000::new(&dev);
    let model = model_for(INTEL, 0x100E).unwrap();
    let mut nic = E1000::new(&sim, TestClock::default(), dev.clone(), NAME, model, Config::default()).unwrap();
    trace::enable(Some("00:0e.0"));
    let mark = trace::mark();

    // An ICMP echo request out (the bytes do not matter to the NIC), the reply in.
    let mut request = alloc::vec![0u8; 98];
    request[6..12].copy_from_slice(&SIM_MAC);
    nic.transmit(&request).unwrap();
    let used = (nic.tx.tail + nic.tx.ring.len() - 1) % nic.tx.ring.len();
    let descriptor = TxDescriptor::from_words(nic.tx.ring.read(used));
    let mut reply = request.clone();
    reply[..6].copy_from_slice(&SIM_MAC);
    assert!(sim.inject(&reply));
    assert_eq!(nic.receive_with(|f| f.len()), Some(98));
    assert_eq!(nic.reclaim_transmitted(), 1);
    let events = trace::since(mark);
    trace::disable();

    let kinds: alloc::vec::Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    // The transmit pool grows on the first frame: one coherent page, cut into 2 KiB blocks.
    assert_eq!(kinds, [EventKind::CoherentAlloc, EventKind::PoolAlloc, EventKind::PoolFree], "{events:#?}");
    let unit = events[0];
    assert!(
        (unit.bus..unit.bus + unit.size).contains(&descriptor.addr),
        "the block lies in the new unit: {descriptor:x?} {events:#x?}"
    );
    for e in &events[1..] {
        assert_eq!(e.device.as_str(), NAME);
        assert_eq!((e.bus, e.size, e.mapper), (descriptor.addr, BUFFER_BYTES as u64, MapperKind::Direct));
        assert_eq!(e.phys, e.bus, "Direct: the bus address is the physical address");
    }
    assert!(events.windows(2).all(|w| w[0].time < w[1].time));
}
