//! Starting QEMU with the machine this kernel is written for, interactively or under a test.
//!
//! The machine: q35 (ICH9: AHCI at 00:1f.2, ISA bridge at 00:1f.0), 512 MiB, an Intel VT-d unit
//! (unless `--no-iommu`), an e1000 on user networking, the boot disk and a scratch disk on the
//! AHCI controller, COM1 on stdio and the `isa-debug-exit` device through which the kernel
//! reports test results.

use crate::build::{self, Profile};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// isa-debug-exit status for `QemuExitCode::Success` (0x10 << 1 | 1).
pub const EXIT_SUCCESS: i32 = 33;
/// isa-debug-exit status for `QemuExitCode::Failed` (0x11 << 1 | 1).
pub const EXIT_FAILED: i32 = 35;

/// Firmware a configuration boots through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// One QEMU machine configuration.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Short name for logs, e.g. "bios-vtd".
    pub name: String,
    pub firmware: Firmware,
    pub iommu: bool,
    /// With `iommu`: the unit offers interrupt remapping (`intremap=on`, ECAP.IR). Off only to
    /// measure what remapping costs (`cargo xtask bench ir`).
    pub interrupt_remapping: bool,
    /// With `iommu`: QEMU's `caching-mode` (CAP.CM, §6.1). On (the default) the unit may cache
    /// not-present entries, so every map needs an invalidation; off, as most real units.
    pub caching_mode: bool,
    pub kvm: bool,
    pub memory_mib: u32,
    /// Network arguments replacing the default (`-netdev user` + an e1000). Each is one argv
    /// element, e.g. `["-netdev", "socket,id=n0,udp=127.0.0.1:5555,localaddr=127.0.0.1:5556",
    /// "-device", "e1000,netdev=n0"]`. `None` keeps the default.
    pub network: Option<Vec<String>>,
    /// Raw disk images for AHCI ports 1, 2, … (port 0 holds the boot disk). Empty means one
    /// 64 MiB scratch disk created by xtask.
    pub disks: Vec<PathBuf>,
    /// Anything else to append to the QEMU command line.
    pub extra_args: Vec<String>,
    /// A QEMU other than the system's `qemu-system-x86_64` (`None`: the system's, Debian 12's
    /// 7.2, which every configuration but one runs; see `recording_qemu`).
    pub qemu: Option<crate::recording_qemu::Qemu>,
}

impl MachineConfig {
    /// The default machine with VT-d, BIOS boot.
    pub fn standard() -> Self {
        MachineConfig {
            name: "bios-vtd".into(),
            firmware: Firmware::Bios,
            iommu: true,
            interrupt_remapping: true,
            caching_mode: true,
            kvm: false,
            memory_mib: 512,
            network: None,
            disks: Vec::new(),
            // A DMA probe for the IOMMU tests: an 82574 (e1000e) that no driver claims.
            extra_args: ["-netdev", "user,id=probe", "-device", "e1000e,netdev=probe"].map(String::from).to_vec(),
            qemu: None,
        }
    }
}

/// Options of `cargo xtask run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub profile: Profile,
    pub machine: MachineConfig,
    pub timeout: Option<Duration>,
    /// Start halted, with QEMU's gdb stub listening on 127.0.0.1.
    pub gdb: bool,
}

impl RunOptions {
    /// Parses `run`'s flags.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut opts =
            RunOptions { profile: Profile::Debug, machine: MachineConfig::standard(), timeout: None, gdb: false };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--release" => opts.profile = Profile::Release,
                "--uefi" => opts.machine.firmware = Firmware::Uefi,
                "--no-iommu" => opts.machine.iommu = false,
                "--kvm" => opts.machine.kvm = true,
                "--gdb" => opts.gdb = true,
                "--timeout" => {
                    let secs = it.next().and_then(|s| s.parse().ok()).ok_or("--timeout needs a number of seconds")?;
                    opts.timeout = Some(Duration::from_secs(secs));
                }
                other => return Err(format!("unknown option `{other}` for run (see `cargo xtask help`)")),
            }
        }
        Ok(opts)
    }
}

/// Makes sure QEMU and OVMF are installed (installing them on Debian and Ubuntu).
pub fn check_qemu() -> Result<(), String> {
    crate::setup::ensure(&[crate::setup::Need::Qemu, crate::setup::Need::Ovmf])
}

