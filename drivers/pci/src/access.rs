//! The configuration-access seam and a typed handle on one function's configuration space.
//!
//! `pci_types` describes configuration access with [`ConfigRegionAccess`], whose `read` and
//! `write` are `unsafe fn`s: "`address` and `offset` must be valid". That leaves every caller
//! to prove validity at every access. This crate moves the proof to one place instead:
//! [`CheckedConfigAccess`] is an `unsafe trait` whose implementors promise that *they* check
//! every address and offset (an address they do not cover reads as all-ones, a write to it is
//! dropped). With that promise, [`FunctionConfig`] offers safe reads and writes, and the rest of
//! the crate contains no `unsafe` at all.
//!
//! Register offsets follow the PCI Local Bus Spec 3.0, §6.1 "Configuration Space Organization"
//! (the common header, Figure 6-1) and the PCI-to-PCI Bridge Architecture Spec 1.2, §3.2 (the
//! type-1 header).

use pci_types::{CommandRegister, ConfigRegionAccess, PciAddress};

/// Offsets of the configuration header registers this crate uses.
///
/// PCI Local Bus Spec 3.0, §6.1, Figure 6-1 (type 0 header) and PCI-to-PCI Bridge Architecture
/// Spec 1.2, §3.2, Figure 3-2 (type 1 header).
pub mod reg {
    /// Vendor ID (16 bits); `0xFFFF` means no function answers at this address.
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (16 bits), PCI Local Bus Spec 3.0, §6.2.2.
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits), PCI Local Bus Spec 3.0, §6.2.3. Its error bits are
    /// write-1-to-clear.
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8 bits).
    pub const REVISION_ID: u16 = 0x08;
    /// Programming interface (8 bits), the low byte of the class code.
    pub const PROG_IF: u16 = 0x09;
    /// Sub-class (8 bits).
    pub const SUBCLASS: u16 = 0x0A;
    /// Base class (8 bits).
    pub const BASE_CLASS: u16 = 0x0B;
    /// Header Type (8 bits): bits 6:0 the layout, bit 7 multi-function. §6.2.1.
    pub const HEADER_TYPE: u16 = 0x0E;
    /// First Base Address Register. §6.2.5.1.
    pub const BAR0: u16 = 0x10;
    /// Type 1: primary bus number (8 bits). Bridge spec 1.2, §3.2.5.2.
    pub const PRIMARY_BUS: u16 = 0x18;
    /// Type 1: secondary bus number (8 bits). Bridge spec 1.2, §3.2.5.3.
    pub const SECONDARY_BUS: u16 = 0x19;
    /// Type 1: subordinate bus number (8 bits). Bridge spec 1.2, §3.2.5.4.
    pub const SUBORDINATE_BUS: u16 = 0x1A;
    /// Type 2 (CardBus bridge): capabilities pointer (8 bits).
    pub const CARDBUS_CAPABILITIES_POINTER: u16 = 0x14;
    /// Type 0: subsystem vendor ID (16 bits). §6.2.4.
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2C;
    /// Type 0: subsystem ID (16 bits). §6.2.4.
    pub const SUBSYSTEM_ID: u16 = 0x2E;
    /// Types 0 and 1: capabilities pointer (8 bits, low 2 bits reserved). §6.7.
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// Interrupt Line (8 bits): what firmware routed INTx to; software-owned. §6.2.4.
    pub const INTERRUPT_LINE: u16 = 0x3C;
    /// Interrupt Pin (8 bits): 0 none, 1..=4 INTA#..INTD#. §6.2.4.
    pub const INTERRUPT_PIN: u16 = 0x3D;
}

/// Status register bit 4, "Capabilities List": the function has a capability list at the
/// capabilities pointer. PCI Local Bus Spec 3.0, §6.2.3, Table 6-2.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// A configuration access that checks every address and offset itself.
///
/// # Safety
/// Implementors promise that [`ConfigRegionAccess::read`] and [`ConfigRegionAccess::write`] are
/// sound for **every** [`PciAddress`] and **every** `offset` (`u16`):
/// - an address or offset the access does not cover reads as `0xFFFF_FFFF` (what hardware
///   returns for a master abort) and writes to it are dropped;
/// - an offset that is not 4-byte aligned is treated as its aligned dword (`offset & !3`);
/// - no access touches memory or ports other than the configuration space it covers.
///
/// What a *device* does after a configuration write (decode a BAR at a new address, start DMA
/// after bus mastering is enabled) is outside this promise: that is the business of the code
/// that programs the device, and of the IOMMU.
pub unsafe trait CheckedConfigAccess: ConfigRegionAccess {}

