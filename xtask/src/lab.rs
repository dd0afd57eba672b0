//! `cargo xtask lab`: "write the ring yourself" (docs/labs/README.md).
//!
//! Four labs, each one function group of a driver that a student rewrites in one file (the
//! driver's *lab slot*), while the rest of the driver stays the real one:
//!
//! | lab             | slot                               | driver feature        |
//! |-----------------|------------------------------------|-----------------------|
//! | `e1000-tx`      | `drivers/e1000/src/lab/transmit.rs`| `e1000/lab-tx`        |
//! | `e1000-rx`      | `drivers/e1000/src/lab/receive.rs` | `e1000/lab-rx`        |
//! | `ahci-issue`    | `drivers/ahci/src/lab/issue.rs`    | `ahci/lab-issue`      |
//! | `ahci-complete` | `drivers/ahci/src/lab/complete.rs` | `ahci/lab-complete`   |
//!
//! `start` copies the stub (`docs/labs/<lab>/stub.rs`) into the slot unless work is there,
//! `reset` puts the stub back (keeping a copy of the work under `target/lab/`), `list` shows each
//! lab's state, and `grade` runs the grader: the host checks (the driver with the student's file
//! against the simulated device, `lab::grade::<part>` in the driver crate), then a kernel built
//! with the lab feature booted in QEMU, with evidence read from the host (frames in a pcap for
//! e1000, bytes in a disk image for AHCI).
//!
//! The normal build never compiles a slot: only the lab features do. `cargo xtask test` proves
//! each grader fails on its stub (feature `lab-stub` compiles `docs/labs/<lab>/stub.rs` in the
//! slot's place) and passes on the reference (the driver as built normally), and boots the
//! graders' QEMU scenarios on the normal kernel ([`qemu_job`]).

use crate::build;
use crate::qemu::MachineConfig;
use crate::test::{self, Tally};
use std::io::Read;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

/// What a lab's QEMU half exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    Net,
    Disk,
}

/// One lab.
struct Lab {
    name: &'static str,
    title: &'static str,
    /// The driver crate and its lab feature.
    krate: &'static str,
    feature: &'static str,
    /// The student's file, from the workspace root.
    slot: &'static str,
    /// The grader's host checks: `lab::grade::<part>` in the driver crate.
    part: &'static str,
    device: Device,
}

const LABS: [Lab; 4] = [
    Lab {
        name: "e1000-tx",
        title: "e1000 transmit: fill a descriptor, ring the doorbell, take it back",
        krate: "e1000",
        feature: "lab-tx",
        slot: "drivers/e1000/src/lab/transmit.rs",
        part: "transmit",
        device: Device::Net,
    },
    Lab {
        name: "e1000-rx",
        title: "e1000 receive: see DD, give the buffer back, move RDT",
        krate: "e1000",
        feature: "lab-rx",
        slot: "drivers/e1000/src/lab/receive.rs",
        part: "receive",
        device: Device::Net,
    },
    Lab {
        name: "ahci-issue",
        title: "AHCI command issue: command header, command table, PxSACT and PxCI",
        krate: "ahci",
        feature: "lab-issue",
        slot: "drivers/ahci/src/lab/issue.rs",
        part: "issue",
        device: Device::Disk,
    },
    Lab {
        name: "ahci-complete",
        title: "AHCI completion: acknowledge PxIS, read PxCI and PxSACT, find what finished",
        krate: "ahci",
        feature: "lab-complete",
        slot: "drivers/ahci/src/lab/complete.rs",
        part: "complete",
        device: Device::Disk,
    },
];

const USAGE: &str = "usage: cargo xtask lab list | start NAME | grade NAME [--host-only] | reset NAME";

impl Lab {
    fn stub(&self) -> PathBuf {
        build::workspace_root().join("docs/labs").join(self.name).join("stub.rs")
    }
    fn slot(&self) -> PathBuf {
        build::workspace_root().join(self.slot)
    }
    fn readme(&self) -> String {
        format!("docs/labs/{}/README.md", self.name)
    }
    fn filter(&self) -> String {
        format!("lab::grade::{}::", self.part)
    }
    /// Where the last grade's verdict is kept: `pass|fail <hash of the graded slot>`.
    fn record(&self) -> PathBuf {
        build::target_dir().join("lab").join(format!("{}.grade", self.name))
    }
}

