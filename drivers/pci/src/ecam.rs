//! ECAM: configuration space as memory.
//!
//! PCIe Base Spec 3.0, §7.2.2 "PCI Express Enhanced Configuration Access Mechanism (ECAM)",
//! Table 7-1: within a segment's window, the byte address of a register is
//!
//! ```text
//! (bus - bus_start) << 20 | device << 15 | function << 12 | offset
//! ```
//!
//! so each bus takes 1 MiB, each device 32 KiB, and each function a 4 KiB page. ACPI's MCFG
//! table lists one window per segment group: physical base, segment, first and last bus
//! (PCI Firmware Spec 3.0, §4.1.2). The kernel maps each window uncached (it is MMIO, not RAM)
//! and hands this module the virtual address it chose, as a [`MappedEcamRegion`].
//!
//! Accesses are single volatile 32-bit loads and stores: the spec allows other sizes, but
//! dword accesses are what every root complex supports and what mechanism #1 offers too.

use alloc::vec::Vec;
use core::fmt;

use pci_types::{ConfigRegionAccess, PciAddress};

use crate::access::CheckedConfigAccess;

/// Bytes of configuration space per bus in an ECAM window (32 devices × 8 functions × 4 KiB).
pub const ECAM_BYTES_PER_BUS: usize = 1 << 20;

/// Bytes of configuration space per function (PCIe extended configuration space).
pub const CONFIG_SPACE_SIZE: u16 = 4096;

/// The byte offset of `(bus, device, function, offset)` inside an ECAM window whose first bus
/// is `bus_start`. PCIe Base Spec 3.0, §7.2.2, Table 7-1.
///
/// Returns `None` for anything the window cannot hold: `bus < bus_start`, `device > 31`,
/// `function > 7`, `offset >= 4096`. The caller still checks `bus <= bus_end`.
pub const fn ecam_offset(bus_start: u8, bus: u8, device: u8, function: u8, offset: u16) -> Option<usize> {
    if bus < bus_start || device > 31 || function > 7 || offset >= CONFIG_SPACE_SIZE {
        return None;
    }
    Some(((bus - bus_start) as usize) << 20 | (device as usize) << 15 | (function as usize) << 12 | offset as usize)
}

/// The size in bytes of the ECAM window for buses `bus_start..=bus_end`, or 0 if the range is
/// empty. The kernel maps this many bytes.
pub const fn ecam_window_size(bus_start: u8, bus_end: u8) -> usize {
    if bus_end < bus_start { 0 } else { (bus_end as usize - bus_start as usize + 1) * ECAM_BYTES_PER_BUS }
}

/// One ECAM window as ACPI MCFG describes it (PCI Firmware Spec 3.0, §4.1.2, Table 4-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamRegion {
    /// Physical address of the window (of bus `bus_start`, not necessarily bus 0).
    pub phys_base: u64,
    /// PCI segment group number.
    pub segment: u16,
    /// First bus decoded by this window.
    pub bus_start: u8,
    /// Last bus decoded by this window (inclusive).
    pub bus_end: u8,
}

impl EcamRegion {
    /// Bytes the window spans; map this many.
    pub const fn size(&self) -> usize {
        ecam_window_size(self.bus_start, self.bus_end)
    }

    /// Whether this window decodes `address`'s segment and bus.
    pub fn covers(&self, address: PciAddress) -> bool {
        address.segment() == self.segment && address.bus() >= self.bus_start && address.bus() <= self.bus_end
    }
}

/// An ECAM window together with the virtual address the kernel mapped it at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedEcamRegion {
    /// The window, as MCFG describes it.
    pub region: EcamRegion,
    /// Virtual address of the window's first byte, mapped uncached for `region.size()` bytes.
    pub virt_base: usize,
}

