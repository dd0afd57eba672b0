//! Translation structures in memory (VT-d spec §9): the root table, context tables and
//! second-level page tables, built in frames from [`PhysMemory`].
//!
//! ```text
//! RTADDR ─► root table: 256 × 128-bit entries, one per bus (§9.1)
//!              │ P, context-table pointer
//!              ▼
//!           context table: 256 × 128-bit entries, one per devfn (§9.3)
//!              │ P, FPD, TT=00 (untranslated requests only), SLPTPTR | AW, domain id
//!              ▼
//!           second-level page tables: 512 × 64-bit entries per 4 KiB table (§9.8),
//!           3 levels for a 39-bit address width, 4 for 48 bits. Each entry: R (bit 0),
//!           W (bit 1), PS (bit 7: a 2 MiB / 1 GiB leaf at level 2 / 3), address (bits 51..12).
//! ```
//!
//! Permissions are the AND of every level's R and W (§3.6), so non-leaf entries carry R|W and
//! the leaf alone decides. An entry with neither R nor W is *not present*.
//!
//! # Who may see the tables
//! The unit reads these tables on its own, at any time, with no lock; so every entry is
//! written with one volatile 64-bit store, and a 128-bit root or context entry is written
//! upper half first and the half holding P last (and cleared P first), so the unit never sees
//! a present entry whose other half is stale. When the unit's page walks do not snoop the CPU
//! caches (`ECAP.C = 0`) every write is pushed to memory through the [`CacheFlush`] hook
//! (clflush in the kernel).
//!
//! # Invariants
//! - A table frame is referenced by exactly one entry (or RTADDR) while it is live.
//! - [`PageTable::unmap`] frees nothing itself: tables that became unreferenced are returned
//!   so the caller can free them *after* the IOTLB and paging-structure caches were
//!   invalidated (until then the unit may still walk through them).
//! - A table is unlinked only when the unmapped range covers everything the table maps
//!   (Linux's rule), so its IOVA range is free-pending as a whole and nothing new is mapped
//!   through a stale cached pointer to it before the invalidation.
//!
//! # Example
//! The entries one domain needs, bit by bit (§9.1 root entry, §9.3 context entry, §9.8
//! second-level entries): a page the device may only read gets a leaf with R set and W clear,
//! so the unit refuses a write to it; a buffer that is 2 MiB aligned on both sides becomes one
//! superpage leaf (PS) instead of 512 small ones, saving a table and IOTLB entries; and the
//! context entry for the device at 03:00.0 carries the table's address, its depth and the
//! domain id.
//! ```
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, PhysMemory};
//! use dma::PhysAddr;
//! use iommu_vtd::tables::{ContextEntry, ContextTables, PTE_PS, PTE_R, PTE_W, PageTable, SIZE_2M, TableMemory};
//! use iommu_vtd::{Perms, SourceId};
//! # let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
//! let mem = TableMemory::new(phys, None, u64::MAX); // no flush hook: the unit's walks snoop caches
//! let mut pt = PageTable::new(&mem, 3, true, false).unwrap(); // 3 levels, 2 MiB leaves allowed
//! assert_eq!((pt.width(), pt.aw()), (39, 1)); // 4 levels would be 48 bits, AW = 2
//!
//! pt.map(&mem, 0x1000, PhysAddr(0x20_5000), 4096, Perms::READ).unwrap();
//! let (base, size, pte) = pt.leaf(&mem, 0x1234).unwrap();
//! assert_eq!((base, size, pte), (0x1000, 4096, 0x20_5001)); // frame | R
//! assert_eq!(pte & (PTE_R | PTE_W), PTE_R);
//!
//! let big = pt.map(&mem, 0x4000_0000, PhysAddr(0x1_0020_0000), SIZE_2M, Perms::READ_WRITE).unwrap();
//! assert_eq!((big.pages_2m, big.pages_4k), (1, 0));
//! assert_eq!(pt.leaf(&mem, 0x4012_3456), Some((0x4000_0000, SIZE_2M, 0x1_0020_0000 | PTE_PS | PTE_W | PTE_R)));
//!
//! let mut contexts = ContextTables::new(&mem).unwrap(); // the root table (§9.1), all buses absent
//! let entry = ContextEntry { domain_id: 7, table: pt.top(), aw: pt.aw() };
//! contexts.set(&mem, SourceId::new(3, 0, 0), entry).unwrap();
//! assert_eq!(entry.encode(), (pt.top().as_u64() | 1, 0x701)); // SLPTPTR | P; DID 7 << 8 | AW 1
//! assert_eq!(contexts.get(&mem, SourceId::new(3, 0, 0)), Some(entry));
//! ```

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use dma::phys::{FrameRequest, PAGE_SIZE, PhysAddr, PhysMemory};