/// OVMF firmware code and a writable copy of its variable store.
/// `check_qemu`, which every QEMU command line starts with, has made sure OVMF is installed.
fn ovmf(work: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (code, vars) = crate::setup::ovmf_files().ok_or("OVMF (UEFI firmware) not found")?;
    let vars_copy = work.join("ovmf-vars.fd");
    std::fs::copy(vars, &vars_copy).map_err(|e| format!("cannot copy {vars}: {e}"))?;
    Ok((PathBuf::from(code), vars_copy))
}

/// A raw disk image of `size` bytes, created if missing.
pub fn scratch_disk(path: &Path, size: u64) -> Result<(), String> {
    if std::fs::metadata(path).map(|m| m.len() == size).unwrap_or(false) {
        return Ok(());
    }
    let file = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.set_len(size).map_err(|e| format!("cannot size {}: {e}", path.display()))
}

/// The QEMU command line for `machine` booting `images`.
pub fn command(machine: &MachineConfig, images: &boot::DiskImages, work: &Path) -> Result<Command, String> {
    check_qemu()?;
    std::fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let disks = if machine.disks.is_empty() {
        let disk = work.join("scratch-disk.img");
        scratch_disk(&disk, 64 << 20)?;
        vec![disk]
    } else {
        machine.disks.clone()
    };

    let mut cmd = match &machine.qemu {
        Some(qemu) => qemu.command(),
        None => Command::new("qemu-system-x86_64"),
    };
    let accel = if machine.kvm { "kvm" } else { "tcg" };
    // Interrupt remapping (intremap=on) needs the IOAPIC emulated in QEMU, not in KVM.
    let machine_arg =
        if machine.iommu { format!("q35,accel={accel},kernel-irqchip=split") } else { format!("q35,accel={accel}") };
    cmd.args(["-machine", &machine_arg, "-m", &format!("{}M", machine.memory_mib), "-smp", "1"]);
    if machine.iommu {
        // caching-mode=on: the unit may cache not-present entries, so the driver must invalidate
        // after making entries present, as on real hardware with CAP.CM=1.
        let intremap = if machine.interrupt_remapping { "on" } else { "off" };
        let cm = if machine.caching_mode { "on" } else { "off" };
        cmd.args(["-device", &format!("intel-iommu,intremap={intremap},caching-mode={cm}")]);
    }
    let boot_image = match machine.firmware {
        Firmware::Bios => &images.bios,
        Firmware::Uefi => {
            let (code, vars) = ovmf(work)?;
            cmd.args(["-drive", &format!("if=pflash,format=raw,readonly=on,file={}", code.display())]);
            cmd.args(["-drive", &format!("if=pflash,format=raw,file={}", vars.display())]);
            &images.uefi
        }
    };
    // Boot disk on AHCI port 0, scratch disk on port 1. `snapshot=on` keeps the boot image pristine.
    cmd.args(["-drive", &format!("format=raw,file={},if=none,id=boot,snapshot=on", boot_image.display())]);
    cmd.args(["-device", "ide-hd,drive=boot,bus=ide.0,bootindex=0"]);
    // q35's AHCI has six ports, ide.0 .. ide.5.
    for (i, disk) in disks.iter().enumerate().take(5) {
        cmd.args(["-drive", &format!("format=raw,file={},if=none,id=d{i}", disk.display())]);
        cmd.args(["-device", &format!("ide-hd,drive=d{i},bus=ide.{}", i + 1)]);
    }
    match &machine.network {
        Some(args) => {
            cmd.args(args);
        }
        None => {
            cmd.args(["-netdev", "user,id=n0", "-device", "e1000,netdev=n0"]);
        }
    }
    cmd.args(["-display", "none", "-serial", "stdio", "-no-reboot"]);
    cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    cmd.args(&machine.extra_args);
    Ok(cmd)
}

/// Maps QEMU's exit status to ours: 0 (ACPI power-off) and 33 (isa-debug-exit success) are
/// success; 35 is a reported failure; anything else is passed on.
pub fn exit_code(status: Option<i32>) -> ExitCode {
    match status {
        Some(0) | Some(EXIT_SUCCESS) => ExitCode::SUCCESS,
        Some(EXIT_FAILED) => ExitCode::from(1),
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(1),
    }
}

