//! `cargo xtask`: the project's one entry point for building, booting and testing the kernel.
//!
//! ```text
//! cargo xtask build [--release]          build the kernel and its BIOS/UEFI disk images
//! cargo xtask image [--release]          build images for a USB stick and print how to write them
//! cargo xtask run [options]              boot in QEMU with the serial console on this terminal
//! cargo xtask gdb                        gdb attached to `cargo xtask run --gdb`
//! cargo xtask test                       host tests, then the in-kernel tests in every QEMU setup
//! cargo xtask bench                      benchmarks
//! cargo xtask lab list|start|grade|reset  the labs: write the ring yourself (docs/labs)
//! ```

mod bench;
mod build;
mod console_tests;
mod disk_tests;
mod docs_check;
mod exercises;
mod fault_tests;
mod fixtures;
mod gdb;
mod ir_evidence;
mod lab;
mod layers;
mod net_tests;
mod qemu;
mod recording_qemu;
mod setup;
mod symbols;
mod test;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build [--release]     build the kernel and its BIOS and UEFI disk images
  image [--release]     build the images for a USB stick (no in-kernel tests) and print how to write them
  run [options]         boot the kernel in QEMU, serial console on this terminal
      --release           optimised kernel
      --uefi              boot through OVMF (UEFI) instead of BIOS
      --no-iommu          no intel-iommu device (DMA uses the Direct mapper)
      --kvm               use KVM instead of TCG (slow to boot under nested virtualisation)
      --timeout SECONDS   stop QEMU after this long (default: none)
      --gdb               start halted, with QEMU's gdb stub on a local port
  gdb [GDB ARGS]        gdb with the kernel's symbols, attached to `run --gdb` (second terminal)
  test [--host-only|--qemu-only|--job NAME]
                        host tests, then in-kernel tests in every QEMU configuration; --job runs
                        one QEMU job alone: bios-vtd, bios-novtd, uefi-vtd, bios-6g-novtd,
                        bios-vtd-bridged, bios-vtd-release, net, net-flood, disk, disk-faults,
                        iommu-failsafe, vtd-ir-records, console, lab
  setup                 install what booting and testing need (QEMU, OVMF, gdb, python3; apt on
                        Debian/Ubuntu) and fetch the QEMU 10 of job vtd-ir-records into target/
  exercises             check the exercise graders: each fails on this tree, passes with its answer
                        (also part of `test`'s host half)
  bench [NAME...]       benchmarks: pool, vtd (host, criterion); iommu, net, disk, boot, ir (QEMU)
  lab list|start NAME|grade NAME [--host-only]|reset NAME
                        the labs (docs/labs): write a driver's ring code yourself; NAME is
                        e1000-tx, e1000-rx, ahci-issue or ahci-complete
  fixtures              capture ACPI tables and PCI config spaces from QEMU as test fixtures
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "build" => build::parse_profile(rest).and_then(|p| build::build_images(p).map(|_| ExitCode::SUCCESS)),
        "image" => build::parse_profile(rest).and_then(build::image),
        "run" => qemu::RunOptions::parse(rest).and_then(qemu::run_interactive),
        "gdb" => gdb::run(rest),
        "test" => test::run_all(rest),
        "bench" => bench::run(rest),
        "exercises" => exercises::run(rest),
        "fixtures" => fixtures::capture(rest),
        "setup" => setup::run(rest),
        "lab" => lab::run(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
