//! The `dma:pools` view: every live pool's counters, in the columns of Linux's `pools` file.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write as _;

use super::PoolStats;
use super::free_list::{POOLS, PoolInner};

/// Statistics of every live pool.
pub fn all_pool_stats() -> Vec<(String, PoolStats)> {
    let pools: Vec<Arc<PoolInner>> = POOLS.lock().iter().filter_map(|w| w.upgrade()).collect();
    pools.iter().map(|p| (String::from(p.dev.name()), p.stats())).collect()
}

/// Renders the `dma:pools` view in the columns of Linux's `pools` file (name, blocks in use, total
/// blocks, block size, pages), followed by the device. A pool with live
/// [`PoolCache`](super::PoolCache)s has `cached=N` before the device: N of its blocks in use sit
/// unused in those caches (see `PoolStats::cached` for how current N is).
pub fn render_pools() -> String {
    let mut out = String::from("poolinfo - 0.1\n");
    for (device, s) in all_pool_stats() {
        let _ = write!(
            out,
            "{:<16} {:>4} {:>4} {:>4} {:>2} ",
            s.name, s.blocks_in_use, s.total_blocks, s.block_size, s.pages
        );
        if s.caches > 0 {
            let _ = write!(out, "cached={} ", s.cached);
        }
        let _ = writeln!(out, "{device}");
    }
    out
}
