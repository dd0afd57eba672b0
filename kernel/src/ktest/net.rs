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
