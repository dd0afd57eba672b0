//! `cargo xtask fixtures`: captures ACPI tables and PCI configuration spaces from QEMU, for the
//! host tests that check our parsers against what this QEMU really produces.
//!
//! The kernel's `dump acpi` / `dump pci` print hex blocks (`== kind name address length`, hex
//! lines, `== end`); this command saves them unchanged, one file per machine configuration.

use crate::build::{self, Profile};
use crate::qemu::{Firmware, MachineConfig, Session};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Boots each configuration, dumps, writes the fixture files.
pub fn capture(_args: &[String]) -> Result<ExitCode, String> {
    let images = build::build_images(Profile::Debug)?;
    let work = build::target_dir().join("xtask-fixtures");
    let root = build::workspace_root();
    let targets: [(MachineConfig, &str, PathBuf); 3] = [
        (MachineConfig::standard(), "dump acpi", root.join("kernel/fixtures/qemu-q35-bios-vtd.acpi")),
        (
            MachineConfig { name: "uefi-vtd".into(), firmware: Firmware::Uefi, ..MachineConfig::standard() },
            "dump acpi",
            root.join("kernel/fixtures/qemu-q35-uefi-vtd.acpi"),
        ),
        (MachineConfig::standard(), "dump pci", root.join("drivers/pci/tests/fixtures/qemu-q35.pci")),
    ];
    for (machine, command, path) in targets {
        let mut session = Session::start(&machine, &images, &work, work.join(format!("{}.log", machine.name)))?;
        session.expect("kernel> ", Duration::from_secs(120)).map_err(|e| format!("no prompt: {e:?}"))?;
        session.send_line(command)?;
        let text = session.expect("kernel> ", Duration::from_secs(120)).map_err(|e| format!("{command}: {e:?}"))?;
        let blocks: String = text
            .lines()
            .map(str::trim_end)
            .skip_while(|l| !l.starts_with("== "))
            .take_while(|l| !l.starts_with("kernel>"))
            .map(|l| format!("{l}\n"))
            .collect();
        if blocks.is_empty() {
            return Err(format!("`{command}` printed no blocks"));
        }
        std::fs::create_dir_all(path.parent().expect("has parent")).map_err(|e| e.to_string())?;
        let header = format!(
            "# Captured by `cargo xtask fixtures` from {} ({command}); QEMU q35, {} MiB.\n",
            qemu_version(),
            machine.memory_mib
        );
        std::fs::write(&path, header + &blocks).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
        let _ = session.send_line("exit");
        let _ = session.wait_exit(Duration::from_secs(30));
    }
    Ok(ExitCode::SUCCESS)
}

fn qemu_version() -> String {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown QEMU".into())
}
