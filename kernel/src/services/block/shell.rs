//! The `disk` shell command: read (hex dump), write, fill and verify patterns, flush, benchmark.
//!
//! Lines meant for `cargo xtask test` to parse start with `disk: ` (results) or `bench: `.

use super::{BlockError, BlockOp, Disk, Done, Ticket};
use crate::println;
use crate::registry::commands::Command;
use ahci::pattern::{check_sector, fill_sector};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// The `disk` shell command: read, write, fill, verify and benchmark the AHCI disks.
pub static COMMANDS: &[Command] = &[Command {
    name: "disk",
    usage: "disk read NAME LBA [COUNT] | write NAME LBA COUNT BYTE | fill NAME LBA COUNT SEED [QD] | verify NAME LBA COUNT SEED [QD] | flush NAME | bench NAME [MIB [ROW]] | poll on|off | ncq on|off | arena on|off",
    about: "read (hex dump) and write sectors, write/check test patterns, benchmark (see `cat disk:info`)",
    run: disk,
}];

fn disk(args: &[&str]) {
    let result = match args {
        ["read", name, lba, rest @ ..] => read(name, lba, rest.first().copied()),
        ["write", name, lba, count, byte] => write(name, lba, count, byte),
        ["fill", name, lba, count, seed, rest @ ..] => fill(name, lba, count, seed, rest.first().copied()),
        ["verify", name, lba, count, seed, rest @ ..] => verify(name, lba, count, seed, rest.first().copied()),
        ["flush", name] => super::find(name).and_then(|d| d.flush()).map_err(|e| format!("{e}")).map(|()| {
            println!("disk: flush ok");
        }),
        ["bench", name, rest @ ..] => bench(name, rest.first().copied(), rest.get(1).copied()),
        ["poll", on @ ("on" | "off")] => {
            super::set_polling(*on == "on");
            println!("disk: poll {on}");
            Ok(())
        }
        ["ncq", on @ ("on" | "off")] => {
            super::set_ncq(*on == "on");
            println!("disk: ncq {on}");
            Ok(())
        }
        ["arena", mode @ ("on" | "off")] => {
            super::set_arena(*mode == "on");
            println!("disk: arena {mode}");
            Ok(())
        }
        _ => Err(format!("usage: {}", COMMANDS[0].usage)),
    };
    if let Err(why) = result {
        // Name the disk the failure is about (the driver's errors name the port and LBA).
        match args {
            [verb @ ("read" | "write" | "fill" | "verify" | "flush" | "bench"), name, ..]
                if !why.starts_with("usage") =>
            {
                println!("disk: error: {name}: {verb}: {why}")
            }
            _ => println!("disk: error: {why}"),
        }
    }
}

fn number(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("`{text}` is not a number"))
}

fn read(name: &str, lba: &str, count: Option<&str>) -> Result<(), String> {
    let disk = super::find(name).map_err(|e| format!("{e}"))?;
    let lba = number(lba)?;
    let count = count.map(number).transpose()?.unwrap_or(1);
    if count > 16 {
        return Err("at most 16 sectors are dumped at once".into());
    }
    let data = disk.read(lba, count as u32).map_err(|e| format!("{e}"))?;
    let sector = disk.info().logical_sector_size as usize;
    for (i, line) in data.chunks(16).enumerate() {
        let offset = i * 16;
        if offset % sector == 0 {
            println!("-- LBA {} --", lba + (offset / sector) as u64);
        }
        let mut text = format!("{:08x}  ", offset % sector);
        for b in line {
            text += &format!("{b:02x} ");
        }
        text.push(' ');
        text.extend(line.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }));
        println!("{text}");
    }
    println!("disk: read ok lba={lba} count={count}");
    Ok(())
}

