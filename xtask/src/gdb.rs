//! Debugging the running kernel with gdb, through QEMU's gdb stub.
//!
//! `cargo xtask run --gdb` starts QEMU halted (`-S`) with its gdb stub listening on a free port
//! of 127.0.0.1 (`-gdb tcp:…`), and writes the port and the kernel ELF it booted to
//! `target/qemu/gdb-session`. `cargo xtask gdb`, in a second terminal, reads that file and
//! starts gdb with the kernel's symbols, connected.
//!
//! Two facts make this work before a single kernel instruction has run:
//! - The kernel runs at a fixed address, `KERNEL_BASE` + its ELF address
//!   (`kernel/src/boot.rs`), so gdb loads the symbols with that offset: `symbol-file -o`.
//! - Under TCG, QEMU checks software breakpoints as it translates code, by virtual address; it
//!   does not write `int3` into memory. A breakpoint set while the firmware runs fires once the
//!   bootloader has loaded the kernel there.

use crate::symbols::KERNEL_BASE;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

/// Where `run --gdb` records the session for `cargo xtask gdb`.
fn session_file() -> PathBuf {
    crate::build::target_dir().join("qemu").join("gdb-session")
}

/// A port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> Result<u16, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free local port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// QEMU's arguments for a halted start with the gdb stub on `port`.
pub fn qemu_args(port: u16) -> [String; 3] {
    ["-S".into(), "-gdb".into(), format!("tcp:127.0.0.1:{port}")]
}

/// gdb's arguments that load `kernel`'s symbols at the kernel's run-time address and connect to
/// the stub on `port`.
pub fn attach_args(kernel: &Path, port: u16) -> Vec<String> {
    vec![
        "-q".into(),
        "-ex".into(),
        format!("symbol-file -o {KERNEL_BASE:#x} {}", kernel.display()),
        // `break` by path for generic Rust functions (see the script's header).
        "-x".into(),
        crate::build::workspace_root().join("xtask/gdb/kernel.py").display().to_string(),
        "-ex".into(),
        format!("target remote 127.0.0.1:{port}"),
    ]
}

/// Records the session and tells the user how to attach.
pub fn announce(kernel: &Path, port: u16) -> Result<(), String> {
    let file = session_file();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&file, format!("port={port}\nkernel={}\n", kernel.display()))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let by_hand = attach_args(kernel, port)
        .iter()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a.clone() })
        .collect::<Vec<_>>()
        .join(" ");
    println!("QEMU is halted before the firmware's first instruction; its gdb stub listens on 127.0.0.1:{port}.");
    println!("In a second terminal, in this directory, run:");
    println!();
    println!("    cargo xtask gdb");
    println!();
    println!("which runs: gdb {by_hand}");
    println!("Then for example: break e1000::E1000::transmit_with, continue, bt, info locals.");
    println!();
    Ok(())
}

/// `cargo xtask gdb [GDB ARGS…]`: gdb with the kernel's symbols, attached to the QEMU that
/// `cargo xtask run --gdb` started. Extra arguments go to gdb (for example `-batch -ex …`).
pub fn run(extra: &[String]) -> Result<ExitCode, String> {
    crate::setup::ensure(&[crate::setup::Need::Gdb])?;
    let file = session_file();
    let text = std::fs::read_to_string(&file).map_err(|_| {
        format!("no QEMU waits for gdb ({} is missing): start `cargo xtask run --gdb` first", file.display())
    })?;
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key).map(str::to_string));
    let port: u16 = field("port=").and_then(|p| p.parse().ok()).ok_or(format!("{} has no port", file.display()))?;
    let kernel = PathBuf::from(field("kernel=").ok_or(format!("{} names no kernel", file.display()))?);
    if std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_err() {
        return Err(format!(
            "nothing listens on 127.0.0.1:{port}: the QEMU of `cargo xtask run --gdb` has ended; start it again"
        ));
    }
    let status = Command::new("gdb")
        .args(attach_args(&kernel, port))
        .args(extra)
        .status()
        .map_err(|e| format!("cannot run gdb: {e}"))?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What a batch gdb run that stops at a breakpoint printed.
pub struct BatchStop {
    /// gdb's standard output and error.
    pub transcript: String,
}

/// Runs gdb in batch mode against the stub on `port`: loads `symbols`, sets a breakpoint on
/// `function`, continues, and prints the backtrace and the frame where it stopped. Succeeds
/// only if gdb reports stopping at that breakpoint inside `function`; the stop must come within
/// `limit`.
pub fn break_and_stop(
    symbols: &Path,
    port: u16,
    function: &str,
    commands: &[&str],
    limit: Duration,
) -> Result<BatchStop, String> {
    let mut args = attach_args(symbols, port);
    args.insert(0, "-nx".into());
    args.insert(0, "-batch".into());
    let commands_after_stop = commands.iter().map(|c| c.to_string());
    for command in [
        format!("break {function}"),
        // Without a breakpoint (no symbols), `continue` would run the kernel until the limit.
        "python if not gdb.breakpoints(): gdb.execute('kill'); gdb.execute('quit 1')".into(),
        "continue".into(),
        "bt 3".into(),
    ]
    .into_iter()
    .chain(commands_after_stop)
    .chain(["kill".to_string()])
    {
        args.push("-ex".into());
        args.push(command);
    }
    let mut child = Command::new("gdb")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run gdb: {e}"))?;
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let transcript = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    // gdb prints "Breakpoint 1, <function> (args) at file:line" when the breakpoint is hit
    // ("Breakpoint 1.3, …" for the third of several locations, one per instantiation).
    let short = function.rsplit("::").next().unwrap_or(function);
    let stopped = transcript.lines().any(|l| {
        l.strip_prefix("Breakpoint 1").and_then(|rest| rest.split_once(", ")).is_some_and(|(location, what)| {
            location.chars().all(|c| c == '.' || c.is_ascii_digit()) && what.contains(&format!("::{short}"))
        })
    });
    if stopped { Ok(BatchStop { transcript }) } else { Err(format!("gdb did not stop in {function}:\n{transcript}")) }
}
