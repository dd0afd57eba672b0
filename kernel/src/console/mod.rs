//! The console a person sees: text on the boot framebuffer, input from a PS/2 keyboard, mirrored
//! with the serial port (issue 7; the framebuffer and keyboard parts are under construction).

use bootloader_api::info::FrameBuffer;

/// Takes over the boot framebuffer (if any) for text output.
pub fn init(_framebuffer: Option<&'static mut FrameBuffer>) {}

/// Draws `text` on the framebuffer console (no-op without one).
pub fn write_str(_text: &str) {}

/// The next input byte: serial first, then the keyboard.
pub fn try_read_byte() -> Option<u8> {
    crate::serial::try_read_byte()
}
