//! Installing what booting the kernel needs, so that `cargo xtask run` and `cargo xtask test`
//! work on a fresh machine with nothing but rustup.
//!
//! rustup itself installs the pinned toolchain the first time `cargo` runs in this directory
//! (`rust-toolchain.toml`). What is left are three host programs: QEMU, the UEFI firmware OVMF,
//! and gdb for `cargo xtask gdb`. On Debian and Ubuntu xtask installs the missing ones with
//! `apt-get` (through `sudo` when it is not root) after saying what it will install; elsewhere it
//! stops with the package names and the command for the common distributions.

use std::path::Path;
use std::process::{Command, Stdio};

/// A host program xtask needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// `qemu-system-x86_64`.
    Qemu,
    /// OVMF, the UEFI firmware QEMU boots the UEFI image with.
    Ovmf,
    /// gdb, the debugger `cargo xtask gdb` starts.
    Gdb,
    /// python3, which regenerates the guide's diagrams for the check that they are current.
    Python,
}

impl Need {
    /// What it is for, in a sentence's words.
    fn purpose(self) -> &'static str {
        match self {
            Need::Qemu => "QEMU, to boot the kernel",
            Need::Ovmf => "OVMF, the UEFI firmware for QEMU",
            Need::Gdb => "gdb, the debugger",
            Need::Python => "python3, for the guide's diagram check",
        }
    }

    fn present(self) -> bool {
        match self {
            Need::Qemu => runs("qemu-system-x86_64"),
            Need::Ovmf => ovmf_files().is_some(),
            Need::Gdb => runs("gdb"),
            Need::Python => runs("python3"),
        }
    }

    /// The package on Debian/Ubuntu, Fedora, Arch, and Homebrew.
    fn packages(self) -> [&'static str; 4] {
        match self {
            Need::Qemu => ["qemu-system-x86", "qemu-system-x86", "qemu-system-x86", "qemu"],
            Need::Ovmf => ["ovmf", "edk2-ovmf", "edk2-ovmf", "(none: use a BIOS boot)"],
            Need::Gdb => ["gdb", "gdb", "gdb", "gdb"],
            Need::Python => ["python3", "python3", "python", "python"],
        }
    }
}

/// OVMF's code and variable-store files, where the common distributions put them.
pub fn ovmf_files() -> Option<(&'static str, &'static str)> {
    const CANDIDATES: [(&str, &str); 5] = [
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"), // Debian 12, Ubuntu 22.04+
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),       // older Debian/Ubuntu
        ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"), // Fedora
        ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"), // Arch
        ("/usr/share/edk2-ovmf/x64/OVMF_CODE.fd", "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd"), // older Arch
    ];
    CANDIDATES.into_iter().find(|(code, vars)| Path::new(code).exists() && Path::new(vars).exists())
}

/// Whether `program --version` runs (the program is installed).
fn runs(program: &str) -> bool {
    Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Makes sure every one of `needs` is installed: installs the missing ones on Debian/Ubuntu,
/// and otherwise explains how.
pub fn ensure(needs: &[Need]) -> Result<(), String> {
    let missing: Vec<Need> = needs.iter().copied().filter(|n| !n.present()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let what = missing.iter().map(|n| n.purpose()).collect::<Vec<_>>().join(", ");
    let debian: Vec<&str> = missing.iter().map(|n| n.packages()[0]).collect();
    if !is_debian_like() {
        return Err(format!("missing: {what}.\n{}", install_hint(&missing)));
    }
    let sudo = if is_root() { None } else { Some("sudo") };
    let prefix = sudo.map(|s| format!("{s} ")).unwrap_or_default();
    println!("xtask: missing {what}.");
    println!("xtask: installing them: {prefix}apt-get install -y {}", debian.join(" "));
    let apt = |args: &[&str]| -> Result<(), String> {
        let mut cmd = match sudo {
            Some(s) => {
                let mut c = Command::new(s);
                c.arg("apt-get");
                c
            }
            None => Command::new("apt-get"),
        };
        let status = cmd
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run {prefix}apt-get: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("`{prefix}apt-get {}` failed ({status})", args.join(" "))) }
    };
    // A fresh machine may have no package lists yet; `update` first costs a few seconds.
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&debian);
    apt(&install).map_err(|e| format!("{e}\n{}", install_hint(&missing)))?;
    match missing.iter().find(|n| !n.present()) {
        None => Ok(()),
        Some(n) => Err(format!("{} is still missing after installing {}", n.purpose(), debian.join(" "))),
    }
}

/// `cargo xtask setup`: everything the tests need, installed or fetched now rather than on
/// first use (CI runs it as its own step, so that a failed install shows as one).
pub fn run(args: &[String]) -> Result<std::process::ExitCode, String> {
    if let Some(arg) = args.first() {
        return Err(format!("`setup` takes no options (got `{arg}`)"));
    }
    ensure(&[Need::Qemu, Need::Ovmf, Need::Gdb, Need::Python])?;
    let (qemu, version) = crate::recording_qemu::ensure()?;
    println!("xtask: job vtd-ir-records will run {version} ({})", qemu.binary.display());
    Ok(std::process::ExitCode::SUCCESS)
}

/// The install commands for the common systems.
fn install_hint(missing: &[Need]) -> String {
    let list = |i: usize| missing.iter().map(|n| n.packages()[i]).collect::<Vec<_>>().join(" ");
    format!(
        "Install them with your package manager:\n  \
         Debian, Ubuntu:  sudo apt-get install {}\n  \
         Fedora:          sudo dnf install {}\n  \
         Arch:            sudo pacman -S {}\n  \
         macOS:           brew install {}",
        list(0),
        list(1),
        list(2),
        list(3)
    )
}

/// Whether this is Debian or a derivative (Ubuntu, Mint, …) with apt-get.
fn is_debian_like() -> bool {
    let Ok(text) = std::fs::read_to_string("/etc/os-release") else { return false };
    os_release_is_debian_like(&text) && runs("apt-get")
}

/// Whether an os-release file (`man 5 os-release`) names Debian or Ubuntu as the system or one
/// it is like.
fn os_release_is_debian_like(text: &str) -> bool {
    ["ID", "ID_LIKE"]
        .into_iter()
        .filter_map(|key| os_release_value(text, key))
        .any(|value| value.split_whitespace().any(|id| id == "debian" || id == "ubuntu"))
}

/// The value of `key` in an os-release file (`man 5 os-release`), without its quotes.
pub fn os_release_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (k, value) = line.split_once('=')?;
        (k == key).then(|| value.trim_matches('"'))
    })
}

/// Whether xtask runs as root (then no `sudo` is needed, and CI containers often have none).
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_and_its_derivatives_are_recognised() {
        assert!(os_release_is_debian_like("PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\n"));
        assert!(os_release_is_debian_like("ID=ubuntu\nID_LIKE=debian\n"));
        assert!(os_release_is_debian_like("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n"));
        assert!(!os_release_is_debian_like("ID=fedora\n"));
        assert!(!os_release_is_debian_like("ID=arch\nID_LIKE=archlinux\n"));
    }

    #[test]
    fn the_hint_names_each_systems_packages() {
        let hint = install_hint(&[Need::Qemu, Need::Ovmf]);
        assert!(hint.contains("sudo apt-get install qemu-system-x86 ovmf"), "{hint}");
        assert!(hint.contains("sudo dnf install qemu-system-x86 edk2-ovmf"), "{hint}");
        assert!(hint.contains("sudo pacman -S qemu-system-x86 edk2-ovmf"), "{hint}");
    }
}
