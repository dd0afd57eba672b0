//! The event trace records what the DMA service did, in order, with consistent addresses; and
//! nothing at all while it is off. Its own test binary, so no other test turns the trace on or
//! fills the ring meanwhile.

use std::sync::Arc;

use dma::mapper::{BounceArea, Direct};
use dma::sim::{SimDevice, SimMemory};
use dma::trace::{self, Detail, Event, EventKind, MapperKind};
use dma::{DmaDevice, DmaDirection, DmaPool, FromDevice, PageBuffer, PhysMemory, ToDevice};

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

#[test]
fn the_trace_follows_a_bounced_mapping_a_pool_and_a_coherent_buffer_and_is_silent_when_off() {
    let mem = SimMemory::low_and_high(4 << 20, 4 << 20);
    let phys: Arc<dyn PhysMemory> = mem.clone();
    let bounce = BounceArea::new(phys.clone(), 0xffff_ffff, 64 * 1024).unwrap();
    let dev = DmaDevice::new("00:05.0 trace-test", phys.clone(), Arc::new(Direct::with_bounce(phys.clone(), bounce)));
    dev.set_mask(32).unwrap();
    let hw = SimDevice::new(&dev);

    // Off: the same work records nothing.
    trace::disable();
    let before = trace::mark();
    let buf = PageBuffer::alloc(&phys, 64, u64::MAX).unwrap();
    drop(dev.map(buf, ToDevice).unwrap().unmap());
    assert_eq!(trace::mark(), before, "the trace recorded while off");

    trace::enable(Some("00:05.0"));
    let mark = trace::mark();

    // ToDevice, above 4 GiB: bounced into a slot at map, no copy back at unmap.
    let buf = PageBuffer::alloc(&phys, 64, u64::MAX).unwrap();
    let buf_phys = buf.phys().as_u64();
    assert!(buf_phys > 0xffff_ffff);
    let tx = dev.map(buf, ToDevice).unwrap();
    let tx_bus = tx.bus_addr().as_u64();
    drop(tx.unmap());
    // FromDevice: the device writes the slot; sync_for_cpu and unmap copy it back.
    let mut rx = dev.map(PageBuffer::alloc(&phys, 128, u64::MAX).unwrap(), FromDevice).unwrap();
    hw.write(rx.bus_addr(), b"hello").unwrap();
    let _ = rx.sync_for_cpu().as_slice()[0];
    rx.sync_for_device();
    drop(rx.unmap());
    // A pool block and a coherent buffer.
    let pool = DmaPool::create("trace-pool", &dev, 64, 64, 0).unwrap();
    let block = pool.alloc().unwrap();
    let block_bus = block.bus_addr().as_u64();
    drop(block);
    // Through a per-owner cache: its fast path sends traced operations down its slow path.
    let mut cache = pool.cache(4);
    let cached = cache.alloc().unwrap();
    let cached_bus = cached.bus_addr().as_u64();
    cache.free(cached);
    drop(cache);
    let word = dev.alloc_coherent::<u64>().unwrap();
    let word_bus = word.bus_addr().as_u64();
    drop(word);
    // Another device's work is filtered out.
    let other = DmaDevice::new("00:06.0 other", phys.clone(), Arc::new(Direct::new(phys.clone())));
    drop(other.alloc_coherent::<u64>().unwrap());

    let events = trace::since(mark);
    trace::disable();
    assert!(events.iter().all(|e| e.device.as_str() == "00:05.0 trace-test"), "{events:#?}");
    use EventKind::*;
    // The pool's first allocation brings a coherent unit in.
    assert_eq!(
        kinds(&events),
        [
            Map,
            BounceCopy,
            Unmap, // ToDevice
            Map,
            BounceCopy,
            BounceCopy,
            SyncForCpu,
            SyncForDevice,
            BounceCopy,
            Unmap, // FromDevice
            CoherentAlloc,
            PoolAlloc,
            PoolFree, // pool
            PoolAlloc,
            PoolFree, // pool cache
            CoherentAlloc,
            CoherentFree, // coherent
        ],
        "{events:#?}"
    );
    // ToDevice map: bus = the slot below 4 GiB, phys = the buffer; the copy goes buffer -> slot.
    let (map, copy, unmap) = (events[0], events[1], events[2]);
    assert_eq!((map.bus, map.phys, map.size, map.dir), (tx_bus, buf_phys, 64, Some(DmaDirection::ToDevice)));
    assert_eq!(map.mapper, MapperKind::Bounce); // a Direct mapper, bouncing this one
    assert!(map.bus <= 0xffff_ffff);
    assert_eq!(copy.detail, Detail::Bounce { to_slot: true, slot: tx_bus });
    assert_eq!((unmap.bus, unmap.phys, unmap.size), (map.bus, map.phys, map.size));
    // FromDevice: the map fills the slot (so the device never sees stale bytes); the data comes
    // back before sync-for-CPU and before the unmap complete; sync-for-device copies nothing
    // (the device only writes).
    assert!(matches!(events[4].detail, Detail::Bounce { to_slot: true, .. }));
    assert!(matches!(events[5].detail, Detail::Bounce { to_slot: false, .. }));
    assert!(matches!(events[8].detail, Detail::Bounce { to_slot: false, .. }));
    // Pool and coherent: the bus addresses the handles reported.
    assert_eq!((events[11].bus, events[12].bus), (block_bus, block_bus));
    assert_eq!(events[11].phys, block_bus); // Direct: bus = phys
    assert_eq!((events[13].bus, events[14].bus, events[13].size), (cached_bus, cached_bus, 64));
    assert_eq!((events[15].bus, events[16].bus, events[15].size), (word_bus, word_bus, 4096));
    // Time moves forward.
    assert!(events.windows(2).all(|w| w[0].time < w[1].time));
    let text = trace::render(Some(events.len()));
    assert!(text.contains("buffer->slot") && text.contains("pool-alloc"), "{text}");
}
