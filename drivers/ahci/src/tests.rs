//! Host tests: the driver against the simulated HBA (`sim`) on the DMA service's simulated memory.

extern crate std;

use crate::controller::{COMMAND_LIST_BYTES, RECEIVED_FIS_BYTES};
use crate::error::{CommandError, PortError, SubmitError};
use crate::pattern::{check_sector, fill_sector};
use crate::sim::SimHba;
use crate::{Completion, Controller, IoBuffer, Request, RequestId, SubmitOptions};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use device_io::Clock;
use dma::mapper::{BounceArea, Direct};
use dma::sim::SimMemory;
use dma::{DmaDevice, PhysMemory};

/// A clock that advances 10 µs at every reading, so timeouts pass quickly and deterministically.
#[derive(Default)]
pub(crate) struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_us(&self) -> u64 {
        self.0.fetch_add(10, Ordering::Relaxed)
    }
}

struct Rig {
    ctl: Controller<&'static SimHba, TestClock>,
    sim: &'static SimHba,
    phys: Arc<dyn PhysMemory>,
}

fn device(low: usize, high: usize, name: &str) -> (DmaDevice, Arc<dyn PhysMemory>) {
    let mem = SimMemory::low_and_high(low, high);
    let phys: Arc<dyn PhysMemory> = mem;
    let bounce = BounceArea::new(phys.clone(), 0xffff_ffff, 256 * 1024).unwrap();
    let dev = DmaDevice::new(name, phys.clone(), Arc::new(Direct::with_bounce(phys.clone(), bounce)));
    (dev, phys)
}

/// `ports` ports, disks of the given sizes on the ports listed.
fn rig_with(ports: u8, disks: &[(usize, u64)], addr64: bool, setup: impl FnOnce(&SimHba)) -> Rig {
    let (dev, phys) = device(8 << 20, 32 << 20, "00:1f.2 ahci-test");
    // Leaked: the controller borrows the simulated HBA for the rest of the test process.
    let sim: &'static SimHba = alloc::boxed::Box::leak(alloc::boxed::Box::new(SimHba::new(&dev, ports, addr64)));
    for &(port, sectors) in disks {
        sim.attach_disk(port, sectors);
    }
    setup(sim);
    let ctl = Controller::init("00:1f.2 ahci-test", sim, TestClock::default(), dev).expect("init");
    Rig { ctl, sim, phys }
}

fn rig() -> Rig {
    rig_with(3, &[(0, 4096), (2, 2048)], true, |_| {})
}

impl Rig {
    fn buffer(&self, bytes: usize) -> IoBuffer {
        IoBuffer::pages(&self.phys, bytes).unwrap()
    }

    fn patterned(&self, lba: u64, sectors: u64, seed: u64) -> IoBuffer {
        let mut b = self.buffer(sectors as usize * 512);
        for (i, s) in b.chunks_mut(512).enumerate() {
            fill_sector(s, lba + i as u64, seed);
        }
        b
    }

    fn wait(&mut self, id: RequestId) -> Completion {
        for _ in 0..1_000_000 {
            self.ctl.service();
            if let Some(c) = self.ctl.take_completion(id) {
                return c;
            }
        }
        panic!("request {id} never completed");
    }

    fn run(&mut self, port: u8, request: Request, opts: SubmitOptions) -> Completion {
        let id = self.ctl.submit_with(port, request, opts).expect("submit");
        self.wait(id)
    }

    fn fill_disk(&self, port: usize, seed: u64) {
        self.sim.with_port(port, |p| {
            let disk = p.disk.as_mut().unwrap();
            for (lba, s) in disk.data.chunks_mut(512).enumerate() {
                fill_sector(s, lba as u64, seed);
            }
        });
    }

    fn assert_no_faults(&self) {
        assert_eq!(self.sim.faults(), Vec::<std::string::String>::new());
    }
}

const NCQ: SubmitOptions = SubmitOptions { queued: true, timeout_us: 1_000_000, check_range: true };
const PLAIN: SubmitOptions = SubmitOptions { queued: false, timeout_us: 1_000_000, check_range: true };

