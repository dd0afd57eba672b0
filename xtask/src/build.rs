//! Building the kernel for bare metal and packing it into disk images.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Which build of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// The everyday kernel: cargo profile `kernel-dev` (opt-level 1, debug assertions, overflow
    /// checks, full debug info; see the workspace Cargo.toml).
    Debug,
    /// The kernel as benchmarked: cargo profile `release` (with debug info kept in the ELF).
    Release,
}

impl Profile {
    /// The cargo profile, which is also its directory under `target/x86_64-unknown-none/`.
    pub fn cargo_profile(self) -> &'static str {
        match self {
            Profile::Debug => "kernel-dev",
            Profile::Release => "release",
        }
    }

    /// The directory of its images under `target/images/`.
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// Accepts only `--release`.
pub fn parse_profile(args: &[String]) -> Result<Profile, String> {
    match args {
        [] => Ok(Profile::Debug),
        [flag] if flag == "--release" => Ok(Profile::Release),
        other => Err(format!("unexpected arguments {other:?} (only --release is accepted)")),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

/// The target directory cargo uses.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// The `cargo` that runs us (so the pinned toolchain is used).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds the kernel ELF for x86_64-unknown-none.
pub fn build_kernel(profile: Profile) -> Result<PathBuf, String> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "kernel", "--bin", "kernel", "--target", "x86_64-unknown-none"]);
    cmd.args(["--profile", profile.cargo_profile()]);
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("kernel build failed (if the error mentions x86_64-unknown-none or rust-src, install the pinned \
             toolchain: `rustup toolchain install` in the repository, see README)"
            .into());
    }
    Ok(target_dir().join("x86_64-unknown-none").join(profile.cargo_profile()).join("kernel"))
}

/// Builds the kernel and its images; returns the images.
pub fn build_images(profile: Profile) -> Result<boot::DiskImages, String> {
    let kernel = build_kernel(profile)?;
    let out = target_dir().join("images").join(profile.dir());
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let images = boot::DiskImages {
        bios: out.join("kernel-bios.img"),
        uefi: out.join("kernel-uefi.img"),
        kernel: kernel.clone(),
    };
    let fresh = |img: &Path| {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((modified(img), modified(&kernel)), (Some(i), Some(k)) if i >= k)
    };
    if fresh(&images.bios) && fresh(&images.uefi) {
        return Ok(images);
    }
    boot::create_images(&kernel, &out, "kernel").map_err(|e| e.to_string())
}

/// `cargo xtask image`: images for a USB stick, and how to write them.
pub fn image(profile: Profile) -> Result<ExitCode, String> {
    let images = build_images(profile)?;
    println!("BIOS image: {}", images.bios.display());
    println!("UEFI image: {}", images.uefi.display());
    println!("kernel with symbols (for gdb): {}", images.kernel.display());
    println!();
    println!("To boot a PC from a USB stick, write ONE image to the WHOLE stick (not a partition).");
    println!("Find the stick's device with `lsblk` first: writing to the wrong device destroys its data.");
    println!("  sudo dd if={} of=/dev/sdX bs=4M conv=fsync status=progress", images.uefi.display());
    println!("Use the BIOS image instead for machines without UEFI (or with CSM/legacy boot enabled).");
    Ok(ExitCode::SUCCESS)
}
