//! Layer 2, **firmware**: what the firmware tells the kernel about the machine.
//!
//! ACPI tables, checked before anything parses them. The layers above read the facts
//! ([`acpi::info`]): interrupt controllers, the PM timer, ECAM windows, the DMAR table.

pub mod acpi;
#[cfg(feature = "test-support")]
pub mod fw_cfg;