#[test]
fn init_finds_disks_identifies_them_and_skips_empty_ports() {
    let r = rig();
    let ports: Vec<u8> = r.ctl.ports().iter().map(|p| p.number()).collect();
    assert_eq!(ports, [0, 2]);
    assert!(matches!(r.ctl.skipped_ports(), [(1, PortError::NoDevice { .. })]));
    let info = r.ctl.port(0).unwrap().info().unwrap();
    assert_eq!(info.model, "SIM HARDDISK");
    assert_eq!(info.serial, "SIM0001");
    assert_eq!(info.sectors, 4096);
    assert_eq!(info.queue_depth, 32);
    assert_eq!(r.ctl.port(2).unwrap().info().unwrap().sectors, 2048);
    assert_eq!(r.ctl.port(0).unwrap().ncq_depth(), 32);
    assert!(r.ctl.capabilities().addr64 && r.ctl.capabilities().ncq);
    assert_eq!(r.ctl.dma_device().mask(), u64::MAX);
    r.assert_no_faults();
}

#[test]
fn structures_come_from_pools_aligned_and_within_a_page() {
    let r = rig();
    for p in r.ctl.ports() {
        let (clb, fb, ctba) = p.structure_addresses();
        assert_eq!(clb % 1024, 0);
        assert_eq!(fb % 256, 0);
        assert_eq!(ctba % 128, 0);
        assert_eq!(clb / 4096, (clb + COMMAND_LIST_BYTES as u64 - 1) / 4096);
        assert_eq!(fb / 4096, (fb + RECEIVED_FIS_BYTES as u64 - 1) / 4096);
        assert_eq!(ctba % 4096, 0, "one 4 KiB table per page");
        assert_eq!(r.sim.clb(p.number() as usize), clb);
        assert_eq!(p.slot_count(), 32);
    }
    let view = dma::view("dma:pools").unwrap();
    for name in ["ahci-cmd-list", "ahci-rx-fis", "ahci-cmd-table"] {
        assert!(view.lines().any(|l| l.starts_with(name) && l.contains("ahci-test")), "{name} missing:\n{view}");
    }
}

#[test]
fn bios_handoff_takes_ownership() {
    let r = rig_with(1, &[(0, 64)], true, |sim| sim.bios_owned());
    assert_eq!(r.sim.bohc() & 0b11, 0b10, "OOS set, BOS clear");
    assert_eq!(r.ctl.ports().len(), 1);
}

#[test]
fn write_then_read_round_trips_queued_and_not() {
    let mut r = rig();
    for (opts, lba) in [(PLAIN, 100u64), (NCQ, 300)] {
        let data = r.patterned(lba, 16, 0xAB);
        let c = r.run(0, Request::Write { lba, buffers: vec![data] }, opts);
        c.result.unwrap();
        assert_eq!(c.buffers.len(), 1);
        let c = r.run(0, Request::Flush, PLAIN);
        c.result.unwrap();
        let c = r.run(0, Request::Read { lba, buffers: vec![r.buffer(16 * 512)] }, opts);
        c.result.unwrap();
        for (i, s) in c.buffers[0].chunks(512).enumerate() {
            check_sector(s, lba + i as u64, 0xAB).unwrap();
        }
        let expected_kind = if opts.queued { 0x61 } else { 0x35 };
        assert!(r.sim.with_port(0, |p| p.executed.iter().any(|e| e.0 == expected_kind && e.1 == lba)));
    }
    // Exactly what was asked for was written, nothing else.
    let writes = r.sim.with_port(0, |p| p.disk.as_ref().unwrap().writes.clone());
    assert_eq!(writes, [(100, 16), (300, 16)]);
    assert_eq!(r.sim.with_port(0, |p| p.disk.as_ref().unwrap().flushes), 2);
    let stats = r.ctl.port(0).unwrap().stats();
    assert_eq!(stats.sectors_written, 32);
    assert_eq!(stats.sectors_read, 32);
    r.assert_no_faults();
}

#[test]
fn scatter_gather_over_several_buffers_in_order() {
    let mut r = rig();
    r.fill_disk(2, 7);
    let bufs = vec![r.buffer(512), r.buffer(1024), r.buffer(2048)];
    let c = r.run(2, Request::Read { lba: 10, buffers: bufs }, NCQ);
    c.result.unwrap();
    let all: Vec<u8> = c.buffers.iter().flat_map(|b| b.iter().copied()).collect();
    for (i, s) in all.chunks(512).enumerate() {
        check_sector(s, 10 + i as u64, 7).unwrap();
    }
    r.assert_no_faults();
}

