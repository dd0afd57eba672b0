//! Domains (§3.4, §9.3): creation on a unit, device attachment through context entries,
//! map/unmap in the second-level tables, and deferred-unmap flushes.

use alloc::sync::Arc;
use alloc::vec::Vec;

use dma::phys::{PhysAddr, mask_from_bits};

use super::{DomainError, PAGE, Unit, UnitError, UnmapPolicy};
use crate::fault::FaultReason;
use crate::invalidation::{ContextScope, IotlbScope, page_scope};
use crate::iova::{IovaAllocator, IovaError, IovaStats};
use crate::tables::{ContextEntry, PageTable, TableError};
use crate::walker::{ContextLookup, Translation, walk_tables};
use crate::{AccessKind, Perms, SourceId};

impl Unit {
    /// Creates an empty domain with a fresh domain id.
    pub fn create_domain(self: &Arc<Self>, policy: UnmapPolicy) -> Result<Arc<Domain>, UnitError> {
        let tables = PageTable::new(
            &self.mem,
            self.levels,
            self.large_pages && self.cap.supports_2m(),
            self.large_pages && self.cap.supports_1g(),
        )?;
        let id = {
            let mut ctx = self.ctx.lock();
            let Some(id) = take_id(&mut ctx.ids) else {
                drop(ctx);
                // SAFETY: the tables were never referenced by a context entry.
                unsafe { tables.destroy(&self.mem) };
                return Err(UnitError::NoDomainIds { supported: self.cap.domains() });
            };
            ctx.domains += 1;
            id
        };
        let policy = match policy {
            UnmapPolicy::Deferred { batch } => UnmapPolicy::Deferred { batch: batch.max(1) },
            p => p,
        };
        Ok(Arc::new(Domain {
            unit: self.clone(),
            id,
            top: tables.top(),
            levels: tables.levels(),
            state: spin::Mutex::new(DomainState {
                tables: Some(tables),
                iova: IovaAllocator::new(self.width),
                policy,
                pending_tables: Vec::new(),
                unflushed: 0,
                devices: Vec::new(),
                stats: DomainStats::default(),
            }),
        }))
    }
}

fn take_id(ids: &mut [u64]) -> Option<u16> {
    for (w, word) in ids.iter_mut().enumerate() {
        if *word != u64::MAX {
            let b = word.trailing_ones();
            *word |= 1 << b;
            return u16::try_from(w * 64 + b as usize).ok();
        }
    }
    None
}

fn release_id(ids: &mut [u64], id: u16) {
    if id != 0
        && let Some(word) = ids.get_mut(id as usize / 64)
    {
        *word &= !(1 << (id % 64));
    }
}

/// Counters of one domain.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DomainStats {
    /// Successful maps.
    pub maps: u64,
    /// Successful unmaps.
    pub unmaps: u64,
    /// 2 MiB leaves written.
    pub pages_2m: u64,
    /// 1 GiB leaves written.
    pub pages_1g: u64,
    /// Domain-wide flushes of deferred unmaps.
    pub flushes: u64,
    /// 2 MiB and 1 GiB leaves mapped now (superpages in use).
    pub superpages_live: u64,
    /// IOTLB invalidations this domain asked its unit for (page-selective or domain-wide,
    /// each followed by a wait), on map (caching mode), unmap and flush.
    pub invalidations: u64,
}

struct DomainState {
    /// `None` once torn down.
    tables: Option<PageTable>,
    iova: IovaAllocator,
    policy: UnmapPolicy,
    /// Table frames unlinked by deferred unmaps, with the IOVA generation they belong to.
    pending_tables: Vec<(u64, PhysAddr)>,
    /// Deferred unmaps since the last flush.
    unflushed: usize,
    devices: Vec<SourceId>,
    stats: DomainStats,
}

/// An IOVA space with its page tables, on one unit. See the module documentation.
///
/// All methods take `&self` and a short spin lock, so a domain can be shared (`Arc`) by a
/// mapper serving several devices.
pub struct Domain {
    unit: Arc<Unit>,
    id: u16,
    top: PhysAddr,
    levels: u8,
    state: spin::Mutex<DomainState>,
}

