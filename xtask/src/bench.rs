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
/// boot (`iommu`: Direct vs strict vs deferred VT-d; `net`: e1000 frames per second and
/// `disk`: AHCI throughput and IOPS, each without an IOMMU and with VT-d (caching mode off and
/// on) in the same run, printing the IOMMU cost ratio per row; `boot`: QEMU start to the
/// prompt, beside the unstripped image). `BENCH_ITERS` sets the iterations of `net` and `disk`;
/// `BENCH_ROWS` picks `disk` rows.
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

// ---- IOMMU cost: the same benchmark with and without VT-d ----

/// The machines every IOMMU-cost comparison runs on: no IOMMU, then VT-d (strict unmaps,
/// interrupt remapping on) with QEMU's caching mode off and on. Each is booted once and the
/// benchmark iterations are interleaved across them (none, cm=off, cm=on, none, ...), so a
/// change in the host's load hits all three alike and the ratios stay comparable.
const VARIANTS: [(&str, bool, bool); 3] =
    [("none", false, false), ("vtd-cm-off", true, false), ("vtd-cm-on", true, true)];

/// Iterations per variant (`BENCH_ITERS`, default 3): rows report the median.
fn iterations() -> usize {
    std::env::var("BENCH_ITERS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(3)
}

/// The median of the per-iteration ratios `vtd[i] / none[i]`. Iterations are interleaved across
/// the machines, so iteration i of each ran within seconds of the others: pairing them cancels a
/// drift in the host's speed that the ratio of two medians still carries (under TCG on a shared
/// 2-core host, single rows move by ±15% between runs).
fn paired_cost(vtd: &[f64], none: &[f64]) -> f64 {
    let ratios: Vec<f64> = vtd.iter().zip(none).map(|(v, n)| v / n).collect();
    median(&ratios)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// Rows (name → one value per variant per iteration), in first-seen order.
#[derive(Default)]
struct CostTable {
    rows: Vec<(String, String, [Vec<f64>; 3])>,
}

impl CostTable {
    fn add(&mut self, row: &str, unit: &str, variant: usize, value: f64) {
        let i = match self.rows.iter().position(|(r, _, _)| r == row) {
            Some(i) => i,
            None => {
                self.rows.push((row.to_string(), unit.to_string(), Default::default()));
                self.rows.len() - 1
            }
        };
        self.rows[i].2[variant].push(value);
    }

    /// The table: medians per variant and the IOMMU cost ratio (VT-d ÷ none; 1.0 = free).
    fn print(&self, title: &str) {
        self.print_with(title, |v| format!("{v:.0}"))
    }

    fn print_with(&self, title: &str, fmt: impl Fn(f64) -> String) {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("\n{title} (medians of {} iterations; host load {})", iterations(), load.trim());
        println!(
            "| row | unit | no IOMMU | VT-d cm=off | cost cm=off | VT-d cm=on | cost cm=on | best-of cost off / on | paired cost off / on |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        let best = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        for (row, unit, values) in &self.rows {
            let [none, off, on] = [median(&values[0]), median(&values[1]), median(&values[2])];
            let [bnone, boff, bon] = [best(&values[0]), best(&values[1]), best(&values[2])];
            println!(
                "| {row} | {unit} | {} | {} | {:.2} | {} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
                fmt(none),
                fmt(off),
                off / none,
                fmt(on),
                on / none,
                boff / bnone,
                bon / bnone,
                paired_cost(&values[1], &values[0]),
                paired_cost(&values[2], &values[0]),
            );
        }
    }
}

/// CPU time, in nanoseconds, that QEMU process `pid` has used so far: the sum over its threads
/// (vCPU, I/O and main loop) of the first field of `/proc/PID/task/TID/schedstat`. Unlike the
/// guest's own timings, CPU time hardly changes when other processes compete for the host's
/// cores; measured around one command while the guest otherwise sleeps in `hlt`, it is what
/// that command cost the emulated machine.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The guest's TSC frequency as the kernel calibrated it at boot (its `time: TSC runs at N MHz`
/// log line).
fn tsc_mhz(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("TSC runs at"))?;
    line.split("TSC runs at ").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// Boots one machine per variant with `boot` (which returns the machine and its serial log),
/// and reboots (`stop`, then `boot`) any whose TSC calibration is more than 3% off the median of
/// the three. Every figure the kernel prints is timed with that TSC, so one bad calibration
/// skews a whole column: on a loaded host the calibration against the ACPI PM timer was seen
/// to come out at 6,926 MHz instead of 2,610, making that machine look 2.65× faster.
fn boot_calibrated<T>(
    mut boot: impl FnMut(usize) -> Result<(T, std::path::PathBuf), String>,
    mut stop: impl FnMut(T),
) -> Result<Vec<T>, String> {
    let mut machines = Vec::new();
    let mut logs = Vec::new();
    for v in 0..VARIANTS.len() {
        let (m, log) = boot(v)?;
        machines.push(Some(m));
        logs.push(log);
    }
    for _attempt in 0..4 {
        // The serial log reaches its file a little after the prompt: give the calibration line
        // up to 2 s to appear before calling a machine bad for lacking it.
        let mut mhz: Vec<f64> = Vec::new();
        for _ in 0..20 {
            mhz = logs.iter().map(|l| tsc_mhz(l).map_or(f64::NAN, |m| m as f64)).collect();
            if mhz.iter().all(|m| !m.is_nan()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mid = median(&mhz);
        // NaN (no calibration line) counts as bad too.
        let agrees = |m: f64| (m - mid).abs() <= mid * 0.03;
        let bad: Vec<usize> = (0..mhz.len()).filter(|&v| !agrees(mhz[v])).collect();
        if bad.is_empty() {
            println!("guest TSC calibrations (MHz): {mhz:?}");
            return Ok(machines.into_iter().flatten().collect());
        }
        for v in bad {
            println!("{}: TSC calibrated at {} MHz, the others near {mid}: rebooting it", VARIANTS[v].0, mhz[v]);
            if let Some(m) = machines[v].take() {
                stop(m);
            }
            let (m, log) = boot(v)?;
            machines[v] = Some(m);
            logs[v] = log;
        }
    }
    Err("the guests' TSC calibrations keep disagreeing (host too loaded to benchmark)".into())
}

// ---- network ----

/// One benchmark figure from a `netbench` line: the value after `key=`.
fn field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().rev().find(|l| l.contains("netbench:"))?;
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// One booted machine of the network benchmark, with its host-side peer.
struct NetMachine {
    session: Session,
    peer: UdpSocket,
    qemu_port: u16,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl NetMachine {
    fn boot(
        name: &str,
        iommu: bool,
        caching_mode: bool,
        images: &boot::DiskImages,
        work: &Path,
    ) -> Result<Self, String> {
        let peer = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cannot bind the peer: {e}"))?;
        let (network, qemu_port) = net_tests::socket_network(&peer)?;
        // Each machine its own scratch disk: QEMU locks the image it writes.
        let disk = work.join(format!("netbench-{name}.img"));
        crate::qemu::scratch_disk(&disk, 64 << 20)?;
        let machine = MachineConfig {
            name: format!("netbench-{name}"),
            disks: vec![disk],
            iommu,
            caching_mode,
            network: Some(network),
            ..MachineConfig::standard()
        };
        let session = test::boot(&machine, images, work, "bench")?;
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
        Ok(NetMachine { session, peer, qemu_port, received, stop, drain: Some(drain) })
    }

    fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn finish(mut self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
        let stats = test::command(&mut self.session, "cat net:stats").unwrap_or_default();
        let _ = self.session.send_line("exit");
        let _ = self.session.wait_exit(net_tests::LONG);
        stats
    }
}

/// `cargo xtask bench net`: e1000 transmit and receive frames per second (106- and 1514-byte
/// frames, through the socket netdev under TCG, interrupts on) on three machines — no IOMMU,
/// VT-d with caching mode off, VT-d with caching mode on — beside the cost floor of the same
/// QEMU (a guest loop writing only TDT: one MMIO exit, no frame). Prints the IOMMU cost ratio
/// per row.
fn net(images: &boot::DiskImages, work: &Path) -> Result<(), String> {
    const TX_FRAMES: u64 = 20_000;
    const RX_FRAMES: usize = 30_000;
    const FLOOR_WRITES: u64 = 200_000;
    let mut machines = boot_calibrated(
        |v| {
            let (name, iommu, cm) = VARIANTS[v];
            let m = NetMachine::boot(name, iommu, cm, images, work)?;
            Ok((m, work.join(format!("netbench-{name}-bench.log"))))
        },
        |m| {
            m.finish();
        },
    )?;
    let mut table = CostTable::default();
    let mut cpu = CostTable::default();
    let mut notes = Vec::new();
    for _ in 0..iterations() {
        for (v, m) in machines.iter_mut().enumerate() {
            let pid = m.session.pid();
            let start = cpu_ns(pid);
            let floor_text = test::command(&mut m.session, &format!("netbench floor {FLOOR_WRITES}"))?;
            let spent = cpu_ns(pid).saturating_sub(start).max(1) as f64 / 1e9;
            let floor = field(&floor_text, "per_second").ok_or(format!("no floor figure in:\n{floor_text}"))?;
            table.add("floor: TDT write only", "writes/s", v, floor as f64);
            cpu.add("floor: TDT write only", "writes per CPU-s", v, FLOOR_WRITES as f64 / spent);
            for size in [106u64, 1514] {
                let before = m.received();
                let start = cpu_ns(pid);
                let text = test::command(&mut m.session, &format!("netbench tx {size} {TX_FRAMES}"))?;
                let spent = cpu_ns(pid).saturating_sub(start).max(1) as f64 / 1e9;
                let fps = field(&text, "fps").ok_or(format!("no tx figure in:\n{text}"))?;
                table.add(&format!("e1000 tx {size} B"), "frames/s", v, fps as f64);
                let sent = field(&text, "frames").unwrap_or(0);
                cpu.add(&format!("e1000 tx {size} B"), "frames per CPU-s", v, sent as f64 / spent);
                std::thread::sleep(Duration::from_millis(300));
                let got = m.received() - before;
                if got < TX_FRAMES * 9 / 10 {
                    notes.push(format!("{}: tx {size} B: the peer received only {got}/{TX_FRAMES}", VARIANTS[v].0));
                }
            }
        }
    }
    // Receive once per machine: the host's sending rate, not the guest, bounds it.
    for (v, m) in machines.iter_mut().enumerate() {
        for size in [106usize, 1514] {
            m.session.send_line(&format!("netbench rx {RX_FRAMES} 2"))?;
            m.session
                .expect("netbench: rx ready", net_tests::LONG)
                .map_err(|e| format!("netbench rx did not start: {e:?}"))?;
            let mut frame = net_tests::test_frame(2);
            frame.resize(size, 0xa5);
            for i in 0..RX_FRAMES {
                frame[14..18].copy_from_slice(&(i as u32).to_be_bytes());
                m.peer.send_to(&frame, ("127.0.0.1", m.qemu_port)).map_err(|e| format!("send: {e}"))?;
            }
            let text = m
                .session
                .expect("kernel> ", net_tests::LONG)
                .map_err(|e| format!("netbench rx did not return: {e:?}"))?;
            let fps = field(&text, "fps").ok_or(format!("no rx figure in:\n{text}"))?;
            table.add(&format!("e1000 rx {size} B (once)"), "frames/s", v, fps as f64);
        }
    }
    let mut drops = Vec::new();
    for (v, m) in machines.into_iter().enumerate() {
        let stats = m.finish();
        let d = stats.lines().find(|l| l.starts_with("drops ")).unwrap_or("drops ?").to_string();
        drops.push(format!("{}: {d}", VARIANTS[v].0));
    }
    table.print(
        "network benchmark, guest-timed (QEMU TCG, e1000 on a socket netdev, interrupts; strict VT-d, intremap=on)",
    );
    cpu.print("network benchmark, per second of QEMU CPU time (all its threads: robust to host load)");
    for n in notes.iter().chain(&drops) {
        println!("  {n}");
    }
    println!("  (receive is bounded by the host's sending rate; overload shows as hw.MPC / RNBC drops)");
    Ok(())
}

// ---- storage ----

/// The rows of the kernel's `disk bench`, run one at a time.
const DISK_ROWS: [&str; 7] = [
    "floor_flush_qd1",
    "floor_read_1_sector_qd1",
    "floor_read_1_sector_qd32",
    "seq_write_1m_qd1",
    "seq_read_1m_qd1",
    "rand_read_4k_qd1",
    "rand_read_4k_qd32",
];

/// [`DISK_ROWS`], or the ones `BENCH_ROWS` names (comma-separated), to run one row with many
/// iterations: `BENCH_ROWS=rand_read_4k_qd32 BENCH_ITERS=25 cargo xtask bench disk`.
fn disk_rows() -> Vec<&'static str> {
    let chosen = std::env::var("BENCH_ROWS").unwrap_or_default();
    let wanted: Vec<&str> = chosen.split(',').map(str::trim).filter(|r| !r.is_empty()).collect();
    DISK_ROWS.into_iter().filter(|r| wanted.is_empty() || wanted.contains(r)).collect()
}

/// The figure of a `bench: NAME ops=…` line worth comparing: MB/s for sequential rows, IOPS
/// for the others.
fn disk_row(line: &str) -> Option<(String, &'static str, f64)> {
    let rest = line.strip_prefix("bench: ")?;
    let name = rest.split_whitespace().next()?;
    let value = |key: &str| rest.split_whitespace().find_map(|w| w.strip_prefix(key)?.parse::<f64>().ok());
    value("ops=")?;
    if name.starts_with("seq_") {
        Some((name.to_string(), "MB/s", value("MB/s=")?))
    } else {
        Some((name.to_string(), "IOPS", value("IOPS=")?))
    }
}

/// `cargo xtask bench disk`: boots the standard machine three times — without an IOMMU, with
/// VT-d and caching mode off, with VT-d and caching mode on (strict unmaps, interrupt
/// remapping, completions by interrupt: the defaults) — each with its own 64 MiB scratch disk
/// on port 1, and runs `disk bench` there, iterations interleaved across the three
/// (sequential 1 MiB reads and writes at QD1, random 4 KiB reads at QD1 and QD32, and the
/// floors: a FLUSH round trip and a 1-sector read). Prints the medians and the IOMMU cost
/// ratio per row, then the kernel's DMA and IOMMU counters. `args` may hold `--release`.
pub fn disk(args: &[String]) -> Result<(), String> {
    crate::qemu::check_qemu()?;
    let profile = crate::build::parse_profile(args)?;
    let images = crate::build::build_images(profile)?;
    let work = crate::build::target_dir().join("xtask-test");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut sessions = boot_calibrated(
        |v| {
            let (name, iommu, caching_mode) = VARIANTS[v];
            let disk = work.join(format!("bench-disk-{name}.img"));
            crate::qemu::scratch_disk(&disk, 64 << 20)?;
            let machine = MachineConfig {
                name: format!("bench-disk-{name}"),
                disks: vec![disk],
                iommu,
                caching_mode,
                ..MachineConfig::standard()
            };
            let session = test::boot(&machine, &images, &work, "bench")?;
            Ok((session, work.join(format!("bench-disk-{name}-bench.log"))))
        },
        |mut session| {
            let _ = session.send_line("exit");
            let _ = session.wait_exit(Duration::from_secs(30));
        },
    )?;
    // One full pass first, so every row's data is on the disk (the reads read what the
    // sequential writes wrote), then row by row, interleaved across the machines.
    for session in sessions.iter_mut() {
        session.send_line("disk bench ahci0p1 48")?;
        session
            .expect("kernel> ", Duration::from_secs(900))
            .map_err(|e| format!("disk bench did not finish: {e:?}"))?;
    }
    let mut table = CostTable::default();
    let mut cpu = CostTable::default();
    for _ in 0..iterations() {
        // Each row with the I/O arena (now) and without it (every request maps its heap
        // buffers, strictly: how the driver worked before the arenas), on each machine.
        for (row, arena) in disk_rows().into_iter().flat_map(|r| [(r, true), (r, false)]) {
            for (v, session) in sessions.iter_mut().enumerate() {
                test::command(session, if arena { "disk arena on" } else { "disk arena off" })?;
                let before = cpu_ns(session.pid());
                session.send_line(&format!("disk bench ahci0p1 48 {row}"))?;
                let run = session
                    .expect("kernel> ", Duration::from_secs(900))
                    .map_err(|e| format!("disk bench did not finish: {e:?}"))?;
                let spent = cpu_ns(session.pid()).saturating_sub(before);
                if !run.contains("disk: bench ok") {
                    return Err(format!("disk bench failed ({}):\n{run}", VARIANTS[v].0));
                }
                for line in run.lines() {
                    if let Some((row, unit, value)) = disk_row(line) {
                        let row = if arena { row } else { format!("{row} (no arena: maps per request)") };
                        table.add(&row, unit, v, value);
                        let ops = line.split_whitespace().find_map(|w| w.strip_prefix("ops=")?.parse::<f64>().ok());
                        if let Some(ops) = ops
                            && spent > 0
                        {
                            cpu.add(&row, "ops per CPU-s", v, ops / (spent as f64 / 1e9));
                        }
                    }
                }
            }
        }
    }
    table.print("disk benchmark, guest-timed (QEMU TCG, AHCI, 48 MiB, interrupts; strict VT-d, intremap=on)");
    cpu.print("disk benchmark, requests per second of QEMU CPU time (all its threads: robust to host load)");
    for (v, mut session) in sessions.into_iter().enumerate() {
        let text = test::command(&mut session, "cat disk:info").unwrap_or_default();
        println!("\n{} — disk:info (IOMMU share):", VARIANTS[v].0);
        for line in text.lines().filter(|l| l.starts_with("dma ")) {
            println!("  {line}");
        }
        if v > 0 {
            let text = test::command(&mut session, "cat dma:mappings").unwrap_or_default();
            println!("\n{} — dma:mappings:", VARIANTS[v].0);
            for line in text.lines().filter(|l| !l.starts_with("kernel>") && !l.starts_with("cat ")) {
                println!("  {line}");
            }
            let text = test::command(&mut session, "cat iommu:units").unwrap_or_default();
            println!("{} — iommu:units:", VARIANTS[v].0);
            for line in text.lines().filter(|l| !l.starts_with("kernel>") && !l.starts_with("cat ")) {
                println!("  {line}");
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
    fn disk_rows_parse() {
        let line = "bench: seq_read_1m_qd1 ops=48 bytes=50331648 us=36000 MB/s=1398.10 IOPS=1333 us_per_op=750";
        assert_eq!(disk_row(line), Some(("seq_read_1m_qd1".into(), "MB/s", 1398.10)));
        let line = "bench: rand_read_4k_qd32 ops=20000 bytes=81920000 us=1000000 MB/s=81.92 IOPS=20000 us_per_op=50";
        assert_eq!(disk_row(line), Some(("rand_read_4k_qd32".into(), "IOPS", 20000.0)));
        assert_eq!(disk_row("bench: rand_read_4k_qd32 max_outstanding=32"), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn paired_cost_pairs_iterations_in_time() {
        // The host slows down halfway: medians of each column mix fast and slow iterations,
        // while each pair ran under the same conditions and shows the real 0.9.
        let none = [100.0, 100.0, 100.0, 50.0, 50.0];
        let vtd = [90.0, 90.0, 45.0, 45.0, 45.0];
        assert!((paired_cost(&vtd, &none) - 0.9).abs() < 1e-9);
        assert!((median(&vtd) / median(&none) - 0.45).abs() < 1e-9);
    }

    #[test]
    fn bench_fields_parse() {
        let text = "netbench: tx size=64 frames=20000 failed=0 us=1000 fps=20000000\nkernel> ";
        assert_eq!(field(text, "fps"), Some(20_000_000));
        assert_eq!(field(text, "size"), Some(64));
        assert_eq!(field(text, "nope"), None);
    }
}
