//! Disk faults from a real fault injector: QEMU's `blkdebug` block driver fails chosen reads and
//! writes with EIO, and the AHCI device turns each into a task-file error (ERR in the status,
//! ABRT in the error register) on the command that touched the sector.
//!
//! The disk is a patterned image (as in `disk_tests`) seen through blkdebug
//! (`file=blkdebug:CONF:IMAGE`). Its rules ([`RULES`]) fail, by sector:
//! - one read, once: a queue-depth-32 NCQ verify must still succeed (the driver resets the port
//!   and re-issues what was outstanding), with the error reported under the device's name;
//! - one write, once, the same at queue depth 32, and the bytes must be right in the image;
//! - every read of one sector: the command fails with an error naming the port and the LBA,
//!   the kernel survives, the next command works, and `disk:info` counts the failure.
//!
//! How QEMU 7.2's blkdebug behaves, as seen here: an `inject-error` rule without `iotype` also
//! fails writes (a `read_aio` rule failed a fill), so each rule names its `iotype`; `sector`
//! fails any request whose range covers that sector; `once = "on"` fires the rule one time.

use crate::disk_tests::Image;
use crate::qemu::MachineConfig;
use crate::test::{self, Tally};
use std::path::Path;

/// Sector whose first read fails (inside the QD32 verify range).
const READ_ONCE: u64 = 2048;
/// Sector whose first write fails (inside the QD32 fill range).
const WRITE_ONCE: u64 = 6000;
/// Sector every read of which fails.
const READ_ALWAYS: u64 = 12_000;

/// The blkdebug rules: one transient read error, one transient write error, one bad sector.
fn rules() -> String {
    let rule = |iotype: &str, sector: u64, once: bool| {
        format!(
            "[inject-error]\nevent = \"{iotype}_aio\"\niotype = \"{iotype}\"\nerrno = \"5\"\nsector = \"{sector}\"\nonce = \"{}\"\n\n",
            if once { "on" } else { "off" }
        )
    };
    [rule("read", READ_ONCE, true), rule("write", WRITE_ONCE, true), rule("read", READ_ALWAYS, false)].concat()
}

/// A VT-d unit that cannot turn translation on (injected through fw_cfg, see
/// `kernel/src/platform/iommu.rs`): the devices behind it must get the Direct mapper, named in
/// the log, and never IOVAs, which would send their DMA to whatever physical memory sits at the
/// IOVA's address; and their DMA must still work.
pub fn iommu_enable_failure(images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    println!("\n== a VT-d unit that cannot enable translation (fault injected through fw_cfg) ==");
    let name = |check: &str| format!("iommu-failsafe::{check}");
    let mut machine = MachineConfig { name: "iommu-failsafe".into(), ..MachineConfig::standard() };
    machine.extra_args.extend(["-fw_cfg", "name=opt/dma-kernel/inject,string=iommu-enable-fails"].map(String::from));
    let mut session = match test::boot(&machine, images, work, "failsafe") {
        Ok(s) => s,
        Err(why) => return tally.record(&name("boot"), Err(why)),
    };
    let log = session.output();
    tally.record(
        &name("the_failure_and_every_device_are_named"),
        if log.contains("dmar0: cannot enable translation")
            && ["00:02.0", "00:1f.2"].iter().all(|d| log.contains(&format!("iommu: {d}: its unit does not translate")))
        {
            Ok(())
        } else {
            Err("the boot log does not name the failed unit and the e1000 and AHCI as falling back".into())
        },
    );
    tally.record(
        &name("devices_use_direct_never_iovas"),
        test::command(&mut session, "cat dma:mappings").and_then(|t| {
            let lines: Vec<&str> = t.lines().filter(|l| l.contains(" mapper=")).collect();
            let on = |d: &str| lines.iter().any(|l| l.starts_with(d) && l.contains("mapper=direct"));
            if on("00:02.0") && on("00:1f.2") && !lines.iter().any(|l| l.contains("mapper=iommu")) {
                Ok(())
            } else {
                Err(format!("expected every device on the Direct mapper:\n{}", t.trim()))
            }
        }),
    );
    tally.record(
        &name("dma_still_works"),
        test::command(&mut session, "disk read ahci0p0 0")
            .and_then(|t| if t.contains("disk: read ok") { Ok(()) } else { Err(t.trim().to_string()) }),
    );
    tally.record(&name("exit_powers_off"), test::power_off(&mut session));
}

