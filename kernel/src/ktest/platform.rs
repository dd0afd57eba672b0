//! In-kernel tests of what the firmware and the chipset told us: ACPI tables and PCI.

use super::{KernelTest, TestResult};
use crate::check;
use pci::ConfigRegionAccess;

pub static TESTS: &[KernelTest] = &[
    KernelTest { name: "acpi::tables_are_sound", run: tables_are_sound },
    KernelTest { name: "acpi::mcfg_gives_ecam", run: mcfg_gives_ecam },
    KernelTest { name: "pci::q35_devices_found", run: q35_devices_found },
    KernelTest { name: "pci::ecam_agrees_with_port_io", run: ecam_agrees_with_port_io },
    KernelTest { name: "pci::bars_are_sized", run: bars_are_sized },
    KernelTest { name: "time::tsc_agrees_with_pm_timer", run: tsc_agrees_with_pm_timer },
    KernelTest { name: "interrupts::self_ipi_reaches_its_handler", run: self_ipi_reaches_its_handler },
    KernelTest { name: "time::wakeup_timer_ends_a_sleep", run: wakeup_timer_ends_a_sleep },
];

/// `sleep_until_interrupt(2 ms)` halts the CPU and the APIC one-shot timer wakes it after
/// about 2 ms. (Another interrupt may end a sleep early; one of 20 must run its course.)
fn wakeup_timer_ends_a_sleep() -> TestResult {
    // A 2 ms sleep that the timer, not another interrupt, ended.
    const TIMER_ENDED_US: core::ops::RangeInclusive<u64> = 1_500..=50_000;
    check!(crate::arch::apic::is_ready(), "the local APIC is not set up");
    let fires = crate::arch::time::wakeup_timer_fires();
    let mut slept = alloc::vec::Vec::new();
    for _ in 0..20 {
        let start = crate::arch::time::now_us();
        x86_64::instructions::interrupts::disable();
        crate::arch::time::sleep_until_interrupt(2_000);
        let us = crate::arch::time::now_us() - start;
        slept.push(us);
        if TIMER_ENDED_US.contains(&us) {
            break;
        }
    }
    check!(crate::arch::time::wakeup_timer_fires() > fires, "the wake-up timer never fired (sleeps: {slept:?} us)");
    check!(slept.iter().any(|us| (1_500..=50_000).contains(us)), "no 2 ms sleep lasted 1.5..50 ms: {slept:?} us");
    Ok(())
}

fn self_ipi_reaches_its_handler() -> TestResult {
    use core::sync::atomic::{AtomicUsize, Ordering};
    static HITS: AtomicUsize = AtomicUsize::new(0);
    fn handler(context: usize) {
        HITS.fetch_add(context, Ordering::SeqCst);
    }
    check!(crate::arch::apic::is_ready(), "the local APIC is not set up");
    let vector = crate::arch::interrupts::allocate_vector(handler, 7).map_err(|_| "no free vector")?;
    HITS.store(0, Ordering::SeqCst);
    for _ in 0..3 {
        crate::arch::apic::send_self_ipi(vector);
    }
    let delivered = crate::arch::time::poll_until(100_000, || HITS.load(Ordering::SeqCst) == 21);
    crate::arch::interrupts::free_vector(vector);
    check!(delivered, "3 self-IPIs on vector {vector:#x} gave {} hits (expected 3 x 7)", HITS.load(Ordering::SeqCst));
    Ok(())
}

fn tsc_agrees_with_pm_timer() -> TestResult {
    let port = crate::firmware::acpi::info().pm_timer_port.ok_or("no PM timer")?;
    // SAFETY: reading the PM timer has no side effects.
    let read = || unsafe { x86_64::instructions::port::Port::<u32>::new(port).read() } & 0x00ff_ffff;
    let before = read();
    crate::arch::time::delay_us(50_000);
    let ticks = u64::from(read().wrapping_sub(before) & 0x00ff_ffff);
    let us = ticks * 1_000_000 / 3_579_545;
    // Generous bounds: under TCG the guest can be descheduled, which only makes waits longer.
    check!((40_000..=500_000).contains(&us), "a 50 ms delay took {us} us on the PM timer");
    Ok(())
}

