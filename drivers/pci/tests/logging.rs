//! Every problem enumeration finds is logged, and the line names the function's BDF.
//!
//! One test only: the logger is process-wide.

use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};
use pci::enumerate;
use pci::sim::fixtures;

static LINES: Mutex<Vec<(Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl Log for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        LINES.lock().unwrap().push((record.level(), record.args().to_string()));
    }

    fn flush(&self) {}
}

fn logged(level: Level, needle: &str) -> bool {
    LINES.lock().unwrap().iter().any(|(l, line)| *l == level && line.contains(needle))
}

#[test]
fn problems_are_logged_with_the_bdf() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(LevelFilter::Debug);

    enumerate(&fixtures::malformed_functions(), 0);
    enumerate(&fixtures::bridge_loop(), 0);
    enumerate(&fixtures::qemu_q35(), 0);

    let expected = [
        (Level::Warn, "pci 00:03.0: 8086:100e answers its id but the rest of its header reads all-ones"),
        (Level::Warn, "pci 00:04.0: header type 0x7f is not a known layout"),
        (Level::Warn, "pci 00:05.0: vendor id 0000 is not a valid vendor"),
        (Level::Warn, "pci 00:06.0: BAR0 (0xfeb00006) is a memory BAR of reserved type 3"),
        (Level::Warn, "pci 00:06.0: BAR1 reads 0xffffffff"),
        (Level::Warn, "pci 00:06.0: BAR5 is a 64-bit memory BAR in the last slot"),
        (Level::Warn, "pci 00:06.0: capability list loops back to 0x40"),
        (Level::Warn, "pci 01:00.0: bridge secondary bus 01 is not above its own bus 01"),
        (Level::Warn, "pci 01:01.0: bridge secondary bus 00 is not above its own bus 01"),
        (Level::Warn, "pci 02:00.0: bridge secondary bus 01 is not above its own bus 02"),
        (Level::Warn, "pci 00:1d.0: bridge leads to bus 01, which was already scanned"),
        (Level::Debug, "pci 00:02.0: BAR2 is unimplemented (sizes as zero); skipped"),
    ];
    for (level, needle) in expected {
        assert!(logged(level, needle), "no {level} line containing {needle:?}; got {:#?}", LINES.lock().unwrap());
    }
    // A healthy machine produces no warnings about its own functions.
    let lines = LINES.lock().unwrap();
    assert!(!lines.iter().any(|(l, line)| *l <= Level::Warn && line.contains("00:1f.2")));
}
