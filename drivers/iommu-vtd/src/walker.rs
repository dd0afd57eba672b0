//! A software page walk that translates a DMA request exactly as the unit does (VT-d spec
//! §3.4 root/context lookup, §3.6 second-level translation, Appendix A fault reasons).
//!
//! Host tests use it to prove that the tables this crate builds say what was meant: a mapped
//! IOVA reaches the right physical byte with the right permissions, anything else faults with
//! the reason real hardware would report. The simulated unit ([`super::sim`]) translates
//! device accesses through it, and a domain uses it to answer `bus_to_phys`.
//!
//! Every table read goes through [`PhysMemory::phys_to_virt`]; a pointer that is not memory
//! (null) is reported as the table-access error the spec defines, never dereferenced.
//!
//! # Example
//! The walk a request from the NIC at 00:02.0 takes through the tables a [`Unit`](super::Unit) built:
//! root table → context entry → four levels of page table. A mapped IOVA reaches its page
//! with the mapping's permissions; every other request stops where the hardware would stop
//! and names the reason code the unit would record.
//! ```
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, FrameRequest, PhysMemory};
//! # use iommu_vtd::{sim::{SimConfig, SimUnit}, Unit, UnitConfig, UnmapPolicy};
//! use iommu_vtd::walker::translate;
//! use iommu_vtd::{AccessKind, FaultReason, Perms, SourceId};
//! # let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
//! # let sim = SimUnit::new(phys.clone(), SimConfig::default());
//! # let unit = Unit::bring_up("dmar0", sim, phys.clone(), UnitConfig::default()).unwrap();
//! # let domain = unit.create_domain(UnmapPolicy::Strict).unwrap();
//! let nic = SourceId::new(0, 2, 0);
//! domain.attach(nic).unwrap();
//! let page = phys.alloc_frames(FrameRequest { count: 1, max_addr: u64::MAX, align: 4096 }).unwrap();
//! let iova = domain.map(None, page, 4096, Perms::READ_WRITE, u64::MAX).unwrap();
//!
//! let (root, caps) = (unit.root_table().as_u64(), unit.walk_caps());
//! let t = translate(&*phys, root, &caps, nic, iova + 0x10, AccessKind::Write).unwrap();
//! assert_eq!(t.phys, page.checked_add(0x10).unwrap());
//! assert_eq!((t.page_size, t.perms, t.domain_id), (4096, Perms::READ_WRITE, domain.id()));
//!
//! let walk = |sid: SourceId, iova: u64| translate(&*phys, root, &caps, sid, iova, AccessKind::Read);
//! assert_eq!(walk(SourceId::new(1, 0, 0), iova), Err(FaultReason::ROOT_NOT_PRESENT)); // no device on bus 1
//! assert_eq!(walk(SourceId::new(0, 3, 0), iova), Err(FaultReason::CONTEXT_NOT_PRESENT)); // not attached
//! assert_eq!(walk(nic, 1 << 50), Err(FaultReason::BEYOND_AGAW)); // wider than 48-bit tables
//! domain.unmap(iova, 4096).unwrap();
//! assert_eq!(walk(nic, iova), Err(FaultReason::READ_DENIED)); // not present any more
//! ```

use dma::phys::{PhysAddr, PhysMemory};

use super::fault::FaultReason;
use super::regs::{Cap, Ecap};
use super::tables::{PTE_ADDR, PTE_PS, PTE_R, PTE_W, level_index, level_size};
use super::{AccessKind, Perms, SourceId};

/// The parts of the capability registers that change how a walk goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WalkCaps {
    /// CAP.MGAW in bits.
    pub mgaw: u32,
    /// CAP.SAGAW bits.
    pub sagaw: u8,
    /// CAP.SLLPS bits (bit 0 = 2 MiB, bit 1 = 1 GiB).
    pub sllps: u8,
    /// ECAP.PT: pass-through allowed.
    pub pass_through: bool,
    /// ECAP.DT: device-TLB translation type allowed.
    pub device_tlb: bool,
}

