//! Layer 3, **arch**: the x86_64 CPU and what is wired to every PC.
//!
//! Descriptor tables, exception and device-interrupt dispatch, the local and I/O APICs, time,
//! the serial port, backtraces and powering off. Everything above runs on these.

pub mod apic;
pub mod backtrace;
pub mod exit;
pub mod gdt;
pub mod interrupts;
pub mod serial;
pub mod time;
