//! A `loom` model of the IOVA allocator's invalidation rule ("freed is not free", see
//! `iommu_vtd::iova`) when a flush runs beside the owner that maps and unmaps: the flusher
//! closes a generation, invalidates *outside* the allocator's lock (as a domain that drops its
//! lock while it waits for the unit would), then releases that generation. loom runs every
//! interleaving of the two threads' lock operations.
//!
//! The IOTLB is modelled as the set of IOVAs the unit may still translate: a mapping the
//! device used enters it, and only the invalidation empties it. Checked at every allocation:
//! the allocator never hands out an IOVA the IOTLB may still translate, which is exactly what
//! a range freed after `begin_flush` must not get released by that flush for.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p iommu-vtd --release --test loom_iova`
//! (also part of `cargo xtask test --host-only`). Without `--cfg loom` it compiles to nothing.
#![cfg(loom)]

use std::collections::BTreeSet;

use iommu_vtd::iova::{IovaAllocator, IovaError};
use loom::sync::{Arc, Mutex};

/// A device that can address pages 1 and 2 only (page 0 is never handed out): two IOVAs, so
/// the owner must reuse freed ones.
const LIMIT: u64 = 0x2fff;
/// Map/unmap rounds of the owner: three, so a range can be freed, released and reused while
/// a flush is in flight.
const ROUNDS: usize = 3;

#[test]
fn no_iova_is_reused_while_the_iotlb_may_still_translate_it() {
    loom::model(|| {
        let space = Arc::new(Mutex::new(IovaAllocator::new(39)));
        let iotlb = Arc::new(Mutex::new(BTreeSet::new()));

        let flusher = {
            let (space, iotlb) = (space.clone(), iotlb.clone());
            loom::thread::spawn(move || {
                let generation = space.lock().unwrap().begin_flush();
                iotlb.lock().unwrap().clear(); // the domain-wide invalidation, waited for
                space.lock().unwrap().flush_completed(generation);
            })
        };
        for _ in 0..ROUNDS {
            let iova = match space.lock().unwrap().alloc(4096, LIMIT) {
                Ok(iova) => iova,
                Err(IovaError::NoSpace { .. }) => continue, // both pending: fine, just full
                Err(e) => panic!("{e}"),
            };
            {
                let mut cached = iotlb.lock().unwrap();
                assert!(!cached.contains(&iova), "IOVA {iova:#x} handed out while the IOTLB may still translate it");
                cached.insert(iova); // the device used the mapping
            }
            space.lock().unwrap().free_deferred(iova).unwrap();
        }
        flusher.join().unwrap();
        let space = space.lock().unwrap();
        assert_eq!(space.check_invariants(), Ok(()));
    });
}