impl WalkCaps {
    /// From the unit's capability registers.
    pub const fn from_regs(cap: Cap, ecap: Ecap) -> WalkCaps {
        WalkCaps {
            mgaw: cap.mgaw(),
            sagaw: cap.sagaw(),
            sllps: cap.sllps(),
            pass_through: ecap.pt(),
            device_tlb: ecap.dt(),
        }
    }
}

/// A successful translation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Translation {
    /// The physical address the request goes to.
    pub phys: PhysAddr,
    /// Size of the page (leaf) that translated it.
    pub page_size: u64,
    /// Effective permissions (AND over all levels).
    pub perms: Perms,
    /// The context entry's domain id.
    pub domain_id: u16,
}

/// The context entry lookup result, before the page walk (what a context cache holds).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ContextLookup {
    /// Domain id.
    pub domain_id: u16,
    /// Top table (or `None` for pass-through).
    pub table: Option<PhysAddr>,
    /// Levels of the walk.
    pub levels: u8,
    /// Input address limit in bits: min(AGAW, MGAW).
    pub width: u32,
}

fn read_u64(mem: &dyn PhysMemory, pa: u64) -> Option<u64> {
    if pa % 8 != 0 {
        return None;
    }
    let p = mem.phys_to_virt(PhysAddr(pa));
    if p.is_null() {
        return None;
    }
    // SAFETY: `phys_to_virt` returned a pointer to memory it knows, 8-byte aligned (pa is, and
    // the mapping preserves the page offset); the walk only reads.
    Some(unsafe { core::ptr::read_volatile(p as *const u64) })
}

/// Looks up `source`'s context entry from the root table at `rtaddr` (§3.4.2, §3.4.3).
pub fn lookup_context(
    mem: &dyn PhysMemory,
    rtaddr: u64,
    caps: &WalkCaps,
    source: SourceId,
) -> Result<ContextLookup, FaultReason> {
    lookup_context_traced(mem, rtaddr, caps, source, &mut Trail::default())
}

fn lookup_context_traced(
    mem: &dyn PhysMemory,
    rtaddr: u64,
    caps: &WalkCaps,
    source: SourceId,
    trail: &mut Trail,
) -> Result<ContextLookup, FaultReason> {
    let root_slot = (rtaddr & PTE_ADDR) + source.bus() as u64 * 16;
    let (Some(rlo), Some(rhi)) = (read_u64(mem, root_slot), read_u64(mem, root_slot + 8)) else {
        return Err(FaultReason::ROOT_TABLE_ERROR);
    };
    trail.root = Some(EntryRead { addr: root_slot, index: source.bus() as u16, lo: rlo, hi: rhi });
    if rlo & 1 == 0 {
        return Err(FaultReason::ROOT_NOT_PRESENT);
    }
    if rlo & 0xffe != 0 || rhi != 0 {
        return Err(FaultReason::ROOT_RESERVED);
    }
    let ctx_slot = (rlo & PTE_ADDR) + source.devfn() as u64 * 16;
    let (Some(lo), Some(hi)) = (read_u64(mem, ctx_slot), read_u64(mem, ctx_slot + 8)) else {
        return Err(FaultReason::CONTEXT_TABLE_ERROR);
    };
    trail.context = Some(EntryRead { addr: ctx_slot, index: source.devfn() as u16, lo, hi });
    if lo & 1 == 0 {
        return Err(FaultReason::CONTEXT_NOT_PRESENT);
    }
    // Low half bits 11..4 and high half bit 7 and bits 63..24 are reserved.
    if lo & 0xff0 != 0 || hi & 0xffff_ffff_ff00_0080 != 0 {
        return Err(FaultReason::CONTEXT_RESERVED);
    }
    let tt = (lo >> 2) & 3;
    let domain_id = (hi >> 8) as u16;
    let aw = (hi & 7) as u8;
    match tt {
        0 => {}
        1 if caps.device_tlb => {}
        2 if caps.pass_through => {
            return Ok(ContextLookup { domain_id, table: None, levels: 0, width: 64 });
        }
        _ => return Err(FaultReason::CONTEXT_INVALID),
    }
    if !(1..=3).contains(&aw) || caps.sagaw & (1 << aw) == 0 {
        return Err(FaultReason::CONTEXT_INVALID);
    }
    let levels = aw + 2;
    let agaw = 12 + 9 * levels as u32;
    Ok(ContextLookup { domain_id, table: Some(PhysAddr(lo & PTE_ADDR)), levels, width: agaw.min(caps.mgaw) })
}

