//! Console evidence checked from the host (issue 7): what a person at the machine would see and
//! type, rather than what the serial port carries.
//!
//! For BIOS and for UEFI, xtask boots the standard machine with a QEMU monitor on a Unix socket and:
//! - **types on the emulated PS/2 keyboard** (`sendkey`), never on the serial port: a command with
//!   Shift (`:`) and a Backspace correction, `cat sys:report`, must run and its output — which
//!   must name the right firmware, the framebuffer and the keyboard — appear on the serial port;
//! - **reads the screen** (`screendump`, a PPM file): every 8×16 cell must be exactly one glyph of
//!   the kernel's font (the same table, `include!`d from `kernel/src/ui/console/font.rs`) or blank, and
//!   the lines of a command's output must be there, character for character;
//! - turns the framebuffer console off and on again (`fbcon off|on`): output printed while it is
//!   off must not be drawn, and must be on the screen once it is back on.
//!
//! A third boot has no i8042 at all (`-machine i8042=off`): the kernel must say so in one line and
//! reach the shell anyway.

use crate::qemu::{Firmware, MachineConfig, Session};
use crate::test::{self, Tally};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The kernel's console font, compiled into xtask from the kernel's own source file.
#[allow(dead_code)] // xtask needs only the table and its dimensions
mod font {
    include!("../../kernel/src/ui/console/font.rs");
}

use font::{FONT, GLYPH_HEIGHT, GLYPH_WIDTH};

/// How long the monitor may take to answer a command.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a key is held down (`sendkey KEY HOLD_MS`), and the pause after its release.
const KEY_HOLD_MS: u64 = 20;
const KEY_GAP: Duration = Duration::from_millis(40);

/// Runs the console checks: BIOS and UEFI with a keyboard and a screen, then no i8042.
pub fn run(images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    println!("\n== console evidence (PS/2 keyboard, framebuffer) ==");
    for (config, firmware) in [("bios", Firmware::Bios), ("uefi", Firmware::Uefi)] {
        keyboard_and_screen(config, firmware, images, work, tally);
    }
    no_keyboard_controller(images, work, tally);
}

fn keyboard_and_screen(config: &str, firmware: Firmware, images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    let name = |check: &str| format!("console::{config}::{check}");
    let socket = work.join(format!("console-{config}.monitor"));
    let _ = std::fs::remove_file(&socket);
    let mut machine = MachineConfig { name: format!("console-{config}"), firmware, ..MachineConfig::standard() };
    machine.extra_args.extend(["-monitor".to_string(), format!("unix:{},server,nowait", socket.display())]);
    let mut session = match test::boot(&machine, images, work, "console") {
        Ok(session) => session,
        Err(why) => return tally.record(&name("boot"), Err(why)),
    };
    let mut monitor = match Monitor::connect(&socket) {
        Ok(monitor) => monitor,
        Err(why) => return tally.record(&name("monitor"), Err(why)),
    };

    // 1. Keys typed on the keyboard run a command: Shift for ':', Backspace to fix a typo. The
    //    report appears only if the shell received exactly `cat sys:report`. (The echo itself may
    //    be split by an asynchronous log line, such as the DHCP lease, so only its start is checked.)
    let expected_firmware = match firmware {
        Firmware::Bios => "firmware: legacy BIOS",
        Firmware::Uefi => "firmware: UEFI",
    };
    let report = monitor.type_text("cat sys:reporz\x08t\n").and_then(|()| {
        session.expect("kernel> ", Duration::from_secs(60)).map_err(|e| format!("no prompt after typing: {e:?}"))
    });
    tally.record(
        &name("keyboard_types_a_command"),
        report.clone().and_then(|text| {
            if text.contains("cat sys:repor") && text.contains("== dma-kernel hardware report ==") {
                Ok(())
            } else {
                Err(format!("typed `cat sys:report` on the keyboard; the serial port shows:\n{}", text.trim()))
            }
        }),
    );
    tally.record(
        &name("report_names_firmware_screen_and_keyboard"),
        report.and_then(|text| {
            let wanted = [expected_firmware, "framebuffer: ", " text, drawing on", "keyboard: PS/2", "pci devices:"];
            match wanted.iter().find(|w| !text.contains(*w)) {
                None => Ok(()),
                Some(missing) => Err(format!("report lacks `{missing}`:\n{}", text.trim())),
            }
        }),
    );

    // 2. The screen shows the console's text in the console's font.
    let typed = monitor.type_text("help\n").and_then(|()| {
        session.expect("kernel> ", Duration::from_secs(60)).map_err(|e| format!("no prompt after `help`: {e:?}"))
    });
    let dump = work.join(format!("console-{config}.ppm"));
    let screen = typed.and_then(|serial| Ok((serial, monitor.screen_text_cells(&dump)?)));
    match screen {
        Ok((serial, cells)) => {
            tally.record(&name("screen_is_made_of_font_glyphs"), check_cells_are_glyphs(&cells));
            tally.record(&name("screen_shows_the_command_output"), check_screen_shows(&cells, &serial));
        }
        Err(why) => tally.record(&name("screendump"), Err(why)),
    }

    // 3. `fbcon off` stops drawing; `fbcon on` brings back the current text.
    tally.record(&name("fbcon_off_and_on"), fbcon_off_and_on(&mut session, &mut monitor, &dump));

    let _ = session.send_line("exit");
    tally.record(
        &name("exit_powers_off"),
        match session.wait_exit(Duration::from_secs(30)) {
            Ok(Some(0)) => Ok(()),
            other => Err(format!("QEMU ended with {other:?}")),
        },
    );
    let _ = std::fs::remove_file(&socket);
}