fn write(name: &str, lba: &str, count: &str, byte: &str) -> Result<(), String> {
    let disk = super::find(name).map_err(|e| format!("{e}"))?;
    let (lba, count) = (number(lba)?, number(count)?);
    let byte = u8::try_from(number(byte)?).map_err(|_| String::from("BYTE must be 0..=255"))?;
    let sector = disk.info().logical_sector_size as usize;
    let bytes = usize::try_from(count).ok().and_then(|c| c.checked_mul(sector)).ok_or("COUNT too large")?;
    if bytes > 4 << 20 {
        return Err("at most 4 MiB per write".into());
    }
    disk.write(lba, vec![byte; bytes]).map_err(|e| format!("{e}"))?;
    disk.flush().map_err(|e| format!("{e}"))?;
    println!("disk: write ok lba={lba} count={count} byte={byte:#04x}");
    Ok(())
}

/// Sectors per request in `fill` and `verify`: 4 KiB.
const CHUNK_SECTORS: u64 = 8;

/// What a pipelined run measured.
pub struct RunStats {
    /// Most requests outstanding at once.
    pub max_outstanding: usize,
    /// Microseconds from first submission to last completion.
    pub elapsed_us: u64,
    /// Requests completed.
    pub requests: u64,
}

/// Runs `jobs` (lba, sectors) with up to `depth` requests outstanding: `op` makes each request,
/// `done` checks each result. Stops at the first error.
pub fn pipeline(
    disk: &Disk,
    jobs: impl IntoIterator<Item = (u64, u32)>,
    depth: usize,
    mut op: impl FnMut(u64, u32) -> BlockOp,
    mut done: impl FnMut(u64, u32, Done) -> Result<(), String>,
) -> Result<RunStats, String> {
    let jobs: Vec<(u64, u32)> = jobs.into_iter().collect();
    let mut next = 0;
    let mut inflight: VecDeque<(Ticket, u64, u32)> = VecDeque::new();
    let mut stats = RunStats { max_outstanding: 0, elapsed_us: 0, requests: 0 };
    let start = crate::arch::time::now_us();
    loop {
        // Top the queue up in one batch, so the requests really are outstanding together.
        let room = depth.max(1).saturating_sub(inflight.len()).min(jobs.len() - next);
        if room > 0 {
            let batch: Vec<BlockOp> = jobs[next..next + room].iter().map(|&(lba, n)| op(lba, n)).collect();
            for result in disk.submit_many(batch) {
                let (lba, n) = jobs[next];
                match result {
                    Ok(t) => {
                        next += 1;
                        inflight.push_back((t, lba, n));
                    }
                    Err(BlockError::Refused(ahci::SubmitError::QueueFull { .. } | ahci::SubmitError::Busy { .. })) => {
                        break;
                    }
                    Err(e) => return Err(format!("LBA {lba}: {e}")),
                }
            }
        }
        stats.max_outstanding = stats.max_outstanding.max(inflight.len());
        if inflight.is_empty() {
            if next == jobs.len() {
                break;
            }
            disk.poll_any(&[]);
            continue;
        }
        let tickets: Vec<Ticket> = inflight.iter().map(|f| f.0).collect();
        let finished = disk.poll_any(&tickets);
        if finished.is_empty() {
            disk.idle();
        }
        for (ticket, result) in finished {
            let Some(pos) = inflight.iter().position(|f| f.0 == ticket) else { continue };
            let (_, lba, n) = inflight.remove(pos).unwrap_or((ticket, 0, 0));
            let result = result.map_err(|e| format!("LBA {lba}: {e}"))?;
            done(lba, n, result)?;
            stats.requests += 1;
        }
    }
    stats.elapsed_us = crate::arch::time::now_us().saturating_sub(start);
    Ok(stats)
}

fn chunks(lba: u64, count: u64, per: u64) -> impl Iterator<Item = (u64, u32)> {
    (0..count.div_ceil(per)).map(move |i| (lba + i * per, (count - i * per).min(per) as u32))
}

fn patterned(lba: u64, sectors: u32, seed: u64, sector: usize) -> Vec<u8> {
    let mut data = vec![0u8; sectors as usize * sector];
    for (i, s) in data.chunks_mut(sector).enumerate() {
        fill_sector(s, lba + i as u64, seed);
    }
    data
}

fn depth_for(disk: &Disk, qd: Option<&str>) -> Result<usize, String> {
    let qd = qd.map(number).transpose()?.unwrap_or(1) as usize;
    let max = usize::from(disk.info().queue_depth).max(1);
    if qd == 0 || qd > max.max(1) {
        return Err(format!("QD must be 1..={max}"));
    }
    Ok(qd)
}

