//! `cargo xtask test`: every test the project has, ending in one `N passed, N failed` line.
//!
//! 1. Host tests: `cargo test --workspace` (the `dma`, `pci` and `kernel` libraries against
//!    simulated memory, config space and ACPI tables). Their counts are added to the total.
//!    Then the `loom` models, built with `--cfg loom` in `target/loom`, one verdict each.
//! 2. For every QEMU configuration: boot the kernel, run the in-kernel tests through the serial
//!    shell (`ktest`), and check from the host what only the host can see (the shell's output,
//!    QEMU's exit status). A test that panics aborts its boot; the runner boots again from the
//!    next test, so every test gets a verdict.
//! 3. The runner checks itself: `ktest --demo-failures` must report a failing and a panicking
//!    test as failed and still run the test after them.

use crate::build::{self, Profile};
use crate::qemu::{Firmware, MachineConfig, Session, WaitError};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

/// How long a boot may take to reach the shell prompt (UEFI under TCG takes ~10 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one `ktest` run may take before it is declared hung.
const KTEST_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a shell command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The QEMU configurations every test run covers.
pub fn configurations() -> Vec<MachineConfig> {
    vec![
        MachineConfig::standard(),
        MachineConfig { name: "bios-novtd".into(), iommu: false, ..MachineConfig::standard() },
        MachineConfig { name: "uefi-vtd".into(), firmware: Firmware::Uefi, ..MachineConfig::standard() },
        // RAM above 4 GiB: 32-bit DMA devices must bounce buffers that live there.
        MachineConfig { name: "bios-6g-novtd".into(), iommu: false, memory_mib: 6144, ..MachineConfig::standard() },
        // The NIC and the DMA probe behind a PCIe root port and a PCIe-to-PCI bridge: the IOMMU
        // sees both with the bridge's requester id, so they must share one domain.
        MachineConfig {
            name: "bios-vtd-bridged".into(),
            network: Some(
                [
                    "-netdev",
                    "user,id=n0",
                    "-device",
                    "pcie-root-port,id=rp1,chassis=1",
                    "-device",
                    "pcie-pci-bridge,id=br1,bus=rp1",
                    "-device",
                    "e1000,netdev=n0,bus=br1,addr=1",
                ]
                .map(String::from)
                .to_vec(),
            ),
            extra_args: ["-netdev", "user,id=probe", "-device", "e1000e,netdev=probe,bus=br1,addr=2"]
                .map(String::from)
                .to_vec(),
            ..MachineConfig::standard()
        },
    ]
}

/// Running totals.
#[derive(Default)]
pub struct Tally {
    passed: usize,
    failed: usize,
    /// In-kernel tests that did not apply to the machine (and were allowed not to).
    skipped: usize,
    failures: Vec<String>,
}

impl Tally {
    /// The failed checks so far, each `name: why`.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// How many checks failed so far.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// Counts one host-side check and prints its line.
    pub fn record(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("host: {name} ... ok");
            }
            Err(why) => {
                self.failed += 1;
                println!("host: {name} ... FAILED: {why}");
                self.failures.push(format!("{name}: {why}"));
            }
        }
    }
}

/// The QEMU half of the suite, in independent jobs. Each job boots its own machines, in its own
/// work folder (`target/xtask-test/<job>/`), so two can run at once; `cargo xtask test` runs
/// them in child processes, two at a time on a 2-core machine (each QEMU under TCG keeps one
/// core busy), and prints each job's output whole, in this order.
const QEMU_JOBS: [&str; 14] = [
    "bios-vtd",
    "bios-novtd",
    "uefi-vtd",
    "bios-6g-novtd",
    "bios-vtd-bridged",
    "bios-vtd-release",
    "net",
    "net-flood",
    "disk",
    "disk-faults",
    "iommu-failsafe",
    "vtd-ir-records",
    "console",
    "lab",
];