/// While `fbcon off`, a command's output is not drawn; after `fbcon on` it is on the screen.
fn fbcon_off_and_on(session: &mut Session, monitor: &mut Monitor, dump: &Path) -> Result<(), String> {
    let off = test::command(session, "fbcon off")?;
    if !off.contains("fbcon: drawing off") {
        return Err(format!("`fbcon off` printed:\n{}", off.trim()));
    }
    let meminfo = test::command(session, "cat mem:info")?;
    let shows_meminfo = |cells: &[Vec<Option<char>>]| screen_text(cells).iter().any(|l| l.starts_with("total_frames "));
    if !meminfo.contains("total_frames ") {
        return Err(format!("`cat mem:info` printed:\n{}", meminfo.trim()));
    }
    if shows_meminfo(&monitor.screen_text_cells(dump)?) {
        return Err("output printed while `fbcon off` was drawn on the screen".into());
    }
    let on = test::command(session, "fbcon on")?;
    let cells = monitor.screen_text_cells(dump)?;
    if !on.contains("fbcon: drawing on") || !shows_meminfo(&cells) {
        return Err(format!(
            "after `fbcon on` ({}) the screen lacks the output of `cat mem:info`:\n{}",
            on.trim(),
            screen_text(&cells).join("\n")
        ));
    }
    check_cells_are_glyphs(&cells)
}

/// A machine without an i8042: one clear line, and the shell still comes up (serial input).
fn no_keyboard_controller(images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    let name = "console::bios-no-i8042::boot_reports_no_keyboard_controller";
    let mut machine = MachineConfig { name: "console-no-i8042".into(), ..MachineConfig::standard() };
    machine.extra_args.extend(["-machine", "i8042=off"].map(String::from));
    let result = test::boot(&machine, images, work, "boot").and_then(|mut session: Session| {
        let log = session.output();
        let _ = session.send_line("exit");
        let exit = session.wait_exit(Duration::from_secs(30));
        if !log.contains("no PS/2 keyboard controller") {
            return Err(format!("boot log lacks the no-controller line:\n{log}"));
        }
        match exit {
            Ok(Some(0)) => Ok(()),
            other => Err(format!("`exit` ended QEMU with {other:?}")),
        }
    });
    tally.record(name, result);
}

/// Every cell is a glyph or blank; at most one is not (the cursor's underline).
fn check_cells_are_glyphs(cells: &[Vec<Option<char>>]) -> Result<(), String> {
    let unknown: Vec<(usize, usize)> = cells
        .iter()
        .enumerate()
        .flat_map(|(row, line)| line.iter().enumerate().filter(|(_, c)| c.is_none()).map(move |(col, _)| (col, row)))
        .collect();
    let lit = cells.iter().flatten().filter(|c| matches!(c, Some(c) if *c != ' ')).count();
    if lit < 100 {
        return Err(format!("only {lit} characters on the screen"));
    }
    if unknown.len() > 1 {
        return Err(format!(
            "{} cells are not glyphs of the font (first at column/row {:?}); screen:\n{}",
            unknown.len(),
            unknown[0],
            screen_text(cells).join("\n")
        ));
    }
    Ok(())
}