use super::{Perms, SourceId};

/// Entries per second-level table.
pub const ENTRIES: usize = 512;
/// Bits of IOVA each level resolves.
pub const STRIDE: u32 = 9;
/// Second-level entry: read permission.
pub const PTE_R: u64 = 1 << 0;
/// Second-level entry: write permission.
pub const PTE_W: u64 = 1 << 1;
/// Second-level entry: page size (leaf at level 2 or 3).
pub const PTE_PS: u64 = 1 << 7;
/// Second-level entry: address bits 51..12.
pub const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
/// 2 MiB.
pub const SIZE_2M: u64 = 1 << 21;
/// 1 GiB.
pub const SIZE_1G: u64 = 1 << 30;

/// Bytes one entry at `level` (1 = last level) maps.
pub const fn level_size(level: u8) -> u64 {
    (PAGE_SIZE as u64) << (STRIDE * (level as u32 - 1))
}

/// Index into a level-`level` table for `iova`.
pub const fn level_index(iova: u64, level: u8) -> usize {
    ((iova >> (12 + STRIDE * (level as u32 - 1))) & (ENTRIES as u64 - 1)) as usize
}

/// Pushes CPU cache lines covering `len` bytes at `virt` to memory, for units whose page
/// walks are not cache coherent (`ECAP.C = 0`). The kernel passes [`clflush_range`].
pub type CacheFlush = Arc<dyn Fn(*const u8, usize) + Send + Sync>;

/// Flushes the cache lines covering `virt..virt+len` with `clflush`, then fences so the
/// flushes complete before a later register write tells the unit to look.
#[cfg(target_arch = "x86_64")]
pub fn clflush_range(virt: *const u8, len: usize) {
    const LINE: usize = 64;
    let start = virt as usize & !(LINE - 1);
    let end = (virt as usize).saturating_add(len);
    let mut p = start;
    while p < end {
        // SAFETY: clflush on an address only evicts the line; it faults like a load would, and
        // callers pass memory they just wrote (a page-table frame they own).
        unsafe { core::arch::asm!("clflush [{}]", in(reg) p, options(nostack, preserves_flags)) };
        p += LINE;
    }
    // SAFETY: mfence has no memory-safety preconditions.
    unsafe { core::arch::asm!("mfence", options(nostack, preserves_flags)) };
}

/// Why a table operation failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TableError {
    /// No frame for a new table.
    OutOfMemory,
    /// Address or length not 4 KiB aligned, or zero length.
    Unaligned {
        /// The IOVA asked for.
        iova: u64,
        /// The length asked for.
        len: u64,
    },
    /// The physical address to map is not 4 KiB aligned.
    PhysUnaligned {
        /// The physical address asked for.
        phys: u64,
    },
    /// The range does not fit the table's address width.
    BeyondWidth {
        /// The IOVA asked for.
        iova: u64,
        /// The width in bits.
        width: u32,
    },
    /// An entry in the range is already present (an IOVA allocator bug: ranges overlap).
    AlreadyMapped {
        /// The first present IOVA.
        iova: u64,
    },
    /// The range would cut a large page in two.
    SplitsLargePage {
        /// Where the large page starts.
        iova: u64,
    },
    /// A physical address needs more bits than the unit's entries hold.
    PhysTooHigh {
        /// The address.
        phys: u64,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::OutOfMemory => f.write_str("no free frame for an IOMMU page table; free memory or mappings"),
            TableError::Unaligned { iova, len } => {
                write!(f, "IOMMU range {iova:#x}+{len:#x} is empty or not 4 KiB aligned")
            }
            TableError::PhysUnaligned { phys } => {
                write!(f, "physical address {phys:#x} is not 4 KiB aligned; page tables map whole pages")
            }
            TableError::BeyondWidth { iova, width } => {
                write!(f, "IOVA {iova:#x} is beyond the domain's {width}-bit address width")
            }
            TableError::AlreadyMapped { iova } => {
                write!(f, "IOVA {iova:#x} is already mapped (overlapping mappings: an IOVA allocator bug)")
            }
            TableError::SplitsLargePage { iova } => {
                write!(f, "unmap would split the large page at IOVA {iova:#x}; unmap whole mappings")
            }
            TableError::PhysTooHigh { phys } => {
                write!(f, "physical address {phys:#x} is beyond what an IOMMU entry can hold (52 bits)")
            }
        }
    }
}