// SAFETY: a shared reference forwards to the same checked implementation (pci_types implements
// `ConfigRegionAccess for &T` by forwarding), so the promise carries over unchanged.
unsafe impl<T: CheckedConfigAccess + ?Sized> CheckedConfigAccess for &T {}

/// One function's configuration space, reached through a checked access.
///
/// Reads and writes are dword-based like the hardware: 8- and 16-bit reads pick their bytes out
/// of the containing dword.
pub struct FunctionConfig<'a, A: ?Sized> {
    access: &'a A,
    address: PciAddress,
}

impl<A: ?Sized> Clone for FunctionConfig<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A: ?Sized> Copy for FunctionConfig<'_, A> {}

impl<'a, A: CheckedConfigAccess + ?Sized> FunctionConfig<'a, A> {
    /// The configuration space of the function at `address`.
    pub fn new(access: &'a A, address: PciAddress) -> Self {
        Self { access, address }
    }

    /// The function this handle reaches.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// The access this handle goes through.
    pub fn access(&self) -> &'a A {
        self.access
    }

    /// Reads the dword containing `offset`.
    pub fn read_u32(&self, offset: u16) -> u32 {
        // SAFETY: `A: CheckedConfigAccess` promises that a read at any address and offset is
        // sound; out-of-range offsets read as all-ones.
        unsafe { self.access.read(self.address, offset & !3) }
    }

    /// Reads the 16-bit register at `offset` (rounded down to a 2-byte boundary).
    pub fn read_u16(&self, offset: u16) -> u16 {
        let shift = u32::from(offset & 2) * 8;
        (self.read_u32(offset) >> shift) as u16
    }

    /// Reads the byte at `offset`.
    pub fn read_u8(&self, offset: u16) -> u8 {
        let shift = u32::from(offset & 3) * 8;
        (self.read_u32(offset) >> shift) as u8
    }

    /// Writes the dword containing `offset`.
    pub fn write_u32(&self, offset: u16, value: u32) {
        // SAFETY: `A: CheckedConfigAccess` promises that a write at any address and offset is
        // sound for the CPU; writes outside the covered space are dropped.
        unsafe { self.access.write(self.address, offset & !3, value) }
    }

    /// Writes the 16-bit register at `offset` by read-modify-write of its dword.
    ///
    /// Only for registers whose neighbouring half has no write-1-to-clear bits (for example an
    /// MSI Message Control register, whose neighbour is the read-only capability header). The
    /// Command register has the Status register as neighbour; use [`Self::write_command`].
    pub(crate) fn write_u16(&self, offset: u16, value: u16) {
        let shift = u32::from(offset & 2) * 8;
        let old = self.read_u32(offset);
        let new = (old & !(0xFFFF << shift)) | (u32::from(value) << shift);
        self.write_u32(offset, new);
    }

    /// The Command register. PCI Local Bus Spec 3.0, §6.2.2, Figure 6-2.
    pub fn command(&self) -> CommandRegister {
        CommandRegister::from_bits_retain(self.read_u16(reg::COMMAND))
    }

    /// Writes the Command register.
    ///
    /// The Status register shares the dword, and its error bits are write-1-to-clear (PCI Local
    /// Bus Spec 3.0, §6.2.3), so the Status half is written as zero, which changes nothing.
    pub fn write_command(&self, command: CommandRegister) {
        self.write_u32(reg::COMMAND, u32::from(command.bits()));
    }

    /// Sets `bits` in the Command register, leaving the others as they are.
    pub fn set_command_bits(&self, bits: CommandRegister) {
        let command = self.command();
        if !command.contains(bits) {
            self.write_command(command | bits);
        }
    }

    /// Clears `bits` in the Command register, leaving the others as they are.
    pub fn clear_command_bits(&self, bits: CommandRegister) {
        let command = self.command();
        if command.intersects(bits) {
            self.write_command(command - bits);
        }
    }

    /// The Status register. PCI Local Bus Spec 3.0, §6.2.3.
    pub fn status(&self) -> u16 {
        self.read_u16(reg::STATUS)
    }

    /// Lets the function respond to memory accesses to its memory BARs (Command bit 1).
    pub fn enable_memory_space(&self) {
        self.set_command_bits(CommandRegister::MEMORY_ENABLE);
    }

    /// Lets the function respond to I/O accesses to its I/O BARs (Command bit 0).
    pub fn enable_io_space(&self) {
        self.set_command_bits(CommandRegister::IO_ENABLE);
    }

    /// Lets the function start memory transactions of its own, i.e. DMA (Command bit 2).
    ///
    /// Do this only once the function's DMA is confined (IOMMU domain or buffers it may own):
    /// from this point on the device can write wherever it is told to.
    pub fn enable_bus_mastering(&self) {
        self.set_command_bits(CommandRegister::BUS_MASTER_ENABLE);
    }

    /// Stops the function from asserting its INTx# pin (Command bit 10, "Interrupt Disable").
    pub fn disable_intx(&self) {
        self.set_command_bits(CommandRegister::INTERRUPT_DISABLE);
    }

    /// Allows INTx# again (clears Command bit 10).
    pub fn enable_intx(&self) {
        self.clear_command_bits(CommandRegister::INTERRUPT_DISABLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimConfigSpace, bdf, fixtures};

    #[test]
    fn sub_dword_reads_pick_the_right_bytes() {
        let sim = SimConfigSpace::new().with(bdf(0, 2, 0), fixtures::q35_e1000());
        let config = FunctionConfig::new(&sim, bdf(0, 2, 0));
        assert_eq!(config.read_u32(0), 0x100E_8086);
        assert_eq!(config.read_u16(reg::VENDOR_ID), 0x8086);
        assert_eq!(config.read_u16(reg::DEVICE_ID), 0x100E);
        assert_eq!(config.read_u8(reg::REVISION_ID), 0x03);
        assert_eq!(config.read_u8(reg::BASE_CLASS), 0x02);
        assert_eq!(config.read_u8(reg::INTERRUPT_PIN), 1);
    }

    #[test]
    fn command_helpers_set_bits_without_clearing_status_errors() {
        // Status: capabilities list + received master abort (write-1-to-clear).
        let function = fixtures::q35_e1000().command(0).status(0x2010);
        let sim = SimConfigSpace::new().with(bdf(0, 2, 0), function);
        let config = FunctionConfig::new(&sim, bdf(0, 2, 0));
        config.enable_memory_space();
        config.enable_io_space();
        config.enable_bus_mastering();
        config.disable_intx();
        assert_eq!(
            config.command(),
            CommandRegister::MEMORY_ENABLE
                | CommandRegister::IO_ENABLE
                | CommandRegister::BUS_MASTER_ENABLE
                | CommandRegister::INTERRUPT_DISABLE
        );
        assert_eq!(config.status(), 0x2010, "error bit must survive command writes");
        config.enable_intx();
        assert!(!config.command().contains(CommandRegister::INTERRUPT_DISABLE));
    }

    #[test]
    fn setting_bits_already_set_writes_nothing() {
        let sim = SimConfigSpace::new().with(bdf(0, 2, 0), fixtures::q35_e1000().command(0x0002));
        FunctionConfig::new(&sim, bdf(0, 2, 0)).enable_memory_space();
        assert!(sim.writes().is_empty());
    }

    #[test]
    fn absent_functions_read_all_ones() {
        let sim = SimConfigSpace::new();
        let config = FunctionConfig::new(&sim, bdf(0, 9, 0));
        assert_eq!(config.read_u16(reg::VENDOR_ID), 0xFFFF);
        config.enable_bus_mastering(); // dropped, no panic
        assert!(sim.writes().is_empty());
    }
}
