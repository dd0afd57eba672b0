//! `cargo xtask bench`: every benchmark, each reporting beside a baseline measured in the same run.
//!
//! Host benchmarks are criterion runs of the `dma` crate. QEMU benchmarks boot the release kernel
//! under TCG (the debug build would measure unoptimised code) and print ratios against a floor
//! from the same boot; `boot` measures boot time itself. The test runner (`test.rs` and the
//! evidence suites) holds only tests.

use crate::build::{self, Profile};
use crate::net_tests;
use crate::qemu::{Firmware, MachineConfig, Session};
use crate::test;
use std::net::UdpSocket;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `cargo xtask bench [pool|vtd|iommu|net|disk|boot|ir]...`: every benchmark by default.
///
/// Host benchmarks are criterion runs (`pool`, of the `dma` crate: DMA pool against a bare free
/// list and linked_list_allocator; `vtd`, of the `iommu-vtd` crate: page-table and IOVA cost of
/// map+unmap). QEMU
/// benchmarks boot the kernel under TCG and report ratios against a floor measured in the same
/// boot (`iommu`: Direct vs strict vs deferred VT-d; `net`: e1000 frames per second; `disk`:
/// AHCI throughput and IOPS beside a command round-trip floor; `boot`: QEMU start to the prompt,
/// beside the unstripped image).
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    const ALL: [&str; 7] = ["pool", "vtd", "iommu", "net", "disk", "boot", "ir"];
    let chosen: Vec<&str> = if args.is_empty() { ALL.to_vec() } else { args.iter().map(String::as_str).collect() };
    if let Some(bad) = chosen.iter().find(|c| !ALL.contains(c)) {
        return Err(format!("unknown benchmark `{bad}` (choose from {})", ALL.join(", ")));
    }
    let mut failed = false;
    for name in chosen {
        println!("\n== benchmark: {name} ==");
        let result = match name {
            "pool" | "vtd" => {
                let status = build::cargo()
                    .args(["bench", "-p", if name == "vtd" { "iommu-vtd" } else { "dma" }, "--bench", name])
                    .status()
                    .map_err(|e| format!("cannot run cargo bench: {e}"))?;
                if status.success() { Ok(()) } else { Err(format!("cargo bench --bench {name} failed")) }
            }
            // The kernel is measured as it would ship: an optimised (release) build.
            "iommu" => iommu(),
            "disk" => disk(&["--release".to_string()]),
            "boot" => boot_time(),
            "ir" => interrupt_remapping(),
            _ => {
                let images = build::build_images(Profile::Release)?;
                let work = build::target_dir().join("xtask-bench");
                std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
                net(&images, &work)
            }
        };
        if let Err(e) = result {
            println!("benchmark {name} failed: {e}");
            failed = true;
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Boots with VT-d and runs the kernel's `bench iommu` (map+unmap cost per mapper).
fn iommu() -> Result<(), String> {
    let images = build::build_images(Profile::Release)?;
    let work = build::target_dir().join("xtask-bench");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let machine = MachineConfig::standard();
    let mut session = test::boot(&machine, &images, &work, "bench-iommu")?;
    session.send_line("bench iommu")?;
    let out = session
        .expect("bench iommu: done", Duration::from_secs(900))
        .map_err(|e| format!("bench iommu did not finish: {e:?}"))?;
    for line in out.lines().filter(|l| !l.starts_with('[')) {
        println!("{line}");
    }
    let _ = session.send_line("exit");
    let _ = session.wait_exit(Duration::from_secs(60));
    Ok(())
}

// ---- network ----

/// One benchmark figure from a `netbench` line: the value after `key=`.
fn field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().rev().find(|l| l.contains("netbench:"))?;
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// `cargo xtask bench` (network part): transmit and receive frames per second for 64- and
/// 1514-byte frames through the socket netdev under TCG, beside the cost floor of the same
/// QEMU (a guest loop writing only TDT: one MMIO exit, no frame).
fn net(images: &boot::DiskImages, work: &Path) -> Result<(), String> {
    const TX_FRAMES: u64 = 20_000;
    const RX_FRAMES: usize = 30_000;
    const FLOOR_WRITES: u64 = 200_000;
    let peer = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cannot bind the peer: {e}"))?;
    let (network, qemu_port) = net_tests::socket_network(&peer)?;
    let machine =
        MachineConfig { name: "netbench".into(), iommu: false, network: Some(network), ..MachineConfig::standard() };
    let mut session = test::boot(&machine, images, work, "bench")?;
    // Drain the peer in the background, counting test frames (transmit cross-check).
    let counter = peer.try_clone().map_err(|e| e.to_string())?;
    counter.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = counter.recv(&mut buf)
                    && n >= 14
                    && buf[12..14] == net_tests::TEST_ETHERTYPE
                {
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let floor_text = test::command(&mut session, &format!("netbench floor {FLOOR_WRITES}"))?;
    let floor = field(&floor_text, "per_second").ok_or(format!("no floor figure in:\n{floor_text}"))?;
    let mut rows = vec![("floor: TDT write only".to_string(), floor, String::new())];
    for size in [64u64, 1514] {
        let before = received.load(std::sync::atomic::Ordering::Relaxed);
        let text = test::command(&mut session, &format!("netbench tx {size} {TX_FRAMES}"))?;
        let fps = field(&text, "fps").ok_or(format!("no tx figure in:\n{text}"))?;
        std::thread::sleep(Duration::from_millis(500));
        let got = received.load(std::sync::atomic::Ordering::Relaxed) - before;
        rows.push((format!("tx {size} B"), fps, format!("peer received {got}/{TX_FRAMES}")));
    }
    for size in [64usize, 1514] {
        session.send_line(&format!("netbench rx {RX_FRAMES} 2"))?;
        session
            .expect("netbench: rx ready", net_tests::LONG)
            .map_err(|e| format!("netbench rx did not start: {e:?}"))?;
        let mut frame = net_tests::test_frame(2);
        frame.resize(size, 0xa5);
        let start = Instant::now();
        for i in 0..RX_FRAMES {
            frame[14..18].copy_from_slice(&(i as u32).to_be_bytes());
            peer.send_to(&frame, ("127.0.0.1", qemu_port)).map_err(|e| format!("send: {e}"))?;
        }
        let host_us = start.elapsed().as_micros();
        let text =
            session.expect("kernel> ", net_tests::LONG).map_err(|e| format!("netbench rx did not return: {e:?}"))?;
        let fps = field(&text, "fps").ok_or(format!("no rx figure in:\n{text}"))?;
        let frames = field(&text, "frames").unwrap_or(0);
        rows.push((
            format!("rx {size} B"),
            fps,
            format!(
                "guest received {frames}/{RX_FRAMES} (host sent in {} ms; the rest overflowed QEMU's socket)",
                host_us / 1000
            ),
        ));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = drain.join();
    let stats = test::command(&mut session, "cat net:stats").unwrap_or_default();
    let _ = session.send_line("exit");
    let _ = session.wait_exit(net_tests::LONG);
    println!("\nnetwork benchmark (QEMU TCG, e1000 on a socket netdev, polling):");
    println!("  {:<24} {:>12} {:>10}", "what", "per second", "of floor");
    for (what, rate, note) in &rows {
        println!("  {what:<24} {rate:>12} {:>9.3}  {note}", *rate as f64 / floor.max(1) as f64);
    }
    let drops = stats.lines().find(|l| l.starts_with("drops ")).unwrap_or("drops ?");
    println!("  kernel {drops} (receive overload shows here as hw.MPC / RNBC)");
    let _ = work;
    Ok(())
}

// ---- storage ----

/// `cargo xtask bench` part for storage: boots the standard machine (with VT-d, then without)
/// with a 64 MiB scratch disk on port 1 and runs `disk bench` there (sequential 1 MiB reads and writes at QD1, random 4 KiB
/// reads at QD1 and QD32, and the floors: a FLUSH round trip and a 1-sector read). Prints the
/// kernel's `bench:` lines. `args` may hold `--release`.
pub fn disk(args: &[String]) -> Result<(), String> {
    crate::qemu::check_qemu()?;
    let profile = crate::build::parse_profile(args)?;
    let images = crate::build::build_images(profile)?;
    let work = crate::build::target_dir().join("xtask-test");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let disk = work.join("bench-disk.img");
    crate::qemu::scratch_disk(&disk, 64 << 20)?;
    // With the VT-d mapper (the default) and with Direct, so the IOMMU's share of each
    // command's cost shows; in each, completions by interrupt and then by polling.
    for iommu in [true, false] {
        let name = if iommu { "bench-disk-vtd" } else { "bench-disk-novtd" };
        let machine =
            MachineConfig { name: name.into(), disks: vec![disk.clone()], iommu, ..MachineConfig::standard() };
        let mut session = test::boot(&machine, &images, &work, "bench")?;
        for mode in ["off", "on"] {
            test::command(&mut session, &format!("disk poll {mode}"))?;
            println!("bench: machine={name}");
            session.send_line("disk bench ahci0p1 48")?;
            let run = session
                .expect("kernel> ", Duration::from_secs(900))
                .map_err(|e| format!("disk bench did not finish: {e:?}"))?;
            for line in run.lines().filter(|l| l.starts_with("bench:") || l.starts_with("disk:")) {
                println!("{line}");
            }
            if !run.contains("disk: bench ok") {
                return Err(format!("disk bench failed:\n{run}"));
            }
        }
        let _ = session.send_line("exit");
        let _ = session.wait_exit(Duration::from_secs(30));
    }
    Ok(())
}

// ---- interrupt remapping ----

/// One `bench:` row of `disk bench`: the IOPS of `name`.
fn disk_iops(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(&format!("bench: {name} ")))?;
    line.split_whitespace().find_map(|w| w.strip_prefix("IOPS=")?.parse().ok())
}

/// `cargo xtask bench ir`: what interrupt remapping costs on the interrupt-heavy paths. The same
/// release kernel boots on the standard VT-d machine with the unit's interrupt remapping on
/// (`intremap=on`) and off (`intremap=off`: ECAP.IR clear, so the kernel programs compatibility
/// format messages), alternating, three boots each. Each boot runs, three times, the AHCI
/// benchmark with completions by interrupt (a 4 MiB region: floors, QD1 and QD32 random 4 KiB
/// reads) and an e1000 receive of 64-byte frames with its interrupts on (`netbench rx ... irq`).
/// A boot's figure is its best of three (the run least disturbed by other work on the host);
/// the table gives the median over the boots of each kind, and the ratio IR on ÷ IR off
/// (1.00 = free; below 1, remapping costs).
fn interrupt_remapping() -> Result<(), String> {
    const RX_FRAMES: usize = 20_000;
    const REPEATS: usize = 3;
    const ROWS: [&str; 4] = ["floor_flush_qd1", "floor_read_1_sector_qd1", "rand_read_4k_qd1", "rand_read_4k_qd32"];
    let images = build::build_images(Profile::Release)?;
    let work = build::target_dir().join("xtask-bench");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let disk = work.join("bench-ir-disk.img");
    crate::qemu::scratch_disk(&disk, 64 << 20)?;
    // (row, IR on) -> one figure (best of REPEATS) per boot.
    let mut figures: std::collections::BTreeMap<(String, bool), Vec<f64>> = Default::default();
    for (round, ir) in [true, false, true, false, true, false].into_iter().enumerate() {
        let peer = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cannot bind the peer: {e}"))?;
        let (network, qemu_port) = net_tests::socket_network(&peer)?;
        let machine = MachineConfig {
            name: format!("bench-ir-{}", if ir { "on" } else { "off" }),
            interrupt_remapping: ir,
            network: Some(network),
            disks: vec![disk.clone()],
            ..MachineConfig::standard()
        };
        let mut session = test::boot(&machine, &images, &work, &format!("round{round}"))?;
        let irte = test::command(&mut session, "cat iommu:irte")?;
        if irte.contains("interrupt remapping on") != ir {
            return Err(format!(
                "{}: interrupt remapping is not {}:\n{irte}",
                machine.name,
                if ir { "on" } else { "off" }
            ));
        }
        test::command(&mut session, "disk poll off")?;
        let mut best: std::collections::BTreeMap<String, f64> = Default::default();
        let mut keep = |row: String, value: f64| {
            let b = best.entry(row).or_insert(0.0);
            *b = b.max(value);
        };
        for _ in 0..REPEATS {
            session.send_line("disk bench ahci0p1 4")?;
            let run = session
                .expect("kernel> ", Duration::from_secs(900))
                .map_err(|e| format!("disk bench did not finish: {e:?}"))?;
            if !run.contains("disk: bench ok") || !run.contains("mode=interrupts") {
                return Err(format!("disk bench failed or did not use interrupts:\n{run}"));
            }
            for row in ROWS {
                let iops = disk_iops(&run, row).ok_or(format!("no {row} row in:\n{run}"))?;
                keep(format!("disk {row} (IOPS)"), iops as f64);
            }
            session.send_line(&format!("netbench rx {RX_FRAMES} 2 irq"))?;
            session
                .expect("netbench: rx ready", net_tests::LONG)
                .map_err(|e| format!("netbench rx did not start: {e:?}"))?;
            let frame = net_tests::test_frame(2);
            for _ in 0..RX_FRAMES {
                peer.send_to(&frame, ("127.0.0.1", qemu_port)).map_err(|e| format!("send: {e}"))?;
            }
            let text = session
                .expect("kernel> ", net_tests::LONG)
                .map_err(|e| format!("netbench rx did not return: {e:?}"))?;
            let fps = field(&text, "fps").ok_or(format!("no rx figure in:\n{text}"))?;
            let (frames, interrupts) = (field(&text, "frames").unwrap_or(0), field(&text, "interrupts").unwrap_or(0));
            println!(
                "  boot {round} (IR {}): rx {frames} frames, {interrupts} interrupts, {fps} frames/s",
                if ir { "on" } else { "off" }
            );
            keep("e1000 rx 64 B, interrupts on (frames/s)".into(), fps as f64);
        }
        for (row, value) in best {
            figures.entry((row, ir)).or_default().push(value);
        }
        let _ = session.send_line("exit");
        let _ = session.wait_exit(Duration::from_secs(30));
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\ninterrupt remapping cost (QEMU TCG, release kernel, VT-d strict unmap; best of {REPEATS} runs per boot,"
    );
    println!("median of 3 boots each, boots alternating IR on / off):");
    println!("| row | IR on | IR off | on ÷ off | IR on, per boot | IR off, per boot |\n|---|---:|---:|---:|---|---|");
    let names: std::collections::BTreeSet<&String> = figures.keys().map(|(n, _)| n).collect();
    for name in names {
        let (on, off) = (&figures[&(name.clone(), true)], &figures[&(name.clone(), false)]);
        let list = |v: &Vec<f64>| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ");
        println!(
            "| {name} | {:.0} | {:.0} | {:.3} | {} | {} |",
            median(on),
            median(off),
            median(on) / median(off).max(1.0),
            list(on),
            list(off)
        );
    }
    Ok(())
}

// ---- boot time ----

// How long a student waits, from QEMU's start to the `kernel>` prompt.
//
// Measured from the host, on the machine `cargo xtask run` starts (q35, VT-d, e1000, AHCI,
// TCG): five boots of each image (BIOS and UEFI, debug and release), median, fastest and
// slowest. The baseline, booted in the same run, is what every image was before the images were
// stripped: the debug kernel with its DWARF inside, which the BIOS stage has to read whole.

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

/// `bench boot`: QEMU start to the prompt for each image, beside the unstripped baseline.
fn boot_time() -> Result<(), String> {
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
    boot::create_unstripped_bios_image(&debug.kernel, &baseline.bios).map_err(|e| e.to_string())?;
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
                "| {} {profile} | {:.2} MB | {median:.2} s | {min:.2} s | {max:.2} s | {:.2} |",
                format!("{firmware:?}").to_uppercase(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_fields_parse() {
        let text = "netbench: tx size=64 frames=20000 failed=0 us=1000 fps=20000000\nkernel> ";
        assert_eq!(field(text, "fps"), Some(20_000_000));
        assert_eq!(field(text, "size"), Some(64));
        assert_eq!(field(text, "nope"), None);
    }
}