fn find(name: &str) -> Result<&'static Lab, String> {
    LABS.iter()
        .find(|l| l.name == name)
        .ok_or_else(|| format!("no lab `{name}`; labs: {}", LABS.iter().map(|l| l.name).collect::<Vec<_>>().join(", ")))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn fingerprint(text: &str) -> u64 {
    // FNV-1a: stable across runs and toolchains.
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `cargo xtask lab …`.
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    match args {
        [] => Err(USAGE.into()),
        [cmd] if cmd == "list" => list(),
        [cmd, name] if cmd == "start" => start(find(name)?),
        [cmd, name] if cmd == "reset" => reset(find(name)?),
        [cmd, name, rest @ ..] if cmd == "grade" => {
            let host_only = match rest {
                [] => false,
                [flag] if flag == "--host-only" => true,
                other => return Err(format!("unexpected {other:?}\n{USAGE}")),
            };
            grade(find(name)?, host_only)
        }
        _ => Err(USAGE.into()),
    }
}

fn status(lab: &Lab) -> Result<String, String> {
    let slot = read(&lab.slot())?;
    if slot == read(&lab.stub())? {
        return Ok("not started (the slot holds the stub)".into());
    }
    let graded = std::fs::read_to_string(lab.record()).unwrap_or_default();
    let hash = format!("{:016x}", fingerprint(&slot));
    Ok(match graded.split_once(' ') {
        Some(("pass", h)) if h.trim() == hash => "PASSED (this version of the file)".into(),
        Some(("fail", h)) if h.trim() == hash => "in progress (last grade failed)".into(),
        _ => "in progress (not graded since the last edit)".into(),
    })
}

fn list() -> Result<ExitCode, String> {
    for lab in &LABS {
        println!("{:<14} {}", lab.name, lab.title);
        println!("{:<14} file: {}   status: {}", "", lab.slot, status(lab)?);
    }
    println!(
        "\n`cargo xtask lab start NAME`, then edit the file and `cargo xtask lab grade NAME`; see docs/labs/README.md"
    );
    Ok(ExitCode::SUCCESS)
}

fn start(lab: &Lab) -> Result<ExitCode, String> {
    let (slot, stub) = (read(&lab.slot())?, read(&lab.stub())?);
    if slot != stub {
        println!(
            "{} is already started: {} holds your work (`cargo xtask lab reset {}` starts over).",
            lab.name, lab.slot, lab.name
        );
    } else {
        std::fs::write(lab.slot(), &stub).map_err(|e| e.to_string())?;
        println!("{}: {}", lab.name, lab.title);
    }
    println!("  read:  {}", lab.readme());
    println!("  edit:  {}", lab.slot);
    println!("  grade: cargo xtask lab grade {}", lab.name);
    Ok(ExitCode::SUCCESS)
}

fn reset(lab: &Lab) -> Result<ExitCode, String> {
    let slot = read(&lab.slot())?;
    let stub = read(&lab.stub())?;
    if slot != stub {
        let dir = build::target_dir().join("lab");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let saved = dir.join(format!("{}-{:016x}.rs", lab.name, fingerprint(&slot)));
        std::fs::write(&saved, &slot).map_err(|e| e.to_string())?;
        println!("your version is saved as {}", saved.display());
    }
    std::fs::write(lab.slot(), &stub).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(lab.record());
    println!("{} now holds the stub of {}", lab.slot, lab.name);
    Ok(ExitCode::SUCCESS)
}

/// One host check's verdict, with the grader's explanation when it failed.
#[derive(Debug)]
struct Check {
    name: String,
    result: Result<(), String>,
}

/// What one run of a grader's host checks gave.
#[derive(Debug)]
struct HostRun {
    /// The test binary built (false: the code does not compile; `log` has the compiler's words).
    compiled: bool,
    checks: Vec<Check>,
    log: String,
    /// The check still running when [`HOST_CHECK_LIMIT`] ran out (the run was stopped there).
    stuck_in: Option<String>,
}

