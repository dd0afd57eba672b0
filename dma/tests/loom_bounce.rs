//! A `loom` model of the bounce area's slot map: two threads map and unmap through one area at
//! the same time, in every interleaving of their lock operations that loom can produce.
//!
//! Checked after each interleaving: no two live mappings share a slot (each thread finds its
//! own stamp in its slot just before unmapping it), and every slot comes back (`slots_used`
//! is 0 once both threads are done).
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p dma --release --test loom_bounce` (also part
//! of `cargo xtask test --host-only`). Without `--cfg loom` this file compiles to nothing.
#![cfg(loom)]

use std::sync::Arc;

use dma::mapper::{Bounce, BounceArea, DeviceLimits, DmaMapper};
use dma::sim::SimMemory;
use dma::{DmaDirection, FrameRequest, PhysAddr, PhysMemory};

/// Maps/unmaps per thread: two, so a slot freed by one thread can be taken by the other.
const ROUNDS: usize = 2;

#[test]
fn two_threads_never_share_a_bounce_slot() {
    loom::model(|| {
        let sim = SimMemory::low_and_high(1 << 20, 1 << 20);
        let phys: Arc<dyn PhysMemory> = sim.clone();
        // One page: two 2 KiB slots, one per thread at most, so none is ever exhausted.
        let area = BounceArea::new(phys.clone(), 0xffff_ffff, 4096).unwrap();
        let mapper = Arc::new(Bounce::new(phys.clone(), area.clone()));
        let threads: Vec<_> = (0..2u8)
            .map(|t| {
                let (sim, mapper) = (sim.clone(), mapper.clone());
                // The thread's buffer, above 4 GiB, allocated here: set-up is not under test.
                let req = FrameRequest { count: 1, max_addr: u64::MAX, align: 4096 };
                let buffer = sim.alloc_frames(req).unwrap();
                loom::thread::spawn(move || bounce_rounds(&sim, &*mapper, buffer, t))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(area.stats().slots_used, 0, "a slot was not given back: {:?}", area.stats());
    });
}

fn bounce_rounds(sim: &SimMemory, mapper: &dyn DmaMapper, buffer: PhysAddr, thread: u8) {
    let limits = DeviceLimits { mask: 0xffff_ffff, max_segment_size: 1 << 16, segment_boundary: 1 << 32 };
    for round in 0..ROUNDS {
        let stamp = [thread, round as u8, 0xb0, 0x0c];
        assert!(sim.write_phys(buffer, &stamp));
        let mapped = mapper.map(&limits, buffer, 2048, DmaDirection::ToDevice).expect("a slot is free");
        let slot = mapped.bounce.expect("a buffer above 4 GiB is bounced");
        loom::thread::yield_now(); // let the other thread map meanwhile
        let mut seen = [0u8; 4];
        assert!(sim.read_phys(slot, &mut seen));
        assert_eq!(seen, stamp, "thread {thread}'s slot {slot} holds another mapping's data");
        // SAFETY: `mapped` came from this mapper and is unmapped once.
        unsafe { mapper.unmap(&mapped, DmaDirection::ToDevice) };
    }
}
