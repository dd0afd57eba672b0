//! Layer 0, **registry**: name tables that upper layers fill in and the shell reads.
//!
//! A service publishes a view ([`scheme::register`]) and it appears in `ls`; it registers its
//! shell commands ([`commands::register`]) and they appear in `help`. The shell looks names up
//! here and never imports the service. These modules import nothing from the kernel,
//! so any layer may use them.

pub mod commands;
pub mod scheme;
