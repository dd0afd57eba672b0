//! The serial shell: one line in, one command run.
//!
//! Input comes from the serial console, polled, so the shell works the same on a terminal and
//! with piped input (`printf 'lspci\nexit\n' | cargo xtask run`). Backspace edits the line;
//! characters are echoed so a person at a terminal sees what they type.
//!
//! Besides its own few commands, the shell runs whatever the layers below registered in
//! [`crate::registry::commands`] (the network's `ping`, the disks' `disk`, the test runner's
//! `ktest`, …), and between keys the idle work registered there (the network poll).

use crate::mm::memory;
use crate::registry::commands::{self, Command};
use crate::registry::scheme;
use crate::{print, println};
use alloc::string::String;
use alloc::vec::Vec;

/// The prompt. xtask waits for it before it types.
pub const PROMPT: &str = "kernel> ";

/// The shell's own commands; `help` lists them before the registered ones.
static COMMANDS: &[Command] = &[
    Command { name: "help", usage: "help", about: "list commands", run: help },
    Command { name: "lspci", usage: "lspci", about: "list PCI functions with their BARs", run: lspci },
    Command { name: "cat", usage: "cat NAME", about: "print a view (see `ls`)", run: cat },
    Command { name: "ls", usage: "ls", about: "list the views `cat` can print", run: ls },
    Command { name: "meminfo", usage: "meminfo", about: "physical memory and heap usage", run: meminfo },
    Command {
        name: "dump",
        usage: "dump acpi | dump pci",
        about: "hex dump of ACPI tables or PCI config spaces (test fixtures)",
        run: dump,
    },
    Command { name: "exit", usage: "exit", about: "power off (QEMU exits with status 0)", run: exit },
];

/// Reads and runs commands forever.
pub fn run() -> ! {
    let mut line = String::new();
    print!("{PROMPT}");
    loop {
        let Some(byte) = crate::ui::console::try_read_byte() else {
            commands::run_idle();
            // Nothing typed: halt until an interrupt or for 2 ms (the network poll interval),
            // so an idle kernel does not keep a host CPU busy. The serial port and the keyboard
            // are polled, so a key waits at most that long.
            crate::arch::time::rest(2_000);
            continue;
        };
        match byte {
            b'\r' | b'\n' => {
                println!();
                execute(&line);
                line.clear();
                print!("{PROMPT}");
            }
            // Backspace or DEL: erase one character on screen too.
            0x08 | 0x7f => {
                if line.pop().is_some() {
                    print!("\x08 \x08");
                }
            }
            b if (b.is_ascii_graphic() || b == b' ') && line.len() < 256 => {
                line.push(b as char);
                print!("{}", b as char);
            }
            _ => {} // ignore other control bytes (escape sequences, NUL)
        }
    }
}

/// Runs one command line.
pub fn execute(line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&name, args)) = words.split_first() else { return };
    match COMMANDS.iter().find(|c| c.name == name).or_else(|| commands::find(name)) {
        Some(command) => (command.run)(args),
        None => println!("unknown command `{name}`; `help` lists commands"),
    }
}

fn help(_: &[&str]) {
    for c in COMMANDS.iter().chain(commands::all()) {
        println!("  {:<48} {}", c.usage, c.about);
    }
}

fn lspci(_: &[&str]) {
    print!("{}", crate::platform::pci::lspci_text());
}

fn cat(args: &[&str]) {
    let [name] = args else {
        println!("usage: cat NAME (`ls` lists names)");
        return;
    };
    match scheme::read(name) {
        Some(text) => print!("{text}"),
        None => println!("cat: no view named `{name}`; `ls` lists them"),
    }
}

fn ls(_: &[&str]) {
    for (name, about) in scheme::list() {
        println!("  {name:<16} {about}");
    }
}

fn meminfo(_: &[&str]) {
    let s = memory::frame_stats();
    let mib = |frames: usize| frames as u64 * 4096 / (1024 * 1024);
    println!("physical memory: {} MiB usable, {} MiB free", mib(s.total_frames), mib(s.free_frames));
    println!("  free below 4 GiB: {} MiB", mib(s.free_frames_below_4g));
    println!("  free ranges: {}, largest free run: {} MiB", s.free_ranges, mib(s.largest_free_run));
    if let Some((start, end)) = memory::heap_range() {
        let (used, free) = crate::mm::heap_usage();
        println!("heap: {:#x}..{:#x} ({} KiB used, {} KiB free)", start, end, used / 1024, free / 1024);
    }
}

fn exit(_: &[&str]) {
    println!("powering off");
    let acpi = crate::firmware::acpi::info();
    crate::arch::exit::power_off(acpi.pm1a_control_port, acpi.pm_timer_port)
}

/// Prints `bytes` as a fixture block: a `== kind name address length` header, 32 bytes of hex
/// per line, then `== end`. `cargo xtask fixtures` turns these into the host tests' fixtures.
fn hex_block(kind: &str, name: &str, address: u64, bytes: &[u8]) {
    println!("== {kind} {name} {address:#x} {}", bytes.len());
    for chunk in bytes.chunks(32) {
        let mut line = String::with_capacity(96);
        for b in chunk {
            line.push_str(&alloc::format!("{b:02x}"));
        }
        println!("{line}");
    }
    println!("== end");
}

fn dump(args: &[&str]) {
    use crate::firmware::acpi::tables::PhysBytes;
    match args {
        ["acpi"] => {
            let info = crate::firmware::acpi::info();
            let Some(mem) = crate::firmware::acpi::direct_map() else { return };
            let inv = &info.inventory;
            let rsdp_len = if inv.revision >= 2 { 36 } else { 20 };
            if let Some(bytes) = mem.read(inv.rsdp, rsdp_len) {
                hex_block("acpi", "RSDP", inv.rsdp, bytes);
            }
            if let Some(root) = inv.root
                && let Some(header) = mem.read(root, 8)
            {
                let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
                if let Some(bytes) = mem.read(root, len) {
                    hex_block("acpi", if inv.revision >= 2 { "XSDT" } else { "RSDT" }, root, bytes);
                }
            }
            for t in &inv.tables {
                if let Some(bytes) = mem.read(t.address, t.length as usize) {
                    hex_block("acpi", t.name(), t.address, bytes);
                }
            }
        }
        ["pci"] => {
            let access = crate::platform::pci::access();
            for f in crate::platform::pci::functions() {
                let mut bytes = Vec::with_capacity(4096);
                for offset in (0..4096u16).step_by(4) {
                    // SAFETY: reads of configuration space have no side effects on these devices.
                    bytes.extend_from_slice(&unsafe { access.read(f.address, offset) }.to_le_bytes());
                }
                let sizes: Vec<String> =
                    f.bars.iter().map(|b| alloc::format!("bar{}={:#x}", b.slot, b.bar.size())).collect();
                let name = alloc::format!("{}[{}]", pci::Bdf(f.address), sizes.join(","));
                hex_block("pci", &name, 0, &bytes);
            }
        }
        _ => println!("usage: dump acpi | dump pci"),
    }
}
