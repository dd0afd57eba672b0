//! A QEMU whose VT-d model *records* interrupt-remapping faults, for the one job that requires
//! the records (`cargo xtask test --job vtd-ir-records`).
//!
//! Debian 12's QEMU 7.2, which every other configuration runs, blocks a forged or misattributed
//! interrupt message but writes no fault record: its `vtd_irte_get` only prints the reason on
//! stderr. Later QEMUs report the fault the way VT-d §7.1 says a unit must, in a fault
//! recording register with FSTS.PPF and a fault event (QEMU 10.0 `hw/i386/intel_iommu.c`,
//! `vtd_report_ir_fault`). The kernel's fault handler already decodes those records (reasons
//! 20h–26h); this job runs the whole in-kernel suite on such a QEMU, with the forged-MSI tests
//! told to accept nothing less than a record.
//!
//! Where the QEMU comes from, first match wins:
//! 1. `XTASK_IR_QEMU=/path/to/qemu-system-x86_64`: any QEMU that records them.
//! 2. On Debian 12 (bookworm): the `qemu-system-x86` of `bookworm-backports` (10.0), fetched
//!    with `apt-get download` through a private apt configuration under `target/recording-qemu/`
//!    and unpacked there with `dpkg-deb -x`. Nothing is installed into the system, whose
//!    QEMU 7.2 stays the project's reference (shared/design/PLATFORM.md). The backport is built
//!    for bookworm's libraries, which the 7.2 package has already installed.
//! 3. Otherwise there is none: the job reports itself skipped, with the reason, and fails
//!    under `CI=true`, where it must run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Debian suite the newer QEMU comes from, and the packages taken from it: the emulator,
/// its data and common files, the SeaBIOS it asks for (`seabios (>> 1.16.3-1~)`), and its
/// loadable modules (UI, audio, OpenGL, SPICE). QEMU loads some modules at start-up even with
/// `-display none`; without its own it finds the system's 7.2 ones, refuses them ("Only modules
/// from the same build can be loaded") and aborts.
const SUITE: &str = "bookworm-backports";
const PACKAGES: [&str; 7] = [
    "qemu-system-x86",
    "qemu-system-data",
    "qemu-system-common",
    "qemu-system-gui",
    "qemu-system-modules-opengl",
    "qemu-system-modules-spice",
    "seabios",
];

/// An unpacked QEMU and how to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qemu {
    /// `qemu-system-x86_64`.
    pub binary: PathBuf,
    /// Its loadable modules (`QEMU_MODULE_DIR`), so it never loads another version's.
    pub module_dir: Option<PathBuf>,
    /// Firmware folders searched before the system's (`-L`), newest first.
    pub firmware_dirs: Vec<PathBuf>,
}