#[test]
fn large_transfers_split_into_prd_entries_of_at_most_4_mib() {
    let mut r = rig_with(1, &[(0, 24 << 10)], true, |_| {});
    r.fill_disk(0, 3);
    let bytes = (9 << 20) + 4096;
    let c = r.run(0, Request::Read { lba: 8, buffers: vec![r.buffer(bytes)] }, PLAIN);
    c.result.unwrap();
    for (i, s) in c.buffers[0].chunks(512).enumerate() {
        check_sector(s, 8 + i as u64, 3).unwrap();
    }
    let prds = r.sim.with_port(0, |p| p.executed.last().unwrap().2.clone());
    assert!(prds.len() >= 3, "{prds:?}");
    assert!(prds.iter().all(|&l| l as usize <= 4 << 20 && l % 2 == 0), "{prds:?}");
    assert_eq!(prds.iter().map(|&l| l as usize).sum::<usize>(), bytes);
    assert_eq!(c.bytes_transferred as usize, bytes);
    r.assert_no_faults();
}

#[test]
fn bad_requests_are_refused_before_anything_is_sent() {
    let mut r = rig();
    let before = r.sim.with_port(0, |p| p.executed.len());
    let issued = r.ctl.port(0).unwrap().stats().issued;
    type Case = (Request, fn(&SubmitError) -> bool);
    let cases: Vec<Case> = vec![
        (Request::Read { lba: 0, buffers: vec![] }, |e| *e == SubmitError::ZeroLength),
        (Request::Read { lba: 0, buffers: vec![r.buffer(1000)] }, |e| matches!(e, SubmitError::Misaligned { .. })),
        (Request::Write { lba: 4095, buffers: vec![r.buffer(1024)] }, |e| {
            matches!(e, SubmitError::PastEnd { lba: 4095, count: 2, capacity: 4096 })
        }),
        (Request::Read { lba: u64::MAX, buffers: vec![r.buffer(512)] }, |e| matches!(e, SubmitError::PastEnd { .. })),
        (Request::Read { lba: 0, buffers: vec![r.buffer(511), r.buffer(513)] }, |e| {
            matches!(e, SubmitError::Prdt(crate::prdt::PrdtError::OddLength { segment: 0, len: 511 }))
        }),
        (Request::Read { lba: 0, buffers: vec![IoBuffer::Heap(vec![0; 512])] }, |e| matches!(e, SubmitError::Map(_))),
    ];
    for (request, expected) in cases {
        let e = r.ctl.submit(0, request).unwrap_err();
        assert!(expected(&e), "unexpected {e:?}");
        assert!(!std::format!("{e}").is_empty());
    }
    assert_eq!(r.ctl.submit(1, Request::Flush).unwrap_err(), SubmitError::NoDisk { port: 1 });
    assert_eq!(r.ctl.submit(9, Request::Flush).unwrap_err(), SubmitError::NoDisk { port: 9 });
    // The size check comes before mapping, so a heap buffer shows it.
    let too_big = IoBuffer::Heap(vec![0; 65536 * 512]);
    assert!(matches!(
        r.ctl.submit(0, Request::Read { lba: 0, buffers: vec![too_big] }),
        Err(SubmitError::TooLarge { count: 65536, .. })
    ));
    assert_eq!(r.sim.with_port(0, |p| p.executed.len()), before, "nothing reached the device");
    assert_eq!(r.ctl.port(0).unwrap().stats().issued, issued);
    assert!(r.sim.with_port(0, |p| p.disk.as_ref().unwrap().writes.is_empty()));
}

