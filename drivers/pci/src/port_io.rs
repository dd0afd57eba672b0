//! Legacy configuration mechanism #1: ports `0xCF8` and `0xCFC`.
//!
//! PCI Local Bus Spec 3.0, §3.2.2.3.2 "Software Generation of Configuration Transactions":
//! software writes a CONFIG_ADDRESS dword to port `0xCF8`
//!
//! ```text
//! bit 31     enable
//! bits 23:16 bus
//! bits 15:11 device
//! bits 10:8  function
//! bits 7:2   register (dword) number
//! ```
//!
//! and then moves the dword through CONFIG_DATA at port `0xCFC`. Only the first 256 bytes of a
//! function are reachable, and only segment 0. Address and data are two separate port
//! accesses, so a lock keeps two CPUs (or a CPU and an interrupt handler) from interleaving
//! them.

/// The CONFIG_ADDRESS port.
pub const CONFIG_ADDRESS_PORT: u16 = 0xCF8;
/// The CONFIG_DATA port.
pub const CONFIG_DATA_PORT: u16 = 0xCFC;

/// The CONFIG_ADDRESS value that selects the dword holding `offset` of `bus:device.function`.
/// PCI Local Bus Spec 3.0, §3.2.2.3.2, Figure 3-2.
///
/// `device` is taken modulo 32 and `function` modulo 8, so a bad value cannot spill into the
/// neighbouring field.
pub const fn config_address(bus: u8, device: u8, function: u8, offset: u8) -> u32 {
    0x8000_0000
        | (bus as u32) << 16
        | ((device & 0x1F) as u32) << 11
        | ((function & 0x07) as u32) << 8
        | (offset & 0xFC) as u32
}

#[cfg(target_arch = "x86_64")]
pub use imp::PortIoAccess;

#[cfg(target_arch = "x86_64")]
mod imp {
    use pci_types::{ConfigRegionAccess, PciAddress};
    use spin::Mutex;
    use x86_64::instructions::interrupts;
    use x86_64::instructions::port::Port;

    use super::{CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, config_address};
    use crate::access::CheckedConfigAccess;

    /// The CONFIG_ADDRESS / CONFIG_DATA port pair.
    struct Ports {
        address: Port<u32>,
        data: Port<u32>,
    }

    /// Configuration access through ports `0xCF8`/`0xCFC` (segment 0, offsets below 256).
    ///
    /// Anything else (another segment, an offset in PCIe extended space) reads as all-ones and
    /// is not written. Each access disables interrupts while it holds the port pair, so an
    /// interrupt handler on the same CPU cannot deadlock on the lock.
    pub struct PortIoAccess {
        ports: Mutex<Ports>,
    }

    impl PortIoAccess {
        /// The port pair, ready to use. `const`, so the kernel can keep it in a `static`.
        ///
        /// # Safety
        /// The caller must be running on a PC-compatible machine where ports `0xCF8`/`0xCFC`
        /// are the PCI configuration mechanism #1 (every x86 chipset since the late 1990s), and
        /// no other code may use those ports while the returned value exists (there must be
        /// only one `PortIoAccess`).
        pub const unsafe fn new() -> Self {
            Self {
                ports: Mutex::new(Ports { address: Port::new(CONFIG_ADDRESS_PORT), data: Port::new(CONFIG_DATA_PORT) }),
            }
        }

        /// CONFIG_ADDRESS for `address`/`offset`, or `None` if mechanism #1 cannot reach it.
        fn select(address: PciAddress, offset: u16) -> Option<u32> {
            if address.segment() != 0 || offset >= 256 {
                return None;
            }
            Some(config_address(address.bus(), address.device(), address.function(), offset as u8))
        }
    }

    impl ConfigRegionAccess for PortIoAccess {
        unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
            let Some(selector) = Self::select(address, offset) else {
                return u32::MAX;
            };
            interrupts::without_interrupts(|| {
                let mut ports = self.ports.lock();
                // SAFETY: `new`'s caller promised these are the mechanism #1 ports and that
                // this value is their only user; the lock keeps the address/data pair whole.
                unsafe {
                    ports.address.write(selector);
                    ports.data.read()
                }
            })
        }

        unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
            let Some(selector) = Self::select(address, offset) else {
                return;
            };
            interrupts::without_interrupts(|| {
                let mut ports = self.ports.lock();
                // SAFETY: as for `read`: our own ports, address and data written under the lock.
                unsafe {
                    ports.address.write(selector);
                    ports.data.write(value);
                }
            })
        }
    }

    // SAFETY: `read` and `write` refuse every segment but 0 and every offset from 256 up (reads
    // return all-ones), and `config_address` masks the device, function and offset fields, so
    // every port access selects a valid configuration dword.
    unsafe impl CheckedConfigAccess for PortIoAccess {}
}

#[cfg(test)]
mod tests {
    use super::config_address;

    #[test]
    fn config_address_packs_fields() {
        assert_eq!(config_address(0, 0, 0, 0), 0x8000_0000);
        assert_eq!(config_address(1, 2, 3, 0x10), 0x8000_0000 | 1 << 16 | 2 << 11 | 3 << 8 | 0x10);
        assert_eq!(config_address(0, 0x1F, 2, 0x08), 0x8000_FA08);
        assert_eq!(config_address(255, 31, 7, 0xFC), 0x80FF_FFFC);
    }

    #[test]
    fn config_address_keeps_fields_in_their_lanes() {
        assert_eq!(config_address(0, 0, 0, 0xFF), 0x8000_00FC, "offset rounded to its dword");
        assert_eq!(config_address(0, 0, 0, 0x13), 0x8000_0010);
        assert_eq!(config_address(0, 32, 0, 0), 0x8000_0000, "device taken modulo 32");
        assert_eq!(config_address(0, 0, 8, 0), 0x8000_0000, "function taken modulo 8");
    }
}
