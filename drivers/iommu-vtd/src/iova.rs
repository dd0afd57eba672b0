//! The IOVA allocator: which bus addresses a domain hands to its devices.
//!
//! Each domain has its own IOVA space (up to its address width, 39 or 48 bits). A mapping
//! needs a range of it that
//! - fits under the device's DMA mask (a 32-bit device gets IOVAs below 4 GiB),
//! - overlaps no live mapping,
//! - is naturally aligned: a range of 2^k pages starts at a multiple of 2^k pages. Then a
//!   2 MiB-aligned buffer can be mapped with 2 MiB pages, and one page-selective invalidation
//!   with address mask k (§6.5.1.2, which covers exactly an aligned power-of-two block)
//!   covers the whole range,
//! - is never IOVA 0: a device programmed with bus address 0 is almost always a driver that
//!   forgot to set an address, and making that fault is the cheapest way to catch it.
//!
//! # How: a buddy allocator over the IOVA space
//! Free space is kept as naturally aligned power-of-two blocks, one ordered set per size
//! (order). Allocation takes the highest suitable block of the smallest sufficient order below
//! the limit (top-down, like Linux, so low addresses stay free for narrow devices) and splits
//! it; freeing merges a block with its free buddy. Both are O(orders × log n), independent of
//! how many mappings are live (the benchmark checks 100,000). Rounding to powers of two wastes
//! IOVA space, never memory: only the requested pages are mapped.
//!
//! # Freed is not free: the invalidation rule
//! After an unmap the unit may still hold the old translation in its IOTLB until an
//! invalidation completes. If the IOVA were reused before that, a device could reach the *new*
//! buffer through the *old* translation, or the old buffer through a new IOVA's stale entry.
//! So [`IovaAllocator::free_deferred`] parks a range as *pending*, tagged with the current
//! generation; [`IovaAllocator::begin_flush`] closes a generation just before the caller
//! issues an invalidation covering every pending range, and
//! [`IovaAllocator::flush_completed`] releases the ranges of that generation (and older) once
//! the caller has seen the invalidation complete. [`IovaAllocator::free_invalidated`] is for
//! callers that already invalidated this exact range and waited (strict unmap).
//!
//! # Invariants
//! - Free blocks, live allocations, pending ranges and the reserved page 0 partition the space.
//! - A free block of order k starts at a multiple of 2^k pages and its buddy is not free.
//!
//! # Example
//! Natural alignment, the top-down choice below a device's mask, exhaustion as an error, and
//! the invalidation rule: a range freed with [`IovaAllocator::free_deferred`] comes back only
//! after the flush that covers it.
//! ```
//! use iommu_vtd::iova::{IovaAllocator, IovaError};
//! let mut space = IovaAllocator::new(39); // a 39-bit domain
//!
//! // Three pages for a 32-bit device: an aligned block of four, as high as the mask allows.
//! let a = space.alloc(3 * 4096, 0xffff_ffff).unwrap();
//! assert_eq!(a, 0x1_0000_0000 - 4 * 4096);
//! assert_eq!(space.allocation(a), Some(3 * 4096)); // only the pages asked for get mapped
//!
//! // A device with a 14-bit mask can use pages 1, 2 and 3: page 0 is never handed out.
//! let tiny = 0x3fff;
//! let pages: Vec<u64> = (0..3).map(|_| space.alloc(4096, tiny).unwrap()).collect();
//! assert!(!pages.contains(&0));
//! assert_eq!(space.alloc(4096, tiny), Err(IovaError::NoSpace { len: 4096, limit: tiny }));
//!
//! // Freed is not free: the range waits for the IOTLB invalidation that covers it.
//! space.free_deferred(pages[0]).unwrap();
//! assert!(space.alloc(4096, tiny).is_err());
//! let generation = space.begin_flush();
//! // ... here the caller invalidates the domain's IOTLB and waits for completion ...
//! assert_eq!(space.flush_completed(generation), 1);
//! assert_eq!(space.alloc(4096, tiny), Ok(pages[0]));
//! assert_eq!(space.check_invariants(), Ok(()));
//! ```

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::fmt;

use dma::phys::PAGE_SIZE;

const PAGE: u64 = PAGE_SIZE as u64;

