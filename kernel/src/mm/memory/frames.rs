//! The physical frame allocator: which 4 KiB frames of RAM are free.
//!
//! It keeps the free memory as a sorted map of disjoint ranges `start → end` (end exclusive), built
//! from the usable regions of the boot memory map. Ranges make the two things DMA needs cheap to
//! express, which a one-frame-at-a-time allocator cannot:
//!
//! * **contiguous runs** — a device reads a descriptor ring or a command list by physical
//!   address, with no page table in between (unless an IOMMU is on), so the whole buffer must be
//!   one run of consecutive frames;
//! * **runs below a limit** — a device whose DMA mask is 32 bits can only put addresses below
//!   4 GiB on the bus.
//!
//! Requests without a limit are served **top-down**, from the highest free address, so that the
//! scarce memory below 4 GiB (and below 16 MiB, for ISA-era devices) stays free for devices that
//! can reach nothing else. That is the same reason Linux keeps ZONE_DMA32.
//!
//! Every operation checks its input: freeing a run that was never handed out, or freeing it
//! twice, is refused with a [`FreeError`] and changes nothing.

use alloc::collections::BTreeMap;
use core::fmt;
use dma::phys::{FrameRequest, PAGE_SIZE, PhysAddr};

const PAGE: u64 = PAGE_SIZE as u64;

/// Why a run could not be returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The run is not page aligned or is empty.
    Misaligned {
        /// Physical address of the first frame.
        base: u64,
        /// Number of 4 KiB frames.
        count: usize,
    },
    /// Part of the run is not RAM this allocator manages.
    NotManaged {
        /// Physical address of the first frame.
        base: u64,
        /// Number of 4 KiB frames.
        count: usize,
    },
    /// Part of the run is already free: a double free.
    AlreadyFree {
        /// Physical address of the first frame.
        base: u64,
        /// Number of 4 KiB frames.
        count: usize,
    },
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FreeError::Misaligned { base, count } => {
                write!(f, "cannot free {count} frame(s) at {base:#x}: not a page-aligned, non-empty run")
            }
            FreeError::NotManaged { base, count } => {
                write!(f, "cannot free {count} frame(s) at {base:#x}: not usable RAM from the memory map")
            }
            FreeError::AlreadyFree { base, count } => {
                write!(f, "cannot free {count} frame(s) at {base:#x}: already free (double free?)")
            }
        }
    }
}

/// Free physical memory as disjoint, sorted, non-adjacent ranges.
///
/// Invariants (checked by the tests): ranges do not overlap, are page aligned, are never empty,
/// and two ranges never touch (touching ranges are merged on insert).
#[derive(Default, Debug)]
pub struct FrameAllocator {
    /// Free ranges: start → end (exclusive).
    free: BTreeMap<u64, u64>,
    /// Every range ever added as usable RAM (so a free of foreign memory is caught).
    managed: BTreeMap<u64, u64>,
    total_frames: usize,
    free_frames: usize,
}

/// Counters for `meminfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames of usable RAM handed to the allocator.
    pub total_frames: usize,
    /// Frames free now.
    pub free_frames: usize,
    /// Free frames whose address is below 4 GiB.
    pub free_frames_below_4g: usize,
    /// Number of free ranges (a measure of fragmentation).
    pub free_ranges: usize,
    /// Largest contiguous free run, in frames.
    pub largest_free_run: usize,
}

impl FrameAllocator {
    /// An allocator with no memory.
    pub const fn new() -> Self {
        Self { free: BTreeMap::new(), managed: BTreeMap::new(), total_frames: 0, free_frames: 0 }
    }

    /// Adds usable RAM `[start, end)`. The range is shrunk inward to page boundaries; parts that
    /// overlap memory already added are ignored (firmware maps do overlap sometimes).
    pub fn add_region(&mut self, start: u64, end: u64) {
        let start = start.next_multiple_of(PAGE);
        let end = end & !(PAGE - 1);
        if start >= end {
            return;
        }
        // Add only the parts not yet managed.
        let mut cursor = start;
        let overlapping: alloc::vec::Vec<(u64, u64)> =
            self.managed.range(..end).filter(|&(_, &e)| e > start).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in overlapping {
            if s > cursor {
                self.add_fresh(cursor, s);
            }
            cursor = cursor.max(e);
        }
        if cursor < end {
            self.add_fresh(cursor, end);
        }
    }

