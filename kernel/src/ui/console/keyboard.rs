//! A PS/2 keyboard behind the i8042 keyboard controller, polled.
//!
//! # The controller
//!
//! The 8042 (IBM *PS/2 Hardware Interface Technical Reference*, "Keyboard/Auxiliary Device
//! Controller"; summarised on the OSDev wiki's "8042 PS/2 Controller" page) has two ports:
//!
//! * `0x64` read — **status**: bit 0 *output buffer full* (a byte waits at 0x60), bit 1 *input
//!   buffer full* (the controller has not taken our last write yet), bit 5 *auxiliary* (the
//!   waiting byte is from the mouse port), bits 6 and 7 timeout and parity errors.
//! * `0x64` write — **command**: 0x20 reads the configuration byte, 0x60 writes it.
//! * `0x60` — **data**: the keyboard's bytes, and command results.
//!
//! The configuration byte's bit 6 turns on *translation*: whatever scan code set the keyboard
//! speaks, the controller hands us scan code set 1 (the original IBM PC/XT codes). That is what
//! BIOSes, QEMU and the USB legacy emulation of most PCs (an SMM handler that imitates an 8042 for
//! a USB keyboard) provide, so this module decodes set 1 only and turns translation on if it finds
//! it off. Bit 4 set disables the keyboard's clock; we clear it if the firmware left it set.
//!
//! # Machines without one
//!
//! Many newer PCs (and UEFI machines with legacy emulation off) have no 8042: nothing decodes
//! ports 0x60/0x64 and reads return all ones, 0xFF. [`Controller::probe`] treats a status of 0xFF,
//! a controller that does not answer the "read configuration" command within 20 ms, and one whose
//! output buffer never empties as "no keyboard", and the console then never touches the ports
//! again. Every wait is bounded.
//!
//! # Scan code set 1
//!
//! A key press sends its *make* code; its release sends the *break* code, the make code with bit 7
//! set. Keys added with the 101-key keyboard send 0xE0 first (arrows, right Ctrl/Alt, keypad Enter
//! and `/`); Pause sends 0xE1 0x1D 0x45 0xE1 0x9D 0xC5. [`ScancodeDecoder`] tracks Shift, Ctrl
//! and Caps Lock and turns make codes into ASCII (US layout); keys without ASCII are ignored.

use x86_64::instructions::port::Port;

/// Data port: keyboard bytes and command results.
const DATA_PORT: u16 = 0x60;
/// Status (read) and command (write) port.
const STATUS_COMMAND_PORT: u16 = 0x64;

/// Status bit 0: a byte is waiting in the output buffer (read it from 0x60).
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
/// Status bit 1: the controller has not consumed our last write yet.
const STATUS_INPUT_FULL: u8 = 1 << 1;
/// Status bit 5: the waiting byte came from the auxiliary (mouse) port.
const STATUS_AUX_DATA: u8 = 1 << 5;

/// Controller command: read the configuration byte ("read byte 0 of internal RAM").
const COMMAND_READ_CONFIG: u8 = 0x20;
/// Controller command: write the configuration byte.
const COMMAND_WRITE_CONFIG: u8 = 0x60;
/// Configuration bit 4: the keyboard port's clock is disabled.
const CONFIG_KEYBOARD_CLOCK_OFF: u8 = 1 << 4;
/// Configuration bit 6: translate the keyboard's codes to scan code set 1.
const CONFIG_TRANSLATE: u8 = 1 << 6;

/// How long a controller may take to answer a command.
const COMMAND_TIMEOUT_MS: u64 = 20;
/// Bytes we read while emptying the output buffer before declaring it stuck.
const DRAIN_LIMIT: usize = 32;

/// Why there is no keyboard input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoKeyboard {
    /// The status port reads 0xFF: nothing decodes it.
    NoController,
    /// The controller did not answer "read configuration" in time.
    NotResponding,
    /// The output buffer stays full however much we read.
    OutputStuck,
}

impl core::fmt::Display for NoKeyboard {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            NoKeyboard::NoController => "no PS/2 keyboard controller (port 0x64 reads 0xFF)",
            NoKeyboard::NotResponding => "the PS/2 keyboard controller does not answer commands",
            NoKeyboard::OutputStuck => "the PS/2 keyboard controller's output buffer never empties",
        })
    }
}