/// Why a set of ECAM windows was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcamError {
    /// The window's last bus is below its first bus.
    EmptyBusRange {
        /// The PCI segment group.
        segment: u16,
        /// First bus the region claims.
        bus_start: u8,
        /// Last bus the region claims (below the first).
        bus_end: u8,
    },
    /// The virtual base is not 4 KiB aligned, so it cannot be a mapping of the window.
    MisalignedVirtualBase {
        /// The PCI segment group.
        segment: u16,
        /// The virtual address the region was mapped at.
        virt_base: usize,
    },
    /// The window's virtual range wraps around the end of the address space.
    VirtualRangeOverflows {
        /// The PCI segment group.
        segment: u16,
        /// The virtual address the region was mapped at.
        virt_base: usize,
    },
    /// Two windows of one segment decode the same bus.
    OverlappingBuses {
        /// The PCI segment group.
        segment: u16,
        /// A bus that two regions both claim.
        bus: u8,
    },
}

impl fmt::Display for EcamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::EmptyBusRange { segment, bus_start, bus_end } => write!(
                f,
                "ECAM window for segment {segment:04x} has bus range {bus_start:02x}-{bus_end:02x} \
                 (end below start); check the MCFG entry, or fall back to port I/O"
            ),
            Self::MisalignedVirtualBase { segment, virt_base } => write!(
                f,
                "ECAM window for segment {segment:04x} mapped at {virt_base:#x}, which is not \
                 4 KiB aligned; map the window page-aligned"
            ),
            Self::VirtualRangeOverflows { segment, virt_base } => write!(
                f,
                "ECAM window for segment {segment:04x} at {virt_base:#x} runs past the end of \
                 the address space; map it lower"
            ),
            Self::OverlappingBuses { segment, bus } => write!(
                f,
                "two ECAM windows of segment {segment:04x} both decode bus {bus:02x}; \
                 the MCFG table is inconsistent, pass only one of them"
            ),
        }
    }
}

/// Configuration access through one or more mapped ECAM windows.
///
/// Addresses outside every window read as all-ones and writes to them are dropped, just like
/// a master abort on real hardware.
#[derive(Debug)]
pub struct EcamAccess {
    regions: Vec<MappedEcamRegion>,
}

impl EcamAccess {
    /// Builds an access over the given mapped windows, after checking that they are consistent.
    ///
    /// # Safety
    /// For every region, `virt_base..virt_base + region.size()` must be mapped (uncached, since
    /// it is MMIO) to the ECAM window at `region.phys_base`, or to memory that behaves like it,
    /// and must stay mapped and otherwise unused for the lifetime of the returned value.
    pub unsafe fn new(regions: Vec<MappedEcamRegion>) -> Result<Self, EcamError> {
        for (i, mapped) in regions.iter().enumerate() {
            let r = mapped.region;
            if r.bus_end < r.bus_start {
                return Err(EcamError::EmptyBusRange {
                    segment: r.segment,
                    bus_start: r.bus_start,
                    bus_end: r.bus_end,
                });
            }
            if mapped.virt_base % 4096 != 0 {
                return Err(EcamError::MisalignedVirtualBase { segment: r.segment, virt_base: mapped.virt_base });
            }
            if mapped.virt_base.checked_add(r.size()).is_none() {
                return Err(EcamError::VirtualRangeOverflows { segment: r.segment, virt_base: mapped.virt_base });
            }
            for other in &regions[..i] {
                let o = other.region;
                if o.segment == r.segment && o.bus_start <= r.bus_end && r.bus_start <= o.bus_end {
                    return Err(EcamError::OverlappingBuses { segment: r.segment, bus: r.bus_start.max(o.bus_start) });
                }
            }
        }
        Ok(Self { regions })
    }

    /// The windows this access covers.
    pub fn regions(&self) -> &[MappedEcamRegion] {
        &self.regions
    }

    /// The segment groups this access covers, each once, in ascending order. Enumerate each.
    pub fn segments(&self) -> Vec<u16> {
        let mut segments: Vec<u16> = self.regions.iter().map(|m| m.region.segment).collect();
        segments.sort_unstable();
        segments.dedup();
        segments
    }

