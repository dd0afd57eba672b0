//! Block devices: the AHCI driver's kernel glue (issue 6; under construction).

/// Shell commands this service adds.
pub static COMMANDS: &[crate::shell::Command] = &[];

/// Finds and starts storage controllers.
pub fn init() {}