/// Frames for translation structures, and the way their entries are written.
pub struct TableMemory {
    phys: Arc<dyn PhysMemory>,
    flush: Option<CacheFlush>,
    max_addr: u64,
}

impl TableMemory {
    /// Table frames from `phys`, below `max_addr` (the unit's host address width), written
    /// back with `flush` after every change if the unit's walks are not coherent.
    pub fn new(phys: Arc<dyn PhysMemory>, flush: Option<CacheFlush>, max_addr: u64) -> TableMemory {
        TableMemory { phys, flush, max_addr }
    }

    /// The memory the tables live in.
    pub fn phys(&self) -> &Arc<dyn PhysMemory> {
        &self.phys
    }

    /// A zeroed frame, flushed.
    pub fn alloc_table(&self) -> Result<PhysAddr, TableError> {
        let pa = self
            .phys
            .alloc_frames(FrameRequest { count: 1, max_addr: self.max_addr, align: PAGE_SIZE as u64 })
            .ok_or(TableError::OutOfMemory)?;
        let va = self.phys.phys_to_virt(pa);
        if va.is_null() {
            // SAFETY: `pa` was just allocated from `phys` and is not used by anyone.
            unsafe { self.phys.free_frames(pa, 1) };
            return Err(TableError::OutOfMemory);
        }
        // SAFETY: `va` maps the whole frame we own (PhysMemory's contract).
        unsafe { core::ptr::write_bytes(va, 0, PAGE_SIZE) };
        self.flush(va, PAGE_SIZE);
        Ok(pa)
    }

    /// Returns a table frame.
    ///
    /// # Safety
    /// `pa` must be a frame from [`TableMemory::alloc_table`] that no entry references and
    /// that the unit can no longer reach through its caches.
    pub unsafe fn free_table(&self, pa: PhysAddr) {
        // SAFETY: forwarded from the caller.
        unsafe { self.phys.free_frames(pa, 1) };
    }

    fn flush(&self, va: *const u8, len: usize) {
        if let Some(f) = &self.flush {
            f(va, len);
        }
    }

    fn slot(&self, table: PhysAddr, index: usize) -> *mut u64 {
        debug_assert!(index < ENTRIES);
        let va = self.phys.phys_to_virt(table);
        // SAFETY: index < 512, so the offset stays inside the table frame.
        unsafe { (va as *mut u64).add(index) }
    }

    /// Reads 64-bit word `index` of a table frame.
    pub fn read(&self, table: PhysAddr, index: usize) -> u64 {
        // SAFETY: `table` is a live table frame owned by this module (mapped by phys_to_virt),
        // the slot is inside it and 8-byte aligned.
        unsafe { core::ptr::read_volatile(self.slot(table, index)) }
    }

    /// Writes 64-bit word `index` of a table frame with one store, then flushes it.
    pub fn write(&self, table: PhysAddr, index: usize, value: u64) {
        let p = self.slot(table, index);
        // SAFETY: as in `read`; a single aligned volatile store, so the unit sees either the
        // old or the new entry.
        unsafe { core::ptr::write_volatile(p, value) };
        self.flush(p as *const u8, 8);
    }
}

/// A context entry's contents (§9.3, legacy mode).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ContextEntry {
    /// Domain id (tags the unit's caches).
    pub domain_id: u16,
    /// Physical address of the top second-level table.
    pub table: PhysAddr,
    /// AW field: 1 = 39-bit/3-level, 2 = 48-bit/4-level.
    pub aw: u8,
}

