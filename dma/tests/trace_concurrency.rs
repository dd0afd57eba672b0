//! The trace ring under concurrent writers and a reader: no torn event is ever read back (every
//! event read is one that some writer wrote, whole), and each writer's events come back in the
//! order it wrote them. Its own test binary: it fills the ring.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dma::trace::{self, Event, EventKind};

const WRITERS: u64 = 4;
const EACH: u64 = 20_000;

fn check(e: &Event) -> Result<(u64, u64), String> {
    let (writer, i) = (e.bus >> 32, e.bus & 0xffff_ffff);
    let name = format!("writer-{writer}");
    if e.phys != !e.bus || e.size != i || e.device.as_str() != name || e.kind != EventKind::Map {
        return Err(format!("torn event: {e:?}"));
    }
    Ok((writer, i))
}

#[test]
fn concurrent_writers_never_tear_an_event_and_keep_their_order() {
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                for e in trace::last(trace::CAPACITY) {
                    check(&e).unwrap();
                    reads += 1;
                }
            }
            reads
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            std::thread::spawn(move || {
                let name = format!("writer-{w}");
                for i in 0..EACH {
                    let bus = w << 32 | i;
                    trace::record(Event::new(EventKind::Map, &name, "direct").at(bus, !bus, i));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0, "the reader never saw an event");
    // What is left: the last events, whole, each writer's in its own order.
    let left = trace::since(0);
    assert!(left.len() as u64 + trace::dropped() >= trace::CAPACITY as u64 - WRITERS, "{} left", left.len());
    let mut last = [None::<u64>; WRITERS as usize];
    for e in &left {
        let (w, i) = check(e).unwrap();
        if let Some(prev) = last[w as usize] {
            assert!(i > prev, "writer {w}: event {i} after {prev}");
        }
        last[w as usize] = Some(i);
    }
    assert_eq!(trace::mark(), WRITERS * EACH);
}
