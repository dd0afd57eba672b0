//! Programming Message Signaled Interrupts: PCI Local Bus Spec 3.0, §6.8.1 "MSI Capability
//! Structure", and the x86 message format the local APIC understands.
//!
//! The capability itself is found and decoded by the capability walk
//! ([`crate::capability::MsiCapability`]); this module writes it.

use core::fmt;

use crate::access::{CheckedConfigAccess, FunctionConfig};
use crate::capability::MsiCapability;

/// Why MSI could not be enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiError {
    /// The function has no MSI capability; use MSI-X or INTx.
    NoMsiCapability,
    /// The message address must be dword aligned (PCI Local Bus Spec 3.0, §6.8.1.4).
    AddressNotDwordAligned {
        /// The message address asked for.
        address: u64,
    },
    /// The address is above 4 GiB but the function only has a 32-bit Message Address register.
    AddressNeeds64Bit {
        /// The message address asked for.
        address: u64,
    },
    /// The enable bit did not read back as set: the function ignored the write.
    EnableDidNotStick,
}

impl fmt::Display for MsiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoMsiCapability => f.write_str("function has no MSI capability; use MSI-X or legacy INTx instead"),
            Self::AddressNotDwordAligned { address } => write!(
                f,
                "MSI message address {address:#x} is not 4-byte aligned; on x86 use \
                 0xfee0_0000 | apic_id << 12"
            ),
            Self::AddressNeeds64Bit { address } => write!(
                f,
                "MSI message address {address:#x} is above 4 GiB but the function only \
                 supports 32-bit message addresses"
            ),
            Self::EnableDidNotStick => {
                f.write_str("MSI enable bit did not stay set; the function may be broken or gone")
            }
        }
    }
}

/// The x86 MSI message address that delivers to local APIC `apic_id` (physical destination
/// mode, no redirection). Intel SDM Vol. 3A, §11.11.1 "Message Address Register Format" (§10.11.1 in
/// editions before 2023).
pub const fn x86_msi_address(apic_id: u8) -> u64 {
    0xFEE0_0000 | (apic_id as u64) << 12
}

/// The x86 MSI message data for `vector` (fixed delivery, edge triggered). Intel SDM Vol. 3A,
/// §11.11.2 "Message Data Register Format" (§10.11.2 before 2023).
pub const fn x86_msi_data(vector: u8) -> u16 {
    vector as u16
}

impl MsiCapability {
    /// Programs one MSI vector and turns MSI on, following PCI Local Bus Spec 3.0, §6.8.1:
    ///
    /// 1. MSI is switched off while address and data are written, so no message can leave
    ///    half-programmed;
    /// 2. the address (and upper address if 64-bit) and the 16-bit data are written;
    /// 3. with per-vector masking, vector 0 is unmasked;
    /// 4. Multiple Message Enable is set to one vector and the enable bit is set;
    /// 5. INTx is disabled in the Command register (§6.8.1.3 forbids INTx while MSI is on;
    ///    setting Interrupt Disable as well protects against devices that get this wrong).
    pub fn enable<A: CheckedConfigAccess + ?Sized>(
        &self,
        config: &FunctionConfig<'_, A>,
        address: u64,
        data: u16,
    ) -> Result<(), MsiError> {
        if address & 0x3 != 0 {
            return Err(MsiError::AddressNotDwordAligned { address });
        }
        if !self.is_64bit && address > u64::from(u32::MAX) {
            return Err(MsiError::AddressNeeds64Bit { address });
        }

        let control = config.read_u16(self.control_offset());
        // Bit 0 enable, bits 6:4 Multiple Message Enable.
        let off = control & !(1 | 0x70);
        config.write_u16(self.control_offset(), off);

        config.write_u32(self.address_offset, address as u32);
        if let Some(upper) = self.upper_address_offset {
            config.write_u32(upper, (address >> 32) as u32);
        }
        // Bits 31:16 of this dword are reserved (or Extended Message Data, off by default).
        config.write_u32(self.data_offset, u32::from(data));
        if let Some(mask) = self.mask_offset {
            let bits = config.read_u32(mask);
            config.write_u32(mask, bits & !1);
        }

        config.write_u16(self.control_offset(), off | 1);
        config.disable_intx();

        if config.read_u16(self.control_offset()) & 1 == 0 {
            return Err(MsiError::EnableDidNotStick);
        }
        Ok(())
    }

    /// Turns MSI off (Message Control bit 0). INTx stays disabled; re-enable it with
    /// [`FunctionConfig::enable_intx`] if the driver falls back to it.
    pub fn disable<A: CheckedConfigAccess + ?Sized>(&self, config: &FunctionConfig<'_, A>) {
        let control = config.read_u16(self.control_offset());
        config.write_u16(self.control_offset(), control & !1);
    }
}