impl Domain {
    /// The domain id (tags the unit's caches; appears in context entries).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The unit.
    pub fn unit(&self) -> &Arc<Unit> {
        &self.unit
    }

    /// The highest IOVA this domain can map.
    pub fn max_iova(&self) -> u64 {
        mask_from_bits(self.unit.width)
    }

    /// Counters.
    pub fn stats(&self) -> DomainStats {
        self.state.lock().stats
    }

    /// IOVA allocator counters (live and pending ranges).
    pub fn iova_stats(&self) -> IovaStats {
        self.state.lock().iova.stats()
    }

    /// Devices attached.
    pub fn devices(&self) -> Vec<SourceId> {
        self.state.lock().devices.clone()
    }

    /// Whether `iova` belongs to an unmapped range still waiting for its invalidation.
    pub fn is_pending(&self, iova: u64) -> bool {
        self.state.lock().iova.is_pending(iova)
    }

    /// Points `source`'s context entry at this domain (§9.3), then invalidates as §6.1 and
    /// §6.5.3.3 require: with caching mode, the device's context-cache entry (domain 0, where
    /// not-present entries are cached) and this domain's IOTLB; otherwise a write-buffer flush
    /// on units that need one.
    pub fn attach(&self, source: SourceId) -> Result<(), DomainError> {
        let unit = &self.unit;
        let mut st = self.state.lock();
        let mut ctx = unit.ctx.lock();
        if let Some(&d) = ctx.attached.get(&source) {
            return Err(DomainError::AlreadyAttached { source, domain: d });
        }
        let entry = ContextEntry { domain_id: self.id, table: self.top, aw: self.levels - 2 };
        let old = ctx.tables.set(&unit.mem, source, entry)?;
        ctx.attached.insert(source, self.id);
        st.devices.push(source);
        drop(ctx);
        let mut hw = unit.hw.lock();
        let (regs, phys) = (&*unit.regs, &*unit.phys);
        if let Some(old) = old {
            // Present → present (should not happen: we track attachments): treat like detach.
            hw.inval.context(regs, phys, ContextScope::Device { domain: old.domain_id, source })?;
            crate::trace::iotlb(&unit.name, IotlbScope::Domain(old.domain_id));
            hw.inval.iotlb(regs, phys, IotlbScope::Domain(old.domain_id))?;
        } else if unit.cap.caching_mode() {
            hw.inval.context(regs, phys, ContextScope::Device { domain: 0, source })?;
            crate::trace::iotlb(&unit.name, IotlbScope::Domain(self.id));
            hw.inval.iotlb(regs, phys, IotlbScope::Domain(self.id))?;
        } else {
            hw.inval.flush_write_buffer(regs)?;
        }
        log::info!("{}: {source} attached to domain {} ({}-bit IOVAs)", unit.name, self.id, unit.width);
        Ok(())
    }

    /// Clears `source`'s context entry; its DMA faults from now on. Invalidates the device's
    /// context-cache entry, then the domain's IOTLB (§6.5.3.3 order: the context first, so no
    /// new translations are cached through it).
    pub fn detach(&self, source: SourceId) -> Result<(), DomainError> {
        let mut st = self.state.lock();
        self.detach_locked(&mut st, source)
    }

    fn detach_locked(&self, st: &mut DomainState, source: SourceId) -> Result<(), DomainError> {
        let unit = &self.unit;
        let mut ctx = unit.ctx.lock();
        if ctx.attached.get(&source) != Some(&self.id) {
            return Err(DomainError::NotAttached { source });
        }
        ctx.tables.clear(&unit.mem, source);
        ctx.attached.remove(&source);
        st.devices.retain(|d| *d != source);
        drop(ctx);
        let mut hw = unit.hw.lock();
        hw.inval.context(&*unit.regs, &*unit.phys, ContextScope::Device { domain: self.id, source })?;
        crate::trace::iotlb(&unit.name, IotlbScope::Domain(self.id));
        hw.inval.iotlb(&*unit.regs, &*unit.phys, IotlbScope::Domain(self.id))?;
        log::info!("{}: {source} detached from domain {}", unit.name, self.id);
        Ok(())
    }