impl HostRun {
    fn passed(&self) -> bool {
        self.compiled
            && self.stuck_in.is_none()
            && !self.checks.is_empty()
            && self.checks.iter().all(|c| c.result.is_ok())
    }
    fn failed(&self) -> usize {
        self.checks.iter().filter(|c| c.result.is_err()).count()
    }
}

/// How long a grader's host checks may run once built. The reference passes them in about a
/// second; a student's code that waits for a bit the simulated device never sets would
/// otherwise hang the grader.
const HOST_CHECK_LIMIT: Duration = Duration::from_secs(60);

/// Runs `lab`'s host checks with `features` on the driver crate (none: the reference).
fn host_checks(lab: &Lab, features: &[&str]) -> Result<HostRun, String> {
    let command = |extra: &[&str]| {
        let mut cmd = build::cargo();
        cmd.args(["test", "-p", lab.krate, "--lib"]);
        if !features.is_empty() {
            cmd.args(["--features", &features.join(",")]);
        }
        cmd.args(extra).env("RUST_BACKTRACE", "0");
        cmd
    };
    // Build first, with no limit (a first build takes what it takes) ...
    let build = command(&["--no-run"]).output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !build.status.success() {
        return Ok(HostRun {
            compiled: false,
            checks: Vec::new(),
            log: String::from_utf8_lossy(&build.stderr).into_owned(),
            stuck_in: None,
        });
    }
    // ... then run the checks, one at a time, under HOST_CHECK_LIMIT.
    let run = run_with_limit(command(&[&lab.filter(), "--", "--test-threads=1"]), HOST_CHECK_LIMIT)?;
    let compiled = run.stdout.contains("running ");
    let checks = parse_checks(&run.stdout, &lab.filter());
    if run.timed_out {
        let stuck_in = running_check(&run.stdout, &lab.filter()).unwrap_or_else(|| String::from("(unknown)"));
        return Ok(HostRun { compiled, checks, log: run.stdout, stuck_in: Some(stuck_in) });
    }
    if !run.success && compiled && checks.is_empty() {
        return Err(format!("the grader's tests did not run:\n{}\n{}", run.stdout, run.stderr));
    }
    Ok(HostRun { compiled, checks, log: if compiled { run.stdout } else { run.stderr }, stuck_in: None })
}

/// What a command run under a time limit printed, and how it ended.
struct LimitedRun {
    stdout: String,
    stderr: String,
    success: bool,
    /// It was still running at the limit and was killed, with every process it started.
    timed_out: bool,
}