impl Qemu {
    /// A command that starts this QEMU.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        if let Some(dir) = &self.module_dir {
            cmd.env("QEMU_MODULE_DIR", dir);
        }
        for dir in &self.firmware_dirs {
            cmd.arg("-L").arg(dir);
        }
        // The system's own folder last: the option ROMs (ipxe-qemu's efi-e1000.rom, …) live there.
        if !self.firmware_dirs.is_empty() {
            cmd.args(["-L", "/usr/share/qemu"]);
        }
        cmd
    }

    /// Its `--version` line.
    pub fn version(&self) -> Result<String, String> {
        let out = self
            .command()
            .arg("--version")
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().next() {
            Some(line) if out.status.success() => Ok(line.to_string()),
            _ => Err(format!(
                "{} --version failed ({}): {}",
                self.binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

/// The QEMU for the job and its `--version` line, fetching it the first time; `Err` says why
/// there is none here.
pub fn ensure() -> Result<(Qemu, String), String> {
    if let Some(path) = std::env::var_os("XTASK_IR_QEMU") {
        let qemu = Qemu { binary: PathBuf::from(path), module_dir: None, firmware_dirs: Vec::new() };
        let version = qemu.version()?;
        return Ok((qemu, version));
    }
    let root = crate::build::target_dir().join("recording-qemu");
    let qemu = unpacked(&root.join("root"));
    if qemu.module_dir.as_ref().is_some_and(|d| d.join("ui-opengl.so").exists())
        && let Ok(version) = qemu.version()
    {
        return Ok((qemu, version));
    }
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    if !is_bookworm(&os_release) {
        return Err(format!(
            "no QEMU that records interrupt-remapping faults: this job fetches Debian 12's {SUITE} \
             QEMU, and this system is not Debian 12; set XTASK_IR_QEMU to a qemu-system-x86_64 \
             (QEMU 10 records them)"
        ));
    }
    // A mirror's hiccup should not fail a test run: three tries, a few seconds apart.
    let mut last = String::new();
    for attempt in 1..=3 {
        match fetch(&root) {
            Ok(()) => return qemu.version().map(|version| (qemu, version)),
            Err(why) => {
                println!("xtask: fetching QEMU from {SUITE} failed (try {attempt} of 3): {why}");
                last = why;
                if attempt < 3 {
                    std::thread::sleep(std::time::Duration::from_secs(5 * attempt));
                }
            }
        }
    }
    Err(last)
}

/// The layout `dpkg-deb -x` leaves under `root`.
fn unpacked(root: &Path) -> Qemu {
    Qemu {
        binary: root.join("usr/bin/qemu-system-x86_64"),
        module_dir: Some(root.join("usr/lib/x86_64-linux-gnu/qemu")),
        firmware_dirs: vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")],
    }
}

/// Whether an os-release file names Debian 12.
fn is_bookworm(os_release: &str) -> bool {
    let value = |key| crate::setup::os_release_value(os_release, key);
    value("ID") == Some("debian") && value("VERSION_CODENAME") == Some("bookworm")
}

/// Downloads [`PACKAGES`] from [`SUITE`] with a private apt configuration under `root` (its own
/// source list, package lists and cache; no lock on the system's) and unpacks them into
/// `root/root`.
fn fetch(root: &Path) -> Result<(), String> {
    let apt_dir = root.join("apt");
    let debs = root.join("debs");
    let _ = std::fs::remove_dir_all(root);
    for dir in ["lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"] {
        std::fs::create_dir_all(apt_dir.join(dir)).map_err(|e| format!("cannot create {}: {e}", apt_dir.display()))?;
    }
    std::fs::create_dir_all(&debs).map_err(|e| format!("cannot create {}: {e}", debs.display()))?;
    let sources = apt_dir.join("sources.list");
    let line = format!(
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {SUITE} main\n"
    );
    std::fs::write(&sources, line).map_err(|e| format!("cannot write {}: {e}", sources.display()))?;
    let options = |dir: &Path| -> Vec<String> {
        let set = |key: &str, value: &Path| format!("-o{key}={}", value.display());
        vec![
            set("Dir::Etc::SourceList", &dir.join("sources.list")),
            set("Dir::Etc::SourceParts", &dir.join("sources.list.d")),
            set("Dir::Etc::Preferences", Path::new("/dev/null")),
            set("Dir::Etc::PreferencesParts", &dir.join("preferences.d")),
            set("Dir::State::Lists", &dir.join("lists")),
            set("Dir::Cache", &dir.join("cache")),
            // The private folders are ours: no system lock, and no drop to the `_apt` user,
            // which could not write them.
            "-oDebug::NoLocking=1".into(),
            "-oAPT::Sandbox::User=root".into(),
        ]
    };
    let apt = |args: &[String], cwd: &Path| -> Result<(), String> {
        let shown =
            format!("apt-get {}", args.iter().filter(|a| !a.starts_with("-o")).cloned().collect::<Vec<_>>().join(" "));
        let out = Command::new("apt-get")
            .args(options(&apt_dir))
            .args(args)
            .current_dir(cwd)
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("`{shown}` failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    println!("xtask: fetching QEMU from Debian {SUITE} into {} (not installed system-wide)", root.display());
    apt(&["-q".into(), "update".into()], root)?;
    let mut download = vec!["-q".to_string(), "download".to_string()];
    download.extend(PACKAGES.iter().map(|p| format!("{p}/{SUITE}")));
    apt(&download, &debs)?;
    let unpack_to = root.join("root");
    for entry in std::fs::read_dir(&debs).map_err(|e| e.to_string())? {
        let deb = entry.map_err(|e| e.to_string())?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            let status = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&unpack_to)
                .status()
                .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
            if !status.success() {
                return Err(format!("dpkg-deb -x {} failed ({status})", deb.display()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_debian_12_takes_the_backport() {
        assert!(is_bookworm("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n"));
        assert!(!is_bookworm("ID=debian\nVERSION_CODENAME=trixie\n"));
        assert!(!is_bookworm("ID=ubuntu\nID_LIKE=debian\nVERSION_CODENAME=noble\n"));
    }

    #[test]
    fn the_unpacked_qemu_uses_its_own_modules_and_firmware_first() {
        let q = unpacked(Path::new("/r"));
        let cmd = q.command();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["-L", "/r/usr/share/qemu", "-L", "/r/usr/share/seabios", "-L", "/usr/share/qemu"]);
        let module_dir = cmd.get_envs().find(|(k, _)| *k == "QEMU_MODULE_DIR").and_then(|(_, v)| v);
        assert_eq!(module_dir, Some(std::ffi::OsStr::new("/r/usr/lib/x86_64-linux-gnu/qemu")));
    }
}