    fn add_fresh(&mut self, start: u64, end: u64) {
        insert_merged(&mut self.managed, start, end);
        insert_merged(&mut self.free, start, end);
        let frames = ((end - start) / PAGE) as usize;
        self.total_frames += frames;
        self.free_frames += frames;
    }

    /// Removes `[start, end)` from the free memory without handing it out through `allocate`
    /// (used for memory claimed before the allocator existed, such as the heap).
    pub fn reserve(&mut self, start: u64, end: u64) {
        let start = start & !(PAGE - 1);
        let end = end.next_multiple_of(PAGE);
        let overlapping: alloc::vec::Vec<(u64, u64)> =
            self.free.range(..end).filter(|&(_, &e)| e > start).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in overlapping {
            self.take(s, e, s.max(start), e.min(end));
        }
    }

    /// Hands out a run meeting `req`, or `None` when no free range can hold it.
    ///
    /// Runs come from the highest suitable address (see the module docs for why).
    pub fn allocate(&mut self, req: FrameRequest) -> Option<PhysAddr> {
        if req.count == 0 {
            return None;
        }
        let size = (req.count as u64).checked_mul(PAGE)?;
        let align = req.align.max(PAGE);
        if !align.is_power_of_two() {
            return None;
        }
        // Highest end address the run may have (exclusive), from the inclusive `max_addr`.
        let limit = req.max_addr.saturating_add(1).min(!(PAGE - 1));
        let found = self.free.range(..limit).rev().find_map(|(&start, &end)| {
            let top = end.min(limit);
            let base = top.checked_sub(size)? & !(align - 1);
            (base >= start).then_some((start, end, base))
        });
        let (start, end, base) = found?;
        self.take(start, end, base, base + size);
        Some(PhysAddr(base))
    }

    /// Splits the free range `[start, end)` around the taken part `[from, to)`.
    fn take(&mut self, start: u64, end: u64, from: u64, to: u64) {
        self.free.remove(&start);
        if start < from {
            self.free.insert(start, from);
        }
        if to < end {
            self.free.insert(to, end);
        }
        self.free_frames -= ((to - from) / PAGE) as usize;
    }

    /// Returns `count` frames at `base` to the free memory.
    pub fn free(&mut self, base: PhysAddr, count: usize) -> Result<(), FreeError> {
        let start = base.0;
        if count == 0 || !start.is_multiple_of(PAGE) {
            return Err(FreeError::Misaligned { base: start, count });
        }
        let end = (count as u64)
            .checked_mul(PAGE)
            .and_then(|size| start.checked_add(size))
            .ok_or(FreeError::NotManaged { base: start, count })?;
        let managed = self.managed.range(..=start).next_back().is_some_and(|(_, &e)| e >= end);
        if !managed {
            return Err(FreeError::NotManaged { base: start, count });
        }
        if self.free.range(..end).next_back().is_some_and(|(_, &e)| e > start) {
            return Err(FreeError::AlreadyFree { base: start, count });
        }
        insert_merged(&mut self.free, start, end);
        self.free_frames += count;
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> FrameStats {
        const FOUR_GIB: u64 = 1 << 32;
        let below_4g = self.free.range(..FOUR_GIB).map(|(&s, &e)| ((e.min(FOUR_GIB) - s) / PAGE) as usize).sum();
        FrameStats {
            total_frames: self.total_frames,
            free_frames: self.free_frames,
            free_frames_below_4g: below_4g,
            free_ranges: self.free.len(),
            largest_free_run: self.free.iter().map(|(&s, &e)| ((e - s) / PAGE) as usize).max().unwrap_or(0),
        }
    }

    /// The free ranges, lowest first (for `meminfo` and tests).
    pub fn free_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free.iter().map(|(&s, &e)| (s, e))
    }

    /// Highest address of managed RAM (exclusive), 0 when empty.
    pub fn end_of_ram(&self) -> u64 {
        self.managed.iter().next_back().map_or(0, |(_, &e)| e)
    }
}

