//! The remapping unit's registers (VT-d spec §10.4): offsets, bit layouts, decoders, and the
//! [`VtdRegisters`] trait the driver talks through.
//!
//! A unit's registers are a 4 KiB (or larger, DMAR `size` field) block of memory-mapped I/O.
//! The driver never touches them except through [`VtdRegisters`], so the same code runs
//! against real MMIO in the kernel ([`MmioRegisters`]) and against the simulated unit in
//! [`super::sim`] on the host.
//!
//! Two registers have no fixed offset: the IOTLB invalidation pair lives at `ECAP.IRO × 16`
//! (IVA, then IOTLB at +8), and the fault recording registers at `CAP.FRO × 16` (16 bytes
//! each, `CAP.NFR + 1` of them). Their offsets come from the capability registers, which
//! [`Cap`] and [`Ecap`] decode.
//!
//! # Example
//! How the driver learns what a unit can do: read CAP and ECAP through [`VtdRegisters`] and
//! decode them. The simulated unit answers here; after bring-up its status register (GSTS)
//! reports translation on.
//! ```
//! # use std::sync::Arc;
//! # use dma::{sim::SimMemory, PhysMemory};
//! use iommu_vtd::regs::{self, Cap, Ecap, SAGAW_48, VtdRegisters, gcmd};
//! use iommu_vtd::sim::{SIM_FAULT_OFFSET, SIM_IOTLB_OFFSET, SimConfig, SimUnit};
//! use iommu_vtd::{Unit, UnitConfig};
//! # let phys: Arc<dyn PhysMemory> = SimMemory::low_and_high(8 << 20, 8 << 20);
//! let sim = SimUnit::new(phys.clone(), SimConfig::default());
//! let (cap, ecap) = (Cap(sim.read64(regs::CAP)), Ecap(sim.read64(regs::ECAP)));
//! assert_eq!(cap.mgaw(), 48); // IOVAs up to 48 bits...
//! assert_ne!(cap.sagaw() & SAGAW_48, 0); // ...with 4-level tables
//! assert!(cap.supports_2m() && cap.supports_1g() && cap.psi());
//! assert_eq!(cap.fault_recording_offset(), SIM_FAULT_OFFSET); // CAP.FRO x 16
//! assert_eq!(ecap.iotlb_offset(), SIM_IOTLB_OFFSET); // ECAP.IRO x 16
//! assert!(ecap.qi() && ecap.coherent());
//! assert!(cap.to_string().starts_with("domains=256 sagaw=39,48 mgaw=48"));
//!
//! assert_eq!(sim.read32(regs::GSTS) & gcmd::TE, 0); // out of reset: translation off
//! let _unit = Unit::bring_up("dmar0", sim.clone(), phys.clone(), UnitConfig::default()).unwrap();
//! assert_ne!(sim.read32(regs::GSTS) & gcmd::TE, 0); // GSTS.TES
//! ```

use alloc::string::String;
use alloc::sync::Arc;
use core::fmt;
use core::fmt::Write as _;