#[test]
fn ncq_keeps_32_commands_outstanding_and_completes_them_out_of_order() {
    let mut r = rig();
    r.fill_disk(0, 0x51);
    r.sim.with_port(0, |p| p.defer = true);
    let mut ids = Vec::new();
    for i in 0..32u64 {
        let id = r.ctl.submit_with(0, Request::Read { lba: i * 8, buffers: vec![r.buffer(4096)] }, NCQ).unwrap();
        ids.push((id, i * 8));
    }
    assert_eq!(r.ctl.port(0).unwrap().outstanding(), 32);
    // A 33rd finds no free tag; a non-queued command may not join queued ones.
    assert!(matches!(
        r.ctl.submit_with(0, Request::Read { lba: 0, buffers: vec![r.buffer(512)] }, NCQ),
        Err(SubmitError::QueueFull { outstanding: 32 })
    ));
    assert!(matches!(r.ctl.submit_with(0, Request::Flush, PLAIN), Err(SubmitError::Busy { .. })));
    assert_eq!(r.sim.with_port(0, |p| p.executed.len()), 1, "only IDENTIFY ran so far");
    // Completion through the interrupt path.
    r.ctl.enable_interrupts();
    r.sim.run_deferred(0);
    assert!(r.ctl.handle_interrupt());
    assert!(!r.ctl.handle_interrupt(), "nothing left pending");
    // The handler is only the top half: it completes nothing (completing unmaps and allocates,
    // which an interrupt handler must not do), and leaves the work for `service`.
    assert!(r.ctl.has_pending_work());
    assert!(r.ctl.take_completion(ids[0].0).is_none());
    assert_eq!(r.ctl.service(), 32);
    assert!(!r.ctl.has_pending_work());
    for (id, lba) in ids {
        let c = r.ctl.take_completion(id).expect("completed");
        c.result.unwrap();
        for (i, s) in c.buffers[0].chunks(512).enumerate() {
            check_sector(s, lba + i as u64, 0x51).unwrap();
        }
    }
    assert_eq!(r.ctl.port(0).unwrap().stats().max_outstanding, 32);
    assert_eq!(r.ctl.port(0).unwrap().outstanding(), 0);
    // Tags were the slots, and reverse completion order really happened.
    let tags: Vec<u64> = r.sim.with_port(0, |p| p.executed.iter().skip(1).map(|e| e.1).collect());
    assert_eq!(tags.first(), Some(&(31 * 8)));
    r.assert_no_faults();
}

#[test]
fn device_error_is_decoded_reported_and_the_port_recovers() {
    let mut r = rig();
    r.fill_disk(0, 9);
    r.sim.with_port(0, |p| p.fail_lbas = Some(50..51));
    let c = r.run(0, Request::Read { lba: 48, buffers: vec![r.buffer(4 * 512)] }, PLAIN);
    match &c.result {
        Err(CommandError::Device { port: 0, command: crate::CommandKind::ReadDmaExt, lba: 48, task_file, .. }) => {
            assert_eq!(task_file.error, 0x40);
            let text = std::format!("{}", c.result.as_ref().unwrap_err());
            assert!(text.contains("UNC") && text.contains("port 0") && text.contains("READ DMA EXT"), "{text}");
        }
        other => panic!("expected a device error, got {other:?}"),
    }
    assert_eq!(c.buffers.len(), 1, "buffers come back after a failure");
    // It failed, was retried once (the policy in recover.rs), and failed again.
    assert_eq!(r.ctl.port(0).unwrap().stats().recoveries, 2);
    // The port works again.
    let c = r.run(0, Request::Read { lba: 60, buffers: vec![r.buffer(512)] }, NCQ);
    c.result.unwrap();
    check_sector(&c.buffers[0], 60, 9).unwrap();
    r.assert_no_faults();
}

/// Submits one-sector NCQ reads at `lbas` with execution deferred, then lets the device run and
/// the driver service until everything has finished; returns each completion with its LBA.
fn deferred_ncq_reads(r: &mut Rig, lbas: &[u64]) -> Vec<(u64, Completion)> {
    r.sim.with_port(0, |p| p.defer = true);
    let ids: Vec<(RequestId, u64)> = lbas
        .iter()
        .map(|&lba| (r.ctl.submit_with(0, Request::Read { lba, buffers: vec![r.buffer(512)] }, NCQ).unwrap(), lba))
        .collect();
    for _ in 0..50 {
        r.sim.run_deferred(0);
        r.ctl.service();
    }
    ids.into_iter().map(|(id, lba)| (lba, r.ctl.take_completion(id).expect("every command finishes"))).collect()
}

