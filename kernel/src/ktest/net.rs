//! In-kernel network tests (issue 5): the driver bound to QEMU's e1000, its pools visible, its
//! interrupt delivered, and frames really crossing the wire (a ping of the user-network
//! gateway, which needs DMA both ways).

use super::{KernelTest, TestResult};
use crate::check;
use crate::services::net::{self, with_net};
use alloc::format;

pub static TESTS: &[KernelTest] = &[
    KernelTest { name: "net::driver_bound_with_mac_and_link", run: driver_bound_with_mac_and_link },
    KernelTest { name: "net::pools_visible_in_dma_view", run: pools_visible_in_dma_view },
    KernelTest { name: "net::interrupt_is_delivered", run: interrupt_is_delivered },
    KernelTest { name: "net::dhcp_lease_and_gateway_ping", run: dhcp_lease_and_gateway_ping },
    KernelTest { name: "net::reset_recovers", run: reset_recovers },
    KernelTest { name: "net::stats_view", run: stats_view },
    KernelTest { name: "net::receive_ring_exhausted_then_recovers", run: receive_ring_exhausted_then_recovers },
];

fn driver_bound_with_mac_and_link() -> TestResult {
    let state = with_net(|n| (n.nic.mac(), n.nic.link_up(), n.nic.model().name));
    let Some((mac, link, model)) = state else {
        return Err("no NIC driven (q35 has an e1000): see the boot log".into());
    };
    check!(mac != [0; 6] && mac[0] & 1 == 0, "bad MAC {}", e1000::MacDisplay(mac));
    check!(link, "link down");
    check!(model == "82540EM", "model {model}, expected QEMU's 82540EM");
    Ok(())
}

fn pools_visible_in_dma_view() -> TestResult {
    let view = crate::registry::scheme::read("dma:pools").ok_or("no dma:pools view")?;
    for pool in ["e1000-rings", "e1000-rx-buf", "e1000-tx-buf"] {
        check!(view.contains(pool), "{pool} missing from dma:pools:\n{view}");
    }
    let line = view.lines().find(|l| l.starts_with("e1000-rx-buf")).unwrap_or("");
    let in_use: Option<usize> = line.split_whitespace().nth(1).and_then(|n| n.parse().ok());
    // One buffer per receive descriptor, however many the configuration asks for.
    let descriptors = with_net(|n| n.nic.config().rx_descriptors).ok_or("no NIC")?;
    check!(in_use == Some(descriptors), "e1000-rx-buf should have its {descriptors} buffers in use: `{line}`");
    Ok(())
}

fn interrupt_is_delivered() -> TestResult {
    let mode = with_net(|n| n.irq).ok_or("no NIC")?;
    check!(mode.is_interrupt(), "NIC is in {mode}");
    check!(net::irq::self_test(50_000), "a cause raised through ICS did not interrupt within 50 ms ({mode})");
    Ok(())
}

fn dhcp_lease_and_gateway_ping() -> TestResult {
    let lease = net::wait_for_lease(15_000_000).ok_or("no DHCP lease within 15 s")?;
    check!(lease.address.address() == core::net::Ipv4Addr::new(10, 0, 2, 15), "lease {}", lease.address);
    let router = lease.router.ok_or("no gateway in the lease")?;
    let before = with_net(|n| n.nic.counters()).ok_or("no NIC")?;
    crate::ui::shell::execute(&format!("ping {router} 2"));
    let after = with_net(|n| n.nic.counters()).ok_or("no NIC")?;
    check!(after.tx_packets >= before.tx_packets + 2, "echo requests not sent: {before:?} -> {after:?}");
    check!(after.rx_packets >= before.rx_packets + 2, "echo replies not received: {before:?} -> {after:?}");
    Ok(())
}