/// Version register (32-bit, RO): major in bits 7..4, minor in bits 3..0 (§10.4.1).
pub const VER: usize = 0x00;
/// Capability register (64-bit, RO) (§10.4.2). See [`Cap`].
pub const CAP: usize = 0x08;
/// Extended capability register (64-bit, RO) (§10.4.3). See [`Ecap`].
pub const ECAP: usize = 0x10;
/// Global command register (32-bit, WO) (§10.4.4).
pub const GCMD: usize = 0x18;
/// Global status register (32-bit, RO) (§10.4.5).
pub const GSTS: usize = 0x1C;
/// Root table address register (64-bit) (§10.4.6).
pub const RTADDR: usize = 0x20;
/// Context command register (64-bit) (§10.4.7).
pub const CCMD: usize = 0x28;
/// Fault status register (32-bit) (§10.4.9).
pub const FSTS: usize = 0x34;
/// Fault event control register (32-bit) (§10.4.10).
pub const FECTL: usize = 0x38;
/// Fault event data register (32-bit): the MSI data of the fault interrupt (§10.4.11).
pub const FEDATA: usize = 0x3C;
/// Fault event address register (32-bit): the MSI address of the fault interrupt (§10.4.12).
pub const FEADDR: usize = 0x40;
/// Fault event upper address register (32-bit) (§10.4.13).
pub const FEUADDR: usize = 0x44;
/// Advanced fault log register (64-bit) (§10.4.15).
pub const AFLOG: usize = 0x58;
/// Protected memory enable register (32-bit) (§10.4.16).
pub const PMEN: usize = 0x64;
/// Invalidation queue head (64-bit, RO): byte offset of the next descriptor the unit will
/// fetch (§10.4.22).
pub const IQH: usize = 0x80;
/// Invalidation queue tail (64-bit): byte offset where software writes the next descriptor
/// (§10.4.23).
pub const IQT: usize = 0x88;
/// Invalidation queue address (64-bit): base, descriptor width and size (§10.4.24).
pub const IQA: usize = 0x90;
/// Invalidation completion status (32-bit): IWC, set by a wait descriptor with IF (§10.4.25).
pub const ICS: usize = 0x9C;
/// Invalidation queue error record (64-bit, RO, spec rev 3.0 and later): why the unit set
/// FSTS.IQE, in [`iqercd::iqei`]. Units without it (and QEMU 7.2) read 0 there, "info not
/// available"; Linux 6.1 (drivers/iommu/intel/dmar.c, `qi_dump_fault`) reads it on every
/// unit for the same reason.
pub const IQERCD: usize = 0xB0;

/// GCMD/GSTS bit positions (§10.4.4, §10.4.5). The command bit and its status bit share a
/// position.
pub mod gcmd {
    /// Translation enable / translation enable status (persistent).
    pub const TE: u32 = 1 << 31;
    /// Set root table pointer / root table pointer status (one-shot).
    pub const SRTP: u32 = 1 << 30;
    /// Set fault log (one-shot).
    pub const SFL: u32 = 1 << 29;
    /// Enable advanced fault logging (persistent).
    pub const EAFL: u32 = 1 << 28;
    /// Write buffer flush (one-shot; status bit clears when done).
    pub const WBF: u32 = 1 << 27;
    /// Queued invalidation enable (persistent).
    pub const QIE: u32 = 1 << 26;
    /// Interrupt remapping enable (persistent).
    pub const IRE: u32 = 1 << 25;
    /// Set interrupt remap table pointer (one-shot).
    pub const SIRTP: u32 = 1 << 24;
    /// Compatibility format interrupt (persistent).
    pub const CFI: u32 = 1 << 23;
    /// The status bits that describe a *state* rather than a completed one-shot command. To
    /// change one GCMD bit, software reads GSTS, keeps only these, flips the one it wants and
    /// writes GCMD (§10.4.4: "Status = GSTS_REG & 0x96FFFFFF"): writing a one-shot bit again
    /// would repeat its command, and leaving a persistent bit out would turn that feature off.
    pub const PERSISTENT: u32 = 0x96FF_FFFF;
}

/// CCMD bits (§10.4.7).
pub mod ccmd {
    /// Invalidate context cache: set by software, cleared by hardware when done.
    pub const ICC: u64 = 1 << 63;
    /// Request granularity: global (CIRG = 01b).
    pub const GLOBAL: u64 = 1 << 61;
    /// Request granularity: domain-selective (CIRG = 10b).
    pub const DOMAIN: u64 = 2 << 61;
    /// Request granularity: device-selective (CIRG = 11b).
    pub const DEVICE: u64 = 3 << 61;
    /// Shift of the source-id field.
    pub const SID_SHIFT: u32 = 16;
    /// Shift of the function-mask field (bits 33..32).
    pub const FM_SHIFT: u32 = 32;
    /// Actual granularity (CAIG, bits 60..59) reported by hardware.
    pub const fn caig(v: u64) -> u64 {
        (v >> 59) & 3
    }
}

