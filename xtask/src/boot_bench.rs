//! `cargo xtask bench boot`: how long a student waits, from QEMU's start to the `kernel>` prompt.
//!
//! Measured from the host, on the machine `cargo xtask run` starts (q35, VT-d, e1000, AHCI,
//! TCG): five boots of each image (BIOS and UEFI, debug and release), median, fastest and
//! slowest. The baseline, booted in the same run, is what every image was before the images were
//! stripped: the debug kernel with its DWARF inside, which the BIOS stage has to read whole.

use crate::build::{self, Profile};
use crate::qemu::{Firmware, MachineConfig, Session};
use std::path::Path;
use std::time::{Duration, Instant};

/// Boots per image.
const RUNS: usize = 5;
/// Boots of the baseline, which is slow.
const BASELINE_RUNS: usize = 3;
/// Linux 6.1 to /init in the same QEMU (../shared/design/PLATFORM.md), for reference only.
const LINUX_REFERENCE_S: f64 = 8.0;

/// Seconds from QEMU's start to the first prompt, for one boot of `images`.
fn time_to_prompt(machine: &MachineConfig, images: &boot::DiskImages, work: &Path) -> Result<f64, String> {
    let log = work.join(format!("boot-bench-{}.log", machine.name));
    let start = Instant::now();
    let mut session = Session::start(machine, images, work, log)?;
    session.expect("kernel> ", Duration::from_secs(180)).map_err(|e| format!("{}: no prompt: {e:?}", machine.name))?;
    let seconds = start.elapsed().as_secs_f64();
    let _ = session.send_line("exit");
    let _ = session.wait_exit(Duration::from_secs(10));
    Ok(seconds)
}

/// Median, fastest and slowest of `runs` boots.
fn measure(machine: &MachineConfig, images: &boot::DiskImages, work: &Path, runs: usize) -> Result<[f64; 3], String> {
    let mut times = (0..runs).map(|_| time_to_prompt(machine, images, work)).collect::<Result<Vec<_>, _>>()?;
    times.sort_by(f64::total_cmp);
    Ok([times[times.len() / 2], times[0], times[times.len() - 1]])
}

fn size_mb(path: &Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len() as f64 / 1e6).unwrap_or(f64::NAN)
}

pub fn bench() -> Result<(), String> {
    let work = build::target_dir().join("xtask-bench");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;

    // The baseline: the debug kernel with its debug info, packed as the images used to be.
    let debug = build::build_images(Profile::Debug)?;
    let baseline_dir = work.join("unstripped");
    std::fs::create_dir_all(&baseline_dir).map_err(|e| e.to_string())?;
    let baseline = boot::DiskImages {
        bios: baseline_dir.join("kernel-bios.img"),
        uefi: baseline_dir.join("kernel-uefi.img"),
        kernel: debug.kernel.clone(),
    };
    bootloader_images_of_unstripped(&debug.kernel, &baseline)?;
    let bios = MachineConfig::standard();
    println!("baseline: the same debug kernel with its debug info inside ({:.1} MB), BIOS", size_mb(&debug.kernel));
    let [base, base_min, base_max] = measure(&bios, &baseline, &work, BASELINE_RUNS)?;
    println!("  {base:.2} s to the prompt (median of {BASELINE_RUNS}; {base_min:.2}–{base_max:.2})");

    let release = build::build_images(Profile::Release)?;
    println!();
    println!("QEMU start to `kernel>`, {RUNS} boots each (TCG, q35, VT-d, e1000, AHCI):");
    println!("| image | kernel in image | median | fastest | slowest | ÷ baseline |\n|---|---|---|---|---|---|");
    for (profile, images) in [("debug", &debug), ("release", &release)] {
        let stripped = images.bios.with_file_name("kernel.stripped");
        for firmware in [Firmware::Bios, Firmware::Uefi] {
            let machine = MachineConfig {
                name: format!("{profile}-{firmware:?}").to_lowercase(),
                firmware,
                ..MachineConfig::standard()
            };
            let [median, min, max] = measure(&machine, images, &work, RUNS)?;
            println!(
                "| {firmware:?} {profile} | {:.2} MB | {median:.2} s | {min:.2} s | {max:.2} s | {:.2} |",
                size_mb(&stripped),
                median / base
            );
        }
    }
    println!();
    println!("Reference, not measured here: Linux 6.1 reaches /init in {LINUX_REFERENCE_S:.1} s in the same QEMU.");
    println!("Target (issue 11): BIOS images at most 2.0 s, median of {RUNS}.");
    Ok(())
}

/// Packs the unstripped ELF the way images were made before they were stripped.
fn bootloader_images_of_unstripped(kernel: &Path, images: &boot::DiskImages) -> Result<(), String> {
    boot::create_unstripped_bios_image(kernel, &images.bios).map_err(|e| e.to_string())
}