/// Boots with the faulty disk on port 1 and runs the checks.
pub fn run(images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    println!("\n== disk faults injected by blkdebug (AHCI) ==");
    let name = |check: &str| format!("disk-faults::{check}");
    let seed = 0xFA17_0000_0000_0001u64;
    let mut image = match Image::create(work.join("faulty-disk.img"), 8, seed) {
        Ok(i) => i,
        Err(e) => return tally.record(&name("image"), Err(e)),
    };
    let conf = work.join("blkdebug.conf");
    if let Err(e) = std::fs::write(&conf, rules()) {
        return tally.record(&name("image"), Err(format!("cannot write {}: {e}", conf.display())));
    }
    let faulty = format!("blkdebug:{}:{}", conf.display(), image.path.display());
    let machine = MachineConfig { name: "disk-faults".into(), disks: vec![faulty.into()], ..MachineConfig::standard() };
    let mut session = match test::boot(&machine, images, work, "faults") {
        Ok(s) => s,
        Err(why) => return tally.record(&name("boot"), Err(why)),
    };
    let device_error = "00:1f.2 ahci port 1: error: TFES task-file error";

    // A read fails once in the middle of 32 queued commands: recovered, reported, nothing lost.
    tally.record(
        &name("transient_read_error_at_qd32_is_recovered"),
        test::command(&mut session, &format!("disk verify ahci0p1 0 4096 {seed:#x} 32")).and_then(|out| {
            if out.contains("disk: verify ok") && out.contains(device_error) {
                Ok(())
            } else {
                Err(format!("expected a reported, recovered error and `verify ok`:\n{}", out.trim()))
            }
        }),
    );

    // A write fails once among 32 queued writes: recovered, and the image gets every byte.
    let (w_lba, w_count, w_seed) = (WRITE_ONCE - 1000, 2048u64, 0xFA17_0000_0000_0002u64);
    image.written.push((w_lba, w_count, w_seed));
    tally.record(
        &name("transient_write_error_at_qd32_is_recovered"),
        test::command(&mut session, &format!("disk fill ahci0p1 {w_lba} {w_count} {w_seed:#x} 32")).and_then(|out| {
            if out.contains("disk: fill ok") && out.contains(device_error) {
                Ok(())
            } else {
                Err(format!("expected a reported, recovered error and `fill ok`:\n{}", out.trim()))
            }
        }),
    );

    // A sector that never reads: the command fails with a clear error, the kernel goes on.
    tally.record(
        &name("bad_sector_fails_the_command_with_device_and_lba"),
        test::command(&mut session, &format!("disk read ahci0p1 {READ_ALWAYS}")).and_then(|out| {
            let reported = out.lines().any(|l| {
                l.starts_with("disk: error:") && l.contains("port 1") && l.contains(&format!("LBA {READ_ALWAYS}"))
            });
            if reported && out.contains(device_error) {
                Ok(())
            } else {
                Err(format!("expected `disk: error:` naming port 1 and LBA {READ_ALWAYS}:\n{}", out.trim()))
            }
        }),
    );
    tally.record(
        &name("disk_works_after_the_bad_sector"),
        test::command(&mut session, &format!("disk verify ahci0p1 {} 1024 {seed:#x} 32", READ_ALWAYS + 1))
            .and_then(|out| if out.contains("disk: verify ok") { Ok(()) } else { Err(out.trim().to_string()) }),
    );
    tally.record(
        &name("failure_and_recoveries_are_counted"),
        test::command(&mut session, "cat disk:info").and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("disk ahci0p1 ")).unwrap_or_default();
            let count = |key: &str| {
                line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|n| n.parse::<u64>().ok())
            };
            match (count("failed="), count("recoveries=")) {
                (Some(1), Some(r)) if r >= 3 => Ok(()),
                _ => Err(format!("expected failed=1 and recoveries>=3: {line}")),
            }
        }),
    );

    let exited = test::power_off(&mut session);
    let clean = exited.is_ok();
    tally.record(&name("exit_powers_off"), exited);
    drop(session);
    if clean {
        // Only the filled range changed, and it holds every sector of the new pattern.
        tally.record(&name("image_holds_exactly_what_was_written"), image.check());
    }
}