    /// The virtual address of the dword holding `offset` of `address`, if a window covers it.
    fn register(&self, address: PciAddress, offset: u16) -> Option<*mut u32> {
        let mapped = self.regions.iter().find(|m| m.region.covers(address))?;
        let byte =
            ecam_offset(mapped.region.bus_start, address.bus(), address.device(), address.function(), offset & !3)?;
        // `byte < region.size()` because the bus is within `bus_start..=bus_end`, and
        // `virt_base + size` does not overflow (checked in `new`).
        Some((mapped.virt_base + byte) as *mut u32)
    }
}

impl ConfigRegionAccess for EcamAccess {
    unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
        match self.register(address, offset) {
            // SAFETY: `register` only returns dword-aligned addresses inside a window that the
            // caller of `new` promised is mapped for the lifetime of `self`.
            Some(ptr) => unsafe { ptr.read_volatile() },
            None => u32::MAX,
        }
    }

    unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
        if let Some(ptr) = self.register(address, offset) {
            // SAFETY: as for `read`: an aligned address inside a window mapped for `self`'s
            // lifetime.
            unsafe { ptr.write_volatile(value) }
        }
    }
}

// SAFETY: `read` and `write` check every address against the windows and every offset against
// 4 KiB (`ecam_offset`); anything uncovered reads as all-ones and is not written.
unsafe impl CheckedConfigAccess for EcamAccess {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::alloc::{Layout, alloc_zeroed, dealloc};
    use alloc::vec;

    #[test]
    fn offset_packs_bus_device_function_register() {
        assert_eq!(ecam_offset(0, 0, 0, 0, 0), Some(0));
        assert_eq!(ecam_offset(0, 1, 2, 3, 0x10), Some(1 << 20 | 2 << 15 | 3 << 12 | 0x10));
        assert_eq!(ecam_offset(0, 0, 0x1F, 2, 0), Some(0xF_A000));
        assert_eq!(ecam_offset(0, 255, 31, 7, 0xFFF), Some(0x0FFF_FFFF));
        assert_eq!(ecam_offset(0, 0, 0, 0, 0x100), Some(0x100), "extended config space");
    }

    #[test]
    fn offset_is_relative_to_the_first_bus_of_the_window() {
        assert_eq!(ecam_offset(0x10, 0x10, 0, 0, 0), Some(0));
        assert_eq!(ecam_offset(0x10, 0x12, 1, 0, 4), Some(2 << 20 | 1 << 15 | 4));
    }

    #[test]
    fn offset_refuses_what_the_window_cannot_hold() {
        assert_eq!(ecam_offset(0x10, 0x0F, 0, 0, 0), None, "bus below the window");
        assert_eq!(ecam_offset(0, 0, 32, 0, 0), None, "device 32");
        assert_eq!(ecam_offset(0, 0, 0, 8, 0), None, "function 8");
        assert_eq!(ecam_offset(0, 0, 0, 0, 4096), None, "offset past 4 KiB");
    }

    #[test]
    fn window_size_is_one_mib_per_bus() {
        assert_eq!(ecam_window_size(0, 0), 1 << 20);
        assert_eq!(ecam_window_size(0, 255), 256 << 20);
        assert_eq!(ecam_window_size(0x80, 0xFF), 128 << 20);
        assert_eq!(ecam_window_size(5, 4), 0);
    }

    /// Page-aligned zeroed heap memory standing in for a mapped ECAM window.
    struct FakeWindow {
        ptr: *mut u8,
        layout: Layout,
    }

    impl FakeWindow {
        fn new(buses: usize) -> Self {
            let layout = Layout::from_size_align(buses * ECAM_BYTES_PER_BUS, 4096).unwrap();
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            Self { ptr, layout }
        }

        fn dword(&self, byte_offset: usize) -> u32 {
            assert!(byte_offset + 4 <= self.layout.size());
            // SAFETY: in bounds (checked above) and 4-byte aligned by construction.
            unsafe { (self.ptr.add(byte_offset) as *const u32).read() }
        }
    }