/// The command line and the lines the serial port got for it are on the screen.
fn check_screen_shows(cells: &[Vec<Option<char>>], serial: &str) -> Result<(), String> {
    let screen = screen_text(cells);
    let columns = cells.first().map_or(0, Vec::len);
    // Every complete line (the last one is the new prompt, checked below) that fits on one row.
    let lines: Vec<&str> = serial.lines().collect();
    let mut expected: Vec<String> = lines[..lines.len().saturating_sub(1)]
        .iter()
        .map(|l| l.trim_end_matches('\r').trim_end().to_string())
        .filter(|l| !l.is_empty() && l.chars().count() <= columns)
        .collect();
    // The echo of the typed command follows the previous prompt on the same line.
    expected.insert(0, "kernel> help".into());
    if expected.len() < 5 {
        return Err(format!("too little output to compare:\n{serial}"));
    }
    let missing: Vec<&String> =
        expected.iter().filter(|line| !screen.iter().any(|s| s.ends_with(line.as_str()))).collect();
    let last = screen.iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_default();
    if !missing.is_empty() {
        return Err(format!(
            "{} line(s) missing, first `{}`; screen:\n{}",
            missing.len(),
            missing[0],
            screen.join("\n")
        ));
    }
    if !last.starts_with("kernel>") {
        return Err(format!("the last line on screen is `{last}`, not the prompt"));
    }
    Ok(())
}

fn screen_text(cells: &[Vec<Option<char>>]) -> Vec<String> {
    cells
        .iter()
        .map(|row| row.iter().map(|c| c.unwrap_or('\u{FFFD}')).collect::<String>().trim_end().to_string())
        .collect()
}

/// A screenshot: 8-bit RGB pixels, row-major.
struct Picture {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Picture {
    /// Reads a binary PPM (`P6`, maxval 255), as QEMU's `screendump` writes.
    fn read(path: &Path) -> Result<Picture, String> {
        let deadline = Instant::now() + MONITOR_TIMEOUT;
        let data = loop {
            match std::fs::read(path) {
                Ok(data) if !data.is_empty() => break data,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Ok(_) => return Err(format!("{} is empty", path.display())),
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        };
        let mut fields = Vec::new();
        let mut at = 0;
        while fields.len() < 4 {
            while data.get(at).is_some_and(u8::is_ascii_whitespace) {
                at += 1;
            }
            if data.get(at) == Some(&b'#') {
                while data.get(at).is_some_and(|&b| b != b'\n') {
                    at += 1;
                }
                continue;
            }
            let start = at;
            while data.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
                at += 1;
            }
            if start == at {
                return Err("truncated PPM header".into());
            }
            fields.push(String::from_utf8_lossy(&data[start..at]).into_owned());
        }
        let number = |s: &str| s.parse::<usize>().map_err(|_| format!("bad PPM header field `{s}`"));
        if fields[0] != "P6" || fields[3] != "255" {
            return Err(format!("not an 8-bit binary PPM: {fields:?}"));
        }
        let (width, height) = (number(&fields[1])?, number(&fields[2])?);
        let rgb = data.get(at + 1..).unwrap_or_default().to_vec();
        if rgb.len() < width * height * 3 {
            return Err(format!("PPM has {} bytes of pixels for {width}x{height}", rgb.len()));
        }
        println!("host: console screenshot {width}x{height} ({})", path.display());
        Ok(Picture { width, height, rgb })
    }

    /// Reads the screen as 8×16 cells from the top-left corner: `Some(c)` when the cell is exactly
    /// glyph `c` (lit pixels bright, the others black), `None` when it is not any glyph.
    fn text_cells(&self) -> Vec<Vec<Option<char>>> {
        (0..self.height / GLYPH_HEIGHT)
            .map(|row| (0..self.width / GLYPH_WIDTH).map(|column| self.cell(column, row)).collect())
            .collect()
    }

