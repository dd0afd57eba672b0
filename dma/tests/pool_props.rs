//! Property tests: random sequences of pool operations, direct and through a per-owner cache,
//! keep every pool invariant.

mod common;

use common::Machine;
use dma::pool::PoolCache;
use dma::{DmaPool, PoolBlock, PoolError};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Alloc,
    Zalloc,
    /// Free the live block at this index (modulo the number live) by dropping it.
    Free(usize),
    CacheAlloc,
    CacheZalloc,
    /// Free the live block at this index into the cache.
    CacheFree(usize),
    /// Give everything in the cache back to the pool.
    CacheFlush,
    /// Free a block of a different pool into the cache: it must go back to its own pool.
    ForeignFree,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Alloc),
        2 => Just(Op::Zalloc),
        4 => any::<usize>().prop_map(Op::Free),
        4 => Just(Op::CacheAlloc),
        2 => Just(Op::CacheZalloc),
        4 => any::<usize>().prop_map(Op::CacheFree),
        1 => Just(Op::CacheFlush),
        1 => Just(Op::ForeignFree),
    ]
}

struct Live {
    block: PoolBlock,
    tag: u8,
}

fn check(pool: &DmaPool, cache: &PoolCache<'_>, live: &[Live], size: usize, align: usize, boundary: usize) {
    let block = pool.block_size();
    assert!(block >= size && block.is_multiple_of(align));
    let mut ranges: Vec<(u64, u64)> = live
        .iter()
        .map(|l| {
            let s = l.block.bus_addr().as_u64();
            (s, s + block as u64)
        })
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "blocks overlap: {w:?}");
    }
    for &(s, e) in &ranges {
        assert!(s.is_multiple_of(align as u64), "misaligned block at {s:#x}");
        if boundary != 0 {
            let b = boundary as u64;
            assert_eq!(s / b, (e - 1) / b, "block {s:#x} crosses a {b:#x} boundary");
        }
    }
    // Each block still holds the tag written into it: nobody else was handed its bytes.
    for l in live {
        let mut bytes = vec![0u8; block];
        l.block.read_bytes(0, &mut bytes).unwrap();
        assert!(bytes.iter().all(|&b| b == l.tag), "block contents were disturbed");
    }
    // Blocks on the cache's stack are allocated as far as the pool knows.
    let st = pool.stats();
    assert_eq!(st.blocks_in_use, live.len() + cache.len());
    assert_eq!(st.free_blocks + st.blocks_in_use, st.total_blocks);
    assert_eq!(st.total_blocks % st.pages.max(1), 0);
    assert!(cache.len() <= cache.capacity());
    assert_eq!(st.caches, 1);
    // Published at the cache's last trade: within one capacity of the truth.
    assert!(st.cached <= cache.capacity());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn pool_operations_keep_invariants(
        size in 1usize..700,
        align_log in 0u32..7,
        boundary_choice in 0usize..5,
        poison in any::<bool>(),
        cache_capacity in 0usize..12,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let align = 1usize << align_log;
        let boundary = [0, 256, 1024, 4096, 8192][boundary_choice];
        let m = Machine::direct("00:0a.0 pool-prop", 32, 0);
        let created = if poison {
            DmaPool::create_poisoned("prop", &m.dev, size, align, boundary)
        } else {
            DmaPool::create("prop", &m.dev, size, align, boundary)
        };
        let rounded = size.max(8).next_multiple_of(align);
        let pool = match created {
            Ok(p) => p,
            Err(e) => {
                prop_assert!(boundary != 0 && boundary < rounded);
                prop_assert_eq!(e, PoolError::BoundaryTooSmall { boundary, size: rounded });
                return Ok(());
            }
        };
        prop_assert_eq!(pool.block_size(), rounded);
        let other = DmaPool::create("prop-other", &m.dev, 64, 8, 0).unwrap();
        let mut cache = pool.cache(cache_capacity);
        prop_assert!(cache.capacity() >= cache_capacity.max(2));
        let mut live: Vec<Live> = Vec::new();
        let mut next_tag = 1u8;
        for op in ops {
            match op {
                Op::Alloc | Op::Zalloc | Op::CacheAlloc | Op::CacheZalloc => {
                    let zero = matches!(op, Op::Zalloc | Op::CacheZalloc);
                    let mut block = match op {
                        Op::Alloc => pool.alloc(),
                        Op::Zalloc => pool.zalloc(),
                        Op::CacheAlloc => cache.alloc(),
                        _ => cache.zalloc(),
                    }
                    .unwrap();
                    if zero {
                        let mut bytes = vec![1u8; rounded];
                        block.read_bytes(0, &mut bytes).unwrap();
                        prop_assert!(bytes.iter().all(|&b| b == 0), "zalloc block not zero");
                    }
                    let tag = next_tag;
                    next_tag = next_tag.wrapping_add(1).max(1);
                    block.write_bytes(0, &vec![tag; rounded]).unwrap();
                    live.push(Live { block, tag });
                }
                Op::Free(i) => {
                    if !live.is_empty() {
                        let i = i % live.len();
                        live.swap_remove(i);
                    }
                }
                Op::CacheFree(i) => {
                    if !live.is_empty() {
                        let i = i % live.len();
                        cache.free(live.swap_remove(i).block);
                    }
                }
                Op::CacheFlush => {
                    cache.flush();
                    prop_assert!(cache.is_empty());
                    prop_assert_eq!(pool.stats().cached, 0);
                }
                Op::ForeignFree => {
                    let before = cache.len();
                    cache.free(other.alloc().unwrap());
                    prop_assert_eq!(cache.len(), before, "a foreign block joined the cache");
                    prop_assert_eq!(other.stats().blocks_in_use, 0, "a foreign block did not go home");
                }
            }
            check(&pool, &cache, &live, size, align, boundary);
        }
        let total = pool.stats().total_blocks;
        live.clear();
        prop_assert_eq!(pool.stats().blocks_in_use, cache.len());
        drop(cache);
        let st = pool.stats();
        prop_assert_eq!(st.blocks_in_use, 0);
        prop_assert_eq!(st.free_blocks, total, "every block came back");
        prop_assert_eq!((st.caches, st.cached), (0, 0));
        prop_assert_eq!(st.poison_failures, 0);
        prop_assert!(pool.destroy().is_ok());
        prop_assert!(other.destroy().is_ok());
    }
}