/// How often the simulated disk executed a read at `lba`.
fn executions(r: &Rig, lba: u64) -> usize {
    r.sim.with_port(0, |p| p.executed.iter().filter(|e| (e.0 == 0x60 || e.0 == 0x25) && e.1 == lba).count())
}

#[test]
fn ncq_error_log_names_the_culprit_which_alone_fails_after_one_retry() {
    let mut r = rig();
    r.fill_disk(0, 4);
    r.sim.with_port(0, |p| p.fail_lbas = Some(200..201));
    let done = deferred_ncq_reads(&mut r, &[8, 200, 400, 600]);
    for (lba, c) in &done {
        if *lba == 200 {
            match &c.result {
                Err(e @ CommandError::Queued { port: 0, lba: 200, log, .. }) => {
                    assert_eq!((log.lba, log.task_file.error), (200, 0x40));
                    let text = std::format!("{e}");
                    assert!(text.contains("port 0") && text.contains("LBA 200") && text.contains("UNC"), "{text}");
                }
                other => panic!("expected the log's error for LBA 200, got {other:?}"),
            }
        } else {
            c.result.as_ref().unwrap();
            check_sector(&c.buffers[0], *lba, 4).unwrap();
        }
    }
    // The culprit ran twice (once, then its one retry); nobody else ran more than twice, and
    // the log was read after each of its two failures.
    assert_eq!(executions(&r, 200), 2);
    assert!([8, 400, 600].iter().all(|&l| executions(&r, l) <= 2));
    assert_eq!(r.sim.with_port(0, |p| p.log_reads), 2);
    let stats = r.ctl.port(0).unwrap().stats();
    assert_eq!((stats.failed, stats.recoveries, stats.comresets), (1, 2, 0), "{stats:?}");
    // Reading the log cleared the device's error state: queued commands work at once.
    r.sim.with_port(0, |p| p.defer = false);
    let c = r.run(0, Request::Read { lba: 201, buffers: vec![r.buffer(512)] }, NCQ);
    c.result.unwrap();
    r.assert_no_faults();
}

#[test]
fn transient_ncq_error_is_retried_and_every_command_succeeds() {
    let mut r = rig();
    r.fill_disk(0, 5);
    r.sim.with_port(0, |p| {
        p.fail_lbas = Some(300..301);
        p.transient = true;
    });
    let lbas: Vec<u64> = (0..32).map(|i| i * 20).collect();
    for (lba, c) in deferred_ncq_reads(&mut r, &lbas) {
        c.result.unwrap();
        check_sector(&c.buffers[0], lba, 5).unwrap();
        if lba == 300 {
            assert_eq!(c.retries, 1, "the culprit was retried once");
        }
    }
    assert_eq!(r.sim.with_port(0, |p| p.log_reads), 1);
    assert_eq!(r.ctl.port(0).unwrap().stats().failed, 0);
    r.assert_no_faults();
}

#[test]
fn without_a_log_each_command_is_retried_alone_and_only_the_culprit_fails() {
    // QEMU 7.2 aborts READ LOG EXT: the driver must still fail only the bad command.
    let mut r = rig();
    r.fill_disk(0, 6);
    r.sim.with_port(0, |p| {
        p.fail_lbas = Some(200..201);
        p.log = crate::sim::LogBehaviour::Unsupported;
    });
    for (lba, c) in deferred_ncq_reads(&mut r, &[8, 200, 400, 600]) {
        if lba == 200 {
            assert!(matches!(c.result, Err(CommandError::Device { lba: 200, .. })), "{:?}", c.result);
        } else {
            c.result.unwrap();
            check_sector(&c.buffers[0], lba, 6).unwrap();
        }
    }
    assert_eq!(executions(&r, 200), 2);
    let stats = r.ctl.port(0).unwrap().stats();
    assert_eq!(stats.failed, 1, "{stats:?}");
    assert!(stats.comresets >= 2, "the log did not clear the error, COMRESET did: {stats:?}");
    r.assert_no_faults();
}

