//! Turns the kernel ELF into bootable disk images.
//!
//! The `bootloader` crate (rust-osdev) ships the BIOS stages (boot sector, stage 2/3/4) and the
//! UEFI application; at build time it compiles them for their own targets. At run time this crate
//! only asks it to lay those stages and our kernel into a disk image:
//!
//! * a **BIOS** image: an MBR-partitioned raw disk whose first sector is the boot sector;
//! * a **UEFI** image: a GPT-partitioned raw disk with a FAT EFI system partition holding
//!   `efi/boot/bootx64.efi` and the kernel.
//!
//! Both are plain raw disk images: QEMU boots them as `-drive format=raw`, and `dd` writes them to
//! a USB stick.
//!
//! The images carry the kernel **stripped of its symbols and debug info** (`llvm-objcopy
//! --strip-all`, from the pinned toolchain's `llvm-tools` component). The BIOS stages read the
//! whole kernel file through the firmware's disk calls before the kernel runs, about 0.7 s per MB
//! under QEMU's TCG: a 26 MB ELF with DWARF took 12–19 s to reach the prompt, the 1.1 MB stripped
//! one under 2 s. Nothing at run time needs the symbols; the full ELF stays beside the images for
//! gdb and for symbolising backtraces ([`DiskImages::kernel`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The two disk images made from one kernel, and that kernel.
#[derive(Debug, Clone)]
pub struct DiskImages {
    /// MBR image for legacy BIOS (and CSM) firmware.
    pub bios: PathBuf,
    /// GPT image for UEFI firmware.
    pub uefi: PathBuf,
    /// The kernel ELF with symbols and DWARF, as built: what gdb and the backtrace symboliser
    /// read. The images hold a stripped copy of it.
    pub kernel: PathBuf,
}

/// Why an image could not be made.
#[derive(Debug)]
pub enum ImageError {
    /// The kernel ELF does not exist (was the kernel built?).
    MissingKernel(PathBuf),
    /// The bootloader crate failed to write the image.
    Create {
        /// Which image: "BIOS" or "UEFI".
        which: &'static str,
        /// The bootloader crate's error, with its causes.
        reason: String,
    },
    /// `llvm-objcopy` could not make the stripped copy.
    Strip(String),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::MissingKernel(p) => {
                write!(f, "kernel ELF {} not found: build it first (`cargo xtask build`)", p.display())
            }
            ImageError::Create { which, reason } => write!(f, "could not create the {which} image: {reason}"),
            ImageError::Strip(reason) => write!(f, "could not strip the kernel for its images: {reason}"),
        }
    }
}

impl std::error::Error for ImageError {}

/// Writes `<out_dir>/<stem>-bios.img` and `<out_dir>/<stem>-uefi.img` for `kernel`, each holding
/// `<out_dir>/<stem>.stripped`, a copy of `kernel` without symbols or debug info.
pub fn create_images(kernel: &Path, out_dir: &Path, stem: &str) -> Result<DiskImages, ImageError> {
    if !kernel.is_file() {
        return Err(ImageError::MissingKernel(kernel.to_path_buf()));
    }
    let stripped = out_dir.join(format!("{stem}.stripped"));
    strip(kernel, &stripped)?;
    let images = DiskImages {
        bios: out_dir.join(format!("{stem}-bios.img")),
        uefi: out_dir.join(format!("{stem}-uefi.img")),
        kernel: kernel.to_path_buf(),
    };
    bootloader::BiosBoot::new(&stripped)
        .create_disk_image(&images.bios)
        .map_err(|e| ImageError::Create { which: "BIOS", reason: format!("{e:#}") })?;
    bootloader::UefiBoot::new(&stripped)
        .create_disk_image(&images.uefi)
        .map_err(|e| ImageError::Create { which: "UEFI", reason: format!("{e:#}") })?;
    Ok(images)
}

/// A BIOS image holding `kernel` as it is, debug info and all: how images were made before they
/// were stripped. Only `cargo xtask bench boot` uses it, as the baseline it measures against.
pub fn create_unstripped_bios_image(kernel: &Path, out: &Path) -> Result<(), ImageError> {
    if !kernel.is_file() {
        return Err(ImageError::MissingKernel(kernel.to_path_buf()));
    }
    bootloader::BiosBoot::new(kernel)
        .create_disk_image(out)
        .map_err(|e| ImageError::Create { which: "BIOS", reason: format!("{e:#}") })
}

/// Copies `elf` to `out` without symbols and debug info. The dynamic section and relocations,
/// which the bootloader applies to our position-independent kernel, are kept.
pub fn strip(elf: &Path, out: &Path) -> Result<(), ImageError> {
    let objcopy = llvm_tool("llvm-objcopy")?;
    let output = Command::new(&objcopy)
        .arg("--strip-all")
        .arg(elf)
        .arg(out)
        .output()
        .map_err(|e| ImageError::Strip(format!("cannot run {}: {e}", objcopy.display())))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ImageError::Strip(format!("{}: {}", objcopy.display(), String::from_utf8_lossy(&output.stderr).trim())))
    }
}

/// A program of the toolchain's `llvm-tools` component: `<sysroot>/lib/rustlib/<host>/bin/NAME`.
fn llvm_tool(name: &str) -> Result<PathBuf, ImageError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let ask = |arg: &str| -> Result<String, ImageError> {
        let out = Command::new(&rustc)
            .arg(arg)
            .output()
            .map_err(|e| ImageError::Strip(format!("cannot run rustc {arg}: {e}")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let sysroot = ask("--print=sysroot")?;
    let version = ask("-vV")?;
    let host = version.lines().find_map(|l| l.strip_prefix("host: ")).unwrap_or("x86_64-unknown-linux-gnu");
    let path = Path::new(sysroot.trim()).join("lib/rustlib").join(host.trim()).join("bin").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ImageError::Strip(format!(
            "{} not found: the toolchain lacks its llvm-tools component (rust-toolchain.toml lists it; \
             `rustup component add llvm-tools-preview` installs it)",
            path.display()
        )))
    }
}