impl ContextEntry {
    /// The two 64-bit halves: lo = SLPTPTR | TT=00 | P (FPD clear: faults are reported),
    /// hi = AW | DID << 8.
    pub const fn encode(&self) -> (u64, u64) {
        ((self.table.0 & PTE_ADDR) | 1, (self.aw as u64 & 7) | ((self.domain_id as u64) << 8))
    }
}

/// The root table and the context tables hanging off it.
pub struct ContextTables {
    root: PhysAddr,
    context: [Option<PhysAddr>; 256],
}

impl ContextTables {
    /// An empty root table (every bus not present: all DMA blocked once translation is on).
    pub fn new(mem: &TableMemory) -> Result<ContextTables, TableError> {
        Ok(ContextTables { root: mem.alloc_table()?, context: [None; 256] })
    }

    /// Physical address of the root table, for RTADDR.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The context entry for `source`, if present.
    pub fn get(&self, mem: &TableMemory, source: SourceId) -> Option<ContextEntry> {
        let ct = self.context[source.bus() as usize]?;
        let i = source.devfn() as usize * 2;
        let (lo, hi) = (mem.read(ct, i), mem.read(ct, i + 1));
        (lo & 1 == 1).then_some(ContextEntry {
            domain_id: (hi >> 8) as u16,
            table: PhysAddr(lo & PTE_ADDR),
            aw: (hi & 7) as u8,
        })
    }

    /// Makes `source`'s context entry point at `entry`'s tables. Returns the previous entry
    /// if one was present (the caller must then invalidate it, §6.5.3.3).
    pub fn set(
        &mut self,
        mem: &TableMemory,
        source: SourceId,
        entry: ContextEntry,
    ) -> Result<Option<ContextEntry>, TableError> {
        let bus = source.bus() as usize;
        let ct = match self.context[bus] {
            Some(ct) => ct,
            None => {
                let ct = mem.alloc_table()?;
                // Root entry: CTP | P, in the low half; the high half is reserved (zero).
                mem.write(self.root, bus * 2, (ct.0 & PTE_ADDR) | 1);
                self.context[bus] = Some(ct);
                ct
            }
        };
        let old = self.get(mem, source);
        let i = source.devfn() as usize * 2;
        let (lo, hi) = entry.encode();
        if old.is_some() {
            // Never let the unit see the new table pointer with the old domain id (or the
            // reverse): take the entry away first.
            mem.write(ct, i, 0);
        }
        mem.write(ct, i + 1, hi);
        mem.write(ct, i, lo);
        Ok(old)
    }

    /// Makes `source`'s context entry not present (its DMA faults from now on, once the
    /// context cache is invalidated). Returns the entry that was there.
    pub fn clear(&mut self, mem: &TableMemory, source: SourceId) -> Option<ContextEntry> {
        let ct = self.context[source.bus() as usize]?;
        let old = self.get(mem, source)?;
        let i = source.devfn() as usize * 2;
        mem.write(ct, i, 0);
        mem.write(ct, i + 1, 0);
        Some(old)
    }

    /// Frames in use (root + context tables).
    pub fn frames(&self) -> usize {
        1 + self.context.iter().flatten().count()
    }
}

/// What a map wrote.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MapReport {
    /// 4 KiB leaves written.
    pub pages_4k: usize,
    /// 2 MiB leaves written.
    pub pages_2m: usize,
    /// 1 GiB leaves written.
    pub pages_1g: usize,
    /// Tables allocated on the way.
    pub new_tables: usize,
}

/// What an unmap cleared.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct UnmapReport {
    /// Leaf entries cleared (any size).
    pub leaves: usize,
    /// Of those, 2 MiB and 1 GiB leaves (PS = 1).
    pub large_leaves: usize,
    /// Large leaves split into tables of smaller ones first ([`PageTable::unmap_splitting`]):
    /// non-leaf entries changed, so the invalidation must cover paging-structure caches too.
    pub splits: usize,
    /// Table frames no longer referenced: free them after the invalidation completed.
    pub freed_tables: Vec<PhysAddr>,
}

/// A domain's second-level page tables.
pub struct PageTable {
    top: PhysAddr,
    levels: u8,
    large_2m: bool,
    large_1g: bool,
    tables: usize,
}

