//! Layer 6, **ui**: what a person sees and types.
//!
//! The console (serial, framebuffer, keyboard), the log format, the shell and the hardware
//! report. The shell runs whatever commands the registry holds; it imports no service.

pub mod console;
pub mod logger;
pub mod report;
pub mod shell;