/// Runs `cmd` in a process group of its own and kills the whole group (cargo and the test
/// binary it started) if it is still running after `limit`.
fn run_with_limit(mut cmd: std::process::Command, limit: Duration) -> Result<LimitedRun, String> {
    use std::os::unix::process::CommandExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let (mut out, mut err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let (finished, timed_out) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let group = child.id();
    let watchdog = {
        let (finished, timed_out) = (finished.clone(), timed_out.clone());
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !finished.load(Ordering::SeqCst) {
                if start.elapsed() >= limit {
                    timed_out.store(true, Ordering::SeqCst);
                    // The group's id is the child's pid (process_group(0)).
                    let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut stdout = String::new();
    let _ = out.read_to_string(&mut stdout);
    let status = child.wait().map_err(|e| e.to_string())?;
    finished.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    let stderr = stderr_reader.join().unwrap_or_default();
    Ok(LimitedRun { stdout, stderr, success: status.success(), timed_out: timed_out.load(Ordering::SeqCst) })
}

/// The check that started and never printed its verdict (`test <filter>name ... ` with nothing
/// after it), in a `--test-threads=1` run that was stopped.
fn running_check(stdout: &str, filter: &str) -> Option<String> {
    let last = stdout.lines().rev().find(|l| l.starts_with("test "))?;
    let rest = last.strip_prefix("test ")?.strip_prefix(filter)?;
    let (name, verdict) = rest.split_once(" ...")?;
    verdict.trim().is_empty().then(|| name.to_string())
}

/// The checks of a `cargo test` output: `test <filter>name ... ok|FAILED`, and for each failure
/// the message the grader panicked with.
fn parse_checks(stdout: &str, filter: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("test ").and_then(|r| r.strip_prefix(filter)) else { continue };
        let Some((name, verdict)) = rest.split_once(" ...") else { continue };
        // A check with no verdict was still running when the run was stopped (`running_check`).
        if verdict.trim().is_empty() {
            continue;
        }
        let result = if verdict.trim() == "ok" {
            Ok(())
        } else {
            let header = format!("---- {filter}{name} stdout ----");
            let why = stdout
                .split_once(&header)
                .map(|(_, after)| {
                    let end = after.find("\n---- ").or_else(|| after.find("\nfailures:")).unwrap_or(after.len());
                    after[..end]
                        .lines()
                        .filter(|l| !l.starts_with("thread '") && !l.starts_with("note: run with"))
                        .collect::<Vec<_>>()
                        .join("\n")
                        .trim_end()
                        .to_string()
                })
                .unwrap_or_else(|| "failed (no message)".into());
            Err(why)
        };
        checks.push(Check { name: name.to_string(), result });
    }
    checks
}

fn grade(lab: &Lab, host_only: bool) -> Result<ExitCode, String> {
    println!("== lab {}: host checks (your {} against the simulated device) ==", lab.name, lab.slot);
    let slot = read(&lab.slot())?;
    let run = host_checks(lab, &[lab.feature])?;
    if !run.compiled {
        println!("{}", run.log);
        println!("lab {}: FAIL: {} does not compile (the compiler's messages are above)", lab.name, lab.slot);
        return finish(lab, &slot, false);
    }
    for check in &run.checks {
        match &check.result {
            Ok(()) => println!("check {:<55} ok", check.name),
            Err(why) => println!("check {:<55} FAILED\n{}\n", check.name, why.trim_matches('\n')),
        }
    }
    if let Some(check) = &run.stuck_in {
        println!(
            "check {check:<55} STOPPED after {} s\n\
             It never finished: does your code wait for something the device never does (a loop on a \
             status bit, or on a head that never moves)? Every wait on a device needs a way out.\n",
            HOST_CHECK_LIMIT.as_secs()
        );
        println!("lab {}: FAIL: {check} did not finish (QEMU not run)", lab.name);
        return finish(lab, &slot, false);
    }
    if !run.passed() {
        println!(
            "lab {}: FAIL: {} of {} host checks failed; fix those first (QEMU not run)",
            lab.name,
            run.failed(),
            run.checks.len()
        );
        return finish(lab, &slot, false);
    }
    if host_only {
        println!("lab {}: host checks pass (QEMU half skipped: --host-only)", lab.name);
        return Ok(ExitCode::SUCCESS);
    }
    println!("\n== lab {}: the kernel with your code, in QEMU ==", lab.name);
    crate::qemu::check_qemu()?;
    let images = build::build_lab_images(&format!("{}/{}", lab.krate, lab.feature), lab.name)?;
    let work = build::target_dir().join("lab").join(lab.name);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut tally = Tally::default();
    match lab.device {
        Device::Net => net_evidence(&images, &work, &mut tally),
        Device::Disk => disk_evidence(&images, &work, &mut tally),
    }
    let ok = tally.failures().is_empty();
    if ok {
        println!("lab {}: PASS (host checks and QEMU evidence)", lab.name);
    } else {
        println!("lab {}: FAIL in QEMU; the serial logs are in {}", lab.name, work.display());
    }
    finish(lab, &slot, ok)
}

fn finish(lab: &Lab, slot: &str, passed: bool) -> Result<ExitCode, String> {
    let record = lab.record();
    if let Some(dir) = record.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let verdict = if passed { "pass" } else { "fail" };
    let _ = std::fs::write(&record, format!("{verdict} {:016x}\n", fingerprint(slot)));
    println!("read: {}", lab.readme());
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `cargo xtask test`, host half: every grader fails on its stub and passes on the reference.
pub fn check_graders(tally: &mut Tally) {
    for lab in &LABS {
        let stub = host_checks(lab, &[lab.feature, "lab-stub"]);
        tally.record(
            &format!("lab::{}::grader_fails_on_the_stub", lab.name),
            match stub {
                Ok(run) if !run.compiled => Err(format!("the stub does not compile:\n{}", run.log)),
                Ok(HostRun { stuck_in: Some(check), .. }) => {
                    Err(format!("{check} never finished on the stub: a stub must fail its checks, not hang them"))
                }
                Ok(run) if run.failed() > 0 => {
                    println!(
                        "host: lab {}: {} of {} checks fail on the stub",
                        lab.name,
                        run.failed(),
                        run.checks.len()
                    );
                    Ok(())
                }
                Ok(run) => Err(format!("every check passes on the stub: {:?}", run.checks)),
                Err(e) => Err(e),
            },
        );
        let reference = host_checks(lab, &[]);
        tally.record(
            &format!("lab::{}::grader_passes_on_the_reference", lab.name),
            match reference {
                Ok(run) if run.passed() => Ok(()),
                Ok(run) => Err(format!(
                    "on the real driver: {:?}{}\n{}",
                    run.checks,
                    run.stuck_in.map(|c| format!(", {c} never finished")).unwrap_or_default(),
                    if run.compiled { "" } else { &run.log }
                )),
                Err(e) => Err(e),
            },
        );
    }
}

/// `cargo xtask test --job lab`: the graders' QEMU halves on the normal kernel, whose ring and
/// slot code is the labs' reference, so they must pass.
pub fn qemu_job(images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    println!("\n== lab graders' QEMU evidence, on the reference (the normal kernel) ==");
    net_evidence(images, work, tally);
    disk_evidence(images, work, tally);
}

/// Frames the e1000 labs exchange: enough to wrap both 128-descriptor rings.
const FRAMES: usize = 200;

/// e1000 evidence: a host peer on a socket netdev sends [`FRAMES`] frames of 60..1514 bytes,
/// the kernel echoes each (receive, then transmit), the peer checks every byte, and QEMU's
/// capture of the wire (`filter-dump`) must hold each echo exactly once, in order.
fn net_evidence(images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    use crate::net_tests::{TEST_ETHERTYPE, expected_echo, next_test_frame, pcap_records, socket_network, test_frame};
    let name = |check: &str| format!("lab::net::{check}");
    let pcap = work.join("lab-net.pcap");
    let _ = std::fs::remove_file(&pcap);
    let setup = UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind the peer: {e}"))
        .and_then(|peer| socket_network(&peer).map(|n| (peer, n)));
    let (peer, (mut network, qemu_port)) = match setup {
        Ok(s) => s,
        Err(e) => return tally.record(&name("setup"), Err(e)),
    };
    network.extend(["-object".into(), format!("filter-dump,id=f0,netdev=n0,file={}", pcap.display())]);
    let machine = MachineConfig { name: "lab-net".into(), network: Some(network), ..MachineConfig::standard() };
    let mut session = match test::boot(&machine, images, work, "net") {
        Ok(s) => s,
        Err(e) => return tally.record(&name("boot"), Err(e)),
    };
    let frames: Vec<Vec<u8>> = (0..FRAMES).map(test_frame).collect();
    let echoed = (|| -> Result<(), String> {
        session.send_line(&format!("frame-echo {FRAMES} 20"))?;
        session
            .expect("frame-echo: ready", Duration::from_secs(60))
            .map_err(|e| format!("frame-echo did not start: {e:?}"))?;
        peer.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 2048];
        let (mut sent, mut checked) = (0, 0);
        while checked < FRAMES {
            while sent < FRAMES && sent - checked < 8 {
                peer.send_to(&frames[sent], ("127.0.0.1", qemu_port)).map_err(|e| format!("send: {e}"))?;
                sent += 1;
            }
            let n = next_test_frame(&peer, &mut buf).map_err(|e| {
                format!(
                    "after {checked} echoes: {e} (receive lab: was frame {checked} delivered? transmit lab: was its \
                     echo sent?)"
                )
            })?;
            if buf[..n] != expected_echo(&frames[checked])[..] {
                return Err(format!("echo {checked}: {n} bytes that differ from the frame with its MACs swapped"));
            }
            checked += 1;
        }
        let done = session
            .expect("kernel> ", Duration::from_secs(60))
            .map_err(|e| format!("frame-echo did not return: {e:?}"))?;
        if done.contains(&format!("echoed {FRAMES} frames, 0 not echoed")) {
            Ok(())
        } else {
            Err(format!("frame-echo said:\n{}", done.trim()))
        }
    })();
    tally.record(&name("every_frame_echoed_byte_for_byte"), echoed);
    let stats = test::command(&mut session, "cat net:stats");
    tally.record(
        &name("no_frame_dropped"),
        stats.and_then(|t| if t.contains("\ndrops 0\n") { Ok(()) } else { Err(format!("net:stats:\n{t}")) }),
    );
    tally.record(&name("exit"), test::power_off(&mut session));
    drop(session);
    // The wire, as QEMU saw it: the kernel's test frames, each once, in order.
    let wire = std::fs::read(&pcap).map_err(|e| format!("cannot read {}: {e}", pcap.display())).and_then(|bytes| {
        let records = pcap_records(&bytes)?;
        let ours: Vec<&[u8]> = records
            .iter()
            .copied()
            .filter(|f| f.len() >= 14 && f[12..14] == TEST_ETHERTYPE && f[6..12] == frames[0][..6])
            .collect();
        if ours.len() != FRAMES {
            return Err(format!(
                "{} test frames from the kernel on the wire, expected {FRAMES} (each once)",
                ours.len()
            ));
        }
        for (i, f) in ours.iter().enumerate() {
            if *f != &expected_echo(&frames[i])[..] {
                return Err(format!(
                    "the kernel's frame {i} on the wire is not echo {i} (a stale or repeated descriptor?)"
                ));
            }
        }
        println!(
            "host: {}: {} records, the kernel's {FRAMES} echoes each once, in order",
            pcap.display(),
            records.len()
        );
        Ok(())
    });
    tally.record(&name("pcap_has_each_echo_once_in_order"), wire);
}

/// AHCI evidence: a patterned 16 MiB image on port 1. The kernel verifies ranges at queue
/// depth 1 and 32 (plain and NCQ commands), fills one range with a new pattern, and after
/// QEMU exits every sector of the file must hold exactly what was asked.
fn disk_evidence(images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    let name = |check: &str| format!("lab::disk::{check}");
    let seed = 0x1AB0_0000_5EED_0001u64;
    let mut image = match crate::disk_tests::Image::create(work.join("lab-disk.img"), 16, seed) {
        Ok(i) => i,
        Err(e) => return tally.record(&name("image"), Err(e)),
    };
    let machine =
        MachineConfig { name: "lab-disk".into(), disks: vec![image.path.clone()], ..MachineConfig::standard() };
    let mut session = match test::boot(&machine, images, work, "disk") {
        Ok(s) => s,
        Err(e) => return tally.record(&name("boot"), Err(e)),
    };
    let mut expect = |line: String, needle: &str| {
        test::command(&mut session, &line).and_then(|out| {
            if out.contains(needle) { Ok(()) } else { Err(format!("`{line}` printed:\n{}", out.trim())) }
        })
    };
    tally.record(&name("disk_found"), expect("cat disk:info".into(), "disk ahci0p1 port=1 "));
    tally.record(&name("read_qd1"), expect(format!("disk verify ahci0p1 0 2048 {seed:#x} 1"), "disk: verify ok"));
    tally.record(
        &name("read_ncq_qd32"),
        expect(format!("disk verify ahci0p1 2048 8192 {seed:#x} 32"), "disk: verify ok"),
    );
    let (lba, count, new_seed) = (20_000u64, 1024u64, 0x1AB0_0000_0000_0002u64);
    image.written.push((lba, count, new_seed));
    tally.record(
        &name("write_and_flush"),
        expect(format!("disk fill ahci0p1 {lba} {count} {new_seed:#x} 32"), "disk: fill ok"),
    );
    tally.record(
        &name("written_range_reads_back"),
        expect(format!("disk verify ahci0p1 {lba} {count} {new_seed:#x} 8"), "disk: verify ok"),
    );
    let exited = test::power_off(&mut session);
    let clean = exited.is_ok();
    tally.record(&name("exit"), exited);
    drop(session);
    if clean {
        tally.record(&name("image_holds_exactly_what_was_asked"), image.check());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lab_has_its_stub_readme_slot_and_grader() {
        let root = build::workspace_root();
        for lab in &LABS {
            assert!(lab.stub().is_file(), "{}", lab.stub().display());
            assert!(root.join(lab.readme()).is_file(), "{}", lab.readme());
            assert!(lab.slot().is_file(), "{}", lab.slot);
            let grader = read(&root.join(format!("drivers/{}/src/lab/grade.rs", lab.krate))).unwrap();
            assert!(grader.contains(&format!("mod {} {{", lab.part)), "{}: no grader module {}", lab.name, lab.part);
            let manifest = read(&root.join(format!("drivers/{}/Cargo.toml", lab.krate))).unwrap();
            assert!(manifest.contains(&format!("{} = []", lab.feature)), "{}: no feature {}", lab.name, lab.feature);
        }
    }

    #[test]
    fn no_normal_build_turns_a_lab_on() {
        // Only `cargo xtask lab grade` (and `cargo xtask test`'s stub check) pass a lab feature.
        let root = build::workspace_root();
        for manifest in ["Cargo.toml", "kernel/Cargo.toml", "boot/Cargo.toml", "xtask/Cargo.toml"] {
            let text = read(&root.join(manifest)).unwrap();
            assert!(!text.contains("lab-"), "{manifest} names a lab feature");
        }
        for krate in ["e1000", "ahci"] {
            let text = read(&root.join(format!("drivers/{krate}/Cargo.toml"))).unwrap();
            assert!(!text.lines().any(|l| l.starts_with("default")), "{krate} has default features");
        }
    }

    #[test]
    fn a_check_that_never_ends_is_stopped_and_named() {
        let mut cmd = std::process::Command::new("sh");
        // What `cargo test --test-threads=1` prints before a check that loops forever; the
        // sleeping child stands for the test binary cargo starts, which must die too.
        cmd.args(["-c", "echo 'running 2 tests'; echo 'test lab::grade::a ... ok'; printf 'test lab::grade::b ... '; sleep 30 & wait"]);
        let start = std::time::Instant::now();
        let run = run_with_limit(cmd, Duration::from_millis(500)).unwrap();
        assert!(run.timed_out && !run.success);
        assert!(start.elapsed() < Duration::from_secs(10), "the group was not killed: {:?}", start.elapsed());
        assert_eq!(running_check(&run.stdout, "lab::grade::").as_deref(), Some("b"));
        let checks = parse_checks(&run.stdout, "lab::grade::");
        assert_eq!(checks.len(), 1, "the stopped check has no verdict: {checks:?}");
        let quick = run_with_limit(std::process::Command::new("true"), Duration::from_secs(10)).unwrap();
        assert!(quick.success && !quick.timed_out);
        assert_eq!(running_check("test lab::grade::a ... ok\n", "lab::grade::"), None);
    }

    #[test]
    fn grader_output_is_parsed_with_its_explanations() {
        let out = "running 2 tests\n\
                   test lab::grade::transmit::a ... ok\n\
                   test lab::grade::transmit::b ... FAILED\n\n\
                   failures:\n\n\
                   ---- lab::grade::transmit::b stdout ----\n\
                   thread 'lab::grade::transmit::b' panicked at drivers/e1000/src/lab/grade.rs:9:5:\n\
                   \n  found: TDT is still 0\n  rule:  SDM §3.4\n\
                   note: run with `RUST_BACKTRACE=1`\n\n\
                   failures:\n    lab::grade::transmit::b\n";
        let checks = parse_checks(out, "lab::grade::transmit::");
        assert_eq!(checks.len(), 2);
        assert!(checks[0].result.is_ok());
        let why = checks[1].result.clone().unwrap_err();
        assert!(why.contains("found: TDT is still 0") && why.contains("SDM §3.4"), "{why}");
        assert!(!why.contains("panicked at"), "{why}");
    }
}
