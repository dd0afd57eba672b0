//! Shell commands of the network service: `ifconfig`, `ping`, `tcpecho`, `frame-echo`,
//! `netbench`. Each polls the stack itself while it waits (there is no scheduler).

use super::{Net, with_net};
use crate::arch::time::{Deadline, now_us};
use crate::println;
use crate::registry::commands::Command;
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress};

pub static COMMANDS: &[Command] = &[
    Command {
        name: "ifconfig",
        usage: "ifconfig",
        about: "NIC, link, DHCP address (waits up to 10 s for a lease)",
        run: ifconfig,
    },
    Command { name: "ping", usage: "ping HOST [COUNT]", about: "ICMP echo to an IPv4 address", run: ping },
    Command {
        name: "tcpecho",
        usage: "tcpecho PORT [CONNECTIONS]",
        about: "TCP echo server; returns after CONNECTIONS (default 1) or 60 s idle",
        run: tcpecho,
    },
    Command {
        name: "frame-echo",
        usage: "frame-echo [COUNT] [IDLE_S]",
        about: "echo raw Ethernet frames (MACs swapped) until COUNT or IDLE_S (default 10) idle",
        run: frame_echo,
    },
    Command {
        name: "netbench",
        usage: "netbench tx SIZE COUNT | rx COUNT [IDLE_S [irq]] | floor COUNT",
        about: "frames per second through the driver; `floor` only writes TDT",
        run: netbench,
    },
];

fn no_nic() {
    println!("no network device (see the boot log)");
}

fn ifconfig(_: &[&str]) {
    let lease = super::wait_for_lease(10_000_000);
    let shown = with_net(|net| {
        let mac = e1000::MacDisplay(net.nic.mac());
        let up = net.nic.link_up();
        let speed = net.nic.link_speed_mbps();
        println!("{} e1000 ({}) mac {mac}", net.bdf, net.nic.model().name);
        println!("  link {} {speed} Mb/s", if up { "up" } else { "down" });
        match lease {
            Some(l) => println!(
                "  inet {} gateway {} dns {} (DHCP)",
                l.address,
                l.router.map_or(alloc::string::String::from("none"), |r| alloc::format!("{r}")),
                l.dns.map_or(alloc::string::String::from("none"), |r| alloc::format!("{r}"))
            ),
            None => println!("  inet none (no DHCP lease yet)"),
        }
        println!("  irq {} ({} interrupts)", net.irq, super::irq::count());
        let c = net.nic.counters();
        println!(
            "  rx {} packets {} bytes, tx {} packets {} bytes, drops {}",
            c.rx_packets,
            c.rx_bytes,
            c.tx_packets,
            c.tx_bytes,
            net.nic.drops()
        );
    });
    if shown.is_none() {
        no_nic();
    }
}

fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

fn ping(args: &[&str]) {
    let (host, count) = match args {
        [host] => (parse_ipv4(host), Some(4)),
        [host, count] => (parse_ipv4(host), count.parse::<u16>().ok()),
        _ => (None, None),
    };
    let (Some(host), Some(count)) = (host, count) else {
        println!("usage: ping HOST [COUNT] (HOST an IPv4 address, e.g. 10.0.2.2)");
        return;
    };
    if !super::is_up() {
        return no_nic();
    }
    if super::wait_for_lease(10_000_000).is_none() {
        println!("ping: no IPv4 address (no DHCP lease)");
        return;
    }
    let ident = (now_us() & 0xffff) as u16;
    let Some(handle) = with_net(|net| {
        let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]);
        let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]);
        let mut socket = icmp::Socket::new(rx, tx);
        let _ = socket.bind(icmp::Endpoint::Ident(ident));
        net.sockets.add(socket)
    }) else {
        return no_nic();
    };
    println!("PING {host}: 56 data bytes");
    let mut received = 0u32;
    for seq in 0..count {
        let sent_at = now_us();
        let mut payload = [0u8; 56];
        payload[..8].copy_from_slice(&sent_at.to_le_bytes());
        let queued = with_net(|net| {
            let socket = net.sockets.get_mut::<icmp::Socket>(handle);
            let repr = Icmpv4Repr::EchoRequest { ident, seq_no: seq, data: &payload };
            match socket.send(repr.buffer_len(), IpAddress::Ipv4(host)) {
                Ok(buf) => {
                    repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &ChecksumCapabilities::default());
                    true
                }
                Err(_) => false,
            }
        });
        if queued != Some(true) {
            println!("ping: cannot queue the request");
            break;
        }
        let deadline = Deadline::after_ms(1000);
        let mut answered = false;
        while !answered && !deadline.expired() {
            with_net(|net| {
                net.poll();
                let socket = net.sockets.get_mut::<icmp::Socket>(handle);
                while let Ok((data, from)) = socket.recv() {
                    let Ok(packet) = Icmpv4Packet::new_checked(data) else { continue };
                    let Ok(Icmpv4Repr::EchoReply { ident: id, seq_no, .. }) =
                        Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default())
                    else {
                        continue;
                    };
                    if id == ident && seq_no == seq {
                        let us = now_us().saturating_sub(sent_at);
                        println!(
                            "{} bytes from {from}: icmp_seq={seq} time={}.{:03} ms",
                            data.len(),
                            us / 1000,
                            us % 1000
                        );
                        answered = true;
                    }
                }
            });
        }
        if answered {
            received += 1;
        } else {
            println!("request icmp_seq={seq} timed out");
        }
    }
    with_net(|net| net.sockets.remove(handle));
    let loss = (u32::from(count) - received) * 100 / u32::from(count.max(1));
    println!("--- {host} ping statistics ---");
    println!("{count} packets transmitted, {received} received, {loss}% packet loss");
}