    /// Maps `len` bytes at `phys` for devices in this domain with `perms`, and returns the IOVA
    /// of the byte at `phys` (the page offset is kept). The IOVA is chosen by the allocator
    /// below `limit` (the device's DMA mask), or is `fixed` (for identity maps such as RMRRs;
    /// page offsets must then match). With caching mode the new range is invalidated (see the
    /// module documentation).
    pub fn map(
        &self,
        fixed: Option<u64>,
        phys: PhysAddr,
        len: usize,
        perms: Perms,
        limit: u64,
    ) -> Result<u64, DomainError> {
        if len == 0 {
            return Err(DomainError::ZeroLength);
        }
        if !perms.any() {
            return Err(DomainError::NoPermissions);
        }
        let offset = phys.0 % PAGE;
        let span = (offset.checked_add(len as u64).ok_or(DomainError::BadRange)?).div_ceil(PAGE) * PAGE;
        let base = PhysAddr(phys.0 - offset);
        base.0.checked_add(span).ok_or(DomainError::BadRange)?;
        let unit = &self.unit;
        let mut st = self.state.lock();
        let iova = match fixed {
            Some(f) => {
                if f % PAGE != offset {
                    return Err(DomainError::Iova(IovaError::BadRange { iova: f }));
                }
                st.iova.reserve(f - offset, span)?;
                f - offset
            }
            None => st.iova.alloc(span, limit.min(self.max_iova()))?,
        };
        let Some(tables) = st.tables.as_mut() else {
            return Err(DomainError::Table(TableError::OutOfMemory));
        };
        let new_tables = match tables.map(&unit.mem, iova, base, span, perms) {
            Ok(r) => {
                st.stats.maps += 1;
                st.stats.pages_2m += r.pages_2m as u64;
                st.stats.pages_1g += r.pages_1g as u64;
                st.stats.superpages_live += (r.pages_2m + r.pages_1g) as u64;
                r.new_tables
            }
            Err(e) => {
                // Entries may have been present for a moment: invalidate before reuse.
                st.stats.invalidations += 1;
                if unit.invalidate_range(self.id, iova, span, false).is_ok() {
                    let _ = st.iova.free_invalidated(iova);
                } else {
                    let _ = st.iova.free_deferred(iova);
                }
                return Err(e.into());
            }
        };
        if unit.cap.caching_mode() {
            // New tables are new non-leaf entries: then the paging-structure caches need it too.
            st.stats.invalidations += 1;
            if let Err(e) = unit.invalidate_range(self.id, iova, span, new_tables == 0) {
                self.unmap_locked(&mut st, iova, span)?;
                return Err(e.into());
            }
        } else {
            unit.hw.lock().inval.flush_write_buffer(&*unit.regs)?;
        }
        Ok(iova + offset)
    }

    /// Identity-maps a firmware-reserved region (a DMAR RMRR, §8.4: memory that firmware-owned
    /// DMA such as USB legacy emulation keeps using) for this domain's devices, read/write, so
    /// turning translation on does not break it. `base` and `len` are whole pages.
    pub fn map_identity(&self, base: u64, len: u64) -> Result<(), DomainError> {
        let len = usize::try_from(len).map_err(|_| DomainError::BadRange)?;
        self.map(Some(base), PhysAddr(base), len, Perms::READ_WRITE, u64::MAX).map(|_| ())
    }

    /// Ends the mapping that `map` returned `iova` for (`len` as passed to `map`). Strict
    /// domains invalidate the range and wait before returning; deferred ones queue it (see
    /// [`UnmapPolicy`]).
    pub fn unmap(&self, iova: u64, len: usize) -> Result<(), DomainError> {
        let offset = iova % PAGE;
        let asked = (offset + len as u64).div_ceil(PAGE) * PAGE;
        let mut st = self.state.lock();
        let start = iova - offset;
        let mapped = st.iova.allocation(start).ok_or(DomainError::NotMapped { iova })?;
        if mapped != asked {
            return Err(DomainError::LengthMismatch { iova, mapped, asked });
        }
        self.unmap_locked(&mut st, start, mapped)
    }