/// What `disk fill` and `disk verify` do with each chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PatternRun {
    Fill,
    Verify,
}

fn fill(name: &str, lba: &str, count: &str, seed: &str, qd: Option<&str>) -> Result<(), String> {
    pattern_run(PatternRun::Fill, name, lba, count, seed, qd)
}

fn verify(name: &str, lba: &str, count: &str, seed: &str, qd: Option<&str>) -> Result<(), String> {
    pattern_run(PatternRun::Verify, name, lba, count, seed, qd).map_err(|e| format!("verify FAILED: {e}"))
}

/// Writes (then flushes) or checks the test pattern over `count` sectors from `lba`, in 4 KiB
/// requests with up to `qd` outstanding.
fn pattern_run(
    run: PatternRun,
    name: &str,
    lba: &str,
    count: &str,
    seed: &str,
    qd: Option<&str>,
) -> Result<(), String> {
    let disk = super::find(name).map_err(|e| format!("{e}"))?;
    let (lba, count, seed) = (number(lba)?, number(count)?, number(seed)?);
    let depth = depth_for(&disk, qd)?;
    let sector = disk.info().logical_sector_size as usize;
    let stats = pipeline(
        &disk,
        chunks(lba, count, CHUNK_SECTORS),
        depth,
        |l, n| match run {
            PatternRun::Fill => BlockOp::Write { lba: l, data: patterned(l, n, seed, sector).into() },
            PatternRun::Verify => BlockOp::Read { lba: l, sectors: n },
        },
        |l, _, d| {
            for (i, s) in d.data.chunks(sector).enumerate() {
                check_sector(s, l + i as u64, seed).map_err(|(offset, want, got)| {
                    format!("sector {} byte {offset}: expected {want:#04x}, found {got:#04x}", l + i as u64)
                })?;
            }
            Ok(())
        },
    )?;
    if run == PatternRun::Fill {
        disk.flush().map_err(|e| format!("flush: {e}"))?;
    }
    println!(
        "disk: {} ok lba={lba} count={count} seed={seed:#x} qd={depth} max_outstanding={} us={}",
        if run == PatternRun::Fill { "fill" } else { "verify" },
        stats.max_outstanding,
        stats.elapsed_us
    );
    Ok(())
}

/// A small xorshift generator for random LBAs.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn report(name: &str, ops: u64, bytes: u64, us: u64) {
    let us = us.max(1);
    // MB/s = bytes / µs; print with two decimals using integers.
    let centi_mbps = bytes * 100 / us;
    let iops = ops * 1_000_000 / us;
    println!(
        "bench: {name} ops={ops} bytes={bytes} us={us} MB/s={}.{:02} IOPS={iops} us_per_op={}",
        centi_mbps / 100,
        centi_mbps % 100,
        us / ops.max(1)
    );
}

/// The rows of `disk bench`, in order (the queue depth of the last is the disk's, at most 32).
const ROWS: [&str; 7] = [
    "floor_flush_qd1",
    "floor_read_1_sector_qd1",
    "floor_read_1_sector_qd32",
    "seq_write_1m_qd1",
    "seq_read_1m_qd1",
    "rand_read_4k_qd1",
    "rand_read_4k_qd32",
];