impl PageTable {
    /// An empty table tree with `levels` (3 or 4) levels, using 2 MiB / 1 GiB leaves where the
    /// unit supports them (`CAP.SLLPS`).
    pub fn new(mem: &TableMemory, levels: u8, large_2m: bool, large_1g: bool) -> Result<PageTable, TableError> {
        let levels = levels.clamp(2, 5);
        Ok(PageTable { top: mem.alloc_table()?, levels, large_2m, large_1g, tables: 1 })
    }

    /// Physical address of the top table (the context entry's SLPTPTR).
    pub fn top(&self) -> PhysAddr {
        self.top
    }

    /// Number of levels.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    /// The address width the tables translate: 12 + 9 × levels bits.
    pub fn width(&self) -> u32 {
        12 + STRIDE * self.levels as u32
    }

    /// The context entry AW field for this depth (§9.3: 1 = 39-bit, 2 = 48-bit).
    pub fn aw(&self) -> u8 {
        self.levels - 2
    }

    /// Table frames in use.
    pub fn table_frames(&self) -> usize {
        self.tables
    }

    fn check(&self, iova: u64, len: u64) -> Result<(), TableError> {
        let page = PAGE_SIZE as u64;
        if len == 0 || !iova.is_multiple_of(page) || !len.is_multiple_of(page) {
            return Err(TableError::Unaligned { iova, len });
        }
        let width = self.width();
        if iova.checked_add(len).is_none_or(|end| end > 1u64 << width) {
            return Err(TableError::BeyondWidth { iova, width });
        }
        Ok(())
    }

    fn large_ok(&self, level: u8) -> bool {
        match level {
            1 => true,
            2 => self.large_2m,
            3 => self.large_1g,
            _ => false,
        }
    }

    /// Maps `len` bytes at `iova` to `phys` with `perms`. Uses the largest leaf that fits
    /// where `iova` and `phys` are both aligned to it and enough length remains, unless a
    /// table already sits in that slot. On failure nothing stays mapped.
    pub fn map(
        &mut self,
        mem: &TableMemory,
        iova: u64,
        phys: PhysAddr,
        len: u64,
        perms: Perms,
    ) -> Result<MapReport, TableError> {
        self.check(iova, len)?;
        if !phys.0.is_multiple_of(PAGE_SIZE as u64) {
            return Err(TableError::PhysUnaligned { phys: phys.0 });
        }
        if phys.0.checked_add(len).is_none_or(|e| e - 1 > PTE_ADDR | 0xfff) {
            return Err(TableError::PhysTooHigh { phys: phys.0 });
        }
        let bits = (if perms.read { PTE_R } else { 0 }) | (if perms.write { PTE_W } else { 0 });
        let mut report = MapReport::default();
        let mut done = 0u64;
        while done < len {
            match self.map_run(mem, iova + done, phys.0 + done, len - done, bits, &mut report) {
                Ok(n) => done += n,
                Err(e) => {
                    if done > 0 {
                        // Roll back the leaves this call wrote. Tables stay linked (empty):
                        // the unit may already cache pointers to them, so freeing them here,
                        // without an invalidation, could let it walk a reused frame.
                        let mut r = UnmapReport::default();
                        Self::clear(mem, self.top, self.levels, 0, iova, iova + done, false, &mut r);
                    }
                    return Err(e);
                }
            }
        }
        Ok(report)
    }

