//! Grades the graders of `docs/exercises/`: every exercise's check must **fail** on the tree as
//! shipped and **pass** once its reference answer (`docs/exercises/answers/NN-*.patch`) is
//! applied; a known wrong answer (`docs/exercises/answers/wrong/`) must fail too. Part of the
//! host half of `cargo xtask test`.
//!
//! How, cheaply: the working tree (tracked and new files, as `git ls-files` lists them) is
//! mirrored into `target/exercise-grading/tree/`, writing only files whose bytes changed so
//! cargo's fingerprints stay valid between runs; each check runs there with a target directory of
//! its own, `target/exercise-grading/target/`, and builds only the one test binary it names. The
//! copy must not share the workspace's target directory: cargo names a workspace member's
//! artifacts by its path *relative to the workspace root*, so the copy's `dma` would overwrite
//! the real `dma`'s artifacts, and the next build of the real tree could take the copy's stale
//! library for fresh (that happened: a real build linked a `dma` without its newest module). An answer is applied with `git apply`, checked, and taken back with
//! `git apply -R`, so one copy serves every exercise.
//!
//! The student-facing command for each check is on its exercise page:
//! `cargo test -p CRATE --test exercises -- --ignored exerciseN_graded`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build;
use crate::test::Tally;

/// One check: a cargo test binary and the prefix of the graded tests in it, or a check of the
/// source itself where the behaviour needs a machine (exercise 4's in-kernel test).
enum Check {
    Cargo { package: &'static str, test: &'static str, filter: &'static str },
    Source(fn(&Path) -> Result<(), String>),
}

struct Exercise {
    number: u8,
    answer: &'static str,
    checks: &'static [Check],
    /// Answers that must be rejected (patch file names under `answers/wrong/`).
    wrong: &'static [&'static str],
}

const EXERCISES: &[Exercise] = &[
    Exercise {
        number: 1,
        answer: "01-bigger-rx-ring.patch",
        checks: &[Check::Cargo { package: "e1000", test: "exercises", filter: "exercise1_graded" }],
        wrong: &[],
    },
    Exercise {
        number: 2,
        answer: "02-dma-debug-overlap.patch",
        checks: &[
            Check::Cargo { package: "dma", test: "exercises", filter: "exercise2_graded" },
            Check::Cargo { package: "iommu-vtd", test: "exercises", filter: "exercise2_graded" },
        ],
        wrong: &["02-compares-bus-addresses.patch"],
    },
    Exercise {
        number: 3,
        answer: "03-pool-high-water.patch",
        checks: &[Check::Cargo { package: "dma", test: "exercises", filter: "exercise3_graded" }],
        wrong: &[],
    },
    Exercise {
        number: 4,
        answer: "04-deferred-unmap-window.patch",
        checks: &[Check::Source(exercise4_test_checks_each_policy)],
        wrong: &[],
    },
    Exercise {
        number: 5,
        answer: "05-ahci-prdt-size.patch",
        checks: &[Check::Cargo { package: "ahci", test: "exercises", filter: "exercise5_graded" }],
        wrong: &[],
    },
];

/// Exercise 4, part C, checked in the source: the in-kernel test must branch on the policy and,
/// under a deferred one, check the pending IOVA and flush the probe's domain before expecting the
/// fault; and the kernel's policy must be strict again. (Running it needs QEMU: `cargo xtask
/// test --job bios-vtd`, once with each policy.)
fn exercise4_test_checks_each_policy(tree: &Path) -> Result<(), String> {
    let test = fs::read_to_string(tree.join("kernel/src/ktest/iommu.rs")).map_err(|e| e.to_string())?;
    let start = test.find("fn access_after_strict_unmap_faults").ok_or("access_after_strict_unmap_faults is gone")?;
    let body = &test[start..];
    let body = &body[..body[1..].find("\nfn ").map_or(body.len(), |end| end + 1)];
    for (needle, what) in [
        ("POLICY", "it does not look at iommu::POLICY"),
        ("is_pending(", "under a deferred policy it does not check that the IOVA is pending"),
        (".flush()", "under a deferred policy it does not flush the probe's domain"),
        ("domain_of(", "it does not find the probe's domain (iommu::domain_of)"),
    ] {
        if !body.contains(needle) {
            return Err(format!("access_after_strict_unmap_faults: {what}"));
        }
    }
    let policy = fs::read_to_string(tree.join("kernel/src/platform/iommu.rs")).map_err(|e| e.to_string())?;
    if !policy.contains("pub const POLICY: UnmapPolicy = UnmapPolicy::Strict;") {
        return Err("kernel/src/platform/iommu.rs: POLICY must be set back to UnmapPolicy::Strict".into());
    }
    Ok(())
}