/// Walks the second-level tables of a looked-up context for `iova` (§3.6), checking `access`.
pub fn walk_tables(
    mem: &dyn PhysMemory,
    caps: &WalkCaps,
    ctx: &ContextLookup,
    iova: u64,
    access: AccessKind,
) -> Result<Translation, FaultReason> {
    walk_tables_traced(mem, caps, ctx, iova, access, &mut Trail::default())
}

fn walk_tables_traced(
    mem: &dyn PhysMemory,
    caps: &WalkCaps,
    ctx: &ContextLookup,
    iova: u64,
    access: AccessKind,
    trail: &mut Trail,
) -> Result<Translation, FaultReason> {
    let denied = match access {
        AccessKind::Read => FaultReason::READ_DENIED,
        AccessKind::Write => FaultReason::WRITE_DENIED,
    };
    let Some(top) = ctx.table else {
        return Ok(Translation {
            phys: PhysAddr(iova),
            page_size: 4096,
            perms: Perms::READ_WRITE,
            domain_id: ctx.domain_id,
        });
    };
    if ctx.width < 64 && iova >> ctx.width != 0 {
        return Err(FaultReason::BEYOND_AGAW);
    }
    let mut table = top.0;
    let mut level = ctx.levels;
    let (mut r, mut w) = (true, true);
    loop {
        let index = level_index(iova, level);
        let e = read_u64(mem, table + index as u64 * 8).ok_or(FaultReason::PAGING_ENTRY_ERROR)?;
        if let Some(step) = trail.levels.get_mut(trail.depth) {
            *step = LevelStep { level, table, index: index as u16, entry: e };
            trail.depth += 1;
        }
        if e & (PTE_R | PTE_W) == 0 {
            return Err(denied);
        }
        r &= e & PTE_R != 0;
        w &= e & PTE_W != 0;
        let leaf = level == 1 || e & PTE_PS != 0;
        if leaf && level > 1 {
            let supported = match level {
                2 => caps.sllps & 1 != 0,
                3 => caps.sllps & 2 != 0,
                _ => false,
            };
            if !supported {
                return Err(FaultReason::PAGING_RESERVED);
            }
        }
        if leaf {
            let size = level_size(level);
            let ok = match access {
                AccessKind::Read => r,
                AccessKind::Write => w,
            };
            if !ok {
                return Err(denied);
            }
            let phys = (e & PTE_ADDR & !(size - 1)) | (iova & (size - 1));
            return Ok(Translation {
                phys: PhysAddr(phys),
                page_size: size,
                perms: Perms { read: r, write: w },
                domain_id: ctx.domain_id,
            });
        }
        table = e & PTE_ADDR;
        level -= 1;
    }
}

/// Translates one request from `source` to `iova` through the root table at `rtaddr`, as the
/// hardware would with empty caches.
pub fn translate(
    mem: &dyn PhysMemory,
    rtaddr: u64,
    caps: &WalkCaps,
    source: SourceId,
    iova: u64,
    access: AccessKind,
) -> Result<Translation, FaultReason> {
    let ctx = lookup_context(mem, rtaddr, caps, source)?;
    walk_tables(mem, caps, &ctx, iova, access)
}

/// One table entry the walk read: where, at which index, and its two 64-bit halves.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct EntryRead {
    /// Physical address of the entry.
    pub addr: u64,
    /// Its index in its table (bus for the root table, devfn for the context table).
    pub index: u16,
    /// Low 64 bits.
    pub lo: u64,
    /// High 64 bits.
    pub hi: u64,
}

/// One second-level page-table entry the walk read (§9.8).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LevelStep {
    /// Level: 4 (PML4) down to 1 (the 4 KiB page table).
    pub level: u8,
    /// Physical address of the table.
    pub table: u64,
    /// Index of the entry: nine bits of the IOVA.
    pub index: u16,
    /// The entry (bit 0 R, bit 1 W, bit 7 PS, bits 51:12 the address).
    pub entry: u64,
}

