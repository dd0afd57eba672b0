//! Storage evidence checked from the host (issue 6): patterned disk images written by xtask,
//! read and verified by the kernel, and bytes the kernel wrote verified in the image files.
//!
//! For each configuration (VT-d, and no VT-d), two fresh images are attached to AHCI ports 1 and
//! 2, every sector carrying the pattern of its LBA and the image's seed (the same generator as
//! `ahci::pattern`; a shared reference digest keeps the two copies equal). Through the shell the
//! kernel then:
//! - finds both disks with the right sizes (`cat disk:info`);
//! - verifies ranges of both at queue depth 1 and 32 (`disk verify`), which proves data came
//!   from the right LBAs through the DMA path;
//! - writes a new pattern to one range of each disk and flushes (`disk fill`);
//! - is refused reads and writes past the end.
//!
//! After QEMU exits, xtask reads the image files: the written ranges hold the new pattern, every
//! other sector (neighbours included) still holds the original one, and the files did not grow.

use crate::qemu::MachineConfig;
use crate::test::{self, Tally};
use std::path::{Path, PathBuf};

const SECTOR: usize = 512;

/// The kernel's sector pattern: the same function builds the images here and checks sectors in
/// the guest, so the two can never disagree.
pub use ahci::pattern::fill_sector;

/// One test image: size and the seed of its pattern.
pub(crate) struct Image {
    pub(crate) path: PathBuf,
    sectors: u64,
    seed: u64,
    /// Ranges (lba, count, seed) the kernel is asked to overwrite.
    pub(crate) written: Vec<(u64, u64, u64)>,
}

impl Image {
    /// A `mib` MiB image whose every sector holds the pattern of its LBA and `seed`.
    pub(crate) fn create(path: PathBuf, mib: u64, seed: u64) -> Result<Image, String> {
        let sectors = mib * 2048;
        let mut data = vec![0u8; sectors as usize * SECTOR];
        for (lba, s) in data.chunks_mut(SECTOR).enumerate() {
            fill_sector(s, lba as u64, seed);
        }
        if data[510] == 0x55 && data[511] == 0xAA {
            return Err(format!("seed {seed:#x} puts a boot signature in sector 0; pick another"));
        }
        std::fs::write(&path, &data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(Image { path, sectors, seed, written: Vec::new() })
    }

    /// Every sector holds its expected pattern; the file has its original size.
    pub(crate) fn check(&self) -> Result<(), String> {
        let data = std::fs::read(&self.path).map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        if data.len() as u64 != self.sectors * SECTOR as u64 {
            return Err(format!("{} is {} bytes, expected {}", self.path.display(), data.len(), self.sectors * 512));
        }
        let mut expected = [0u8; SECTOR];
        let mut bad = Vec::new();
        for (lba, s) in data.chunks(SECTOR).enumerate() {
            let lba = lba as u64;
            let seed = self
                .written
                .iter()
                .find(|(start, count, _)| (*start..start + count).contains(&lba))
                .map_or(self.seed, |w| w.2);
            fill_sector(&mut expected, lba, seed);
            if s != expected {
                bad.push(lba);
            }
        }
        match bad.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} sectors differ from what was asked for (first: LBA {first}; written ranges {:?})",
                bad.len(),
                self.written
            )),
        }
    }
}

/// Runs `line` in the shell and checks its output contains every one of `needles`.
fn expect_lines(session: &mut crate::qemu::Session, line: &str, needles: &[&str]) -> Result<String, String> {
    let out = test::command(session, line)?;
    for n in needles {
        if !out.contains(n) {
            return Err(format!("`{line}` printed:\n{}", out.trim()));
        }
    }
    Ok(out)
}

/// Records checks in the run's tally and counts failures.
struct Checks<'a> {
    tally: &'a mut Tally,
    failed: usize,
}

impl Checks<'_> {
    fn record(&mut self, name: &str, result: Result<(), String>) {
        self.failed += usize::from(result.is_err());
        self.tally.record(name, result);
    }
}

/// Runs the host-side storage checks in a configuration with VT-d and one without. Returns the
/// number of failed checks (each is also recorded in `tally`).
pub fn run(images: &boot::DiskImages, work: &Path, tally: &mut Tally) -> usize {
    println!("\n== storage evidence (AHCI, patterned images) ==");
    let base = test::configurations();
    let configs: Vec<MachineConfig> =
        base.into_iter().filter(|m| m.name == "bios-vtd" || m.name == "bios-novtd").collect();
    let mut checks = Checks { tally, failed: 0 };
    for machine in configs {
        run_one(machine, images, work, &mut checks);
    }
    checks.failed
}

