//! The console a person sees: text on the boot framebuffer, input from a PS/2 keyboard, both
//! mirrored with the serial port (issue 7: most PCs have no serial port a user can see).
//!
//! * **Output.** Everything printed goes to COM1 first; [`crate::arch::serial::write_fmt`] then
//!   hands each piece to [`write_str`] (the mirror [`init`] registers with the serial port), which
//!   draws it on the framebuffer ([`screen`], with the font in [`font`]). `fbcon off` stops the drawing (the text is still kept, so `fbcon on` shows the
//!   current screen).
//! * **Input.** [`try_read_byte`] returns serial input first, then keys from a PS/2 keyboard
//!   ([`keyboard`], polled). USB keyboards appear as PS/2 ones on most PCs through the
//!   firmware's legacy emulation.
//!
//! # Rules of use
//!
//! [`write_str`] runs inside the serial lock with interrupts off, for every line of every log. So
//! it never prints or logs, never takes the serial lock, never waits for a lock (it skips drawing
//! if the screen is busy — only possible if a fault interrupted a draw) and does work in
//! proportion to the text. Everything else that takes the screen lock does so with interrupts
//! off, so an interrupt handler that prints cannot find it held.

/// The 8x16 bitmap font the console draws with.
pub mod font;
pub mod keyboard;
pub mod screen;

use bootloader_api::info::{FrameBuffer, FrameBufferInfo};
use core::sync::atomic::{AtomicBool, Ordering};
use screen::{TextScreen, UnusableFramebuffer};
use spin::{Mutex, MutexGuard, Once};

/// Shadow cells for the largest screen we fill: 480×135 characters is 3840×2160 pixels (4K UHD).
/// A larger screen uses its top-left part.
const MAX_CELLS: usize = 65_536;

static CELL_STORAGE: Mutex<[u8; MAX_CELLS]> = Mutex::new([0; MAX_CELLS]);
static SCREEN: Mutex<Option<TextScreen<'static>>> = Mutex::new(None);
static KEYBOARD: Mutex<Option<keyboard::Controller>> = Mutex::new(None);
/// The cursor is drawn (so the idle path need not take the screen lock again).
static CURSOR_SHOWN: AtomicBool = AtomicBool::new(false);
static FRAMEBUFFER_STATE: Once<FramebufferState> = Once::new();
static KEYBOARD_STATE: Once<KeyboardState> = Once::new();

/// What became of the boot framebuffer.
#[derive(Clone, Copy, Debug)]
pub enum FramebufferState {
    /// The bootloader passed none (no GOP / VBE mode, or a headless machine).
    Absent,
    /// It exists but text cannot be drawn on it.
    Unusable {
        /// The framebuffer the bootloader described.
        info: FrameBufferInfo,
        /// Why it cannot be drawn on.
        why: UnusableFramebuffer,
    },
    /// Text is drawn on it in a grid of `columns` × `rows` cells.
    Text {
        /// The framebuffer the bootloader described.
        info: FrameBufferInfo,
        /// Characters per line.
        columns: usize,
        /// Lines on the screen.
        rows: usize,
    },
}

/// Whether keys are read from a PS/2 keyboard.
#[derive(Clone, Copy, Debug)]
pub enum KeyboardState {
    /// An i8042 answered; its configuration byte as the firmware left it.
    Present {
        /// The i8042's configuration byte as the firmware left it.
        firmware_config: u8,
    },
    /// No keyboard input, and why.
    Absent(keyboard::NoKeyboard),
}

/// Takes over the boot framebuffer (if any) for text output and looks for a PS/2 keyboard.
/// Logs one line about each. Called once, early in boot; later calls change nothing.
pub fn init(framebuffer: Option<&'static mut FrameBuffer>) {
    crate::arch::serial::set_mirror(write_str);
    let framebuffer_state = *FRAMEBUFFER_STATE.call_once(|| take_framebuffer(framebuffer));
    match framebuffer_state {
        FramebufferState::Absent => {
            log::warn!("console: no framebuffer from the bootloader; output on the serial port only")
        }
        FramebufferState::Unusable { info, why } => log::warn!(
            "console: framebuffer {}x{} ({:?}, {} bytes/pixel) unusable: {why}; output on the serial port only",
            info.width,
            info.height,
            info.pixel_format,
            info.bytes_per_pixel
        ),
        FramebufferState::Text { info, columns, rows } => log::info!(
            "console: framebuffer {}x{} ({:?}, {} bytes/pixel, stride {}): {columns}x{rows} text",
            info.width,
            info.height,
            info.pixel_format,
            info.bytes_per_pixel,
            info.stride
        ),
    }
    let keyboard_state = *KEYBOARD_STATE.call_once(|| match keyboard::Controller::probe() {
        Ok(controller) => {
            let firmware_config = controller.firmware_config;
            *KEYBOARD.lock() = Some(controller);
            KeyboardState::Present { firmware_config }
        }
        Err(why) => KeyboardState::Absent(why),
    });
    match keyboard_state {
        KeyboardState::Present { .. } => log::info!("console: PS/2 keyboard controller found; keys are shell input"),
        KeyboardState::Absent(why) => log::warn!("console: {why}; keyboard input off (serial input only)"),
    }
}