pub fn run_all(args: &[String]) -> Result<ExitCode, String> {
    let mut only_qemu = false;
    let mut only_host = false;
    let mut job = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--qemu-only" => only_qemu = true,
            "--host-only" => only_host = true,
            "--job" => job = Some(it.next().ok_or("--job needs a name")?.clone()),
            other => {
                return Err(format!("unknown option `{other}` for test (--host-only, --qemu-only, --job NAME)"));
            }
        }
    }
    if let Some(job) = job {
        return run_job(&job);
    }
    let mut tally = Tally::default();
    if !only_qemu {
        crate::setup::ensure(&[crate::setup::Need::Python])?;
        host_tests(&mut tally)?;
    }
    if !only_host {
        crate::qemu::check_qemu()?;
        crate::setup::ensure(&[crate::setup::Need::Gdb])?;
        // Build both kernels once, before the jobs start (they find them fresh).
        build::build_images(Profile::Debug)?;
        build::build_images(Profile::Release)?;
        run_jobs_in_parallel(&mut tally)?;
    }
    println!();
    for f in &tally.failures {
        println!("FAILED: {f}");
    }
    println!("{} passed, {} failed, {} skipped", tally.passed, tally.failed, tally.skipped);
    Ok(if tally.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// How many QEMU jobs run at once: one per core, at most 2 unless `XTASK_TEST_JOBS` says.
fn parallel_jobs() -> usize {
    std::env::var("XTASK_TEST_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(2))
        .max(1)
}

/// Runs every job of [`QEMU_JOBS`] as `xtask test --job NAME`, [`parallel_jobs`] at a time, and
/// adds their results to `tally`.
fn run_jobs_in_parallel(tally: &mut Tally) -> Result<(), String> {
    use std::sync::mpsc;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find xtask's own binary: {e}"))?;
    let width = parallel_jobs();
    println!("\n== QEMU jobs: {} jobs, {width} at a time ==", QEMU_JOBS.len());
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<std::process::Output, String>, Duration)>();
    let mut next = 0;
    let mut running = 0;
    let mut finished: Vec<Option<(Result<std::process::Output, String>, Duration)>> =
        QEMU_JOBS.iter().map(|_| None).collect();
    let mut printed = 0;
    while printed < QEMU_JOBS.len() {
        while running < width && next < QEMU_JOBS.len() {
            let (index, exe, tx) = (next, exe.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let start = std::time::Instant::now();
                let output = std::process::Command::new(exe)
                    .args(["test", "--job", QEMU_JOBS[index]])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot start job {}: {e}", QEMU_JOBS[index]));
                let _ = tx.send((index, output, start.elapsed()));
            });
            next += 1;
            running += 1;
        }
        let (index, output, took) = done_rx.recv().map_err(|e| e.to_string())?;
        running -= 1;
        finished[index] = Some((output, took));
        // Print in the jobs' order, as soon as every earlier job has been printed.
        while let Some(Some((output, took))) = finished.get_mut(printed).map(Option::take) {
            absorb_job(QEMU_JOBS[printed], output, took, tally);
            printed += 1;
        }
    }
    Ok(())
}

/// Prints one job's output and adds its counts to `tally`.
fn absorb_job(job: &str, output: Result<std::process::Output, String>, took: Duration, tally: &mut Tally) {
    let output = match output {
        Ok(o) => o,
        Err(e) => return tally.record(&format!("job::{job}"), Err(e)),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut summary = None;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("job-summary: ") {
            let count = |key: &str| {
                rest.split_whitespace().find_map(|kv| kv.strip_prefix(key)).and_then(|n| n.parse::<usize>().ok())
            };
            summary = count("passed=").zip(count("failed=")).map(|(p, f)| (p, f, count("skipped=").unwrap_or(0)));
        } else if let Some(failure) = line.strip_prefix("job-failure: ") {
            tally.failures.push(failure.to_string());
        } else {
            println!("{line}");
        }
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        eprint!("{stderr}");
    }
    println!("(job {job}: {:.0} s)", took.as_secs_f64());
    match summary {
        Some((passed, failed, skipped)) => {
            tally.passed += passed;
            tally.failed += failed;
            tally.skipped += skipped;
        }
        None => tally
            .record(&format!("job::{job}"), Err(format!("the job ended ({}) without its summary line", output.status))),
    }
}