#[test]
fn a_log_with_a_bad_checksum_is_not_trusted() {
    let mut r = rig();
    r.fill_disk(0, 7);
    r.sim.with_port(0, |p| {
        p.fail_lbas = Some(400..401);
        p.log = crate::sim::LogBehaviour::BadChecksum;
    });
    for (lba, c) in deferred_ncq_reads(&mut r, &[8, 200, 400, 600]) {
        assert_eq!(c.result.is_err(), lba == 400, "LBA {lba}: {:?}", c.result);
    }
    r.assert_no_faults();
}

#[test]
fn a_log_naming_no_outstanding_command_fails_them_all_and_the_port_goes_on() {
    for behaviour in [crate::sim::LogBehaviour::NonQueued, crate::sim::LogBehaviour::WrongTag] {
        let mut r = rig();
        r.fill_disk(0, 8);
        r.sim.with_port(0, |p| {
            p.fail_lbas = Some(200..201);
            p.log = behaviour;
        });
        // 8 and 200 are still outstanding when 200 fails (400 and 600 ran first).
        for (lba, c) in deferred_ncq_reads(&mut r, &[8, 200, 400, 600]) {
            match lba {
                8 | 200 => match &c.result {
                    Err(e @ CommandError::UnmatchedNcqLog { port: 0, .. }) => {
                        assert!(std::format!("{e}").contains("names no outstanding"), "{e}")
                    }
                    other => panic!("{behaviour:?}: LBA {lba}: {other:?}"),
                },
                _ => c.result.unwrap(),
            }
        }
        r.sim.with_port(0, |p| {
            p.defer = false;
            p.fail_lbas = None;
        });
        let c = r.run(0, Request::Read { lba: 200, buffers: vec![r.buffer(512)] }, NCQ);
        c.result.unwrap();
        check_sector(&c.buffers[0], 200, 8).unwrap();
        r.assert_no_faults();
    }
}

#[test]
fn queue_depth_1_follows_the_same_policy_queued_and_not() {
    for opts in [PLAIN, NCQ] {
        let mut r = rig();
        r.fill_disk(0, 9);
        // Transient: the retry succeeds.
        r.sim.with_port(0, |p| {
            p.fail_lbas = Some(70..71);
            p.transient = true;
        });
        let c = r.run(0, Request::Read { lba: 70, buffers: vec![r.buffer(512)] }, opts);
        c.result.unwrap();
        check_sector(&c.buffers[0], 70, 9).unwrap();
        assert_eq!(c.retries, 1);
        // Permanent: tried twice, then a clear error with the LBA.
        r.sim.with_port(0, |p| {
            p.fail_lbas = Some(90..91);
            p.transient = false;
        });
        let c = r.run(0, Request::Read { lba: 90, buffers: vec![r.buffer(512)] }, opts);
        let text = std::format!("{}", c.result.unwrap_err());
        assert!(text.contains("port 0") && text.contains("LBA 90") && text.contains("UNC"), "{text}");
        assert_eq!(executions(&r, 90), 2, "{opts:?}");
        r.assert_no_faults();
    }
}

#[test]
fn many_non_queued_commands_with_an_error_fail_only_the_culprit() {
    let mut r = rig();
    r.fill_disk(0, 10);
    r.sim.with_port(0, |p| p.fail_lbas = Some(50..51));
    // Issued together as non-queued commands: the HBA runs them in slot order and stops at the
    // error, leaving the rest in PxCI.
    let ids: Vec<(RequestId, u64)> = (0..8u64)
        .map(|i| {
            let lba = 30 + i * 5;
            (r.ctl.submit_with(0, Request::Read { lba, buffers: vec![r.buffer(512)] }, PLAIN).unwrap(), lba)
        })
        .collect();
    for (id, lba) in ids {
        let c = r.wait(id);
        assert_eq!(c.result.is_err(), lba == 50, "LBA {lba}: {:?}", c.result);
        if lba != 50 {
            check_sector(&c.buffers[0], lba, 10).unwrap();
        }
    }
    r.assert_no_faults();
}

