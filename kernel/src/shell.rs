//! The serial shell: one line in, one command run.
//!
//! Input comes from the serial console, polled, so the shell works the same on a terminal and
//! with piped input (`printf 'lspci\nexit\n' | cargo xtask run`). Backspace edits the line;
//! characters are echoed so a person at a terminal sees what they type.

use crate::{memory, print, println, scheme};
use alloc::string::String;
use alloc::vec::Vec;

/// The prompt. xtask waits for it before it types.
pub const PROMPT: &str = "kernel> ";

struct Command {
    name: &'static str,
    usage: &'static str,
    about: &'static str,
    run: fn(&[&str]),
}

static COMMANDS: &[Command] = &[
    Command { name: "help", usage: "help", about: "list commands", run: help },
    Command { name: "lspci", usage: "lspci", about: "list PCI functions with their BARs", run: lspci },
    Command { name: "cat", usage: "cat NAME", about: "print a view (see `ls`)", run: cat },
    Command { name: "ls", usage: "ls", about: "list the views `cat` can print", run: ls },
    Command { name: "meminfo", usage: "meminfo", about: "physical memory and heap usage", run: meminfo },
    Command {
        name: "ktest",
        usage: "ktest [--from N] [FILTER] | ktest --demo-failures",
        about: "run the in-kernel tests",
        run: ktest,
    },
    Command { name: "exit", usage: "exit", about: "power off (QEMU exits with status 0)", run: exit },
];

/// Reads and runs commands forever.
pub fn run() -> ! {
    let mut line = String::new();
    print!("{PROMPT}");
    loop {
        let Some(byte) = crate::serial::try_read_byte() else {
            core::hint::spin_loop();
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
            b if b.is_ascii_graphic() || b == b' ' => {
                if line.len() < 256 {
                    line.push(b as char);
                    print!("{}", b as char);
                }
            }
            _ => {} // ignore other control bytes (escape sequences, NUL)
        }
    }
}

/// Runs one command line.
pub fn execute(line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&name, args)) = words.split_first() else { return };
    match COMMANDS.iter().find(|c| c.name == name) {
        Some(command) => (command.run)(args),
        None => println!("unknown command `{name}`; `help` lists commands"),
    }
}

fn help(_: &[&str]) {
    for c in COMMANDS {
        println!("  {:<48} {}", c.usage, c.about);
    }
}

fn lspci(_: &[&str]) {
    print!("{}", crate::pci::lspci_text());
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
        let (used, free) = crate::heap_usage();
        println!("heap: {:#x}..{:#x} ({} KiB used, {} KiB free)", start, end, used / 1024, free / 1024);
    }
}

fn ktest(args: &[&str]) {
    let mut from = 0;
    let mut filter = "";
    let mut demo = false;
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        match arg {
            "--from" => match it.next().and_then(|n| n.parse().ok()) {
                Some(n) => from = n,
                None => {
                    println!("ktest: --from needs a number");
                    return;
                }
            },
            "--demo-failures" => demo = true,
            f => filter = f,
        }
    }
    crate::ktest::run(from, filter, demo);
}

fn exit(_: &[&str]) {
    println!("powering off");
    let acpi = crate::acpi::info();
    crate::exit::power_off(acpi.pm1a_control_port, acpi.pm_timer_port)
}