/// Sets up the text screen; must not print (see the module rules), so it only returns a state.
fn take_framebuffer(framebuffer: Option<&'static mut FrameBuffer>) -> FramebufferState {
    let Some(framebuffer) = framebuffer else { return FramebufferState::Absent };
    let info = framebuffer.info();
    // The storage is taken once, for the kernel's life; `call_once` makes a second try impossible,
    // and `try_lock` would refuse one anyway.
    let Some(cells) = CELL_STORAGE.try_lock() else {
        return FramebufferState::Unusable { info, why: UnusableFramebuffer::NoCellStorage };
    };
    let cells: &'static mut [u8; MAX_CELLS] = MutexGuard::leak(cells);
    match TextScreen::new(framebuffer.buffer_mut(), info, cells) {
        Ok(mut screen) => {
            // The boot's first line was printed before the screen existed.
            screen.write_str(concat!("dma-kernel ", env!("CARGO_PKG_VERSION"), " booting\n"));
            let (columns, rows) = (screen.columns(), screen.rows());
            x86_64::instructions::interrupts::without_interrupts(|| *SCREEN.lock() = Some(screen));
            FramebufferState::Text { info, columns, rows }
        }
        Err(why) => FramebufferState::Unusable { info, why },
    }
}

/// Draws `text` on the framebuffer console (nothing without one, or while `fbcon off`).
pub fn write_str(text: &str) {
    if let Some(mut screen) = SCREEN.try_lock()
        && let Some(screen) = screen.as_mut()
    {
        screen.write_str(text);
        CURSOR_SHOWN.store(false, Ordering::Relaxed);
    }
}

/// The next input byte: serial first, then the keyboard. When there is none, the console is
/// idle, and the framebuffer shows the cursor.
pub fn try_read_byte() -> Option<u8> {
    if let Some(byte) = crate::arch::serial::try_read_byte() {
        return Some(byte);
    }
    if let Some(mut keyboard) = KEYBOARD.try_lock()
        && let Some(byte) = keyboard.as_mut().and_then(keyboard::Controller::poll)
    {
        return Some(byte);
    }
    if !CURSOR_SHOWN.load(Ordering::Relaxed) {
        with_screen(|screen| screen.set_cursor_visible(true));
        CURSOR_SHOWN.store(true, Ordering::Relaxed);
    }
    None
}

/// Runs `f` on the text screen with interrupts off; `None` without one.
fn with_screen<R>(f: impl FnOnce(&mut TextScreen<'static>) -> R) -> Option<R> {
    x86_64::instructions::interrupts::without_interrupts(|| SCREEN.lock().as_mut().map(f))
}

/// Turns drawing on the framebuffer on or off (`fbcon on|off`). Returns false if there is no
/// text screen to turn on or off.
pub fn set_framebuffer_output(on: bool) -> bool {
    with_screen(|screen| screen.set_drawing(on)).is_some()
}

/// Whether text is being drawn on the framebuffer now.
pub fn framebuffer_output_on() -> bool {
    with_screen(|screen| screen.is_drawing()).unwrap_or(false)
}

/// What became of the framebuffer (`Absent` before [`init`]).
pub fn framebuffer_state() -> FramebufferState {
    FRAMEBUFFER_STATE.get().copied().unwrap_or(FramebufferState::Absent)
}

/// Whether there is a keyboard (`None` before [`init`]).
pub fn keyboard_state() -> Option<KeyboardState> {
    KEYBOARD_STATE.get().copied()
}

#[cfg(test)]
mod tests;
