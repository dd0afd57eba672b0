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

use std::fmt;
use std::path::{Path, PathBuf};

/// The two disk images made from one kernel.
#[derive(Debug, Clone)]
pub struct DiskImages {
    /// MBR image for legacy BIOS (and CSM) firmware.
    pub bios: PathBuf,
    /// GPT image for UEFI firmware.
    pub uefi: PathBuf,
}

/// Why an image could not be made.
#[derive(Debug)]
pub enum ImageError {
    /// The kernel ELF does not exist (was the kernel built?).
    MissingKernel(PathBuf),
    /// The bootloader crate failed to write the image.
    Create { which: &'static str, reason: String },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::MissingKernel(p) => {
                write!(f, "kernel ELF {} not found: build it first (`cargo xtask build`)", p.display())
            }
            ImageError::Create { which, reason } => write!(f, "could not create the {which} image: {reason}"),
        }
    }
}

impl std::error::Error for ImageError {}

/// Writes `<out_dir>/<stem>-bios.img` and `<out_dir>/<stem>-uefi.img` for `kernel`.
pub fn create_images(kernel: &Path, out_dir: &Path, stem: &str) -> Result<DiskImages, ImageError> {
    if !kernel.is_file() {
        return Err(ImageError::MissingKernel(kernel.to_path_buf()));
    }
    let images =
        DiskImages { bios: out_dir.join(format!("{stem}-bios.img")), uefi: out_dir.join(format!("{stem}-uefi.img")) };
    bootloader::BiosBoot::new(kernel)
        .create_disk_image(&images.bios)
        .map_err(|e| ImageError::Create { which: "BIOS", reason: format!("{e:#}") })?;
    bootloader::UefiBoot::new(kernel)
        .create_disk_image(&images.uefi)
        .map_err(|e| ImageError::Create { which: "UEFI", reason: format!("{e:#}") })?;
    Ok(images)
}
