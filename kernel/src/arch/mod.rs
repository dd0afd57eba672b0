//! Layer 3, **arch**: the x86_64 CPU and what is wired to every PC.
//!
//! Descriptor tables, exception and device-interrupt dispatch, the local and I/O APICs, time,
//! the serial port, backtraces and powering off. Everything above runs on these.
//!
//! Code here never calls up. The crash path reaches the test runner through a hook the runner
//! installs ([`crash::set_hook`]), and the serial port reaches the framebuffer console through a
//! mirror the console registers ([`serial::set_mirror`]).
//!
//! Inside the layer there is no cycle either: `gdt`, `exit`, `serial` and `apic` use nothing
//! here; `backtrace` uses `gdt` and `serial`; `crash` uses `backtrace`, `exit` and `serial`;
//! `interrupts` uses `gdt`, `apic`, `backtrace` and `crash`; `time` uses `apic` and `interrupts`.

pub mod apic;
pub mod backtrace;
pub mod crash;
pub mod exit;
pub mod gdt;
pub mod interrupts;
pub mod serial;
pub mod time;