    impl Drop for FakeWindow {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.ptr, self.layout) }
        }
    }

    fn region(segment: u16, bus_start: u8, bus_end: u8) -> EcamRegion {
        EcamRegion { phys_base: 0xB000_0000, segment, bus_start, bus_end }
    }

    #[test]
    fn reads_and_writes_land_at_the_ecam_offset() {
        let window = FakeWindow::new(2);
        let mapped = MappedEcamRegion { region: region(0, 0x20, 0x21), virt_base: window.ptr as usize };
        // SAFETY: the window is a live 2 MiB allocation that outlives `ecam`.
        let ecam = unsafe { EcamAccess::new(vec![mapped]) }.unwrap();
        let address = PciAddress::new(0, 0x21, 3, 1);
        // SAFETY: EcamAccess checks every access itself.
        unsafe {
            ecam.write(address, 0x10, 0xDEAD_BEEF);
            ecam.write(address, 0x17, 0x1234_5678); // unaligned: lands on 0x14
        }
        let base = 1 << 20 | 3 << 15 | 1 << 12;
        assert_eq!(window.dword(base + 0x10), 0xDEAD_BEEF);
        assert_eq!(window.dword(base + 0x14), 0x1234_5678);
        // SAFETY: as above.
        assert_eq!(unsafe { ecam.read(address, 0x10) }, 0xDEAD_BEEF);
    }

    #[test]
    fn addresses_outside_every_window_read_all_ones_and_drop_writes() {
        let window = FakeWindow::new(1);
        let mapped = MappedEcamRegion { region: region(0, 0, 0), virt_base: window.ptr as usize };
        // SAFETY: the window is a live 1 MiB allocation that outlives `ecam`.
        let ecam = unsafe { EcamAccess::new(vec![mapped]) }.unwrap();
        // SAFETY: EcamAccess checks every access itself.
        unsafe {
            assert_eq!(ecam.read(PciAddress::new(0, 1, 0, 0), 0), u32::MAX, "bus past the end");
            assert_eq!(ecam.read(PciAddress::new(1, 0, 0, 0), 0), u32::MAX, "other segment");
            assert_eq!(ecam.read(PciAddress::new(0, 0, 0, 0), 4096), u32::MAX, "offset >= 4K");
            assert_eq!(ecam.read(PciAddress::new(0, 0, 0, 0), 0), 0);
            ecam.write(PciAddress::new(0, 1, 0, 0), 0, 0x1111_1111);
            ecam.write(PciAddress::new(0, 0, 0, 0), 4096, 0x2222_2222);
        }
        assert!((0..ECAM_BYTES_PER_BUS).step_by(4).all(|o| window.dword(o) == 0));
        assert_eq!(ecam.segments(), vec![0]);
    }

    #[test]
    fn inconsistent_windows_are_refused() {
        let ok = MappedEcamRegion { region: region(0, 0, 0xFF), virt_base: 0x10_0000_0000 };
        let empty = MappedEcamRegion { region: region(1, 5, 4), virt_base: 0x20_0000_0000 };
        let misaligned = MappedEcamRegion { region: region(1, 0, 0), virt_base: 0x20_0000_0010 };
        let overlap = MappedEcamRegion { region: region(0, 0x80, 0x80), virt_base: 0x30_0000_0000 };
        let overflow = MappedEcamRegion { region: region(2, 0, 1), virt_base: usize::MAX & !0xFFF };
        // SAFETY: `new` returns errors before any access; none of these is ever dereferenced.
        unsafe {
            assert!(matches!(EcamAccess::new(vec![empty]), Err(EcamError::EmptyBusRange { .. })));
            assert!(matches!(EcamAccess::new(vec![misaligned]), Err(EcamError::MisalignedVirtualBase { .. })));
            assert_eq!(
                EcamAccess::new(vec![ok, overlap]).unwrap_err(),
                EcamError::OverlappingBuses { segment: 0, bus: 0x80 }
            );
            assert!(matches!(EcamAccess::new(vec![overflow]), Err(EcamError::VirtualRangeOverflows { .. })));
        }
        let text = alloc::format!("{}", EcamError::OverlappingBuses { segment: 0, bus: 0x80 });
        assert!(text.contains("bus 80"), "{text}");
    }
}