fn run_one(base: MachineConfig, images: &boot::DiskImages, work: &Path, tally: &mut Checks<'_>) {
    let config = base.name.clone();
    let name = |check: &str| format!("disk::{config}::{check}");
    let dir = work.join(format!("disk-{config}"));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tally.record(&name("images"), Err(format!("cannot create {}: {e}", dir.display())));
        return;
    }
    let (seed_a, seed_b) = (0xA11C_E5EE_D000_0001u64, 0xB0B5_EED0_0000_0002u64);
    let made = Image::create(dir.join("disk-a.img"), 32, seed_a)
        .and_then(|a| Image::create(dir.join("disk-b.img"), 16, seed_b).map(|b| (a, b)));
    let (mut a, mut b) = match made {
        Ok(v) => v,
        Err(e) => {
            tally.record(&name("images"), Err(e));
            return;
        }
    };
    let machine = MachineConfig { name: format!("disk-{config}"), disks: vec![a.path.clone(), b.path.clone()], ..base };
    let mut session = match test::boot(&machine, images, work, "disk") {
        Ok(s) => s,
        Err(why) => {
            tally.record(&name("boot"), Err(why));
            return;
        }
    };
    let (a_sectors, b_sectors) = (a.sectors, b.sectors);
    tally.record(
        &name("two_disks_found"),
        expect_lines(
            &mut session,
            "cat disk:info",
            &[
                "disk ahci0p1 port=1 ",
                &format!("sectors={a_sectors} "),
                "disk ahci0p2 port=2 ",
                &format!("sectors={b_sectors} "),
            ],
        )
        .map(|_| ()),
    );
    tally.record(
        &name("verify_qd1"),
        expect_lines(
            &mut session,
            &format!("disk verify ahci0p1 0 2048 {seed_a:#x} 1"),
            &["disk: verify ok", "max_outstanding=1 "],
        )
        .map(|_| ()),
    );
    tally.record(
        &name("verify_qd32"),
        expect_lines(
            &mut session,
            &format!("disk verify ahci0p1 2048 16384 {seed_a:#x} 32"),
            &["disk: verify ok", "qd=32", "max_outstanding=32 "],
        )
        .map(|_| ()),
    );
    tally.record(
        &name("second_disk_verify_qd32"),
        expect_lines(&mut session, &format!("disk verify ahci0p2 0 {b_sectors} {seed_b:#x} 32"), &["disk: verify ok"])
            .map(|_| ()),
    );
    // Writes: a range in the middle of disk A, one on disk B.
    let (w_lba, w_count, w_seed) = (20_000u64, 2048u64, 0x00C0_FFEE_0000_0003u64);
    a.written.push((w_lba, w_count, w_seed));
    tally.record(
        &name("write_and_flush"),
        expect_lines(&mut session, &format!("disk fill ahci0p1 {w_lba} {w_count} {w_seed:#x} 32"), &["disk: fill ok"])
            .map(|_| ()),
    );
    let (wb_lba, wb_count, wb_seed) = (1000u64, 64u64, 0x0000_BEEF_0000_0004u64);
    b.written.push((wb_lba, wb_count, wb_seed));
    tally.record(
        &name("write_second_disk"),
        expect_lines(
            &mut session,
            &format!("disk fill ahci0p2 {wb_lba} {wb_count} {wb_seed:#x} 4"),
            &["disk: fill ok"],
        )
        .map(|_| ()),
    );
    tally.record(
        &name("written_range_reads_back"),
        expect_lines(
            &mut session,
            &format!("disk verify ahci0p1 {} {} {w_seed:#x} 32", w_lba, w_count),
            &["disk: verify ok"],
        )
        .map(|_| ()),
    );
    // Past the end: refused before anything is sent.
    let past = [
        format!("disk read ahci0p1 {a_sectors}"),
        format!("disk read ahci0p1 {} 2", a_sectors - 1),
        format!("disk fill ahci0p1 {} 8 0x77 1", a_sectors - 4),
        format!("disk write ahci0p2 {b_sectors} 1 0xee"),
    ];
    let refused: Result<(), String> =
        past.iter().try_for_each(|line| expect_lines(&mut session, line, &["disk: error", "past the end"]).map(|_| ()));
    tally.record(&name("past_end_refused"), refused);
    let stats = test::command(&mut session, "cat disk:info").and_then(|text| {
        for disk in ["disk ahci0p1 ", "disk ahci0p2 "] {
            match text.lines().find(|l| l.starts_with(disk)) {
                Some(l) if l.contains(" failed=0 ") && l.contains(" recoveries=0 ") => {}
                other => return Err(format!("{disk}: {other:?}")),
            }
        }
        Ok(())
    });
    tally.record(&name("no_command_failed_or_recovered"), stats);

    let exited = test::power_off(&mut session);
    let clean_exit = exited.is_ok();
    tally.record(&name("exit"), exited);
    drop(session);
    if !clean_exit {
        return;
    }
    // The images on the host: new pattern where asked, the old one everywhere else.
    tally.record(&name("image_a_only_requested_sectors_changed"), a.check());
    tally.record(&name("image_b_only_requested_sectors_changed"), b.check());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_the_kernels_copy() {
        // ahci::pattern::reference_digest(): FNV-1a of sector 7, seed 0x5EED.
        let mut sector = [0u8; 512];
        fill_sector(&mut sector, 7, 0x5EED);
        let digest =
            sector.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        assert_eq!(digest, 0xe9c4_b89a_1ea8_e6eb);
    }
}

/// Runners for the storage evidence and the benchmark alone, without the other suites:
/// `cargo test -p xtask disk_ -- --ignored --nocapture` (set CARGO_TARGET_DIR as for xtask).
#[cfg(test)]
mod runners {
    #[test]
    #[ignore = "boots QEMU twice; `cargo xtask test` runs the same checks"]
    fn disk_evidence_alone() {
        let images = crate::build::build_images(crate::build::Profile::Debug).expect("images");
        let work = crate::build::target_dir().join("xtask-test");
        std::fs::create_dir_all(&work).expect("work dir");
        let mut tally = crate::test::Tally::default();
        assert_eq!(super::run(&images, &work, &mut tally), 0, "storage checks failed (see the lines above)");
    }

    #[test]
    #[ignore = "boots QEMU and runs the storage benchmark"]
    fn disk_bench_alone() {
        crate::bench::disk(&[]).expect("disk bench");
    }
}