/// `cargo xtask run`.
///
/// QEMU's serial output passes through xtask, which adds `function (file:line)` after each
/// backtrace line the kernel prints. On a terminal, QEMU reads the terminal directly. When input
/// is piped (`printf 'lspci\nexit\n' | cargo xtask run`), xtask holds the input back until the
/// kernel prints its first prompt and then relays it: bytes that reach the UART while the
/// firmware and bootloader run are lost.
///
/// With `--gdb`, QEMU starts halted with its gdb stub on a free local port, and xtask prints the
/// command that attaches to it (`cargo xtask gdb`).
pub fn run_interactive(opts: RunOptions) -> Result<ExitCode, String> {
    use std::io::IsTerminal;
    check_qemu()?;
    if opts.gdb {
        crate::setup::ensure(&[crate::setup::Need::Gdb])?;
    }
    let images = build::build_images(opts.profile)?;
    let work = build::target_dir().join("qemu");
    let mut cmd = command(&opts.machine, &images, &work)?;
    if opts.gdb {
        let port = crate::gdb::free_port()?;
        cmd.args(crate::gdb::qemu_args(port));
        crate::gdb::announce(&images.kernel, port)?;
    }
    let relay = !std::io::stdin().is_terminal();
    if relay {
        cmd.stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let output = relay_output(&mut child, &images.kernel, relay);
    let status = match opts.timeout {
        None => child.wait().map_err(|e| e.to_string())?,
        Some(limit) => {
            let start = Instant::now();
            loop {
                if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                    break status;
                }
                if start.elapsed() > limit {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("QEMU still running after {}s: stopped it", limit.as_secs()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    // QEMU has exited and closed its stdout: the relay ends once it has written the last bytes.
    if let Some(output) = output {
        let _ = output.join();
    }
    Ok(exit_code(status.code()))
}

/// Copies QEMU's output to ours, symbolising backtraces; with `relay_input`, copies our input to
/// QEMU once the shell prompt has appeared. Returns the output thread, which ends with QEMU.
fn relay_output(child: &mut Child, kernel: &Path, relay_input: bool) -> Option<std::thread::JoinHandle<()>> {
    let mut qemu_out = child.stdout.take()?;
    let qemu_in = if relay_input { child.stdin.take() } else { None };
    let (prompt_tx, prompt_rx) = std::sync::mpsc::channel::<()>();
    let mut annotator = crate::symbols::StreamAnnotator::new(kernel);
    let output = std::thread::spawn(move || {
        let mut stdout = std::io::stdout();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut signalled = false;
        while let Ok(n) = qemu_out.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = stdout.write_all(&annotator.feed(&buf[..n])).and_then(|_| stdout.flush());
            if !signalled {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(8).any(|w| w == b"kernel> ") {
                    signalled = true;
                    let _ = prompt_tx.send(());
                }
            }
        }
    });
    if let Some(mut qemu_in) = qemu_in {
        std::thread::spawn(move || {
            if prompt_rx.recv().is_err() {
                return;
            }
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut qemu_in);
        });
    }
    Some(output)
}

/// What a QEMU printed: its serial console (stdout) and its own messages (stderr), merged by
/// whole lines. Two threads read the two pipes; appending each read as it came would cut a
/// serial line wherever a QEMU message landed. That happened: `ktest: [` then QEMU's
/// `vtd_process_inv_desc: invalid inv desc …` line, then `31] pci::msix_delivers_an_interrupt
/// ... ok`, and test 31's verdict was lost. So a stderr line waits until the serial output is
/// at the start of a line.
#[derive(Default)]
struct Captured {
    /// The merged output, as tests read it.
    bytes: Vec<u8>,
    /// stderr read but not yet placed: whole lines waiting for a serial line boundary, then
    /// perhaps a partial line.
    stderr_pending: Vec<u8>,
    /// QEMU closed its serial output: stderr lines no longer wait.
    serial_closed: bool,
}

impl Captured {
    fn serial(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.place_stderr();
    }

    fn stderr(&mut self, data: &[u8]) {
        self.stderr_pending.extend_from_slice(data);
        self.place_stderr();
    }

    /// Moves the whole stderr lines into the output if the serial output is at a line start.
    fn place_stderr(&mut self) {
        let at_line_start = self.bytes.is_empty() || self.bytes.ends_with(b"\n");
        if !at_line_start && !self.serial_closed {
            return;
        }
        if let Some(end) = self.stderr_pending.iter().rposition(|&b| b == b'\n') {
            if !at_line_start {
                self.bytes.push(b'\n');
            }
            self.bytes.extend(self.stderr_pending.drain(..=end));
        }
    }

    /// The serial output ended (QEMU exited): place what waits, partial line included.
    fn close_serial(&mut self) {
        self.serial_closed = true;
        if !self.stderr_pending.is_empty() && !self.stderr_pending.ends_with(b"\n") {
            self.stderr_pending.push(b'\n');
        }
        self.place_stderr();
    }
}

/// A QEMU whose serial console a test reads and types into.
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Captured>>,
    /// How much of `output` earlier `expect` calls consumed.
    cursor: usize,
    log_path: PathBuf,
    /// The kernel ELF with symbols, to name the addresses of backtraces.
    kernel: PathBuf,
}

impl Session {
    /// The QEMU process's id (benchmarks read its CPU time from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// How a wait for output ended without the awaited text.
#[derive(Debug)]
pub enum WaitError {
    /// QEMU exited, with this status.
    Exited(Option<i32>),
    /// The deadline passed.
    TimedOut,
}

impl Session {
    /// Boots `machine`; serial output is captured (and saved to `log_path` on drop).
    pub fn start(
        machine: &MachineConfig,
        images: &boot::DiskImages,
        work: &Path,
        log_path: PathBuf,
    ) -> Result<Self, String> {
        let mut child = command(machine, images, work)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let output = Arc::new(Mutex::new(Captured::default()));
        for (mut stream, is_serial) in [
            (Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>, true),
            (Box::new(child.stderr.take().expect("piped")), false),
        ] {
            let sink = Arc::clone(&output);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut captured = sink.lock().expect("output lock");
                    if is_serial { captured.serial(&buf[..n]) } else { captured.stderr(&buf[..n]) }
                }
                if is_serial {
                    sink.lock().expect("output lock").close_serial();
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Session { child, stdin, output, cursor: 0, log_path, kernel: images.kernel.clone() })
    }

    /// Everything QEMU printed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output lock").bytes).into_owned()
    }

    /// Everything QEMU printed so far, with each backtrace line followed by the function, file
    /// and line of its address.
    pub fn annotated_output(&self) -> String {
        let text = self.output();
        if !text.lines().any(|l| crate::symbols::backtrace_line(l).is_some()) {
            return text;
        }
        match crate::symbols::Symbolizer::new(&self.kernel) {
            Ok(symbols) => symbols.annotate(&text),
            Err(e) => format!("{text}\n(xtask: backtraces not symbolised: {e})\n"),
        }
    }

    /// Waits until `needle` appears after the cursor; returns the text up to and including it
    /// and moves the cursor past it.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String, WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let out = &self.output.lock().expect("output lock").bytes;
                let text = String::from_utf8_lossy(&out[self.cursor.min(out.len())..]).into_owned();
                if let Some(pos) = text.find(needle) {
                    let upto = &text[..pos + needle.len()];
                    self.cursor += upto.len();
                    return Ok(upto.to_string());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the reader threads a moment to drain the pipe, then look once more.
                std::thread::sleep(Duration::from_millis(200));
                let out = &self.output.lock().expect("output lock").bytes;
                let text = String::from_utf8_lossy(&out[self.cursor.min(out.len())..]).into_owned();
                if let Some(pos) = text.find(needle) {
                    let upto = text[..pos + needle.len()].to_string();
                    self.cursor += upto.len();
                    return Ok(upto);
                }
                return Err(WaitError::Exited(status.code()));
            }
            if Instant::now() > deadline {
                return Err(WaitError::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types a line into the serial console.
    pub fn send_line(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("QEMU's stdin is closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("cannot type into QEMU: {e}"))
    }

    /// Waits for QEMU to exit; kills it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>, WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(WaitError::TimedOut);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops QEMU.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.kill();
        self.output.lock().expect("output lock").close_serial();
        let _ = std::fs::write(&self.log_path, self.annotated_output());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qemu_message_never_lands_inside_a_serial_line() {
        let mut c = Captured::default();
        c.serial(b"ktest: [30] a ... ok\nktest: [");
        c.stderr(b"qemu-system-x86_64: vtd_process_inv_desc: invalid inv desc\nqemu-sys");
        c.serial(b"31] b ... ok\n");
        c.stderr(b"tem-x86_64: second\n");
        c.serial(b"kernel> ");
        c.stderr(b"qemu-system-x86_64: third, while the prompt waits\n");
        assert_eq!(
            String::from_utf8_lossy(&c.bytes),
            "ktest: [30] a ... ok\nktest: [31] b ... ok\nqemu-system-x86_64: vtd_process_inv_desc: invalid inv desc\n\
             qemu-system-x86_64: second\nkernel> "
        );
        c.close_serial();
        assert!(
            String::from_utf8_lossy(&c.bytes)
                .ends_with("kernel> \nqemu-system-x86_64: third, while the prompt waits\n")
        );
    }
}