    /// Maps as many leaves as fit in one table starting at `iova`; returns bytes mapped.
    fn map_run(
        &mut self,
        mem: &TableMemory,
        iova: u64,
        phys: u64,
        remaining: u64,
        bits: u64,
        report: &mut MapReport,
    ) -> Result<u64, TableError> {
        // Descend, creating tables, until the level whose leaf size fits here.
        let mut table = self.top;
        let mut level = self.levels;
        loop {
            let size = level_size(level);
            let fits = level <= 3
                && self.large_ok(level)
                && iova.is_multiple_of(size)
                && phys.is_multiple_of(size)
                && remaining >= size;
            let idx = level_index(iova, level);
            let e = mem.read(table, idx);
            if fits && e & (PTE_R | PTE_W) == 0 {
                break;
            }
            if e & (PTE_R | PTE_W) != 0 && (level == 1 || e & PTE_PS != 0) {
                return Err(TableError::AlreadyMapped { iova });
            }
            if level == 1 {
                break;
            }
            if e & (PTE_R | PTE_W) == 0 {
                let t = mem.alloc_table()?;
                self.tables += 1;
                report.new_tables += 1;
                mem.write(table, idx, (t.0 & PTE_ADDR) | PTE_R | PTE_W);
                table = t;
            } else {
                table = PhysAddr(e & PTE_ADDR);
            }
            level -= 1;
        }
        // Fill consecutive slots of this table with leaves of this level's size.
        let size = level_size(level);
        let ps = if level > 1 { PTE_PS } else { 0 };
        let mut done = 0u64;
        let mut idx = level_index(iova, level);
        while idx < ENTRIES && remaining - done >= size {
            if mem.read(table, idx) & (PTE_R | PTE_W) != 0 {
                if done == 0 {
                    return Err(TableError::AlreadyMapped { iova: iova + done });
                }
                break;
            }
            mem.write(table, idx, ((phys + done) & PTE_ADDR) | bits | ps);
            match level {
                1 => report.pages_4k += 1,
                2 => report.pages_2m += 1,
                _ => report.pages_1g += 1,
            }
            done += size;
            idx += 1;
            // A smaller leaf run stops where a larger leaf could start again.
            if level < 3 && self.large_ok(level + 1) {
                let up = level_size(level + 1);
                if (iova + done).is_multiple_of(up) && (phys + done).is_multiple_of(up) && remaining - done >= up {
                    break;
                }
            }
        }
        Ok(done)
    }

    /// The leaf containing `iova`: (its first IOVA, its size, the raw entry), if mapped.
    pub fn leaf(&self, mem: &TableMemory, iova: u64) -> Option<(u64, u64, u64)> {
        if iova >= 1u64 << self.width() {
            return None;
        }
        let mut table = self.top;
        let mut level = self.levels;
        loop {
            let e = mem.read(table, level_index(iova, level));
            if e & (PTE_R | PTE_W) == 0 {
                return None;
            }
            if level == 1 || e & PTE_PS != 0 {
                let size = level_size(level);
                return Some((iova & !(size - 1), size, e));
            }
            table = PhysAddr(e & PTE_ADDR);
            level -= 1;
        }
    }

    /// Clears every entry mapping `iova..iova+len`. Unmapped holes are skipped. Tables wholly
    /// inside the range are unlinked and returned for freeing after invalidation; the count of
    /// table frames drops when the caller frees them ([`PageTable::tables_freed`]).
    pub fn unmap(&mut self, mem: &TableMemory, iova: u64, len: u64) -> Result<UnmapReport, TableError> {
        self.check(iova, len)?;
        let end = iova + len;
        for probe in [iova, end - 1] {
            if let Some((base, size, _)) = self.leaf(mem, probe)
                && (base < iova || base + size > end)
            {
                return Err(TableError::SplitsLargePage { iova: base });
            }
        }
        let mut report = UnmapReport::default();
        Self::clear(mem, self.top, self.levels, 0, iova, end, true, &mut report);
        Ok(report)
    }