    /// Ends several mappings at once (each `(iova, len)` as [`Domain::unmap`] takes it). In a
    /// strict domain every range's entries are cleared first, then each range gets one
    /// page-selective invalidation (with its address mask) and **one wait descriptor covers
    /// them all**; only when that completed are the IOVAs released and emptied tables freed —
    /// the same guarantee as `unmap`, with one round trip to the unit instead of one per range.
    /// Deferred domains queue each range as `unmap` does. On an error, ranges already cleared
    /// are quarantined until a later flush succeeds, as in `unmap`.
    pub fn unmap_many(&self, ranges: &[(u64, usize)]) -> Result<(), DomainError> {
        let mut st = self.state.lock();
        // Check every range before touching any.
        let mut spans = Vec::with_capacity(ranges.len());
        for &(iova, len) in ranges {
            let offset = iova % PAGE;
            let asked = (offset + len as u64).div_ceil(PAGE) * PAGE;
            let start = iova - offset;
            let mapped = st.iova.allocation(start).ok_or(DomainError::NotMapped { iova })?;
            if mapped != asked {
                return Err(DomainError::LengthMismatch { iova, mapped, asked });
            }
            spans.push((start, mapped));
        }
        if st.policy != UnmapPolicy::Strict || spans.len() == 1 {
            for (start, len) in spans {
                self.unmap_locked(&mut st, start, len)?;
            }
            return Ok(());
        }
        let unit = self.unit.clone();
        let mut cleared = Vec::with_capacity(spans.len());
        let mut first_error = None;
        for (start, len) in spans {
            let Some(tables) = st.tables.as_mut() else { return Err(DomainError::NotMapped { iova: start }) };
            match tables.unmap(&unit.mem, start, len) {
                Ok(report) => cleared.push((start, len, report)),
                Err(e) => {
                    first_error = Some(DomainError::from(e));
                    break;
                }
            }
        }
        st.stats.unmaps += cleared.len() as u64;
        let large: usize = cleared.iter().map(|(_, _, r)| r.large_leaves).sum();
        st.stats.superpages_live = st.stats.superpages_live.saturating_sub(large as u64);
        let scopes: Option<Vec<_>> = cleared
            .iter()
            .map(|(start, len, r)| {
                let leaf_only = r.freed_tables.is_empty() && r.splits == 0;
                page_scope(self.id, *start, *len, unit.cap.mamv(), leaf_only).filter(|_| unit.cap.psi())
            })
            .collect();
        // A range no single page-selective request covers: one domain-wide one covers them all.
        let scopes = scopes.unwrap_or_else(|| alloc::vec![IotlbScope::Domain(self.id)]);
        st.stats.invalidations += scopes.len() as u64;
        let result = unit.hw.lock().inval.iotlb_many(&*unit.regs, &*unit.phys, &scopes);
        if let Err(e) = result {
            let g = st.iova.generation();
            for (start, _, r) in &cleared {
                let _ = st.iova.free_deferred(*start);
                st.pending_tables.extend(r.freed_tables.iter().map(|t| (g, *t)));
            }
            return Err(e.into());
        }
        for (start, _, r) in cleared {
            st.iova.free_invalidated(start)?;
            self.free_tables(&mut st, &r.freed_tables);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn unmap_locked(&self, st: &mut DomainState, start: u64, len: u64) -> Result<(), DomainError> {
        let unit = &self.unit;
        let Some(tables) = st.tables.as_mut() else {
            return Err(DomainError::NotMapped { iova: start });
        };
        let report = tables.unmap(&unit.mem, start, len)?;
        st.stats.unmaps += 1;
        st.stats.superpages_live = st.stats.superpages_live.saturating_sub(report.large_leaves as u64);
        match st.policy {
            UnmapPolicy::Strict => {
                let leaf_only = report.freed_tables.is_empty() && report.splits == 0;
                st.stats.invalidations += 1;
                if let Err(e) = unit.invalidate_range(self.id, start, len, leaf_only) {
                    // Quarantine: released only after a later successful flush.
                    let g = st.iova.generation();
                    let _ = st.iova.free_deferred(start);
                    st.pending_tables.extend(report.freed_tables.iter().map(|t| (g, *t)));
                    return Err(e.into());
                }
                st.iova.free_invalidated(start)?;
                self.free_tables(st, &report.freed_tables);
            }
            UnmapPolicy::Deferred { batch } => {
                let g = st.iova.generation();
                st.iova.free_deferred(start)?;
                st.pending_tables.extend(report.freed_tables.iter().map(|t| (g, *t)));
                st.unflushed += 1;
                if st.unflushed >= batch {
                    self.flush_locked(st)?;
                }
            }
        }
        Ok(())
    }

    fn free_tables(&self, st: &mut DomainState, tables: &[PhysAddr]) {
        for t in tables {
            // SAFETY: the table was unlinked by `PageTable::unmap`, and the invalidation that
            // followed (with IH = 0, so paging-structure caches too) has completed.
            unsafe { self.unit.mem.free_table(*t) };
        }
        if let Some(pt) = st.tables.as_mut() {
            pt.tables_freed(tables.len());
        }
    }

    /// Invalidates the whole domain's IOTLB and releases every range (and table) that waited
    /// for it. Deferred domains call this every `batch` unmaps; call it to close the window
    /// sooner.
    pub fn flush(&self) -> Result<(), DomainError> {
        let mut st = self.state.lock();
        self.flush_locked(&mut st)
    }

    fn flush_locked(&self, st: &mut DomainState) -> Result<(), DomainError> {
        let g = st.iova.begin_flush();
        st.stats.invalidations += 1;
        self.unit.invalidate_iotlb(IotlbScope::Domain(self.id))?;
        st.iova.flush_completed(g);
        let (done, keep): (Vec<_>, Vec<_>) = st.pending_tables.drain(..).partition(|(tg, _)| *tg <= g);
        st.pending_tables = keep;
        let done: Vec<PhysAddr> = done.into_iter().map(|(_, t)| t).collect();
        self.free_tables(st, &done);
        st.unflushed = 0;
        st.stats.flushes += 1;
        Ok(())
    }

    /// Translates `iova` through this domain's tables in software, as the unit would
    /// (`bus_to_phys` for a mapper, and debugging).
    pub fn translate(&self, iova: u64, access: AccessKind) -> Result<Translation, FaultReason> {
        let ctx =
            ContextLookup { domain_id: self.id, table: Some(self.top), levels: self.levels, width: self.unit.width };
        let _guard = self.state.lock();
        walk_tables(&**self.unit.mem.phys(), &self.unit.walk, &ctx, iova, access)
    }
}

impl Drop for Domain {
    /// Tears the domain down safely: devices still attached are detached first (their DMA
    /// faults from then on, which is safe), pending unmaps are flushed, and only then are the
    /// tables freed. If an invalidation fails the tables are leaked (quarantined), never freed
    /// while the unit might still walk them.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        let devices = core::mem::take(&mut st.devices);
        let mut st = core::mem::replace(
            st,
            DomainState {
                tables: None,
                iova: IovaAllocator::new(13),
                policy: UnmapPolicy::Strict,
                pending_tables: Vec::new(),
                unflushed: 0,
                devices: Vec::new(),
                stats: DomainStats::default(),
            },
        );
        let mut ok = true;
        for d in devices {
            st.devices.push(d);
            log::warn!("{}: domain {} dropped with {d} attached; detaching it", self.unit.name, self.id);
            ok &= self.detach_locked(&mut st, d).is_ok();
        }
        ok &= self.unit.invalidate_iotlb(IotlbScope::Domain(self.id)).is_ok();
        let mut ctx = self.unit.ctx.lock();
        ctx.domains = ctx.domains.saturating_sub(1);
        if !ok {
            log::error!("{}: domain {} teardown could not invalidate; its tables are leaked", self.unit.name, self.id);
            return;
        }
        release_id(&mut ctx.ids, self.id);
        drop(ctx);
        for (_, t) in st.pending_tables.drain(..) {
            // SAFETY: unlinked tables, and the domain-wide invalidation above completed.
            unsafe { self.unit.mem.free_table(t) };
        }
        if let Some(t) = st.tables.take() {
            // SAFETY: no context entry points at the domain any more (detached above, with
            // context-cache and IOTLB invalidation), and the domain's IOTLB was invalidated.
            unsafe { t.destroy(&self.unit.mem) };
        }
    }
}