/// `disk bench NAME [MIB [ROW]]`: every row, or only `ROW` (a row name as printed, such as
/// `seq_read_1m_qd1`), so that a host can time one row at a time (`cargo xtask bench disk`
/// measures QEMU's CPU time per row that way).
fn bench(name: &str, mib: Option<&str>, only: Option<&str>) -> Result<(), String> {
    let disk = super::find(name).map_err(|e| format!("{e}"))?;
    if disk.read_only() {
        return Err(format!("{name} is read-only; the benchmark writes, use a scratch disk"));
    }
    let info = disk.info();
    let sector = info.logical_sector_size as u64;
    let mib = mib.map(number).transpose()?.unwrap_or(16);
    let per_mib = (1 << 20) / sector;
    if mib * per_mib > info.sectors {
        return Err(format!("{mib} MiB does not fit on {name}"));
    }
    let qd_max = usize::from(info.queue_depth).max(1);
    println!(
        "bench: disk={name} sectors={} mode={}",
        info.sectors,
        if super::polling() { "polling" } else { "interrupts" }
    );

    let run = |row: &str| only.is_none_or(|o| o == row);
    if let Some(o) = only
        && !ROWS.contains(&o)
    {
        return Err(format!("no benchmark row `{o}` (rows: {})", ROWS.join(", ")));
    }

    // Floors: the cost of a command round trip with no data, and with one sector.
    if run("floor_flush_qd1") {
        let n = 2000;
        let s = pipeline(&disk, (0..n).map(|_| (0, 0)), 1, |_, _| BlockOp::Flush, |_, _, _| Ok(()))?;
        report("floor_flush_qd1", n, 0, s.elapsed_us);
    }
    if run("floor_read_1_sector_qd1") {
        let n = 2000;
        let s =
            pipeline(&disk, (0..n).map(|_| (0, 1)), 1, |l, c| BlockOp::Read { lba: l, sectors: c }, |_, _, _| Ok(()))?;
        report("floor_read_1_sector_qd1", n, n * sector, s.elapsed_us);
    }
    // The same at full queue depth: the per-command cost (command table, PRDT, FIS, interrupt)
    // with as little data as a command can carry. Beside `rand_read_4k_qd32` it tells a cost
    // per command (what the controller and the IOMMU pay to fetch each command) from a cost per
    // byte or per mapping.
    let full_depth = qd_max.min(32);
    if run(&format!("floor_read_1_sector_qd{full_depth}")) {
        let n = 20000;
        let s = pipeline(
            &disk,
            (0..n).map(|i| ((i % 64) * 8, 1)),
            full_depth,
            |l, c| BlockOp::Read { lba: l, sectors: c },
            |_, _, _| Ok(()),
        )?;
        report(&format!("floor_read_1_sector_qd{full_depth}"), n, n * sector, s.elapsed_us);
    }

    // Sequential, 1 MiB requests, queue depth 1.
    let data = vec![0x5Au8; 1 << 20];
    let jobs = (0..mib).map(|i| (i * per_mib, per_mib as u32));
    if run("seq_write_1m_qd1") {
        // Each write is built in a buffer of the controller's arena (what `data.clone()` into a
        // heap `Vec` cost before): no mapping, no invalidation per request.
        let s = pipeline(
            &disk,
            jobs.clone(),
            1,
            |l, _| {
                let mut buf = disk.buffer(data.len());
                buf.copy_from_slice(&data);
                BlockOp::Write { lba: l, data: buf }
            },
            |_, _, _| Ok(()),
        )?;
        disk.flush().map_err(|e| format!("{e}"))?;
        report("seq_write_1m_qd1", mib, mib << 20, s.elapsed_us);
    }
    if run("seq_read_1m_qd1") {
        let s = pipeline(&disk, jobs, 1, |l, c| BlockOp::Read { lba: l, sectors: c }, |_, _, _| Ok(()))?;
        report("seq_read_1m_qd1", mib, mib << 20, s.elapsed_us);
    }

    // Random 4 KiB reads over the region just written, at queue depth 1 and 32.
    let span = mib * per_mib / 8;
    for (depth, count) in [(1usize, 5000u64), (full_depth, 20000)] {
        if !run(&format!("rand_read_4k_qd{depth}")) {
            continue;
        }
        let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
        let jobs: Vec<(u64, u32)> = (0..count).map(|_| ((rng.next() % span) * 8, 8)).collect();
        let s = pipeline(&disk, jobs, depth, |l, c| BlockOp::Read { lba: l, sectors: c }, |_, _, _| Ok(()))?;
        report(&format!("rand_read_4k_qd{depth}"), count, count * 4096, s.elapsed_us);
        println!("bench: rand_read_4k_qd{depth} max_outstanding={}", s.max_outstanding);
    }
    println!("disk: bench ok");
    Ok(())
}