/// Why an IOVA operation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IovaError {
    /// Zero-length request.
    ZeroLength,
    /// No free range of that size under the limit (space used up, or pending invalidation).
    NoSpace {
        /// Bytes asked for.
        len: u64,
        /// Highest usable address.
        limit: u64,
    },
    /// A fixed range overlaps a live or pending one, or IOVA 0.
    Overlaps {
        /// Start of the requested range.
        iova: u64,
    },
    /// A fixed range is not page aligned or beyond the address width.
    BadRange {
        /// Start of the requested range.
        iova: u64,
    },
    /// Free of an address that does not start a live allocation.
    NotAllocated {
        /// The address.
        iova: u64,
    },
}

impl fmt::Display for IovaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IovaError::ZeroLength => f.write_str("zero-length IOVA request"),
            IovaError::NoSpace { len, limit } => write!(
                f,
                "no free IOVA range of {len:#x} bytes below {limit:#x}; unmap buffers, or flush deferred unmaps"
            ),
            IovaError::Overlaps { iova } => write!(f, "IOVA range at {iova:#x} overlaps a live mapping or IOVA 0"),
            IovaError::BadRange { iova } => {
                write!(f, "IOVA range at {iova:#x} is unaligned or beyond the domain's address width")
            }
            IovaError::NotAllocated { iova } => {
                write!(f, "IOVA {iova:#x} does not start a live mapping (double unmap or wrong address?)")
            }
        }
    }
}

/// An invariant of the allocator that does not hold ([`IovaAllocator::check_invariants`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IovaInvariant {
    /// A free block does not start at a multiple of its size.
    Unaligned,
    /// A free block and its buddy are both free: they should have merged.
    MissedMerge,
    /// Two blocks (free, live or pending) overlap.
    Overlap,
    /// Space at the top of the address space belongs to no block.
    LeakedAtTop,
    /// Space between blocks belongs to no block.
    Leaked,
}

impl IovaInvariant {
    /// The words a log line uses for it.
    pub const fn text(self) -> &'static str {
        match self {
            IovaInvariant::Unaligned => "free block not naturally aligned",
            IovaInvariant::MissedMerge => "free block and its buddy both free (missed merge)",
            IovaInvariant::Overlap => "blocks overlap",
            IovaInvariant::LeakedAtTop => "space leaked at the top",
            IovaInvariant::Leaked => "space leaked",
        }
    }
}

impl fmt::Display for IovaInvariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// The blocks one allocation is made of: one for ordinary allocations, several for a fixed
/// (reserved) range.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Blocks {
    One(u8),
    Many(Vec<(u64, u8)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Allocation {
    pages: u64,
    blocks: Blocks,
}

#[derive(Clone, Debug)]
struct Pending {
    generation: u64,
    start: u64,
    alloc: Allocation,
}

/// Counters for views and tests.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct IovaStats {
    /// Live allocations.
    pub live: usize,
    /// Pages requested by live allocations.
    pub live_pages: u64,
    /// Ranges waiting for an invalidation.
    pub pending: usize,
}

/// A domain's IOVA allocator. See the module documentation.
pub struct IovaAllocator {
    /// `free[k]`: first pages of free blocks of 2^k pages.
    free: Vec<BTreeSet<u64>>,
    /// Live allocations by first page.
    live: BTreeMap<u64, Allocation>,
    live_pages: u64,
    pending: VecDeque<Pending>,
    generation: u64,
    /// Pages in the space (a power of two): 2^(width − 12).
    space: u64,
}

impl IovaAllocator {
    /// An allocator for a `width_bits`-bit IOVA space (13..=63), with page 0 reserved.
    pub fn new(width_bits: u32) -> IovaAllocator {
        let order_max = width_bits.clamp(13, 63) - 12;
        let space = 1u64 << order_max;
        let mut free: Vec<BTreeSet<u64>> = (0..order_max).map(|_| BTreeSet::new()).collect();
        // [1, 2^m) = blocks of order 0, 1, ..., m−1 starting at 1, 2, 4, ...
        for (k, set) in free.iter_mut().enumerate() {
            set.insert(1u64 << k);
        }
        IovaAllocator { free, live: BTreeMap::new(), live_pages: 0, pending: VecDeque::new(), generation: 0, space }
    }

    /// The highest IOVA this space holds.
    pub fn max_iova(&self) -> u64 {
        self.space * PAGE - 1
    }

