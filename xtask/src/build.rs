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

/// Which kernel: with or without the in-kernel tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// With `ktest` and `bench` (the kernel's cargo feature `test-support`): what `cargo xtask
    /// build`, `run`, `test` and `bench` boot.
    WithTests,
    /// Without them: the USB image `cargo xtask image` writes for real machines. Built in a
    /// target directory of its own (`target/usb/`) and packed under `target/images/usb-*/`, so
    /// it never overwrites the test kernel or its images.
    Usb,
}

impl Flavour {
    /// The kernel's cargo features for this flavour.
    fn features(self) -> &'static [&'static str] {
        match self {
            Flavour::WithTests => &["test-support"],
            Flavour::Usb => &[],
        }
    }

    /// The target directory its kernel is built in.
    fn target_dir(self) -> PathBuf {
        match self {
            Flavour::WithTests => target_dir(),
            Flavour::Usb => target_dir().join("usb"),
        }
    }

    /// The directory of its images under `target/images/`.
    fn images_dir(self, profile: Profile) -> String {
        match self {
            Flavour::WithTests => profile.dir().to_string(),
            Flavour::Usb => format!("usb-{}", profile.dir()),
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

/// The arguments of `cargo` that build the kernel ELF.
fn kernel_build_args(profile: Profile, flavour: Flavour) -> Vec<String> {
    let mut args: Vec<String> =
        ["build", "-p", "kernel", "--bin", "kernel", "--target", "x86_64-unknown-none", "--profile"]
            .map(String::from)
            .into();
    args.push(profile.cargo_profile().into());
    if !flavour.features().is_empty() {
        args.push("--features".into());
        args.push(flavour.features().join(","));
    }
    if flavour != Flavour::WithTests {
        args.push("--target-dir".into());
        args.push(flavour.target_dir().display().to_string());
    }
    args
}

/// Builds the kernel ELF for x86_64-unknown-none.
fn build_kernel_flavour(profile: Profile, flavour: Flavour) -> Result<PathBuf, String> {
    let mut cmd = cargo();
    cmd.args(kernel_build_args(profile, flavour));
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("kernel build failed (if the error mentions x86_64-unknown-none or rust-src, install the pinned \
             toolchain: `rustup toolchain install` in the repository, see README)"
            .into());
    }
    Ok(flavour.target_dir().join("x86_64-unknown-none").join(profile.cargo_profile()).join("kernel"))
}

/// Builds the kernel with the in-kernel tests and its images; returns the images.
pub fn build_images(profile: Profile) -> Result<boot::DiskImages, String> {
    build_flavour_images(profile, Flavour::WithTests)
}

/// Builds a kernel flavour and its images; returns the images.
fn build_flavour_images(profile: Profile, flavour: Flavour) -> Result<boot::DiskImages, String> {
    let kernel = build_kernel_flavour(profile, flavour)?;
    let out = target_dir().join("images").join(flavour.images_dir(profile));
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

/// A test kernel whose drivers run a lab's student code (`cargo xtask lab grade`): the test
/// kernel's features plus `feature` (a driver's lab feature, e.g. `e1000/lab-tx`), built in a
/// target directory of its own (`target/lab/`) and packed under `target/images/lab-<name>/`, so
/// it never replaces the kernel that `run` and `test` boot.
pub fn build_lab_images(feature: &str, name: &str) -> Result<boot::DiskImages, String> {
    let profile = Profile::Debug;
    let target = target_dir().join("lab");
    let mut args = kernel_build_args(profile, Flavour::WithTests);
    let features = args.iter().position(|a| a == "--features").map(|i| i + 1).expect("test kernel has features");
    args[features] = format!("{},{feature}", args[features]);
    args.extend(["--target-dir".to_string(), target.display().to_string()]);
    let status = cargo().args(&args).status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("the kernel with {feature} does not build (see the compiler's messages above)"));
    }
    let kernel = target.join("x86_64-unknown-none").join(profile.cargo_profile()).join("kernel");
    let out = target_dir().join("images").join(format!("lab-{name}"));
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    boot::create_images(&kernel, &out, "kernel").map_err(|e| e.to_string())
}

/// `cargo xtask image`: images for a USB stick (a kernel without the in-kernel tests), and how
/// to write them.
pub fn image(profile: Profile) -> Result<ExitCode, String> {
    let images = build_flavour_images(profile, Flavour::Usb)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_kernel_has_the_tests_and_the_usb_kernel_builds_apart() {
        let with_tests = kernel_build_args(Profile::Debug, Flavour::WithTests);
        assert!(with_tests.windows(2).any(|w| w == ["--features", "test-support"]), "{with_tests:?}");
        assert!(!with_tests.iter().any(|a| a == "--target-dir"), "{with_tests:?}");

        let usb = kernel_build_args(Profile::Release, Flavour::Usb);
        assert!(!usb.iter().any(|a| a == "--features" || a.contains("test-support")), "{usb:?}");
        assert!(usb.windows(2).any(|w| w == ["--profile", "release"]), "{usb:?}");
        let dir = usb.iter().position(|a| a == "--target-dir").map(|i| PathBuf::from(&usb[i + 1]));
        assert_eq!(dir, Some(target_dir().join("usb")));

        assert_eq!(Flavour::WithTests.images_dir(Profile::Debug), "debug");
        assert_eq!(Flavour::Usb.images_dir(Profile::Debug), "usb-debug");
        assert_eq!(Flavour::Usb.images_dir(Profile::Release), "usb-release");
    }
}