fn tables_are_sound() -> TestResult {
    let info = crate::firmware::acpi::info();
    check!(info.inventory.problems.is_empty(), "ACPI problems: {:?}", info.inventory.problems);
    for signature in [b"FACP", b"APIC", b"MCFG"] {
        check!(
            info.inventory.find(signature).is_some(),
            "no valid {} table",
            core::str::from_utf8(signature).unwrap_or("?")
        );
    }
    check!(info.pm1a_control_port.is_some(), "FADT gave no PM1a control port");
    if let Some(dmar) = &info.dmar {
        check!(dmar.len() >= 48 && &dmar[..4] == b"DMAR", "DMAR copy is malformed ({} bytes)", dmar.len());
    }
    Ok(())
}

fn mcfg_gives_ecam() -> TestResult {
    let ecam = &crate::firmware::acpi::info().ecam;
    check!(!ecam.is_empty(), "no ECAM window from MCFG");
    check!(ecam.iter().any(|w| w.segment == 0 && w.bus_start == 0), "no window for segment 0 bus 0: {ecam:?}");
    check!(ecam.iter().all(|w| w.base % (1 << 20) == 0), "ECAM base not 1 MiB aligned: {ecam:?}");
    Ok(())
}

fn q35_devices_found() -> TestResult {
    let functions = crate::platform::pci::functions();
    let find = |vendor: u16, device: u16| functions.iter().find(|f| f.vendor_id == vendor && f.device_id == device);
    check!(find(0x8086, 0x29c0).is_some(), "no q35 host bridge 8086:29c0");
    check!(find(0x8086, 0x2918).is_some(), "no ICH9 ISA bridge 8086:2918");
    let e1000 = find(0x8086, 0x100e).ok_or("no e1000 8086:100e")?;
    let ahci = find(0x8086, 0x2922).ok_or("no AHCI controller 8086:2922")?;
    check!((ahci.class.base, ahci.class.sub, ahci.class.prog_if) == (0x01, 0x06, 0x01), "AHCI class {:?}", ahci.class);
    check!(ahci.bar(5).is_some_and(|b| b.is_memory()), "AHCI has no memory BAR5: {:?}", ahci.bars);
    check!(e1000.bar(0).is_some_and(|b| b.is_memory()), "e1000 has no memory BAR0: {:?}", e1000.bars);
    Ok(())
}

fn ecam_agrees_with_port_io() -> TestResult {
    check!(!crate::firmware::acpi::info().ecam.is_empty(), "ECAM not in use");
    // SAFETY: with ECAM chosen, nothing else in the kernel uses ports 0xCF8/0xCFC, and tests
    // run one at a time, so this temporary PortIoAccess is the only user.
    let ports = unsafe { pci::PortIoAccess::new() };
    let ecam = crate::platform::pci::access();
    for f in crate::platform::pci::functions() {
        for offset in (0..0x40u16).step_by(4) {
            // SAFETY: reads of the standard header have no side effects.
            let (a, b) = unsafe { (ecam.read(f.address, offset), ports.read(f.address, offset)) };
            check!(a == b, "{:?} offset {offset:#x}: ECAM {a:#010x} vs port I/O {b:#010x}", f.address);
        }
    }
    Ok(())
}

fn bars_are_sized() -> TestResult {
    let functions = crate::platform::pci::functions();
    let e1000 = functions.iter().find(|f| f.device_id == 0x100e).ok_or("no e1000")?;
    let bar0 = e1000.bar(0).ok_or("no BAR0")?;
    // 82540EM SDM §4.1 (Table 4-2): the memory BAR is 128 KiB.
    check!(bar0.size() == 128 * 1024, "e1000 BAR0 sized {} bytes, expected 128 KiB", bar0.size());
    let ahci = functions.iter().find(|f| f.device_id == 0x2922).ok_or("no AHCI")?;
    let abar = ahci.bar(5).ok_or("no BAR5")?;
    check!(abar.size() >= 0x1100 / 2 && abar.size().is_power_of_two(), "ABAR size {}", abar.size());
    Ok(())
}
