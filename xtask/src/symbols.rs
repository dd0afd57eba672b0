//! Turning the kernel's backtraces into `function (file:line)`.
//!
//! The kernel prints bare return addresses (`kernel/src/arch/backtrace.rs`): its boot image has no
//! debug information, and a panic handler should not parse DWARF anyway. The full ELF stays
//! under `target/`, and this module reads its DWARF with the `addr2line` crate (gimli) to name
//! each address. Every line of the form `  #N 0x…` in the kernel's output gets a line after it:
//!
//! ```text
//!   #2 0xffff800000123456
//!        kernel::ktest::demo_panic (kernel/src/ktest/mod.rs:68)
//! ```
//!
//! Inlined calls are shown too, innermost first, each on its own line marked `(inlined)`.

use std::path::{Path, PathBuf};

/// Where the bootloader places the kernel's ELF address 0 (`kernel::boot::KERNEL_BASE`): the
/// kernel prints run-time addresses, the DWARF speaks of ELF addresses.
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;

/// Names addresses in one kernel ELF.
pub struct Symbolizer {
    loader: addr2line::Loader,
    /// The workspace root, stripped from file names so they read `kernel/src/…`.
    root: PathBuf,
}

impl Symbolizer {
    /// Loads `elf`'s symbol table and DWARF.
    pub fn new(elf: &Path) -> Result<Self, String> {
        let loader =
            addr2line::Loader::new(elf).map_err(|e| format!("cannot read symbols of {}: {e}", elf.display()))?;
        Ok(Symbolizer { loader, root: crate::build::workspace_root() })
    }

    /// The functions at `address`, innermost (inlined) first, each with its file and line when
    /// the DWARF knows them. Empty when the address is not in the kernel.
    pub fn describe(&self, address: u64) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(mut frames) = self.loader.find_frames(address) {
            while let Ok(Some(frame)) = frames.next() {
                let function = frame
                    .function
                    .as_ref()
                    .and_then(|f| f.demangle().ok().map(|name| strip_hash(&name).to_string()))
                    .unwrap_or_else(|| "??".to_string());
                let place = frame.location.as_ref().and_then(|l| {
                    let file = l.file?;
                    Some(format!("{}:{}", self.short_path(file), l.line.unwrap_or(0)))
                });
                out.push(match place {
                    Some(place) => format!("{function} ({place})"),
                    None => function,
                });
            }
        }
        if out.is_empty()
            && let Some(name) = self.loader.find_symbol(address)
        {
            out.push(strip_hash(&addr2line::demangle_auto(name.into(), None)).to_string());
        }
        // Every frame but the outermost was inlined into the one after it.
        let last = out.len().saturating_sub(1);
        for line in out.iter_mut().take(last) {
            line.push_str(" (inlined)");
        }
        out
    }

    /// A source path as a reader wants it: `kernel/src/…` for ours, `rust/library/…` for the
    /// standard library (whose DWARF names the rustup sysroot or `/rustc/<commit>/`).
    fn short_path(&self, file: &str) -> String {
        if let Ok(ours) = Path::new(file).strip_prefix(&self.root) {
            return ours.display().to_string();
        }
        match file.find("/library/") {
            Some(at) => format!("rust{}", &file[at..]),
            None => file.to_string(),
        }
    }

    /// `text` with each backtrace line followed by the lines naming its address.
    pub fn annotate(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            out.push_str(line);
            if let Some(names) = self.names_after(line) {
                if !line.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&names);
            }
        }
        out
    }

    /// For a backtrace line, the lines naming its address, ended as the kernel ended its own
    /// (`\r\n` or `\n`); `None` for any other line.
    fn names_after(&self, line: &str) -> Option<String> {
        let (frame, address) = backtrace_line(line)?;
        let end = if line.trim_end_matches('\n').ends_with('\r') { "\r\n" } else { "\n" };
        Some(self.describe_frame(frame, address).iter().map(|name| format!("       {name}{end}")).collect())
    }

    /// The names for one printed frame. A return address points after its call, which may be
    /// the first byte of the next function or line, so it is looked up one byte back. Frame 0
    /// of an exception is the faulting instruction itself; looking one byte back there lands in
    /// the same or the previous instruction of the same function, which names it just as well.
    fn describe_frame(&self, frame: usize, address: u64) -> Vec<String> {
        let lookup = if frame == 0 { address } else { address.saturating_sub(1) };
        let names = match lookup.checked_sub(KERNEL_BASE) {
            Some(elf_address) => self.describe(elf_address),
            None => Vec::new(),
        };
        if names.is_empty() { vec!["?? (not in the kernel image)".to_string()] } else { names }
    }
}

/// Parses a line the kernel's backtrace printer writes: `  #N 0x0123…`.
pub fn backtrace_line(line: &str) -> Option<(usize, u64)> {
    let rest = line.trim().strip_prefix('#')?;
    let (index, address) = rest.split_once(' ')?;
    let address = address.trim().strip_prefix("0x")?;
    Some((index.parse().ok()?, u64::from_str_radix(address, 16).ok()?))
}

/// Drops the `::h0123456789abcdef` hash rustc appends to legacy-mangled names.
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => head,
        _ => name,
    }
}

/// A line-by-line filter for a live stream (`cargo xtask run`): passes bytes through at once,
/// and after each complete backtrace line, writes the names for its address.
pub struct StreamAnnotator {
    symbols: Option<Symbolizer>,
    line: Vec<u8>,
}

impl StreamAnnotator {
    /// An annotator for `elf`; one that only passes bytes through when the ELF cannot be read.
    pub fn new(elf: &Path) -> Self {
        let symbols = match Symbolizer::new(elf) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("xtask: backtraces will not be symbolised: {e}");
                None
            }
        };
        StreamAnnotator { symbols, line: Vec::new() }
    }

    /// Returns what to write for `bytes`: the bytes themselves, plus names after each
    /// completed backtrace line.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        let Some(symbols) = &self.symbols else { return bytes.to_vec() };
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            out.push(b);
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line).into_owned();
                if let Some(names) = symbols.names_after(&line) {
                    out.extend_from_slice(names.as_bytes());
                }
                self.line.clear();
            } else if self.line.len() < 256 {
                self.line.push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtrace_lines_parse() {
        assert_eq!(backtrace_line("  #0 0xffff800000001234\n"), Some((0, 0xffff_8000_0000_1234)));
        assert_eq!(backtrace_line("  #12 0x0000000000201000"), Some((12, 0x20_1000)));
        assert_eq!(backtrace_line("backtrace (innermost first):"), None);
        assert_eq!(backtrace_line("  #x 0x12"), None);
        assert_eq!(backtrace_line("ktest: [3] a ... ok"), None);
    }

    #[test]
    fn legacy_hashes_are_dropped() {
        assert_eq!(strip_hash("kernel::boot::kernel_main::h0123456789abcdef"), "kernel::boot::kernel_main");
        assert_eq!(strip_hash("kernel::boot::kernel_main"), "kernel::boot::kernel_main");
        assert_eq!(strip_hash("a::hello"), "a::hello");
    }
}