fn tcpecho(args: &[&str]) {
    let (port, wanted) = match args {
        [port] => (port.parse::<u16>().ok(), Some(1)),
        [port, n] if *n == "--once" => (port.parse::<u16>().ok(), Some(1)),
        [port, n] => (port.parse::<u16>().ok(), n.parse::<u32>().ok()),
        _ => (None, None),
    };
    let (Some(port), Some(wanted)) = (port, wanted) else {
        println!("usage: tcpecho PORT [CONNECTIONS|--once]");
        return;
    };
    if !super::is_up() {
        return no_nic();
    }
    if super::wait_for_lease(10_000_000).is_none() {
        println!("tcpecho: no IPv4 address (no DHCP lease)");
        return;
    }
    let Some(handle) = with_net(|net| {
        let socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 65536]), tcp::SocketBuffer::new(vec![0; 65536]));
        net.sockets.add(socket)
    }) else {
        return no_nic();
    };
    println!("tcpecho: listening on port {port}");
    let mut served = 0u32;
    let mut total = 0u64;
    let mut this_connection = 0u64;
    let mut connected = false;
    let mut pending: Vec<u8> = Vec::new();
    let mut idle = Deadline::after_ms(60_000);
    let mut buf = vec![0u8; 8192];
    while served < wanted {
        if idle.expired() {
            println!("tcpecho: 60 s without activity; stopping");
            break;
        }
        let step = with_net(|net: &mut Net| {
            net.poll();
            let socket = net.sockets.get_mut::<tcp::Socket>(handle);
            let mut event = None;
            if !socket.is_open() {
                if connected {
                    event = Some(Event::Closed);
                } else if socket.listen(port).is_err() {
                    event = Some(Event::ListenFailed);
                }
            } else if socket.is_active() && !connected {
                event = Some(Event::Opened(socket.remote_endpoint()));
            }
            let (mut moved_in, mut moved_out) = (0, 0);
            if socket.can_recv()
                && pending.len() < 65536
                && let Ok(n) = socket.recv_slice(&mut buf)
            {
                pending.extend_from_slice(&buf[..n]);
                moved_in = n;
            }
            if !pending.is_empty()
                && socket.can_send()
                && let Ok(n) = socket.send_slice(&pending)
            {
                pending.drain(..n);
                moved_out = n;
            }
            // The peer closed its side and everything is echoed: close ours.
            if connected && !socket.may_recv() && pending.is_empty() && socket.send_queue() == 0 {
                socket.close();
            }
            net.poll();
            (event, moved_in, moved_out)
        });
        let Some((event, moved_in, moved_out)) = step else { return no_nic() };
        this_connection += moved_out as u64;
        if moved_in + moved_out > 0 {
            idle = Deadline::after_ms(60_000);
        }
        match event {
            Some(Event::ListenFailed) => {
                println!("tcpecho: cannot listen on port {port}");
                break;
            }
            Some(Event::Opened(remote)) => {
                connected = true;
                match remote {
                    Some(r) => println!("tcpecho: connection {} from {r}", served + 1),
                    None => println!("tcpecho: connection {}", served + 1),
                }
            }
            Some(Event::Closed) => {
                connected = false;
                served += 1;
                total += this_connection;
                println!("tcpecho: connection {served} closed after {this_connection} bytes");
                this_connection = 0;
                pending.clear();
            }
            None => {}
        }
    }
    with_net(|net| net.sockets.remove(handle));
    println!("tcpecho: done, served {served} connections, {total} bytes echoed");
}

enum Event {
    Opened(Option<smoltcp::wire::IpEndpoint>),
    Closed,
    ListenFailed,
}

/// Swaps destination and source MAC addresses in place.
pub fn swap_macs(frame: &mut [u8]) {
    if frame.len() >= 12 {
        for i in 0..6 {
            frame.swap(i, i + 6);
        }
    }
}