/// Runs one check in `tree`: Ok(true) if its tests ran and passed, Ok(false) if they ran and
/// failed, Err if they could not run (a build error, or no graded test found).
fn run_check(tree: &Path, check: &Check) -> Result<bool, String> {
    let (package, test, filter) = match check {
        Check::Cargo { package, test, filter } => (*package, *test, *filter),
        Check::Source(f) => return Ok(f(tree).is_ok()),
    };
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(tree)
        .env("CARGO_TARGET_DIR", build::target_dir().join("exercise-grading/target"))
        .args(["test", "-q", "-p", package, "--test", test, "--", "--ignored", filter])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = stdout.lines().find_map(|l| l.strip_prefix("test result: ")).unwrap_or("");
    let count = |word: &str| {
        result
            .split(';')
            .find_map(|p| p.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    match (count(" passed"), count(" failed")) {
        (0, 0) => Err(format!(
            "cargo test -p {package} --test {test} -- --ignored {filter} ran no test:\n{}",
            String::from_utf8_lossy(&out.stderr).lines().rev().take(15).collect::<Vec<_>>().join("\n")
        )),
        (_, 0) if out.status.success() => Ok(true),
        (_, failed) if failed > 0 => Ok(false),
        _ => Err(format!("cargo test -p {package} --test {test} failed without a test result")),
    }
}

fn describe(check: &Check) -> String {
    match check {
        Check::Cargo { package, test, filter } => {
            format!("cargo test -p {package} --test {test} -- --ignored {filter}")
        }
        Check::Source(_) => "the source check of kernel/src/ktest/iommu.rs".into(),
    }
}

fn git_apply(tree: &Path, patch: &Path, reverse: bool) -> Result<(), String> {
    let mut cmd = Command::new("git");
    // The copy lies inside the repository's target/ folder: without a ceiling, git would find
    // the enclosing repository and silently skip every path outside the copy's subdirectory.
    cmd.current_dir(tree).env("GIT_CEILING_DIRECTORIES", tree.parent().unwrap_or(tree)).arg("apply");
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.arg(patch).output().map_err(|e| format!("cannot run git apply: {e}"))?;
    if out.status.success() {
        // Proof that it really changed the files: the opposite direction must now apply.
        let back = Command::new("git")
            .current_dir(tree)
            .env("GIT_CEILING_DIRECTORIES", tree.parent().unwrap_or(tree))
            .args(["apply", "--check"])
            .args(if reverse { None } else { Some("-R") })
            .arg(patch)
            .status()
            .map_err(|e| format!("cannot run git apply: {e}"))?;
        if back.success() { Ok(()) } else { Err(format!("git apply of {} changed nothing", patch.display())) }
    } else {
        Err(format!(
            "git apply {}{} failed: {}",
            if reverse { "-R " } else { "" },
            patch.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Every check of `ex`, expecting `pass`: Ok, or what went wrong.
fn expect(tree: &Path, ex: &Exercise, pass: bool, state: &str) -> Result<(), String> {
    for check in ex.checks {
        match run_check(tree, check)? {
            got if got == pass => {}
            true => return Err(format!("{} passes {state}", describe(check))),
            false => {
                let why = match check {
                    Check::Source(f) => f(tree).err().unwrap_or_default(),
                    Check::Cargo { .. } => "a graded test failed".into(),
                };
                return Err(format!("{} fails {state}: {why}", describe(check)));
            }
        }
    }
    Ok(())
}

fn grade(tree: &Path, answers: &Path, ex: &Exercise) -> Result<(), String> {
    let answer = answers.join(ex.answer);
    expect(tree, ex, false, "on the tree as shipped (it must fail until the exercise is solved)")?;
    git_apply(tree, &answer, false)?;
    let result = expect(tree, ex, true, &format!("with {} applied", ex.answer));
    git_apply(tree, &answer, true)?;
    result?;
    for wrong in ex.wrong {
        let patch = answers.join("wrong").join(wrong);
        git_apply(tree, &patch, false)?;
        let result = expect(tree, ex, false, &format!("with the wrong answer {wrong} applied (it must reject it)"));
        git_apply(tree, &patch, true)?;
        result?;
    }
    Ok(())
}

/// The files of the working tree: tracked ones and new ones git does not ignore.
fn tree_files(root: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .output()
        .map_err(|e| format!("cannot run git ls-files: {e}"))?;
    if !out.status.success() {
        return Err(format!("git ls-files failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).as_ref()))
        .collect())
}

/// Makes `dest` hold exactly `files` of `root`, rewriting only what changed.
fn mirror(root: &Path, files: &[PathBuf], dest: &Path) -> Result<(), String> {
    let wanted: BTreeSet<&PathBuf> = files.iter().collect();
    for rel in files {
        let (from, to) = (root.join(rel), dest.join(rel));
        let Ok(bytes) = fs::read(&from) else { continue }; // deleted but not yet staged
        if fs::read(&to).ok().as_deref() != Some(&bytes[..]) {
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            fs::write(&to, &bytes).map_err(|e| format!("{}: {e}", to.display()))?;
        }
    }
    let mut stale = Vec::new();
    let mut stack = vec![dest.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dest)
                && !wanted.contains(&rel.to_path_buf())
            {
                stale.push(path);
            }
        }
    }
    for path in stale {
        let _ = fs::remove_file(path);
    }
    Ok(())
}

/// `cargo xtask exercises`: the grading alone, without the rest of the host tests.
pub fn run(args: &[String]) -> Result<std::process::ExitCode, String> {
    if let Some(extra) = args.first() {
        return Err(format!("unknown option `{extra}` for exercises (it takes none)"));
    }
    let mut tally = Tally::default();
    grade_all(&mut tally)?;
    Ok(if tally.failed() == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE })
}

/// Grades every exercise's check, recording one result per exercise.
pub fn grade_all(tally: &mut Tally) -> Result<(), String> {
    println!("== exercises: each check fails on the shipped tree and passes with its answer ==");
    let root = build::workspace_root();
    let tree = build::target_dir().join("exercise-grading/tree");
    fs::create_dir_all(&tree).map_err(|e| format!("{}: {e}", tree.display()))?;
    mirror(&root, &tree_files(&root)?, &tree)?;
    let answers = root.join("docs/exercises/answers");
    for ex in EXERCISES {
        let started = std::time::Instant::now();
        let result = grade(&tree, &answers, ex);
        let name = format!("host::exercise{}_check_fails_before_and_passes_after_its_answer", ex.number);
        println!("   (exercise {} graded in {:.1} s)", ex.number, started.elapsed().as_secs_f64());
        tally.record(&name, result);
    }
    Ok(())
}