fn reset_recovers() -> TestResult {
    let resets = with_net(|n| n.nic.reset().map(|_| n.nic.counters().resets)).ok_or("no NIC")?;
    let resets = resets.map_err(|e| format!("reset failed: {e}"))?;
    check!(resets >= 2, "reset not counted");
    let rx_before = with_net(|n| n.nic.counters().rx_packets).unwrap_or(0);
    // QEMU's e1000 holds received frames back for 1 s after RCTL is written (its
    // flush_queue_timer), so the first echo reply may come late: allow three.
    crate::ui::shell::execute("ping 10.0.2.2 3");
    let rx_after = with_net(|n| n.nic.counters().rx_packets).unwrap_or(0);
    check!(rx_after > rx_before, "no frame received after the reset");
    Ok(())
}

fn stats_view() -> TestResult {
    let text = crate::registry::scheme::read("net:stats").ok_or("no net:stats view")?;
    for key in ["drops ", "rx_packets ", "tx_packets ", "hw.GPRC ", "hw.MPC ", "hw.RNBC ", "irq "] {
        check!(text.contains(key), "`{key}` missing from net:stats:\n{text}");
    }
    Ok(())
}

/// An ARP request from `mac`/10.0.2.15 for `target`, padded to the 60-byte minimum.
fn arp_request(mac: [u8; 6], target: core::net::Ipv4Addr) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    // Ethernet/IPv4, 6-byte and 4-byte addresses, operation 1 (request): RFC 826.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&[10, 0, 2, 15]);
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// The receive ring runs out, and the driver recovers: with draining held (the `rxcheck hold`
/// hook), 200 ARP requests to QEMU's user-network gateway bring 200 replies, more than the
/// ring's descriptors; the device must end with none free (RDH == RDT), the driver must count
/// it, and once draining resumes a ping must go through.
fn receive_ring_exhausted_then_recovers() -> TestResult {
    let lease = net::wait_for_lease(15_000_000).ok_or("no DHCP lease within 15 s")?;
    let router = lease.router.ok_or("no gateway in the lease")?;
    let mac = with_net(|n| n.nic.mac()).ok_or("no NIC")?;
    let request = arp_request(mac, router);
    net::flood::set_hold(true);
    let result = (|| -> TestResult {
        let mut sent = 0;
        let deadline = crate::arch::time::Deadline::after_us(5_000_000);
        while sent < 200 && !deadline.expired() {
            let ok = with_net(|n| {
                n.nic.reclaim_transmitted();
                n.nic.transmit(&request).is_ok()
            });
            if ok == Some(true) {
                sent += 1;
            }
        }
        check!(sent == 200, "only {sent} ARP requests sent in 5 s");
        let deadline = crate::arch::time::Deadline::after_us(2_000_000);
        let state = loop {
            let state = with_net(|n| n.nic.rx_ring_state()).ok_or("no NIC")?;
            if state.exhausted || deadline.expired() {
                break state;
            }
            crate::arch::time::delay_us(1000);
        };
        check!(state.exhausted, "the receive ring never ran out: {state:?}");
        let counted = with_net(|n| n.nic.counters().rx_ring_exhausted).unwrap_or(0);
        check!(counted >= 1, "rx_ring_exhausted not counted");
        Ok(())
    })();
    net::flood::set_hold(false);
    result?;
    // Drain: the held replies, then the ones QEMU queued meanwhile, until nothing more comes.
    let rx = || with_net(|n| n.nic.counters().rx_packets).unwrap_or(0);
    let start = rx();
    let deadline = crate::arch::time::Deadline::after_us(3_000_000);
    let mut last = start;
    loop {
        net::poll();
        crate::arch::time::delay_us(50_000);
        net::poll();
        let now = rx();
        if now == last || deadline.expired() {
            break;
        }
        last = now;
    }
    check!(last >= start + 127, "draining took only {} frames after the hold", last - start);
    let rx_before = rx();
    crate::ui::shell::execute(&format!("ping {router} 2"));
    let rx_after = rx();
    let state = with_net(|n| n.nic.rx_ring_state()).ok_or("no NIC")?;
    check!(rx_after >= rx_before + 2, "frames did not flow after the ring was drained ({rx_before} -> {rx_after})");
    check!(!state.exhausted, "the ring is still exhausted after draining: {state:?}");
    Ok(())
}