impl LevelStep {
    /// Read permission (bit 0).
    pub const fn read(&self) -> bool {
        self.entry & PTE_R != 0
    }

    /// Write permission (bit 1).
    pub const fn write(&self) -> bool {
        self.entry & PTE_W != 0
    }

    /// Whether the entry maps a page (level 1, or PS set) instead of pointing at a table.
    pub const fn leaf(&self) -> bool {
        self.level == 1 || self.entry & PTE_PS != 0
    }
}

/// What a walk read on its way, in order (no allocation: a walk has at most 5 levels).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Trail {
    /// The root entry (`None` if the root table could not be read).
    pub root: Option<EntryRead>,
    /// The context entry (`None` if the walk stopped before it).
    pub context: Option<EntryRead>,
    levels: [LevelStep; 5],
    depth: usize,
}

impl Trail {
    /// The page-table entries read, top level first.
    pub fn levels(&self) -> &[LevelStep] {
        &self.levels[..self.depth]
    }
}

/// A walk with everything it read: [`translate`] plus the entries on the way, so a reader (the
/// kernel's `iommu walk`) can see the hardware's steps. Its result is always `translate`'s.
pub fn walk(
    mem: &dyn PhysMemory,
    rtaddr: u64,
    caps: &WalkCaps,
    source: SourceId,
    iova: u64,
    access: AccessKind,
) -> (Trail, Result<Translation, FaultReason>) {
    let mut trail = Trail::default();
    let result = lookup_context_traced(mem, rtaddr, caps, source, &mut trail)
        .and_then(|ctx| walk_tables_traced(mem, caps, &ctx, iova, access, &mut trail));
    (trail, result)
}

/// Renders a walk for people: the root entry, the context entry (domain, address width, top
/// table), each level's entry with its index and R/W bits, then the physical address or the
/// fault reason the unit would record (VT-d spec Appendix A).
pub fn render_walk(
    source: SourceId,
    iova: u64,
    access: AccessKind,
    trail: &Trail,
    result: &Result<Translation, FaultReason>,
) -> alloc::string::String {
    use core::fmt::Write as _;
    let mut out = alloc::string::String::new();
    let _ = writeln!(out, "walk {source} IOVA {iova:#x} ({access})");
    if let Some(r) = trail.root {
        let _ = writeln!(
            out,
            "  root entry    [bus {:#04x}] at {:#x}: {:#018x} present={} context-table={:#x}",
            r.index,
            r.addr,
            r.lo,
            r.lo & 1,
            r.lo & PTE_ADDR
        );
    }
    if let Some(c) = trail.context {
        let _ = writeln!(
            out,
            "  context entry [devfn {:#04x}] at {:#x}: {:#018x}_{:016x} present={} tt={} domain={} aw={} table={:#x}",
            c.index,
            c.addr,
            c.hi,
            c.lo,
            c.lo & 1,
            (c.lo >> 2) & 3,
            (c.hi >> 8) as u16,
            c.hi & 7,
            c.lo & PTE_ADDR
        );
    }
    for step in trail.levels() {
        let _ = writeln!(
            out,
            "  level {} [index {:3}] at {:#x}: {:#018x} R={} W={}{}",
            step.level,
            step.index,
            step.table + step.index as u64 * 8,
            step.entry,
            step.read() as u8,
            step.write() as u8,
            if step.leaf() && step.entry & (PTE_R | PTE_W) != 0 {
                alloc::format!(
                    " page={:#x} ({} KiB)",
                    step.entry & PTE_ADDR & !(level_size(step.level) - 1),
                    level_size(step.level) / 1024
                )
            } else if step.entry & (PTE_R | PTE_W) == 0 {
                alloc::string::String::from(" not present")
            } else {
                alloc::format!(" next={:#x}", step.entry & PTE_ADDR)
            }
        );
    }
    match result {
        Ok(t) => {
            let _ = writeln!(
                out,
                "  => phys {:#x} (domain {}, R={} W={})",
                t.phys.0, t.domain_id, t.perms.read as u8, t.perms.write as u8
            );
        }
        Err(reason) => {
            let _ = writeln!(out, "  => FAULT reason {:#04x}: {}", reason.0, reason.text());
        }
    }
    out
}