/// A found i8042 with its keyboard port set up for polling.
pub struct Controller {
    decoder: ScancodeDecoder,
    /// The configuration byte the firmware left (for the hardware report).
    pub firmware_config: u8,
}

fn read_status() -> u8 {
    // SAFETY: reading the i8042 status register has no side effect; on a machine without an i8042
    // the read returns 0xFF, which `probe` checks first.
    unsafe { Port::<u8>::new(STATUS_COMMAND_PORT).read() }
}

fn read_data() -> u8 {
    // SAFETY: reading 0x60 takes the waiting byte out of the controller's output buffer, which is
    // what every caller wants; only this module uses the port.
    unsafe { Port::<u8>::new(DATA_PORT).read() }
}

/// Waits (bounded) until the controller can take a byte, then writes it to `port`.
fn write_when_ready(port: u16, byte: u8) -> bool {
    if !crate::arch::time::poll_until(COMMAND_TIMEOUT_MS * 1000, || read_status() & STATUS_INPUT_FULL == 0) {
        return false;
    }
    // SAFETY: `port` is 0x60 or 0x64 of an i8042 that `probe` found, with its input buffer empty;
    // the bytes written are documented commands and their arguments.
    unsafe { Port::<u8>::new(port).write(byte) };
    true
}

/// Waits (bounded) for a command's result byte.
fn read_result() -> Option<u8> {
    crate::arch::time::poll_until(COMMAND_TIMEOUT_MS * 1000, || read_status() & STATUS_OUTPUT_FULL != 0).then(read_data)
}

impl Controller {
    /// Looks for an i8042 and prepares its keyboard port: translation to set 1 on, clock on.
    pub fn probe() -> Result<Controller, NoKeyboard> {
        if read_status() == 0xFF {
            return Err(NoKeyboard::NoController);
        }
        // Throw away keystrokes (and mouse bytes) that arrived during boot.
        let mut drained = 0;
        while read_status() & STATUS_OUTPUT_FULL != 0 {
            if drained == DRAIN_LIMIT {
                return Err(NoKeyboard::OutputStuck);
            }
            read_data();
            drained += 1;
        }
        if !write_when_ready(STATUS_COMMAND_PORT, COMMAND_READ_CONFIG) {
            return Err(NoKeyboard::NotResponding);
        }
        let config = read_result().ok_or(NoKeyboard::NotResponding)?;
        let wanted = (config | CONFIG_TRANSLATE) & !CONFIG_KEYBOARD_CLOCK_OFF;
        if wanted != config
            && !(write_when_ready(STATUS_COMMAND_PORT, COMMAND_WRITE_CONFIG) && write_when_ready(DATA_PORT, wanted))
        {
            return Err(NoKeyboard::NotResponding);
        }
        Ok(Controller { decoder: ScancodeDecoder::new(), firmware_config: config })
    }

    /// The next typed character, if a key press is waiting. Reads at most a few bytes, so it
    /// returns quickly whatever the controller does.
    pub fn poll(&mut self) -> Option<u8> {
        for _ in 0..4 {
            let status = read_status();
            if status & STATUS_OUTPUT_FULL == 0 {
                return None;
            }
            let byte = read_data();
            if status & STATUS_AUX_DATA != 0 {
                continue; // a mouse byte
            }
            if let Some(ascii) = self.decoder.feed(byte) {
                return Some(ascii);
            }
        }
        None
    }
}

/// Scan code set 1 → ASCII (US layout), for codes 0x00..=0x58 without Shift. 0 means no ASCII.
const UNSHIFTED: [u8; 0x59] = *b"\
\0\x1b1234567890-=\x08\t\
qwertyuiop[]\n\0as\
dfghjkl;'`\0\\zxcv\
bnm,./\0*\0 \0\0\0\0\0\0\
\0\0\0\0\0\0\x00789-456+1\
230.\0\0\\\0\0";