/// IOTLB invalidate register bits (at `ECAP.IRO × 16 + 8`) and IVA (at `ECAP.IRO × 16`)
/// (§10.4.8.1, §10.4.8.2).
pub mod iotlb {
    /// Invalidate IOTLB: set by software, cleared by hardware when done.
    pub const IVT: u64 = 1 << 63;
    /// Granularity global (IIRG = 01b).
    pub const GLOBAL: u64 = 1 << 60;
    /// Granularity domain-selective (IIRG = 10b).
    pub const DOMAIN: u64 = 2 << 60;
    /// Granularity page-selective within domain (IIRG = 11b), address in IVA.
    pub const PAGE: u64 = 3 << 60;
    /// Drain reads before completing.
    pub const DR: u64 = 1 << 49;
    /// Drain writes before completing.
    pub const DW: u64 = 1 << 48;
    /// Shift of the domain-id field (bits 47..32).
    pub const DID_SHIFT: u32 = 32;
    /// Actual granularity (IAIG, bits 58..57); 0 means the request was not performed.
    pub const fn iaig(v: u64) -> u64 {
        (v >> 57) & 3
    }
    /// IVA: invalidation hint — only leaf entries changed, paging-structure caches may stay.
    pub const IVA_IH: u64 = 1 << 6;
}

/// FSTS bits (§10.4.9).
pub mod fsts {
    /// Primary fault overflow (RW1C): a fault happened while all recording registers were full.
    pub const PFO: u32 = 1 << 0;
    /// Primary pending fault (RO): at least one recording register has F set.
    pub const PPF: u32 = 1 << 1;
    /// Invalidation queue error (RW1C): a bad descriptor stopped the queue.
    pub const IQE: u32 = 1 << 4;
    /// Invalidation completion error (RW1C), device-TLB invalidation.
    pub const ICE: u32 = 1 << 5;
    /// Invalidation time-out error (RW1C), device-TLB invalidation.
    pub const ITE: u32 = 1 << 6;
    /// Fault record index (bits 15..8): the first recording register holding a fault.
    pub const fn fri(v: u32) -> u32 {
        (v >> 8) & 0xff
    }
}

/// IQERCD fields (Invalidation Queue Error Record register, spec rev 3.0 and later).
pub mod iqercd {
    /// Invalidation Queue Error Info (bits 3:0), valid while FSTS.IQE is set: 0 info not
    /// available, 1 invalid tail pointer, 2 descriptor fetch failed, 3 invalid descriptor
    /// type, 4 reserved field set in a valid descriptor type, 5 invalid descriptor width.
    pub const fn iqei(v: u64) -> u8 {
        (v & 0xf) as u8
    }
}

/// FECTL bits (§10.4.10).
pub mod fectl {
    /// Interrupt mask.
    pub const IM: u32 = 1 << 31;
    /// Interrupt pending.
    pub const IP: u32 = 1 << 30;
}

/// IQA fields (§10.4.24).
pub mod iqa {
    /// Descriptor width: 0 = 128-bit descriptors (what this driver uses), 1 = 256-bit.
    pub const DW_256: u64 = 1 << 11;
    /// Queue size field (bits 2..0): the queue is 2^QS 4 KiB pages.
    pub const QS_MASK: u64 = 7;
}

/// Register access to one remapping unit. Offsets are in bytes from the register base.
///
/// The hardware requires 64-bit registers to be read and written either as one 64-bit access
/// or as two 32-bit ones, low half first (§10.2); implementations do one 64-bit access.
pub trait VtdRegisters: Send + Sync {
    /// Reads a 32-bit register.
    fn read32(&self, offset: usize) -> u32;
    /// Reads a 64-bit register.
    fn read64(&self, offset: usize) -> u64;
    /// Writes a 32-bit register.
    fn write32(&self, offset: usize, value: u32);
    /// Writes a 64-bit register.
    fn write64(&self, offset: usize, value: u64);
}

impl<T: VtdRegisters + ?Sized> VtdRegisters for Arc<T> {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn read64(&self, offset: usize) -> u64 {
        (**self).read64(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn write64(&self, offset: usize, value: u64) {
        (**self).write64(offset, value)
    }
}

/// A unit's registers, memory mapped: what the kernel uses.
///
/// Accesses outside the mapped size are ignored (reads return all ones, like a bus error),
/// so a bogus `CAP.FRO` or `ECAP.IRO` from broken hardware cannot make the driver touch
/// memory beyond the register block.
pub struct MmioRegisters {
    base: *mut u8,
    len: usize,
}

// SAFETY: MMIO registers are reachable from every CPU; each access is a single volatile load
// or store, and the driver serialises command sequences with its own locks.
unsafe impl Send for MmioRegisters {}
// SAFETY: as above.
unsafe impl Sync for MmioRegisters {}

impl MmioRegisters {
    /// Register access through the mapping at `base`.
    ///
    /// # Safety
    /// `base..base+len` must map the unit's register block (DMAR DRHD `register_base`, at least
    /// 4 KiB) as uncacheable device memory, 8-byte aligned, for as long as the value lives, and
    /// nothing else may use it as ordinary memory.
    pub unsafe fn new(base: *mut u8, len: usize) -> MmioRegisters {
        MmioRegisters { base, len }
    }

