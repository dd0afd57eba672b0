//! QEMU's firmware configuration device (fw_cfg): how the test runner hands the kernel a
//! fault to inject, or a behaviour of the machine the tests must insist on, without a kernel
//! command line.
//!
//! The device is QEMU's, not a PC's: QEMU `docs/specs/fw_cfg.rst` (7.2). On x86 it answers at
//! I/O port 0x510 (selector, 16-bit, written) and 0x511 (data, read a byte at a time). Selector
//! 0x0000 returns the signature `QEMU`; selector 0x0019 returns the file directory: a big-endian
//! `u32` count, then 64-byte entries (big-endian `u32` size, big-endian `u16` selector, `u16`
//! reserved, 56-byte NUL-terminated name). `-fw_cfg name=opt/…,string=…` adds a file.
//!
//! Only test builds (feature `test-support`) compile this: the kernel on real hardware never
//! touches ports it has no reason to believe are there.

use x86_64::instructions::port::Port;

const SELECTOR_PORT: u16 = 0x510;
const DATA_PORT: u16 = 0x511;
const SIGNATURE: u16 = 0x0000;
const FILE_DIR: u16 = 0x0019;

/// Selects `item` and reads `out.len()` bytes of it.
fn read(item: u16, out: &mut [u8]) {
    let mut selector: Port<u16> = Port::new(SELECTOR_PORT);
    // SAFETY: QEMU's fw_cfg selector port (the signature is checked before any file is read);
    // writing it only chooses the item the data port reads and rewinds its cursor.
    unsafe { selector.write(item) };
    read_on(out);
}

/// Reads the next `out.len()` bytes of the selected item.
fn read_on(out: &mut [u8]) {
    let mut data: Port<u8> = Port::new(DATA_PORT);
    for byte in out.iter_mut() {
        // SAFETY: QEMU's fw_cfg data port; a read only moves fw_cfg's cursor on.
        *byte = unsafe { data.read() };
    }
}

/// Whether QEMU's fw_cfg answers.
fn present() -> bool {
    let mut signature = [0u8; 4];
    read(SIGNATURE, &mut signature);
    &signature == b"QEMU"
}

/// Copies the fw_cfg file `name` into `out`; returns its length (at most `out.len()` bytes are
/// copied), or `None` without fw_cfg or without such a file.
pub fn read_file(name: &str, out: &mut [u8]) -> Option<usize> {
    if !present() {
        return None;
    }
    let mut count = [0u8; 4];
    read(FILE_DIR, &mut count);
    let count = u32::from_be_bytes(count);
    // The directory is read in one pass: the cursor moves on from the count.
    let mut entry = [0u8; 64];
    let mut found = None;
    for _ in 0..count.min(4096) {
        read_on(&mut entry);
        let name_bytes = &entry[8..];
        let len = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len());
        if &name_bytes[..len] == name.as_bytes() && found.is_none() {
            let size = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
            let select = u16::from_be_bytes([entry[4], entry[5]]);
            found = Some((select, size));
        }
    }
    let (select, size) = found?;
    let n = size.min(out.len());
    read(select, &mut out[..n]);
    Some(size)
}

/// The fault the test runner asked for (`-fw_cfg name=opt/dma-kernel/inject,string=WHAT`), if
/// it is `what`.
pub fn fault_injected(what: &str) -> bool {
    listed("opt/dma-kernel/inject", what)
}

/// Whether the test runner said this machine must show `what`
/// (`-fw_cfg name=opt/dma-kernel/require,string=WHAT[,WHAT…]`), so that a test which could
/// otherwise fall back to weaker evidence must fail instead. `ir-fault-records`: the VT-d model
/// records interrupt-remapping faults (QEMU 10's does, 7.2's does not).
pub fn required(what: &str) -> bool {
    listed("opt/dma-kernel/require", what)
}

/// Whether the fw_cfg file `name`, a comma-separated list of words, holds `what`.
fn listed(name: &str, what: &str) -> bool {
    let mut buf = [0u8; 64];
    match read_file(name, &mut buf) {
        Some(len) => buf[..len.min(buf.len())].split(|&b| b == b',').any(|word| word == what.as_bytes()),
        None => false,
    }
}