    fn cell(&self, column: usize, row: usize) -> Option<char> {
        let mut bits = [0u8; GLYPH_HEIGHT];
        for (line, bits) in bits.iter_mut().enumerate() {
            for x in 0..GLYPH_WIDTH {
                let at = ((row * GLYPH_HEIGHT + line) * self.width + column * GLYPH_WIDTH + x) * 3;
                let pixel = &self.rgb[at..at + 3];
                if pixel.iter().all(|&c| c >= 0x80) {
                    *bits |= 0x80 >> x;
                } else if pixel.iter().any(|&c| c >= 0x20) {
                    return None; // neither the text colour nor the background
                }
            }
        }
        FONT.iter().position(|glyph| *glyph == bits).map(|i| char::from(0x20 + i as u8))
    }
}

/// QEMU's human monitor on a Unix socket.
struct Monitor {
    stream: UnixStream,
}

impl Monitor {
    fn connect(path: &Path) -> Result<Monitor, String> {
        let deadline = Instant::now() + MONITOR_TIMEOUT;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("cannot connect to the QEMU monitor at {}: {e}", path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
        let mut monitor = Monitor { stream };
        monitor.read_until_prompt()?;
        Ok(monitor)
    }

    /// Runs one command and returns what the monitor answered.
    fn command(&mut self, line: &str) -> Result<String, String> {
        self.stream.write_all(format!("{line}\n").as_bytes()).map_err(|e| format!("monitor: {e}"))?;
        self.read_until_prompt()
    }

    fn read_until_prompt(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + MONITOR_TIMEOUT;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.ends_with(b"(qemu) ") {
            if Instant::now() > deadline {
                return Err(format!("the QEMU monitor did not answer: {}", String::from_utf8_lossy(&seen)));
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err("the QEMU monitor closed".into()),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("monitor: {e}")),
            }
        }
        Ok(String::from_utf8_lossy(&seen).into_owned())
    }

    /// Takes a screenshot into `path` and reads it as text cells, once the shell has gone idle
    /// (it draws the cursor then, so the screen is settled).
    fn screen_text_cells(&mut self, path: &Path) -> Result<Vec<Vec<Option<char>>>, String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_file(path);
        self.command(&format!("screendump {}", path.display()))?;
        Ok(Picture::read(path)?.text_cells())
    }

    /// Presses and releases the key for each character of `text` (US layout).
    fn type_text(&mut self, text: &str) -> Result<(), String> {
        for c in text.chars() {
            let key = qemu_key_name(c).ok_or_else(|| format!("no key for {c:?}"))?;
            self.command(&format!("sendkey {key} {KEY_HOLD_MS}"))?;
            std::thread::sleep(Duration::from_millis(KEY_HOLD_MS) + KEY_GAP);
        }
        Ok(())
    }
}

/// QEMU's `sendkey` name for the key (with Shift where needed) that types `c`.
fn qemu_key_name(c: char) -> Option<String> {
    let plain = |name: &str| Some(name.to_string());
    let shifted = |name: &str| Some(format!("shift-{name}"));
    match c {
        'a'..='z' | '0'..='9' => Some(c.to_string()),
        'A'..='Z' => shifted(&c.to_ascii_lowercase().to_string()),
        ' ' => plain("spc"),
        '\n' => plain("ret"),
        '\x08' => plain("backspace"),
        '-' => plain("minus"),
        '_' => shifted("minus"),
        '.' => plain("dot"),
        '/' => plain("slash"),
        ';' => plain("semicolon"),
        ':' => shifted("semicolon"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_map_to_qemu_key_names() {
        let keys: Vec<String> = "cat sys:X\n\x08".chars().filter_map(qemu_key_name).collect();
        assert_eq!(keys, ["c", "a", "t", "spc", "s", "y", "s", "shift-semicolon", "shift-x", "ret", "backspace"]);
        assert_eq!(qemu_key_name('€'), None);
    }

    #[test]
    fn a_rendered_cell_reads_back_as_its_glyph() {
        // Draw "Hi" as the kernel would (light grey on black) and a non-glyph cell after it.
        let (width, height) = (24, 16);
        let mut rgb = vec![0u8; width * height * 3];
        for (column, c) in "Hi".bytes().enumerate() {
            let glyph = FONT[usize::from(c - 0x20)];
            for (line, bits) in glyph.iter().enumerate() {
                for x in 0..8 {
                    if bits & (0x80 >> x) != 0 {
                        let at = (line * width + column * 8 + x) * 3;
                        rgb[at..at + 3].copy_from_slice(&[0xCC; 3]);
                    }
                }
            }
        }
        rgb[(2 * 8) * 3] = 0x55; // a dim pixel: no glyph has it
        let cells = Picture { width, height, rgb }.text_cells();
        assert_eq!(cells, [vec![Some('H'), Some('i'), None]]);
    }
}