    fn ptr(&self, offset: usize, size: usize) -> Option<*mut u8> {
        (offset.is_multiple_of(size) && offset.checked_add(size)? <= self.len).then(|| {
            // SAFETY: the offset is inside the mapped block (checked above).
            unsafe { self.base.add(offset) }
        })
    }
}

impl VtdRegisters for MmioRegisters {
    fn read32(&self, offset: usize) -> u32 {
        match self.ptr(offset, 4) {
            // SAFETY: `ptr` checked the access lies inside the register block the constructor's
            // contract says is mapped, and it is naturally aligned.
            Some(p) => unsafe { core::ptr::read_volatile(p as *const u32) },
            None => u32::MAX,
        }
    }
    fn read64(&self, offset: usize) -> u64 {
        match self.ptr(offset, 8) {
            // SAFETY: as in `read32`.
            Some(p) => unsafe { core::ptr::read_volatile(p as *const u64) },
            None => u64::MAX,
        }
    }
    fn write32(&self, offset: usize, value: u32) {
        if let Some(p) = self.ptr(offset, 4) {
            // SAFETY: as in `read32`.
            unsafe { core::ptr::write_volatile(p as *mut u32, value) }
        }
    }
    fn write64(&self, offset: usize, value: u64) {
        if let Some(p) = self.ptr(offset, 8) {
            // SAFETY: as in `read32`.
            unsafe { core::ptr::write_volatile(p as *mut u64, value) }
        }
    }
}

/// The version register: major.minor of the architecture the unit implements (§10.4.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Version(pub u32);

impl Version {
    /// Major version.
    pub const fn major(self) -> u32 {
        (self.0 >> 4) & 0xf
    }
    /// Minor version.
    pub const fn minor(self) -> u32 {
        self.0 & 0xf
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

const fn bit(v: u64, n: u32) -> bool {
    (v >> n) & 1 == 1
}

const fn field(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1 << width) - 1)
}

/// The capability register, decoded (§10.4.2).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u64);

/// SAGAW bit for a 39-bit, 3-level second-level table (context entry AW = 1).
pub const SAGAW_39: u8 = 1 << 1;
/// SAGAW bit for a 48-bit, 4-level second-level table (AW = 2).
pub const SAGAW_48: u8 = 1 << 2;
/// SAGAW bit for a 57-bit, 5-level second-level table (AW = 3).
pub const SAGAW_57: u8 = 1 << 3;

impl Cap {
    /// ND (bits 2..0): number of domain ids supported, 2^(4 + 2·ND). Reserved encodings
    /// (ND = 7) are treated as 2^16, the width of the field.
    pub const fn domains(self) -> u32 {
        let nd = field(self.0, 0, 3) as u32;
        if nd >= 7 { 1 << 16 } else { 1 << (4 + 2 * nd) }
    }
    /// AFL (bit 3): advanced fault logging.
    pub const fn afl(self) -> bool {
        bit(self.0, 3)
    }
    /// RWBF (bit 4): software must flush the unit's write buffer (GCMD.WBF) after changing
    /// tables, because the hardware may hold table writes in a buffer it does not snoop.
    pub const fn rwbf(self) -> bool {
        bit(self.0, 4)
    }
    /// PLMR (bit 5): protected low-memory region.
    pub const fn plmr(self) -> bool {
        bit(self.0, 5)
    }
    /// PHMR (bit 6): protected high-memory region.
    pub const fn phmr(self) -> bool {
        bit(self.0, 6)
    }
    /// CM (bit 7): caching mode. The unit (typically a virtual one, such as QEMU's with
    /// `caching-mode=on`) may cache *not-present* and invalid entries, so software must
    /// invalidate even after making an entry present (§6.1).
    pub const fn caching_mode(self) -> bool {
        bit(self.0, 7)
    }
    /// SAGAW (bits 12..8): supported adjusted guest address widths, one bit per table depth
    /// ([`SAGAW_39`], [`SAGAW_48`], [`SAGAW_57`]).
    pub const fn sagaw(self) -> u8 {
        field(self.0, 8, 5) as u8
    }
    /// MGAW (bits 21..16) + 1: the widest IOVA the unit translates, in bits.
    pub const fn mgaw(self) -> u32 {
        field(self.0, 16, 6) as u32 + 1
    }
    /// ZLR (bit 22): zero-length reads are supported.
    pub const fn zlr(self) -> bool {
        bit(self.0, 22)
    }
    /// FRO (bits 33..24) × 16: byte offset of the first fault recording register.
    pub const fn fault_recording_offset(self) -> usize {
        field(self.0, 24, 10) as usize * 16
    }
    /// SLLPS (bits 37..34): second-level large page sizes; bit 0 = 2 MiB, bit 1 = 1 GiB.
    pub const fn sllps(self) -> u8 {
        field(self.0, 34, 4) as u8
    }
    /// Whether 2 MiB second-level pages are supported.
    pub const fn supports_2m(self) -> bool {
        self.sllps() & 1 != 0
    }
    /// Whether 1 GiB second-level pages are supported.
    pub const fn supports_1g(self) -> bool {
        self.sllps() & 2 != 0
    }
    /// PSI (bit 39): page-selective IOTLB invalidation is supported.
    pub const fn psi(self) -> bool {
        bit(self.0, 39)
    }
    /// NFR (bits 47..40) + 1: number of fault recording registers.
    pub const fn fault_records(self) -> usize {
        field(self.0, 40, 8) as usize + 1
    }
    /// MAMV (bits 53..48): largest address mask (log2 pages) a page-selective invalidation
    /// may carry.
    pub const fn mamv(self) -> u32 {
        field(self.0, 48, 6) as u32
    }
    /// DWD (bit 54): write draining.
    pub const fn dwd(self) -> bool {
        bit(self.0, 54)
    }
    /// DRD (bit 55): read draining.
    pub const fn drd(self) -> bool {
        bit(self.0, 55)
    }
}

impl fmt::Debug for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cap({:#018x}: {self})", self.0)
    }
}

/// Names of the address widths set in a SAGAW field ("39,48").
pub fn sagaw_names(sagaw: u8) -> String {
    let mut s = String::new();
    for (b, name) in [(0u8, "30"), (1, "39"), (2, "48"), (3, "57"), (4, "64")] {
        if sagaw & (1 << b) != 0 {
            if !s.is_empty() {
                s.push(',');
            }
            s.push_str(name);
        }
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        let _ = write!(s, "domains={} sagaw={} mgaw={}", self.domains(), sagaw_names(self.sagaw()), self.mgaw());
        let pages = match (self.supports_2m(), self.supports_1g()) {
            (true, true) => "2M,1G",
            (true, false) => "2M",
            (false, true) => "1G",
            (false, false) => "4K-only",
        };
        let _ = write!(
            s,
            " sllps={pages} nfr={} fro={:#x} mamv={}",
            self.fault_records(),
            self.fault_recording_offset(),
            self.mamv()
        );
        for (on, name) in [
            (self.caching_mode(), "CM"),
            (self.psi(), "PSI"),
            (self.rwbf(), "RWBF"),
            (self.afl(), "AFL"),
            (self.plmr(), "PLMR"),
            (self.phmr(), "PHMR"),
            (self.zlr(), "ZLR"),
            (self.dwd(), "DWD"),
            (self.drd(), "DRD"),
        ] {
            if on {
                s.push(' ');
                s.push_str(name);
            }
        }
        f.write_str(&s)
    }
}

/// The extended capability register, decoded (§10.4.3).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ecap(pub u64);

impl Ecap {
    /// C (bit 0): page walks snoop the CPU caches. When clear, every table write must be
    /// flushed from the CPU cache (clflush) before the unit may read it.
    pub const fn coherent(self) -> bool {
        bit(self.0, 0)
    }
    /// QI (bit 1): queued invalidation is supported.
    pub const fn qi(self) -> bool {
        bit(self.0, 1)
    }
    /// DT (bit 2): device-TLBs (ATS) are supported.
    pub const fn dt(self) -> bool {
        bit(self.0, 2)
    }
    /// IR (bit 3): interrupt remapping is supported.
    pub const fn ir(self) -> bool {
        bit(self.0, 3)
    }
    /// EIM (bit 4): extended (x2APIC) interrupt mode.
    pub const fn eim(self) -> bool {
        bit(self.0, 4)
    }
    /// PT (bit 6): pass-through translation type.
    pub const fn pt(self) -> bool {
        bit(self.0, 6)
    }
    /// SC (bit 7): snoop control.
    pub const fn sc(self) -> bool {
        bit(self.0, 7)
    }
    /// IRO (bits 17..8) × 16: byte offset of the IVA register; the IOTLB register is 8 bytes
    /// after it.
    pub const fn iotlb_offset(self) -> usize {
        field(self.0, 8, 10) as usize * 16
    }
    /// MHMV (bits 23..20): maximum handle mask value (interrupt remapping).
    pub const fn mhmv(self) -> u32 {
        field(self.0, 20, 4) as u32
    }
    /// NEST (bit 26): nested translation.
    pub const fn nest(self) -> bool {
        bit(self.0, 26)
    }
    /// SMTS (bit 43): scalable-mode translation (this driver uses legacy mode).
    pub const fn smts(self) -> bool {
        bit(self.0, 43)
    }
}

impl fmt::Debug for Ecap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ecap({:#018x}: {self})", self.0)
    }
}

impl fmt::Display for Ecap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iro={:#x} mhmv={}", self.iotlb_offset(), self.mhmv())?;
        for (on, name) in [
            (self.coherent(), "C"),
            (self.qi(), "QI"),
            (self.dt(), "DT"),
            (self.ir(), "IR"),
            (self.eim(), "EIM"),
            (self.pt(), "PT"),
            (self.sc(), "SC"),
            (self.nest(), "NEST"),
            (self.smts(), "SMTS"),
        ] {
            if on {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

/// How many times a status bit is polled before the unit is declared unresponsive. Each poll
/// is an uncached MMIO read (~1 µs on real hardware, so about ten seconds in all; Linux
/// panics after ten seconds, we report an error instead).
pub const POLL_LIMIT: u32 = 10_000_000;

/// Reads `offset` until `done(value)` holds, at most [`POLL_LIMIT`] times. Returns the last
/// value read, or `None` on time-out.
pub fn poll32(regs: &dyn VtdRegisters, offset: usize, done: impl Fn(u32) -> bool) -> Option<u32> {
    for _ in 0..POLL_LIMIT {
        let v = regs.read32(offset);
        if done(v) {
            return Some(v);
        }
        core::hint::spin_loop();
    }
    None
}

/// Reads a 64-bit register until `done(value)` holds; as [`poll32`].
pub fn poll64(regs: &dyn VtdRegisters, offset: usize, done: impl Fn(u64) -> bool) -> Option<u64> {
    for _ in 0..POLL_LIMIT {
        let v = regs.read64(offset);
        if done(v) {
            return Some(v);
        }
        core::hint::spin_loop();
    }
    None
}

/// Turns one *persistent* GCMD bit (TE, QIE, IRE, ...) on or off and waits until GSTS shows
/// it (§10.4.4). The value written is GSTS's persistent bits with only `bit` changed, so no
/// other feature is switched and no one-shot command is repeated. `false` on time-out.
pub fn set_gcmd(regs: &dyn VtdRegisters, bit: u32, on: bool) -> bool {
    let status = regs.read32(GSTS) & gcmd::PERSISTENT;
    let cmd = if on { status | bit } else { status & !bit };
    regs.write32(GCMD, cmd);
    poll32(regs, GSTS, |s| (s & bit != 0) == on).is_some()
}

/// Issues a *one-shot* GCMD command (SRTP, WBF, SFL, SIRTP) on top of the persistent bits,
/// then waits until its GSTS bit is set (SRTP, SIRTP, SFL: "done" is set) or clear (WBF: busy
/// while set), as `done_when_set` says. `false` on time-out.
pub fn gcmd_oneshot(regs: &dyn VtdRegisters, bit: u32, done_when_set: bool) -> bool {
    let status = regs.read32(GSTS) & gcmd::PERSISTENT;
    regs.write32(GCMD, status | bit);
    poll32(regs, GSTS, |s| (s & bit != 0) == done_when_set).is_some()
}