/// The same with Shift held.
const SHIFTED: [u8; 0x59] = *b"\
\0\x1b!@#$%^&*()_+\x08\t\
QWERTYUIOP{}\n\0AS\
DFGHJKL:\"~\0|ZXCV\
BNM<>?\0*\0 \0\0\0\0\0\0\
\0\0\0\0\0\0\x00789-456+1\
230.\0\0|\0\0";

/// Make codes of the keys the decoder tracks.
mod make {
    pub const LEFT_CTRL: u8 = 0x1D;
    pub const LEFT_SHIFT: u8 = 0x2A;
    pub const RIGHT_SHIFT: u8 = 0x36;
    pub const CAPS_LOCK: u8 = 0x3A;
    /// After 0xE0: keypad Enter.
    pub const KEYPAD_ENTER: u8 = 0x1C;
    /// After 0xE0: keypad `/`.
    pub const KEYPAD_SLASH: u8 = 0x35;
}

/// Prefix of the 101-key keyboard's extra keys.
const EXTENDED_PREFIX: u8 = 0xE0;
/// Prefix of Pause's sequence (E1 1D 45 E1 9D C5: two prefixed pairs).
const PAUSE_PREFIX: u8 = 0xE1;
/// Bit 7 marks a break (release) code.
const BREAK_BIT: u8 = 0x80;

/// Turns scan code set 1 bytes into ASCII, keeping the state of the modifier keys.
#[derive(Clone, Debug, Default)]
pub struct ScancodeDecoder {
    left_shift: bool,
    right_shift: bool,
    ctrl: bool,
    caps_lock: bool,
    /// Caps Lock is held (its typematic repeats must not toggle it again).
    caps_held: bool,
    /// The previous byte was 0xE0.
    extended: bool,
    /// Bytes of a Pause sequence still to skip.
    skip: u8,
}

impl ScancodeDecoder {
    /// A decoder with no key held and Caps Lock off.
    pub const fn new() -> Self {
        ScancodeDecoder {
            left_shift: false,
            right_shift: false,
            ctrl: false,
            caps_lock: false,
            caps_held: false,
            extended: false,
            skip: 0,
        }
    }

    /// Whether Caps Lock is on.
    pub fn caps_lock(&self) -> bool {
        self.caps_lock
    }

    /// Feeds one byte from the keyboard; returns the character a key press produced. Enter gives
    /// `\n`, Backspace 0x08, Ctrl+letter the control code (0x01..=0x1A).
    pub fn feed(&mut self, byte: u8) -> Option<u8> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        match byte {
            EXTENDED_PREFIX => {
                self.extended = true;
                return None;
            }
            PAUSE_PREFIX => {
                self.skip = 2;
                return None;
            }
            _ => {}
        }
        let extended = core::mem::replace(&mut self.extended, false);
        let released = byte & BREAK_BIT != 0;
        let code = byte & !BREAK_BIT;
        if extended {
            // Right Ctrl is E0 1D; the other extended keys with ASCII are keypad Enter and `/`.
            // E0 2A / E0 36 are "fake shifts" around Print Screen and must not count as Shift.
            return match code {
                make::LEFT_CTRL => {
                    self.ctrl = !released;
                    None
                }
                make::KEYPAD_ENTER if !released => Some(b'\n'),
                make::KEYPAD_SLASH if !released => Some(b'/'),
                _ => None,
            };
        }
        match code {
            make::LEFT_SHIFT => self.left_shift = !released,
            make::RIGHT_SHIFT => self.right_shift = !released,
            make::LEFT_CTRL => self.ctrl = !released,
            make::CAPS_LOCK => {
                if !released && !self.caps_held {
                    self.caps_lock = !self.caps_lock;
                }
                self.caps_held = !released;
            }
            _ if !released => return self.translate(code),
            _ => {}
        }
        None
    }

    fn translate(&self, code: u8) -> Option<u8> {
        let shift = self.left_shift || self.right_shift;
        let plain = *UNSHIFTED.get(usize::from(code))?;
        let ascii = if plain.is_ascii_lowercase() {
            if self.ctrl {
                return Some(plain & 0x1F);
            }
            if shift != self.caps_lock { plain.to_ascii_uppercase() } else { plain }
        } else if shift {
            *SHIFTED.get(usize::from(code))?
        } else {
            plain
        };
        (ascii != 0).then_some(ascii)
    }
}