    /// Allocates a naturally aligned range of at least `len` bytes, ending at or below
    /// `limit` (the device's DMA mask). Returns its first IOVA.
    pub fn alloc(&mut self, len: u64, limit: u64) -> Result<u64, IovaError> {
        if len == 0 {
            return Err(IovaError::ZeroLength);
        }
        let pages = len.div_ceil(PAGE);
        let order = pages.next_power_of_two().trailing_zeros();
        let err = IovaError::NoSpace { len, limit };
        if order as usize >= self.free.len() {
            return Err(err);
        }
        // Exclusive page bound: every page of the range must be <= limit.
        let bound = (limit.saturating_add(1) / PAGE).min(self.space);
        let want = 1u64 << order;
        if bound < want {
            return Err(err);
        }
        // Highest fit over all orders (top-down, like Linux): keeps low IOVAs, the only ones
        // narrow devices can use, free as long as possible. One ordered-set lookup per order.
        let mut best: Option<(u64, u64, usize)> = None;
        for (j, set) in self.free.iter().enumerate().skip(order as usize) {
            let size = 1u64 << j;
            // At most one free block of this order straddles `bound`; the next one down fits.
            for &s in set.range(..bound).rev().take(2) {
                let top = (s + size).min(bound);
                if top < want {
                    continue;
                }
                let t = (top - want) & !(want - 1);
                if t >= s {
                    if best.is_none_or(|b| t > b.1) {
                        best = Some((s, t, j));
                    }
                    break;
                }
            }
        }
        if let Some((s, t, j)) = best {
            self.free[j].remove(&s);
            self.split_to(s, j as u8, t, order as u8);
            self.live.insert(t, Allocation { pages, blocks: Blocks::One(order as u8) });
            self.live_pages += pages;
            return Ok(t * PAGE);
        }
        Err(err)
    }

    /// Splits free block (`s`, order `j`, already removed from the free sets) down to the
    /// sub-block (`t`, order `k`), returning the other halves to the free sets.
    fn split_to(&mut self, mut s: u64, mut j: u8, t: u64, k: u8) {
        while j > k {
            j -= 1;
            let half = 1u64 << j;
            if t >= s + half {
                self.free[j as usize].insert(s);
                s += half;
            } else {
                self.free[j as usize].insert(s + half);
            }
        }
        debug_assert_eq!(s, t);
    }

    /// Returns block (`s`, order `k`) to the free sets, merging with free buddies.
    fn release_block(&mut self, mut s: u64, mut k: u8) {
        while (k as usize) + 1 < self.free.len() {
            let buddy = s ^ (1u64 << k);
            if !self.free[k as usize].remove(&buddy) {
                break;
            }
            s = s.min(buddy);
            k += 1;
        }
        self.free[k as usize].insert(s);
    }

    /// Takes block (`a`, order `k`) out of whatever free block contains it.
    fn carve(&mut self, a: u64, k: u8) -> bool {
        for j in k as usize..self.free.len() {
            let s = a & !((1u64 << j) - 1);
            if self.free[j].remove(&s) {
                self.split_to(s, j as u8, a, k);
                return true;
            }
        }
        false
    }

    /// Reserves exactly `iova..iova+len` (page aligned), e.g. for an identity-mapped RMRR.
    pub fn reserve(&mut self, iova: u64, len: u64) -> Result<(), IovaError> {
        if len == 0 {
            return Err(IovaError::ZeroLength);
        }
        if !iova.is_multiple_of(PAGE)
            || !len.is_multiple_of(PAGE)
            || iova.checked_add(len).is_none_or(|e| e / PAGE > self.space)
        {
            return Err(IovaError::BadRange { iova });
        }
        let (mut a, b) = (iova / PAGE, (iova + len) / PAGE);
        let mut taken: Vec<(u64, u8)> = Vec::new();
        while a < b {
            let mut k = if a == 0 { 63 } else { a.trailing_zeros() };
            while k > 0 && a + (1u64 << k.min(63)) > b {
                k -= 1;
            }
            let k = k.min(self.free.len() as u32 - 1) as u8;
            if !self.carve(a, k) {
                for (s, k) in taken {
                    self.release_block(s, k);
                }
                return Err(IovaError::Overlaps { iova });
            }
            taken.push((a, k));
            a += 1u64 << k;
        }
        let pages = len / PAGE;
        self.live.insert(iova / PAGE, Allocation { pages, blocks: Blocks::Many(taken) });
        self.live_pages += pages;
        Ok(())
    }

    /// The live allocation starting at `iova`: its length in bytes as requested (rounded up to
    /// pages).
    pub fn allocation(&self, iova: u64) -> Option<u64> {
        iova.is_multiple_of(PAGE).then(|| self.live.get(&(iova / PAGE)).map(|a| a.pages * PAGE)).flatten()
    }

