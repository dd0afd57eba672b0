//! The serial console: COM1, a 16550 UART at I/O port 0x3F8.
//!
//! Output goes through `uart_16550`, behind a spin lock so lines from different contexts do not
//! interleave mid-character. Input is polled: [`try_read_byte`] checks the Line Status Register's
//! Data Ready bit (16550 datasheet, LSR bit 0) and never blocks, so the shell can poll it.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::{Mutex, Once};
use uart_16550::SerialPort;
use x86_64::instructions::port::Port;

/// I/O port base of COM1.
const COM1: u16 = 0x3F8;

static PORT: Mutex<Option<SerialPort>> = Mutex::new(None);

/// Where output is mirrored: the framebuffer console registers itself ([`set_mirror`]).
static MIRROR: Once<fn(&str)> = Once::new();

/// Set once a panic or fatal exception starts its report: from then on output must not wait
/// for locks the crashed code may hold.
static CRASHING: AtomicBool = AtomicBool::new(false);

/// Marks the kernel as crashing (see [`crashing`]).
pub fn begin_crash_report() {
    CRASHING.store(true, Ordering::SeqCst);
}

/// Whether a crash report is being printed.
pub fn crashing() -> bool {
    CRASHING.load(Ordering::Relaxed)
}

/// Mirrors everything written from now on to `mirror` as well (the framebuffer console, which
/// lives in a layer above and so is not called by name). The first registration wins.
pub fn set_mirror(mirror: fn(&str)) {
    MIRROR.call_once(|| mirror);
}

/// Programs the UART: 115200 baud, 8N1, FIFOs on, no interrupts.
///
/// Unlike `uart_16550`'s own `init`, this does not clear the receive FIFO: input that arrived
/// while the kernel was booting (for example commands piped in by `cargo xtask run`) would be
/// lost. Writing FCR with only the enable and trigger bits leaves an enabled FIFO's contents
/// alone (16550D datasheet, FIFO Control Register: bits 1 and 2 clear the FIFOs).
pub fn init() {
    let reg = |offset: u16| Port::<u8>::new(COM1 + offset);
    // SAFETY: 0x3F8..0x3FF is COM1 on every PC and QEMU machine we support; the bootloader has
    // stopped using it, and nothing else in the kernel touches these ports.
    unsafe {
        reg(1).write(0x00); // IER: no interrupts
        reg(3).write(0x80); // LCR: DLAB on, to reach the divisor latch
        reg(0).write(0x01); // DLL: divisor 1 = 115200 baud
        reg(1).write(0x00); // DLM
        reg(3).write(0x03); // LCR: 8 data bits, no parity, 1 stop bit, DLAB off
        reg(2).write(0xC1); // FCR: FIFOs on, receive trigger at 14 bytes, no clearing
        reg(4).write(0x03); // MCR: DTR and RTS
    }
    // SAFETY: as above; `SerialPort::new` touches no port, and we do not call its `init`.
    let port = unsafe { SerialPort::new(COM1) };
    *PORT.lock() = Some(port);
}

/// Writes formatted text to the serial port and mirrors it (see [`set_mirror`]).
pub fn write_fmt(args: fmt::Arguments) {
    struct Both<'a>(&'a mut SerialPort);
    impl fmt::Write for Both<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.write_str(s)?;
            if let Some(mirror) = MIRROR.get() {
                mirror(s);
            }
            Ok(())
        }
    }
    x86_64::instructions::interrupts::without_interrupts(|| {
        // A crash report must get out even when the crash came while this lock was held (a
        // panic inside a `println!`, a fault in the UART code): one CPU, interrupts off, so the
        // holder will never run again. Then write through a port of our own.
        if crashing() {
            if let Some(mut port) = PORT.try_lock() {
                if let Some(port) = port.as_mut() {
                    let _ = Both(port).write_fmt(args);
                }
                return;
            }
            // SAFETY: COM1 as in `init`; the lock's holder is the interrupted code, which will
            // not run again, so no one else writes to the UART while we do.
            let mut port = unsafe { SerialPort::new(COM1) };
            let _ = Both(&mut port).write_fmt(args);
            return;
        }
        if let Some(port) = PORT.lock().as_mut() {
            let _ = Both(port).write_fmt(args);
        }
    });
}

/// Returns the next byte received on COM1, if one is waiting.
pub fn try_read_byte() -> Option<u8> {
    let mut line_status: Port<u8> = Port::new(COM1 + 5);
    let mut data: Port<u8> = Port::new(COM1);
    // SAFETY: reading the LSR and RBR of COM1 has no side effect beyond consuming the received
    // byte, which is exactly what we want; the port lock is not needed for reads of the receiver.
    unsafe { if line_status.read() & 1 != 0 { Some(data.read()) } else { None } }
}

/// Like `print!`, to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::arch::serial::write_fmt(format_args!($($arg)*)) };
}

/// Like `println!`, to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::arch::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