fn frame_echo(args: &[&str]) {
    let count = args.first().and_then(|s| s.parse::<u64>().ok()).unwrap_or(u64::MAX);
    let idle_s = args.get(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(10);
    if !super::is_up() {
        return no_nic();
    }
    println!("frame-echo: ready, echoing up to {count} frames ({idle_s} s idle timeout)");
    let mut echoed = 0u64;
    let mut lost = 0u64;
    let mut idle = Deadline::after_ms(idle_s * 1000);
    let mut frame = [0u8; e1000::MAX_FRAME_LEN];
    while echoed + lost < count && !idle.expired() {
        let got = with_net(|net| {
            let len = net.nic.receive_with(|f| {
                let n = f.len().min(frame.len());
                frame[..n].copy_from_slice(&f[..n]);
                n
            })?;
            swap_macs(&mut frame[..len]);
            // Wait for a descriptor rather than drop: reclaim until one is free (a hang resets).
            let deadline = Deadline::after_ms(500);
            loop {
                match net.nic.transmit(&frame[..len]) {
                    Ok(()) => return Some(true),
                    Err(e1000::TransmitError::RingFull) if !deadline.expired() => {
                        net.nic.reclaim_transmitted();
                        net.nic.check_transmit_hang();
                    }
                    Err(_) => return Some(false),
                }
            }
        });
        match got {
            None => return no_nic(),
            Some(None) => {
                // Nothing waiting: reclaim finished transmits while idle.
                with_net(|net| net.nic.reclaim_transmitted());
                core::hint::spin_loop();
            }
            Some(Some(true)) => {
                echoed += 1;
                idle = Deadline::after_ms(idle_s * 1000);
            }
            Some(Some(false)) => lost += 1,
        }
    }
    with_net(|net| net.nic.reclaim_transmitted());
    println!("frame-echo: done, echoed {echoed} frames, {lost} not echoed");
}

fn rate(frames: u64, us: u64) -> u64 {
    frames.saturating_mul(1_000_000) / us.max(1)
}

fn netbench(args: &[&str]) {
    if !super::is_up() {
        return no_nic();
    }
    let number = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok());
    // Interrupts off while measuring: the benchmark measures the data path alone. `rx ... irq`
    // keeps them on, so every received frame also pays for its interrupt (what interrupt
    // remapping adds to, `cargo xtask bench ir`).
    let keep_interrupts = args.first() == Some(&"rx") && args.get(3) == Some(&"irq");
    let had_interrupts = with_net(|net| {
        let on = net.nic.interrupts_enabled();
        if !keep_interrupts {
            net.nic.disable_interrupts();
        }
        on
    })
    .unwrap_or(false);
    match (args.first().copied(), number(1), number(2)) {
        (Some("tx"), Some(size), Some(count)) if (14..=1514).contains(&size) => bench_tx(size as usize, count),
        (Some("rx"), Some(count), idle) => bench_rx(count, idle.unwrap_or(3), keep_interrupts),
        (Some("floor"), Some(count), _) => {
            let start = now_us();
            with_net(|net| {
                for _ in 0..count {
                    net.nic.ring_transmit_doorbell();
                }
            });
            let us = now_us() - start;
            println!("netbench: floor writes={count} us={us} per_second={}", rate(count, us));
        }
        _ => println!("usage: netbench tx SIZE COUNT | rx COUNT [IDLE_S] | floor COUNT (SIZE 14..=1514)"),
    }
    if had_interrupts && !keep_interrupts {
        with_net(|net| net.nic.enable_interrupts());
    }
}

fn bench_tx(size: usize, count: u64) {
    let mut frame = vec![0u8; size];
    let Some(mac) = with_net(|net| net.nic.mac()) else { return };
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    for (i, b) in frame[14..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let start = now_us();
    let mut sent = 0u64;
    let mut failed = 0u64;
    with_net(|net| {
        while sent + failed < count {
            match net.nic.transmit(&frame) {
                Ok(()) => sent += 1,
                Err(e1000::TransmitError::RingFull) => {
                    net.nic.reclaim_transmitted();
                }
                Err(_) => failed += 1,
            }
        }
        while net.nic.transmit_pending() > 0 && net.nic.reclaim_transmitted() > 0 {}
        net.nic.reclaim_transmitted();
    });
    let us = now_us() - start;
    println!("netbench: tx size={size} frames={sent} failed={failed} us={us} fps={}", rate(sent, us));
}

/// Receives `count` frames (or until `idle_s` without one). With `interrupts`, the NIC lock
/// (taken with interrupts off) is dropped between frames so each frame's interrupt is taken.
fn bench_rx(count: u64, idle_s: u64, interrupts: bool) {
    let interrupts_before = super::irq::count();
    println!("netbench: rx ready");
    let mut first = None;
    let mut last = 0;
    let mut frames = 0u64;
    let mut bytes = 0u64;
    let mut idle = Deadline::after_ms(30_000);
    let mut receive = |net: &mut super::Net| {
        while frames < count && !idle.expired() {
            if let Some(len) = net.nic.receive_with(|f| f.len()) {
                let t = now_us();
                first.get_or_insert(t);
                last = t;
                frames += 1;
                bytes += len as u64;
                idle = Deadline::after_ms(idle_s * 1000);
                if interrupts {
                    return true; // drop the lock: the frame's interrupt is taken now
                }
            }
        }
        false
    };
    while with_net(&mut receive) == Some(true) {}
    let us = first.map_or(0, |f| last - f);
    // The first frame starts the clock, so it is not counted in the rate.
    let interrupts = super::irq::count() - interrupts_before;
    println!(
        "netbench: rx frames={frames} bytes={bytes} us={us} interrupts={interrupts} fps={}",
        rate(frames.saturating_sub(1), us)
    );
}