/// Inserts `[start, end)` into a map of disjoint ranges, merging with ranges it touches.
/// The caller guarantees it does not overlap an existing range.
fn insert_merged(map: &mut BTreeMap<u64, u64>, mut start: u64, mut end: u64) {
    if let Some((&s, &e)) = map.range(..start).next_back()
        && e == start
    {
        map.remove(&s);
        start = s;
    }
    if let Some(&e) = map.get(&end) {
        map.remove(&end);
        end = e;
    }
    map.insert(start, end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn req(count: usize, max_addr: u64) -> FrameRequest {
        FrameRequest { count, max_addr, align: PAGE }
    }

    /// The allocator's invariants: sorted, disjoint, non-touching, aligned, counters right.
    fn check_invariants(a: &FrameAllocator) {
        let mut last_end = None;
        let mut free = 0;
        for (s, e) in a.free_ranges() {
            assert!(s < e, "empty range {s:#x}");
            assert_eq!(s % PAGE, 0);
            assert_eq!(e % PAGE, 0);
            if let Some(le) = last_end {
                assert!(s > le, "ranges touch or overlap at {s:#x}");
            }
            last_end = Some(e);
            free += ((e - s) / PAGE) as usize;
        }
        assert_eq!(free, a.stats().free_frames);
    }

    #[test]
    fn regions_are_trimmed_to_pages_and_counted() {
        let mut a = FrameAllocator::new();
        a.add_region(0x1001, 0x5fff); // only frames 0x2000..0x5000 are whole
        assert_eq!(a.stats().total_frames, 3);
        a.add_region(0x3000, 0x8000); // overlaps: only 0x5000..0x8000 is new
        assert_eq!(a.stats().total_frames, 6);
        assert_eq!(a.free_ranges().collect::<Vec<_>>(), [(0x2000, 0x8000)]);
        check_invariants(&a);
    }

    #[test]
    fn contiguous_runs_are_contiguous_and_never_handed_out_twice() {
        let mut a = FrameAllocator::new();
        a.add_region(MIB, 64 * MIB);
        let mut runs = Vec::new();
        for count in [1, 3, 16, 7, 256, 1] {
            let base = a.allocate(req(count, u64::MAX)).unwrap();
            runs.push((base.0, base.0 + count as u64 * PAGE));
            check_invariants(&a);
        }
        runs.sort();
        for w in runs.windows(2) {
            assert!(w[0].1 <= w[1].0, "runs overlap: {:x?}", w);
        }
        for &(s, e) in &runs {
            // no handed-out frame is still in the free list
            assert!(a.free_ranges().all(|(fs, fe)| fe <= s || fs >= e));
        }
    }

    #[test]
    fn unconstrained_requests_come_from_the_top() {
        let mut a = FrameAllocator::new();
        a.add_region(MIB, 2 * GIB);
        a.add_region(4 * GIB, 6 * GIB);
        let base = a.allocate(req(1, u64::MAX)).unwrap();
        assert_eq!(base.0, 6 * GIB - PAGE);
    }

    #[test]
    fn runs_respect_the_4gib_limit() {
        let mut a = FrameAllocator::new();
        a.add_region(3 * GIB, 5 * GIB);
        let base = a.allocate(req(4, 0xffff_ffff)).unwrap();
        assert!(base.0 + 4 * PAGE <= 4 * GIB, "{base:?} crosses 4 GiB");
        assert_eq!(base.0 + 4 * PAGE, 4 * GIB);
        // A region entirely above the limit cannot serve a 32-bit request.
        let mut high = FrameAllocator::new();
        high.add_region(4 * GIB, 5 * GIB);
        assert_eq!(high.allocate(req(1, 0xffff_ffff)), None);
    }

    #[test]
    fn alignment_is_honoured() {
        let mut a = FrameAllocator::new();
        a.add_region(MIB + PAGE, 16 * MIB);
        for align in [PAGE, 2 * PAGE, 64 * 1024, 2 * MIB] {
            let base = a.allocate(FrameRequest { count: 3, max_addr: u64::MAX, align }).unwrap();
            assert_eq!(base.0 % align, 0, "align {align:#x}");
        }
        check_invariants(&a);
        assert_eq!(a.allocate(FrameRequest { count: 1, max_addr: u64::MAX, align: 3 * PAGE }), None);
    }

    #[test]
    fn a_run_needs_one_hole_big_enough() {
        let mut a = FrameAllocator::new();
        a.add_region(MIB, MIB + 4 * PAGE);
        a.add_region(2 * MIB, 2 * MIB + 4 * PAGE);
        assert_eq!(a.allocate(req(5, u64::MAX)), None, "8 free frames, but no 5 in a row");
        assert!(a.allocate(req(4, u64::MAX)).is_some());
    }

    #[test]
    fn free_merges_and_restores_everything() {
        let mut a = FrameAllocator::new();
        a.add_region(MIB, 9 * MIB);
        let before = a.stats();
        let runs: Vec<_> = (1..20).map(|n| (a.allocate(req(n, u64::MAX)).unwrap(), n)).collect();
        for (i, &(base, n)) in runs.iter().enumerate().rev().filter(|(i, _)| i % 2 == 0) {
            a.free(base, n).unwrap_or_else(|e| panic!("run {i}: {e}"));
            check_invariants(&a);
        }
        for &(base, n) in runs.iter().skip(1).step_by(2) {
            a.free(base, n).unwrap();
        }
        check_invariants(&a);
        assert_eq!(a.stats(), before);
        assert_eq!(a.free_ranges().count(), 1);
    }

    #[test]
    fn double_free_and_foreign_free_are_refused_without_damage() {
        let mut a = FrameAllocator::new();
        a.add_region(MIB, 2 * MIB);
        let base = a.allocate(req(2, u64::MAX)).unwrap();
        a.free(base, 2).unwrap();
        let stats = a.stats();
        assert_eq!(a.free(base, 2), Err(FreeError::AlreadyFree { base: base.0, count: 2 }));
        assert_eq!(a.free(PhysAddr(8 * MIB), 1), Err(FreeError::NotManaged { base: 8 * MIB, count: 1 }));
        assert_eq!(a.free(PhysAddr(MIB + 1), 1), Err(FreeError::Misaligned { base: MIB + 1, count: 1 }));
        assert_eq!(a.free(PhysAddr(MIB), usize::MAX), Err(FreeError::NotManaged { base: MIB, count: usize::MAX }));
        // A run that is partly free is a double free too.
        let base = a.allocate(req(2, u64::MAX)).unwrap();
        a.free(PhysAddr(base.0 + PAGE), 1).unwrap();
        assert_eq!(a.free(base, 2), Err(FreeError::AlreadyFree { base: base.0, count: 2 }));
        a.free(base, 1).unwrap();
        assert_eq!(a.stats(), stats);
        check_invariants(&a);
    }

    #[test]
    fn reserve_removes_memory_from_the_free_list() {
        let mut a = FrameAllocator::new();
        a.add_region(MIB, 4 * MIB);
        a.reserve(2 * MIB, 3 * MIB);
        assert_eq!(a.free_ranges().collect::<Vec<_>>(), [(MIB, 2 * MIB), (3 * MIB, 4 * MIB)]);
        assert_eq!(a.stats().free_frames, 512);
        assert_eq!(a.stats().total_frames, 768);
        check_invariants(&a);
    }

    #[test]
    fn exhaustion_returns_none_not_a_panic() {
        let mut a = FrameAllocator::new();
        a.add_region(MIB, MIB + 8 * PAGE);
        for _ in 0..8 {
            assert!(a.allocate(req(1, u64::MAX)).is_some());
        }
        assert_eq!(a.allocate(req(1, u64::MAX)), None);
        assert_eq!(a.allocate(req(0, u64::MAX)), None);
        assert_eq!(a.allocate(req(usize::MAX, u64::MAX)), None);
    }

    #[test]
    fn stats_count_memory_below_4gib() {
        let mut a = FrameAllocator::new();
        a.add_region(4 * GIB - 8 * PAGE, 4 * GIB + 8 * PAGE);
        assert_eq!(a.stats().free_frames_below_4g, 8);
        assert_eq!(a.stats().largest_free_run, 16);
        assert_eq!(a.end_of_ram(), 4 * GIB + 8 * PAGE);
    }
}
