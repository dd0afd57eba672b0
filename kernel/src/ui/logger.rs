//! The `log` crate's backend: every `log::info!` and friends in the kernel and its crates ends up
//! here, printed as `[LEVEL module::path] message`.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        crate::println!("[{level} {}] {}", record.module_path().unwrap_or("?"), record.args());
    }

    fn flush(&self) {}
}

/// Installs the logger. `level` is the most verbose level printed.
pub fn init(level: LevelFilter) {
    // A second call is harmless: `set_logger` refuses and the first logger stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