    /// Splits the large leaf (2 MiB or 1 GiB) containing `iova`, if any, until a leaf starts at
    /// `iova`: each split replaces one leaf by a new table of 512 leaves one level down that
    /// translate exactly as before, with the same permissions (§9.8: PS = 1 only on 2 MiB / 1
    /// GiB leaves; a 1 GiB leaf becomes 2 MiB leaves, which split again if needed). Returns how
    /// many splits it made. The translations do not change, so no invalidation is due for the
    /// split itself; but a later invalidation of any of its range must not be leaf-only
    /// (IH = 0), as a non-leaf entry changed. On an allocation failure, splits already made
    /// stay (they are harmless) and nothing else changed.
    pub fn split_at(&mut self, mem: &TableMemory, iova: u64) -> Result<usize, TableError> {
        let mut splits = 0;
        loop {
            let Some((base, size, _)) = self.leaf(mem, iova) else { return Ok(splits) };
            if base == iova || size == PAGE_SIZE as u64 {
                return Ok(splits);
            }
            // Find the slot holding that leaf.
            let mut table = self.top;
            let mut level = self.levels;
            while level_size(level) != size {
                let e = mem.read(table, level_index(iova, level));
                table = PhysAddr(e & PTE_ADDR);
                level -= 1;
            }
            let idx = level_index(iova, level);
            let e = mem.read(table, idx);
            let sub = level_size(level - 1);
            let flags = e & !PTE_ADDR & !PTE_PS;
            let phys = e & PTE_ADDR & !(size - 1);
            let ps = if level - 1 > 1 { PTE_PS } else { 0 };
            let t = mem.alloc_table()?;
            for i in 0..ENTRIES {
                mem.write(t, i, ((phys + i as u64 * sub) & PTE_ADDR) | flags | ps);
            }
            // The new table is complete before the unit can see it.
            mem.write(table, idx, (t.0 & PTE_ADDR) | PTE_R | PTE_W);
            self.tables += 1;
            splits += 1;
        }
    }

    /// As [`PageTable::unmap`], but a large leaf crossing either end of the range is split
    /// first ([`PageTable::split_at`]) instead of refusing, so any page-aligned part of a
    /// mapping can be removed. The report counts the splits.
    pub fn unmap_splitting(&mut self, mem: &TableMemory, iova: u64, len: u64) -> Result<UnmapReport, TableError> {
        self.check(iova, len)?;
        let splits = self.split_at(mem, iova)? + self.split_at(mem, iova + len)?;
        let mut report = self.unmap(mem, iova, len)?;
        report.splits = splits;
        Ok(report)
    }

    /// Tells the table that `n` frames returned by [`PageTable::unmap`] were freed.
    pub fn tables_freed(&mut self, n: usize) {
        self.tables = self.tables.saturating_sub(n);
    }

    #[allow(clippy::too_many_arguments)]
    fn clear(
        mem: &TableMemory,
        table: PhysAddr,
        level: u8,
        base: u64,
        start: u64,
        end: u64,
        unlink: bool,
        r: &mut UnmapReport,
    ) {
        let size = level_size(level);
        let first = ((start.max(base) - base) / size) as usize;
        let last = ((end.min(base + size * ENTRIES as u64) - 1 - base) / size) as usize;
        for idx in first..=last.min(ENTRIES - 1) {
            let e = mem.read(table, idx);
            if e & (PTE_R | PTE_W) == 0 {
                continue;
            }
            let eb = base + idx as u64 * size;
            let covered = eb >= start && eb + size <= end;
            if level == 1 || e & PTE_PS != 0 {
                // `unmap` checked that no leaf crosses the range ends.
                mem.write(table, idx, 0);
                r.leaves += 1;
                r.large_leaves += usize::from(level > 1);
            } else if covered && unlink {
                mem.write(table, idx, 0);
                Self::collect(mem, PhysAddr(e & PTE_ADDR), level - 1, r);
            } else {
                Self::clear(mem, PhysAddr(e & PTE_ADDR), level - 1, eb, start, end, unlink, r);
            }
        }
    }

    /// Adds `table` and every table below it to the free list, counting their leaves.
    fn collect(mem: &TableMemory, table: PhysAddr, level: u8, r: &mut UnmapReport) {
        for idx in 0..ENTRIES {
            let e = mem.read(table, idx);
            if e & (PTE_R | PTE_W) == 0 {
                continue;
            }
            if level == 1 || e & PTE_PS != 0 {
                r.leaves += 1;
                r.large_leaves += usize::from(level > 1);
            } else {
                Self::collect(mem, PhysAddr(e & PTE_ADDR), level - 1, r);
            }
        }
        r.freed_tables.push(table);
    }

    /// Frees every table frame.
    ///
    /// # Safety
    /// No context entry may point at these tables any more, and the unit's caches must have
    /// been invalidated since the last one did.
    pub unsafe fn destroy(self, mem: &TableMemory) {
        let mut r = UnmapReport::default();
        Self::collect(mem, self.top, self.levels, &mut r);
        for t in r.freed_tables {
            // SAFETY: forwarded from the caller; each frame is listed once.
            unsafe { mem.free_table(t) };
        }
    }
}