#[test]
fn hung_command_times_out_and_comreset_recovers_the_port() {
    let mut r = rig();
    r.sim.with_port(2, |p| p.hang = true);
    let c = r.run(2, Request::Read { lba: 0, buffers: vec![r.buffer(512)] }, PLAIN);
    assert!(matches!(c.result, Err(CommandError::Timeout { port: 2, .. })), "{:?}", c.result);
    assert!(std::format!("{}", c.result.unwrap_err()).contains("did not complete"));
    let stats = r.ctl.port(2).unwrap().stats();
    assert_eq!((stats.timeouts, stats.comresets), (1, 1));
    let c = r.run(2, Request::Read { lba: 1, buffers: vec![r.buffer(512)] }, NCQ);
    c.result.unwrap();
    r.assert_no_faults();
}

#[test]
fn engine_that_never_stops_disables_the_port_and_quarantines_buffers() {
    let mut r = rig();
    r.sim.with_port(0, |p| {
        p.hang = true;
        p.stuck = Some(false);
    });
    let c = r.run(0, Request::Read { lba: 0, buffers: vec![r.buffer(512)] }, PLAIN);
    assert!(matches!(c.result, Err(CommandError::Aborted { port: 0, .. })), "{:?}", c.result);
    assert!(c.buffers.is_empty(), "buffers the HBA may still write are not handed back");
    assert!(r.ctl.port(0).unwrap().is_disabled());
    assert_eq!(r.ctl.submit(0, Request::Flush).unwrap_err(), SubmitError::PortDisabled { port: 0 });
    // The other port is unaffected.
    r.run(2, Request::Flush, PLAIN).result.unwrap();
}

#[test]
fn engine_stuck_until_comreset_recovers() {
    let mut r = rig();
    r.sim.with_port(0, |p| {
        p.hang = true;
        p.stuck = Some(true);
    });
    let c = r.run(0, Request::Read { lba: 0, buffers: vec![r.buffer(512)] }, PLAIN);
    assert!(matches!(c.result, Err(CommandError::Timeout { .. })), "{:?}", c.result);
    assert!(!r.ctl.port(0).unwrap().is_disabled());
    r.run(0, Request::Flush, PLAIN).result.unwrap();
}

#[test]
fn hba_without_64_bit_addressing_gets_a_32_bit_mask_and_still_works() {
    let mut r = rig_with(2, &[(1, 4096)], false, |_| {});
    assert!(!r.ctl.capabilities().addr64);
    assert_eq!(r.ctl.dma_device().mask(), 0xffff_ffff);
    let (clb, fb, ctba) = r.ctl.port(1).unwrap().structure_addresses();
    assert!(clb < 1 << 32 && fb < 1 << 32 && ctba < 1 << 32);
    // Buffers from anywhere (PageBuffer prefers high memory): bounced below 4 GiB by the mapper.
    let data = r.patterned(5, 8, 0x32);
    r.run(1, Request::Write { lba: 5, buffers: vec![data] }, NCQ).result.unwrap();
    let c = r.run(1, Request::Read { lba: 5, buffers: vec![r.buffer(8 * 512)] }, NCQ);
    c.result.unwrap();
    for (i, s) in c.buffers[0].chunks(512).enumerate() {
        check_sector(s, 5 + i as u64, 0x32).unwrap();
    }
    r.assert_no_faults();
}

#[test]
fn completion_by_polling_without_interrupts() {
    let mut r = rig();
    r.ctl.disable_interrupts();
    let id = r.ctl.submit(2, Request::Read { lba: 0, buffers: vec![r.buffer(512)] }).unwrap();
    assert_eq!(r.ctl.service(), 1);
    r.ctl.take_completion(id).unwrap().result.unwrap();
    assert_eq!(r.ctl.interrupt_count(), 0);
}

#[test]
fn past_end_refused_but_device_error_path_reachable_when_unchecked() {
    let mut r = rig();
    let unchecked = SubmitOptions { check_range: false, ..PLAIN };
    let c = r.run(2, Request::Read { lba: 2048, buffers: vec![r.buffer(512)] }, unchecked);
    match c.result {
        Err(CommandError::Device { task_file, .. }) => assert_eq!(task_file.error, 0x10, "IDNF"),
        other => panic!("{other:?}"),
    }
    r.run(2, Request::Read { lba: 2047, buffers: vec![r.buffer(512)] }, PLAIN).result.unwrap();
}