/// `xtask test --job NAME`: one job of [`QEMU_JOBS`], ending in a `job-summary:` line.
fn run_job(job: &str) -> Result<ExitCode, String> {
    let images = build::build_images(Profile::Debug)?;
    let work = build::target_dir().join("xtask-test").join(job);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut tally = Tally::default();
    let configuration = |name: &str| configurations().into_iter().find(|m| m.name == name);
    match job {
        "bios-vtd-release" => {
            // The benchmarks measure the release kernel, so its in-kernel tests run too: an
            // optimiser may expose what the debug build hides (a missing volatile, a race).
            let release = build::build_images(Profile::Release)?;
            let machine = MachineConfig { name: "bios-vtd-release".into(), ..MachineConfig::standard() };
            println!("\n== QEMU configuration {} ==", machine.name);
            qemu_suite(&machine, &release, &work, &mut tally);
        }
        // Device evidence checked from the host: frames on the wire, bytes in disk images.
        "net" => crate::net_tests::run(&images, &work, &mut tally),
        // The receive path under a 10 s flood, and with its ring exhausted.
        "net-flood" => crate::net_tests::rx_flood(&images, &work, &mut tally),
        "disk" => {
            crate::disk_tests::run(&images, &work, &mut tally);
        }
        "console" => crate::console_tests::run(&images, &work, &mut tally),
        // The lab graders' QEMU halves, on the reference (docs/labs).
        "lab" => crate::lab::qemu_job(&images, &work, &mut tally),
        // Injected disk errors (QEMU's blkdebug): reported, recovered or failed cleanly.
        "disk-faults" => crate::fault_tests::run(&images, &work, &mut tally),
        // A VT-d unit that cannot translate: its devices fall back to Direct, never IOVAs.
        "iommu-failsafe" => crate::fault_tests::iommu_enable_failure(&images, &work, &mut tally),
        // Forged interrupts recorded as faults, on a QEMU that records them.
        "vtd-ir-records" => ir_records_job(&images, &work, &mut tally),
        name => {
            let machine = configuration(name).ok_or_else(|| format!("unknown job `{name}`"))?;
            println!("\n== QEMU configuration {} ==", machine.name);
            qemu_suite(&machine, &images, &work, &mut tally);
            if machine.name == "bios-vtd" {
                runner_self_check(&machine, &images, &work, &mut tally);
                debugger_checks(&machine, &images, &work, &mut tally);
            }
        }
    }
    for f in &tally.failures {
        println!("job-failure: {f}");
    }
    println!("job-summary: passed={} failed={} skipped={}", tally.passed, tally.failed, tally.skipped);
    Ok(if tally.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `cargo test --workspace`, counting its results.
fn host_tests(tally: &mut Tally) -> Result<(), String> {
    println!("== host tests: cargo test --workspace ==");
    let output = build::cargo()
        .args(["test", "--workspace"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo test: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    let (mut passed, mut failed) = (0, 0);
    for line in stdout.lines() {
        // "test result: ok. 12 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    println!("host: cargo test totals: passed={passed} failed={failed}");
    tally.passed += passed;
    tally.failed += failed;
    if !output.status.success() && failed == 0 {
        tally.record("cargo test --workspace (build)", Err("cargo test failed before running tests".into()));
    }
    // The lab graders fail on the shipped stubs and pass on the real driver (docs/labs).
    crate::lab::check_graders(tally);
    // The `dma` and `iommu-vtd` crates' rustdoc is their reference: it must build with no broken
    // link and no undocumented public item (`missing_docs` is a warning there, made an error here).
    // The simulators (feature `sim`) are documented too, as docs.rs would build them.
    for krate in ["dma", "iommu-vtd"] {
        let doc = build::cargo()
            .args(["doc", "-p", krate, "--no-deps", "--features", "sim"])
            .env("RUSTDOCFLAGS", "-D warnings")
            .output()
            .map_err(|e| format!("cannot run cargo doc: {e}"))?;
        let result = if doc.status.success() {
            Ok(())
        } else {
            Err(format!(
                "cargo doc -p {krate} --features sim with -D warnings failed:\n{}",
                String::from_utf8_lossy(&doc.stderr)
            ))
        };
        let name = format!("host::{}_rustdoc_builds_without_warnings", krate.replace('-', "_"));
        tally.record(&name, result);
    }
    loom_models(tally)?;
    // Each exercise's check must fail on the shipped tree and pass with its reference answer.
    crate::exercises::grade_all(tally)
}

/// The `loom` models (`dma/tests/loom_*.rs`, `drivers/iommu-vtd/tests/loom_*.rs`): built with
/// `--cfg loom`, in release as loom wants, in a target directory of their own so that their
/// different RUSTFLAGS never invalidate the normal build. Each model is one host test.
fn loom_models(tally: &mut Tally) -> Result<(), String> {
    let models = [("dma", "loom_bounce"), ("dma", "loom_pool"), ("iommu-vtd", "loom_iova")];
    println!("== loom models: RUSTFLAGS=\"--cfg loom\" cargo test --release ==");
    for (krate, model) in models {
        let out = build::cargo()
            .args(["test", "-p", krate, "--release", "--test", model])
            .env("RUSTFLAGS", "--cfg loom")
            .env("CARGO_TARGET_DIR", build::workspace_root().join("target/loom"))
            .output()
            .map_err(|e| format!("cannot run cargo test for the loom model {model}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result = if out.status.success() && stdout.contains("test result: ok. 1 passed") {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let start = stderr.char_indices().rev().nth(4000).map_or(0, |(i, _)| i);
            let tail = &stderr[start..];
            Err(format!("{stdout}{tail}"))
        };
        tally.record(&format!("loom::{model}"), result);
    }
    Ok(())
}

/// Parses one `ktest: [i] name ... ok|FAILED: why` line.
/// What the kernel said of one test.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Passed,
    Failed(String),
    /// The test does not apply to this machine (what it needs is absent), with the reason.
    Skipped(String),
}

fn parse_ktest_line(line: &str) -> Option<(usize, String, Verdict)> {
    let rest = line.trim().strip_prefix("ktest: [")?;
    let (index, rest) = rest.split_once("] ")?;
    let (name, verdict) = rest.split_once(" ... ")?;
    let verdict = verdict.trim();
    let verdict = if verdict == "ok" {
        Verdict::Passed
    } else if let Some(reason) = verdict.strip_prefix("skipped: ") {
        Verdict::Skipped(reason.to_string())
    } else {
        Verdict::Failed(verdict.strip_prefix("FAILED: ").unwrap_or(verdict).to_string())
    };
    Some((index.parse().ok()?, name.to_string(), verdict))
}

/// Whether `machine` has what test `name` needs, so that skipping it there is a failure: the
/// IOMMU tests on every machine with VT-d, the block tests everywhere (every machine has the
/// AHCI controller and its MSI). A skipped test must not pass where it matters.
fn must_run(machine: &MachineConfig, name: &str) -> bool {
    (name.starts_with("iommu::") && machine.iommu) || name.starts_with("block::") || inject_must_run(machine, name)
}

/// The `inject::` cases (kernel/src/ktest/inject.rs): the probe's VT-d faults wherever VT-d
/// runs (the deferred window except where the probe shares a bridge's requester id with the
/// NIC), the bounce on the machine with RAM above 4 GiB and no IOMMU, the rest everywhere.
fn inject_must_run(machine: &MachineConfig, name: &str) -> bool {
    match name.strip_prefix("inject::") {
        Some("unmapped_iova" | "after_strict_unmap") => machine.iommu,
        Some("deferred_unmap_window") => machine.iommu && !machine.name.contains("bridged"),
        Some("bounce_above_4g") => !machine.iommu && machine.memory_mib > 4096,
        Some(_) => true,
        None => false,
    }
}

/// Boots, waits for the prompt, and returns the session.
pub fn boot(machine: &MachineConfig, images: &boot::DiskImages, work: &Path, tag: &str) -> Result<Session, String> {
    let log = work.join(format!("{}-{tag}.log", machine.name));
    let mut session = Session::start(machine, images, work, log.clone())?;
    match session.expect(kernel_prompt(), BOOT_TIMEOUT) {
        Ok(_) => Ok(session),
        Err(WaitError::TimedOut) => Err(format!(
            "no shell prompt within {}s (QEMU hung? serial log: {})",
            BOOT_TIMEOUT.as_secs(),
            log.display()
        )),
        Err(WaitError::Exited(code)) => {
            Err(format!("QEMU exited with {code:?} before the shell prompt (serial log: {})", log.display()))
        }
    }
}

fn kernel_prompt() -> &'static str {
    "kernel> "
}

/// What one `ktest` run gave: each test's verdict, and the symbolised crash report (the
/// panic or exception line and its backtrace) of every test that crashed its boot.
#[derive(Default)]
pub struct KtestRun {
    pub verdicts: Vec<(String, Result<(), String>)>,
    pub crash_reports: Vec<String>,
    /// What the tests printed as `ktest-evidence: …` lines, for checks only the host makes.
    pub evidence: Vec<String>,
}

/// The crash report in a boot's annotated output: from the first panic or exception line (or
/// the failing test's line) through the backtrace, up to `ktest: aborted`.
fn crash_report(annotated: &str) -> Option<String> {
    let start = ["EXCEPTION: ", "KERNEL PANIC", "FAILED: panicked at", "backtrace ("]
        .iter()
        .filter_map(|marker| annotated.find(marker))
        .min()?;
    // Begin at the start of that line.
    let start = annotated[..start].rfind('\n').map_or(0, |i| i + 1);
    let end = annotated[start..].find("ktest: aborted").map_or(annotated.len(), |i| start + i);
    Some(annotated[start..end].trim_end().to_string())
}

/// Runs `ktest` args in as many boots as panics require; records every test's verdict, and
/// fails every test of the run that printed none (see [`Coverage`]).
pub fn run_ktests(
    machine: &MachineConfig,
    images: &boot::DiskImages,
    work: &Path,
    args: &str,
    tally: &mut Tally,
) -> KtestRun {
    let mut coverage = Coverage::default();
    let run = run_ktest_boots(machine, images, work, args, tally, &mut coverage);
    for why in coverage.missing() {
        tally.record(&format!("{}::ktest", machine.name), Err(why));
    }
    run
}

/// Which tests of a `ktest` run gave a verdict. The kernel announces how many tests it will run
/// (`ktest: begin N tests`); a test whose `ktest: [i] …` line never arrives whole (garbled by
/// other output, say) would otherwise vanish from the counts without a trace.
#[derive(Default)]
struct Coverage {
    total: Option<usize>,
    seen: std::collections::BTreeSet<usize>,
    /// The run already failed as a whole (no boot, or no test reported): nothing more to say.
    abandoned: bool,
    /// Lines with a verdict's ` ... ` that did not parse as one: the pieces of a garbled verdict,
    /// shown with a missing index.
    unparsed: Vec<String>,
}

impl Coverage {
    /// One failure text per test index in `0..total` without a verdict.
    fn missing(&self) -> Vec<String> {
        let Some(total) = self.total.filter(|_| !self.abandoned) else { return Vec::new() };
        (0..total)
            .filter(|i| !self.seen.contains(i))
            .map(|i| {
                let tag = format!("{i}] ");
                let near: Vec<&str> =
                    self.unparsed.iter().filter(|l| l.contains(&tag)).map(String::as_str).take(3).collect();
                format!(
                    "test [{i}] of {total} printed no verdict line (its `ktest: [{i}] …` line is missing or \
                     garbled in the serial output){}",
                    if near.is_empty() { String::new() } else { format!("; garbled lines naming it: {near:?}") }
                )
            })
            .collect()
    }
}

/// The boots of [`run_ktests`].
fn run_ktest_boots(
    machine: &MachineConfig,
    images: &boot::DiskImages,
    work: &Path,
    args: &str,
    tally: &mut Tally,
    coverage: &mut Coverage,
) -> KtestRun {
    let mut run = KtestRun::default();
    let mut from = 0;
    let mut attempt = 0;
    // Each kind of run keeps its own serial logs (the runner self-check must not overwrite the
    // suite's).
    let kind: String = args.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    loop {
        attempt += 1;
        let tag = if kind.is_empty() { format!("ktest{attempt}") } else { format!("ktest{kind}{attempt}") };
        let mut session = match boot(machine, images, work, &tag) {
            Ok(s) => s,
            Err(why) => {
                tally.record(&format!("{}::boot", machine.name), Err(why));
                coverage.abandoned = true;
                return run;
            }
        };
        if let Err(why) = session.send_line(&format!("ktest --from {from} {args}")) {
            tally.record(&format!("{}::ktest", machine.name), Err(why));
            coverage.abandoned = true;
            return run;
        }
        let result = session.expect("ktest: done", KTEST_TIMEOUT);
        let text = session.output();
        let mut last_index = None;
        let mut total = None;
        for line in text.lines() {
            if let Some(n) = line.trim().strip_prefix("ktest: begin ").and_then(|r| r.split_whitespace().next()) {
                total = n.parse::<usize>().ok();
                coverage.total = total;
            }
            let Some((index, name, verdict)) = parse_ktest_line(line) else {
                if line.contains(" ... ") {
                    coverage.unparsed.push(line.trim().to_string());
                }
                continue;
            };
            coverage.seen.insert(index);
            let full = format!("{}::{name}", machine.name);
            let result = match verdict {
                Verdict::Passed => Ok(()),
                Verdict::Failed(why) => Err(why),
                Verdict::Skipped(why) if must_run(machine, &name) => {
                    Err(format!("skipped on a machine that has what it needs: {why}"))
                }
                Verdict::Skipped(why) => {
                    println!("kernel: [{}] {name} ... skipped: {why}", machine.name);
                    tally.skipped += 1;
                    last_index = Some(index);
                    continue;
                }
            };
            println!(
                "kernel: [{}] {name} ... {}",
                machine.name,
                match &result {
                    Ok(()) => "ok".to_string(),
                    Err(why) => format!("FAILED: {why}"),
                }
            );
            run.verdicts.push((name, result.clone()));
            match result {
                Ok(()) => tally.passed += 1,
                Err(why) => {
                    tally.failed += 1;
                    tally.failures.push(format!("{full}: {why}"));
                }
            }
            last_index = Some(index);
        }
        run.evidence.extend(text.lines().filter_map(|l| l.trim().strip_prefix("ktest-evidence: ").map(String::from)));
        // Interrupt-remapping faults QEMU blocks without recording: its own report must be there.
        for why in crate::ir_evidence::unbacked(&text) {
            println!("kernel: [{}] iommu::interrupt_remapping_evidence ... FAILED: {why}", machine.name);
            tally.failed += 1;
            tally.failures.push(format!("{}::iommu::interrupt_remapping_evidence: {why}", machine.name));
        }
        match result {
            Ok(_) => {
                // Let the shell print its prompt, then power off; `exit` must give status 0.
                let _ = session.expect(kernel_prompt(), COMMAND_TIMEOUT);
                let _ = session.send_line("exit");
                match session.wait_exit(COMMAND_TIMEOUT) {
                    Ok(Some(0)) => {}
                    other => tally.record(
                        &format!("{}::exit_powers_off", machine.name),
                        Err(format!("`exit` ended QEMU with {other:?}, expected status 0")),
                    ),
                }
                return run;
            }
            Err(WaitError::Exited(_)) => {
                // A test panicked or faulted: it has been reported; show where, and go on after it.
                if let Some(report) = crash_report(&session.annotated_output()) {
                    println!("kernel: [{}] crash report:\n{report}", machine.name);
                    run.crash_reports.push(report);
                }
                let next = last_index.map_or(from + 1, |i| i + 1);
                if total.is_some_and(|t| next >= t) {
                    return run;
                }
                if last_index.is_none() {
                    tally.record(
                        &format!("{}::ktest", machine.name),
                        Err("QEMU exited before any test reported (see the serial log)".into()),
                    );
                    coverage.abandoned = true;
                    return run;
                }
                from = next;
            }
            Err(WaitError::TimedOut) => {
                let hung = last_index.map_or(from, |i| i + 1);
                coverage.seen.insert(hung);
                tally.record(
                    &format!("{}::ktest[{hung}]", machine.name),
                    Err(format!("hung: no result within {}s; QEMU stopped", KTEST_TIMEOUT.as_secs())),
                );
                if total.is_some_and(|t| hung + 1 >= t) {
                    return run;
                }
                from = hung + 1;
            }
        }
    }
}

/// One configuration: host-side checks of the shell, then the in-kernel tests.
fn qemu_suite(machine: &MachineConfig, images: &boot::DiskImages, work: &Path, tally: &mut Tally) -> KtestRun {
    match boot(machine, images, work, "shell") {
        Ok(mut session) => shell_checks(machine, &mut session, tally),
        Err(why) => tally.record(&format!("{}::boot", machine.name), Err(why)),
    }
    let run = run_ktests(machine, images, work, "", tally);
    if run.verdicts.is_empty() {
        tally.record(&format!("{}::ktest_ran", machine.name), Err("no in-kernel test reported".into()));
    }
    run
}

/// The job `vtd-ir-records`: the default VT-d machine, and every in-kernel test, on a QEMU whose
/// VT-d model records interrupt-remapping faults (`recording_qemu`), with the kernel told to
/// require the records (fw_cfg `opt/dma-kernel/require=ir-fault-records`). Both forged-MSI tests
/// must then have printed the record they found: reason 22h (entry not present) for the message
/// the probe wrote by DMA, 26h (source-id check) for the one with another device's handle.
///
/// Where no such QEMU can be had (not Debian 12, no `XTASK_IR_QEMU`), the job is reported as
/// skipped with the reason, except under `CI=true`, where it must run.
fn ir_records_job(images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    const NAME: &str = "vtd-ir-records";
    println!("\n== QEMU configuration {NAME} ==");
    let qemu = match crate::recording_qemu::ensure() {
        Ok((qemu, version)) => {
            println!("host: {NAME} runs {version} ({})", qemu.binary.display());
            qemu
        }
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            return tally.record(&format!("{NAME}::qemu"), Err(why));
        }
        Err(why) => {
            println!("host: {NAME} ... skipped: {why}");
            tally.skipped += 1;
            return;
        }
    };
    let mut machine = MachineConfig { name: NAME.into(), qemu: Some(qemu), ..MachineConfig::standard() };
    machine.extra_args.extend(["-fw_cfg", "name=opt/dma-kernel/require,string=ir-fault-records"].map(String::from));
    let run = qemu_suite(&machine, images, work, tally);
    tally.record(&format!("{NAME}::forged_msis_were_recorded"), recorded_ir_faults(&run.evidence));
}

/// Both forged-MSI tests' `ir-fault-recorded` evidence lines, with the reasons they expect.
fn recorded_ir_faults(evidence: &[String]) -> Result<(), String> {
    let recorded = |reason: &str| {
        evidence.iter().any(|e| {
            e.strip_prefix("ir-fault-recorded ").is_some_and(|rest| rest.split_whitespace().any(|w| w == reason))
        })
    };
    let missing: Vec<&str> = ["reason=22", "reason=26"].into_iter().filter(|r| !recorded(r)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("no recorded interrupt-remapping fault with {} (evidence: {evidence:?})", missing.join(", ")))
    }
}

/// Types `exit` and waits for QEMU to end with status 0 (the kernel's ACPI power-off).
pub fn power_off(session: &mut Session) -> Result<(), String> {
    let _ = session.send_line("exit");
    match session.wait_exit(COMMAND_TIMEOUT) {
        Ok(Some(0)) => Ok(()),
        Ok(other) => Err(format!("QEMU ended with {other:?}")),
        Err(WaitError::TimedOut) => Err("QEMU did not power off".into()),
        Err(WaitError::Exited(code)) => Err(format!("QEMU exited with {code:?}")),
    }
}

/// Types a command and returns what it printed up to the next prompt.
pub fn command(session: &mut Session, line: &str) -> Result<String, String> {
    session.send_line(line)?;
    session.expect(kernel_prompt(), COMMAND_TIMEOUT).map_err(|e| format!("`{line}` did not finish: {e:?}"))
}

/// Checks, from the host, what the shell shows.
fn shell_checks(machine: &MachineConfig, session: &mut Session, tally: &mut Tally) {
    let name = |check: &str| format!("{}::{check}", machine.name);
    let lspci = command(session, "lspci");
    tally.record(&name("lspci_lists_q35_devices"), lspci.and_then(|text| check_lspci(&text)));

    let devices = command(session, "cat pci:devices");
    tally.record(
        &name("pci_devices_view"),
        devices.and_then(|t| {
            if t.contains("8086:100e") && t.contains("8086:2922") {
                Ok(())
            } else {
                Err(format!("view lacks e1000/AHCI:\n{t}"))
            }
        }),
    );

    let meminfo = command(session, "meminfo");
    tally.record(
        &name("meminfo"),
        meminfo.and_then(|t| if t.contains("MiB free") { Ok(()) } else { Err(format!("unexpected meminfo:\n{t}")) }),
    );

    // A VT-d configuration must really run under VT-d: if DMAR parsing or bring-up broke, the
    // kernel would fall back to Direct and every DMA test would still pass.
    let units = command(session, "cat iommu:units");
    tally.record(
        &name("iommu_matches_the_machine"),
        units.and_then(|t| {
            let translating = t.contains("dmar0:") && t.contains("translation on");
            match (machine.iommu, translating) {
                (true, true) if t.contains("00:02.0->") || t.contains("00:01.0->") => Ok(()),
                (false, false) if t.contains("no VT-d unit in use") => Ok(()),
                (true, _) => Err(format!("the machine has VT-d but the kernel does not translate with it:\n{t}")),
                (false, _) => Err(format!("the machine has no VT-d but the kernel reports one:\n{t}")),
            }
        }),
    );

    let unknown = command(session, "frobnicate");
    tally.record(
        &name("unknown_command_is_reported"),
        unknown.and_then(|t| if t.contains("unknown command") { Ok(()) } else { Err(t) }),
    );

    let _ = session.send_line("exit");
    tally.record(
        &name("exit_powers_off_with_status_0"),
        match session.wait_exit(COMMAND_TIMEOUT) {
            Ok(Some(0)) => Ok(()),
            other => Err(format!("QEMU ended with {other:?}")),
        },
    );
    let log = session.output();
    tally.record(
        &name("boot_log_is_clean"),
        match log.lines().find(|l| l.contains("[ERROR") || l.contains("EXCEPTION") || l.contains("PANIC")) {
            None => Ok(()),
            Some(line) => Err(format!("boot printed: {line}")),
        },
    );
}

/// The devices q35 always has, as `lspci` should show them.
fn check_lspci(text: &str) -> Result<(), String> {
    let lines: Vec<&str> = text.lines().collect();
    let find = |id: &str| lines.iter().find(|l| l.contains(id)).copied();
    let host_bridge = find("8086:29c0").ok_or("no q35 host bridge 8086:29c0")?;
    let _ = host_bridge;
    let e1000 = find("8086:100e").ok_or("no e1000 8086:100e")?;
    let ahci = find("8086:2922").ok_or("no AHCI controller 8086:2922")?;
    let isa = find("8086:2918").ok_or("no ISA bridge 8086:2918")?;
    if !ahci.contains("01/06/01") {
        return Err(format!("AHCI line lacks class 01/06/01: {ahci}"));
    }
    if !ahci.contains("BAR5") {
        return Err(format!("AHCI line lacks BAR5: {ahci}"));
    }
    if !e1000.contains("BAR0") {
        return Err(format!("e1000 line lacks BAR0: {e1000}"));
    }
    if !isa.contains("06/01/00") {
        return Err(format!("ISA bridge line lacks class 06/01/00: {isa}"));
    }
    Ok(())
}

/// The runner must report failures: demo tests that return an error, panic, page-fault and
/// overflow the stack must each be reported as failed, with what happened, and the test after
/// them must still run.
fn runner_self_check(machine: &MachineConfig, images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    println!("(the demo failures below are expected: they check that the runner reports failures)");
    let mut scratch = Tally::default();
    let KtestRun { verdicts, crash_reports, .. } = run_ktests(machine, images, work, "--demo-failures", &mut scratch);
    let verdict = |name: &str| verdicts.iter().find(|(n, _)| n == name).map(|(_, r)| r.clone());
    let failed_with = |name: &str, needle: &str| -> Result<(), String> {
        match verdict(name) {
            Some(Err(why)) if why.contains(needle) => Ok(()),
            other => Err(format!("{name}: expected a failure mentioning `{needle}`, got {other:?}")),
        }
    };
    let checks = [
        ("runner::reports_a_returned_error", failed_with("demo::returns_an_error", "fails on purpose")),
        ("runner::reports_a_panic_with_location", failed_with("demo::panics", "panicked at kernel/src/ktest/mod.rs")),
        ("runner::reports_a_page_fault_with_address", failed_with("demo::page_fault", "read of 0xdeadbeef000")),
        ("runner::reports_a_double_fault_on_stack_overflow", failed_with("demo::stack_overflow", "double fault")),
        // The crash path allocates nothing: a fault taken with the heap's lock held is reported.
        (
            "runner::reports_a_fault_taken_with_the_heap_locked",
            failed_with("demo::fault_with_the_heap_locked", "read of 0xdeadbeef000"),
        ),
        (
            "runner::runs_tests_after_a_crash",
            if verdict("demo::passes") == Some(Ok(())) { Ok(()) } else { Err(format!("verdicts: {verdicts:?}")) },
        ),
        // Each crash prints a frame-pointer backtrace that xtask names from the ELF's DWARF: the
        // function that panicked or faulted must be there, with its file.
        (
            "runner::panic_backtrace_names_the_panicking_function",
            backtrace_names(
                &crash_reports,
                "this test panics on purpose",
                "kernel::ktest::demo_panic (kernel/src/ktest/mod.rs:",
            ),
        ),
        (
            "runner::page_fault_backtrace_names_the_faulting_function",
            backtrace_names(
                &crash_reports,
                "page fault (#PF)",
                "kernel::ktest::demo_page_fault (kernel/src/ktest/mod.rs:",
            ),
        ),
        (
            "runner::double_fault_backtrace_names_the_overflowing_function",
            backtrace_names(
                &crash_reports,
                "double fault (#DF)",
                "kernel::ktest::demo_stack_overflow::recurse (kernel/src/ktest/mod.rs:",
            ),
        ),
    ];
    for (name, result) in checks {
        tally.record(name, result);
    }
}

/// `cargo xtask gdb` really debugs the kernel: gdb, in batch mode against QEMU's stub, stops at
/// a breakpoint set by a generic Rust function's path. The same check must fail without the
/// symbols (the stripped kernel of the boot image) and without a reachable stub.
fn debugger_checks(machine: &MachineConfig, images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    if let Err(e) = crate::setup::ensure(&[crate::setup::Need::Gdb]) {
        tally.record("gdb::installed", Err(e));
        return;
    }
    const FUNCTION: &str = "e1000::E1000::transmit_with";
    let stop_with = |symbols: &Path, tag: &str, limit: Duration| -> Result<crate::gdb::BatchStop, String> {
        let port = crate::gdb::free_port()?;
        let mut halted = machine.clone();
        halted.extra_args.extend(crate::gdb::qemu_args(port));
        let log = work.join(format!("{}-{tag}.log", machine.name));
        let _qemu = Session::start(&halted, images, work, log)?;
        crate::gdb::break_and_stop(symbols, port, FUNCTION, &["p len", "p self.tx.tail"], limit)
    };
    let stop = stop_with(&images.kernel, "gdb", Duration::from_secs(120));
    let transcript = stop.as_ref().map(|s| s.transcript.clone()).unwrap_or_default();
    tally.record("gdb::breakpoint_by_rust_path_stops_in_that_function", stop.map(|_| ()));
    // The stop has its arguments and fields: `p len` printed a frame length.
    tally.record(
        "gdb::prints_the_stopped_functions_variables",
        match transcript.lines().find(|l| l.starts_with("$1 = ")) {
            Some(line) if line[5..].trim().parse::<usize>().is_ok_and(|n| (14..=1514).contains(&n)) => Ok(()),
            _ => Err(format!("`p len` printed no frame length:\n{transcript}")),
        },
    );
    let stripped = images.bios.with_file_name("kernel.stripped");
    tally.record(
        "gdb::check_fails_without_symbols",
        match stop_with(&stripped, "gdb-nosymbols", Duration::from_secs(30)) {
            Ok(stop) => Err(format!("stopped in {FUNCTION} without symbols?\n{}", stop.transcript)),
            Err(_) => Ok(()),
        },
    );
    tally.record(
        "gdb::check_fails_without_a_stub",
        match crate::gdb::free_port()
            .and_then(|port| crate::gdb::break_and_stop(&images.kernel, port, FUNCTION, &[], Duration::from_secs(30)))
        {
            Ok(stop) => Err(format!("stopped with no QEMU listening?\n{}", stop.transcript)),
            Err(_) => Ok(()),
        },
    );
}

/// Whether the crash report that mentions `crash` has a symbolised backtrace line naming
/// `function` (the line xtask adds under `  #N 0x…`).
fn backtrace_names(reports: &[String], crash: &str, function: &str) -> Result<(), String> {
    let report = reports
        .iter()
        .find(|r| r.contains(crash))
        .ok_or_else(|| format!("no crash report mentions `{crash}`; reports: {reports:#?}"))?;
    let named =
        report.lines().skip_while(|l| !l.starts_with("backtrace (")).any(|l| l.trim_start().starts_with(function));
    if named { Ok(()) } else { Err(format!("the backtrace does not name `{function}`:\n{report}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ktest_lines_parse() {
        assert_eq!(parse_ktest_line("ktest: [3] memory::x ... ok"), Some((3, "memory::x".into(), Verdict::Passed)));
        assert_eq!(
            parse_ktest_line("ktest: [4] a::b ... FAILED: panicked at x.rs:3: boom"),
            Some((4, "a::b".into(), Verdict::Failed("panicked at x.rs:3: boom".into())))
        );
        assert_eq!(
            parse_ktest_line("ktest: [5] iommu::x ... skipped: no VT-d unit"),
            Some((5, "iommu::x".into(), Verdict::Skipped("no VT-d unit".into())))
        );
        assert_eq!(parse_ktest_line("ktest: begin 4 tests"), None);
        assert_eq!(parse_ktest_line("kernel> ktest --from 0"), None);
    }

    #[test]
    fn a_test_without_a_verdict_line_is_a_failure() {
        let mut c = Coverage { total: Some(3), ..Coverage::default() };
        c.seen.extend([0, 2]);
        // As seen: a QEMU message cut the verdict line in two.
        c.unparsed.push("1] pci::msix_delivers_an_interrupt ... ok".into());
        let missing = c.missing();
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("test [1] of 3") && missing[0].contains("msix"), "{missing:?}");
        c.seen.insert(1);
        assert!(c.missing().is_empty());
        let abandoned = Coverage { total: Some(3), abandoned: true, ..Coverage::default() };
        assert!(abandoned.missing().is_empty(), "a run that failed as a whole says so once");
    }

    #[test]
    fn both_forged_msis_need_their_record() {
        let both = ["ir-fault-recorded reason=22 index=128 sid=65535", "ir-fault-recorded reason=26 index=3 sid=24"]
            .map(String::from);
        assert!(recorded_ir_faults(&both).is_ok());
        assert!(recorded_ir_faults(&both[..1]).unwrap_err().contains("reason=26"));
        let unrecorded = ["ir-blocked-unrecorded reason=22 index=128 sid=24".to_string(), both[1].clone()];
        assert!(recorded_ir_faults(&unrecorded).unwrap_err().contains("reason=22"));
    }

    #[test]
    fn iommu_and_block_tests_must_run_where_the_machine_has_what_they_need() {
        let vtd = MachineConfig::standard();
        let direct = MachineConfig { iommu: false, ..MachineConfig::standard() };
        assert!(must_run(&vtd, "iommu::unmapped_iova_faults_and_kernel_goes_on"));
        assert!(!must_run(&direct, "iommu::unmapped_iova_faults_and_kernel_goes_on"));
        assert!(must_run(&direct, "block::completion_by_intx"));
        assert!(!must_run(&vtd, "net::dhcp_lease"));
        let six_gib = MachineConfig { iommu: false, memory_mib: 6144, ..MachineConfig::standard() };
        assert!(must_run(&six_gib, "inject::bounce_above_4g") && !must_run(&vtd, "inject::bounce_above_4g"));
        assert!(must_run(&vtd, "inject::deferred_unmap_window") && !must_run(&six_gib, "inject::unmapped_iova"));
        assert!(must_run(&direct, "inject::double_unmap") && must_run(&vtd, "inject::pool_write_after_free"));
    }

    #[test]
    fn lspci_check_needs_every_q35_device() {
        let good = "00:00.0 8086:29c0 class 06/00/00 Host bridge\n\
                    00:02.0 8086:100e class 02/00/00 Ethernet controller BAR0 mem32 0xfeb80000 [128K]\n\
                    00:1f.0 8086:2918 class 06/01/00 ISA bridge\n\
                    00:1f.2 8086:2922 class 01/06/01 SATA controller (AHCI) BAR5 mem32 0xfebd1000 [4K]\n";
        assert_eq!(check_lspci(good), Ok(()));
        assert!(check_lspci(&good.replace("BAR5", "BAR4")).is_err());
        assert!(check_lspci(&good.replace("8086:2918", "8086:0000")).is_err());
    }
}