    /// The live allocation containing `iova`: (first IOVA, length in bytes).
    pub fn containing(&self, iova: u64) -> Option<(u64, u64)> {
        let page = iova / PAGE;
        let (&s, a) = self.live.range(..=page).next_back()?;
        (page < s + a.pages).then_some((s * PAGE, a.pages * PAGE))
    }

    fn take_live(&mut self, iova: u64) -> Result<Allocation, IovaError> {
        if !iova.is_multiple_of(PAGE) {
            return Err(IovaError::NotAllocated { iova });
        }
        let a = self.live.remove(&(iova / PAGE)).ok_or(IovaError::NotAllocated { iova })?;
        self.live_pages -= a.pages;
        Ok(a)
    }

    fn release(&mut self, start: u64, a: Allocation) {
        match a.blocks {
            Blocks::One(k) => self.release_block(start, k),
            Blocks::Many(v) => {
                for (s, k) in v {
                    self.release_block(s, k);
                }
            }
        }
    }

    /// Frees the allocation at `iova` for reuse right away. Only for callers that already
    /// invalidated the IOTLB for this range and saw the invalidation complete.
    pub fn free_invalidated(&mut self, iova: u64) -> Result<u64, IovaError> {
        let a = self.take_live(iova)?;
        let len = a.pages * PAGE;
        self.release(iova / PAGE, a);
        Ok(len)
    }

    /// Parks the allocation at `iova` until an invalidation that started after this call has
    /// completed. Returns its length in bytes.
    pub fn free_deferred(&mut self, iova: u64) -> Result<u64, IovaError> {
        let a = self.take_live(iova)?;
        let len = a.pages * PAGE;
        self.pending.push_back(Pending { generation: self.generation, start: iova / PAGE, alloc: a });
        Ok(len)
    }

    /// Closes the current generation of pending frees: call just before issuing an
    /// invalidation that covers every pending range; pass the returned value to
    /// [`IovaAllocator::flush_completed`] once it completed.
    pub fn begin_flush(&mut self) -> u64 {
        let g = self.generation;
        self.generation += 1;
        g
    }

    /// The generation a range freed now would belong to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Releases every pending range of generation `generation` or older. Returns how many.
    pub fn flush_completed(&mut self, generation: u64) -> usize {
        let mut n = 0;
        while self.pending.front().is_some_and(|p| p.generation <= generation) {
            if let Some(p) = self.pending.pop_front() {
                self.release(p.start, p.alloc);
                n += 1;
            }
        }
        n
    }

    /// Whether `iova` lies in a range that waits for an invalidation.
    pub fn is_pending(&self, iova: u64) -> bool {
        let page = iova / PAGE;
        self.pending.iter().any(|p| page >= p.start && page < p.start + p.alloc.pages)
    }

    /// Counters.
    pub fn stats(&self) -> IovaStats {
        IovaStats { live: self.live.len(), live_pages: self.live_pages, pending: self.pending.len() }
    }

    /// Checks the invariants (tests): free blocks aligned, disjoint from each other and from
    /// live and pending ranges, buddies not both free, everything accounted for.
    pub fn check_invariants(&self) -> Result<(), IovaInvariant> {
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for (k, set) in self.free.iter().enumerate() {
            for &s in set {
                if s % (1u64 << k) != 0 {
                    return Err(IovaInvariant::Unaligned);
                }
                if (k + 1) < self.free.len() && set.contains(&(s ^ (1u64 << k))) {
                    return Err(IovaInvariant::MissedMerge);
                }
                spans.push((s, 1u64 << k));
            }
        }
        let mut add = |start: u64, a: &Allocation| match &a.blocks {
            Blocks::One(k) => spans.push((start, 1u64 << k)),
            Blocks::Many(v) => spans.extend(v.iter().map(|&(s, k)| (s, 1u64 << k))),
        };
        for (&s, a) in &self.live {
            add(s, a);
        }
        for p in &self.pending {
            add(p.start, &p.alloc);
        }
        spans.push((0, 1));
        spans.sort_unstable();
        let mut next = 0;
        for (s, n) in spans {
            if s != next {
                return Err(if s < next { IovaInvariant::Overlap } else { IovaInvariant::Leaked });
            }
            next = s + n;
        }
        if next != self.space {
            return Err(IovaInvariant::LeakedAtTop);
        }
        Ok(())
    }
}
