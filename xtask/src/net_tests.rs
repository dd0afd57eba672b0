//! Network evidence checked from the host (issue 5): frames exchanged with a host-side peer over
//! a `socket,udp=127.0.0.1:…` netdev, pcap captures from `filter-dump`, TCP through `hostfwd`.
//!
//! Two machines per mapper (VT-d and Direct):
//! * **user networking** with `hostfwd=tcp:127.0.0.1:<free port>-:7` and a `filter-dump`: the
//!   kernel gets a DHCP lease, pings the gateway 5/5, serves `tcpecho` to a host client that
//!   must get back exactly what it sent; after QEMU exits, every frame the kernel sent in the
//!   capture must be well-formed Ethernet (ARP or IPv4 with correct header, ICMP, UDP and TCP
//!   checksums).
//! * **socket networking**: each UDP datagram is one raw Ethernet frame. A peer here sends 200
//!   frames of 60..1514 bytes (window of 8 in flight), the kernel's `frame-echo` sends each back
//!   with the MACs swapped, the peer checks every byte, and `net:stats` must show no drop.
//!
//! Only 127.0.0.1 is used; ports are chosen by binding to port 0.

use crate::qemu::MachineConfig;
use crate::test::{Tally, boot, command};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

/// QEMU's default MAC for the first NIC.
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The peer's MAC (locally administered).
const PEER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// IEEE 802 "local experimental" EtherType: frames of the test protocol.
pub(crate) const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// Frames the raw-frame check exchanges.
const RAW_FRAMES: usize = 200;
/// Frames in flight at once (the pacing).
const RAW_WINDOW: usize = 8;

pub(crate) const LONG: Duration = Duration::from_secs(60);

/// Runs the host-side network checks.
pub fn run(images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    for (config, iommu) in [("net-vtd", true), ("net-novtd", false)] {
        println!("\n== network checks: {config} ==");
        user_network(config, iommu, images, work, tally);
        raw_frames(config, iommu, images, work, tally);
    }
}

fn machine(name: &str, iommu: bool, network: Vec<String>) -> MachineConfig {
    MachineConfig { name: name.into(), iommu, network: Some(network), ..MachineConfig::standard() }
}

fn free_tcp_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind a TCP port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn free_udp_port() -> Result<u16, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("cannot bind a UDP port: {e}"))?;
    socket.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn contains(text: String, needle: &str) -> Result<(), String> {
    if text.contains(needle) { Ok(()) } else { Err(format!("expected `{needle}` in:\n{text}")) }
}

/// DHCP, ping, TCP echo and the pcap, on user networking.
fn user_network(config: &str, iommu: bool, images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    let name = |check: &str| format!("net::{config}::{check}");
    let port = match free_tcp_port() {
        Ok(p) => p,
        Err(e) => return tally.record(&name("setup"), Err(e)),
    };
    let pcap = work.join(format!("{config}-user.pcap"));
    let _ = std::fs::remove_file(&pcap);
    let network = vec![
        "-netdev".into(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:7"),
        "-device".into(),
        "e1000,netdev=n0".into(),
        "-object".into(),
        format!("filter-dump,id=f0,netdev=n0,file={}", pcap.display()),
    ];
    let machine = machine(config, iommu, network);
    let mut session = match boot(&machine, images, work, "user") {
        Ok(s) => s,
        Err(e) => return tally.record(&name("boot"), Err(e)),
    };
    tally.record(&name("dhcp_lease"), command(&mut session, "ifconfig").and_then(|t| contains(t, "inet 10.0.2.15/24")));
    tally.record(
        &name("ping_gateway_5_of_5"),
        command(&mut session, "ping 10.0.2.2 5").and_then(|t| contains(t, "5 packets transmitted, 5 received")),
    );
    tally.record(&name("tcp_echo"), tcp_echo(&mut session, port));
    tally.record(
        &name("stats_no_drops"),
        command(&mut session, "cat net:stats").and_then(|t| contains(t, "\ndrops 0\n")),
    );
    let _ = session.send_line("exit");
    let exit = session.wait_exit(LONG);
    drop(session);
    tally.record(
        &name("exit"),
        match exit {
            Ok(Some(0)) => Ok(()),
            other => Err(format!("QEMU ended with {other:?}")),
        },
    );
    tally.record(&name("pcap_frames_well_formed"), check_pcap(&pcap));
}

/// `tcpecho 7 1` in the guest; the host sends 100 KB through hostfwd and must get it back.
fn tcp_echo(session: &mut crate::qemu::Session, port: u16) -> Result<(), String> {
    session.send_line("tcpecho 7 1")?;
    session.expect("tcpecho: listening", LONG).map_err(|e| format!("tcpecho did not start: {e:?}"))?;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(10))
        .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let to_send = data.clone();
    let sender = std::thread::spawn(move || -> Result<(), String> {
        for chunk in to_send.chunks(1000) {
            writer.write_all(chunk).map_err(|e| format!("send: {e}"))?;
        }
        writer.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))
    });
    let mut back = Vec::new();
    let mut reader = stream;
    let read = reader.read_to_end(&mut back);
    let sent = sender.join().map_err(|_| "sender thread panicked".to_string())?;
    sent?;
    read.map_err(|e| format!("read after {} bytes: {e}", back.len()))?;
    let done = session.expect("kernel> ", LONG).map_err(|e| format!("tcpecho did not return: {e:?}"))?;
    if back != data {
        let first = back.iter().zip(&data).position(|(a, b)| a != b);
        return Err(format!(
            "echo differs: sent {} bytes, got {} (first difference at {first:?})",
            data.len(),
            back.len()
        ));
    }
    contains(done, "served 1 connections, 100000 bytes echoed")
}

/// Ones'-complement sum of 16-bit big-endian words (RFC 1071).
fn ones_complement_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    let (words, rest) = bytes.as_chunks::<2>();
    for w in words {
        sum += u32::from(u16::from_be_bytes(*w));
    }
    if let [last] = rest {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// True when `bytes` (with its checksum field in place) sums to 0xffff.
fn checksum_ok(initial: u32, bytes: &[u8]) -> bool {
    fold(ones_complement_sum(initial, bytes)) == 0xffff
}

/// Checks one Ethernet frame the kernel sent; returns its kind for the summary.
fn check_frame(frame: &[u8]) -> Result<&'static str, String> {
    if frame.len() < 14 || frame.len() > 1514 {
        return Err(format!("frame of {} bytes", frame.len()));
    }
    match [frame[12], frame[13]] {
        [0x08, 0x06] => {
            let arp = &frame[14..];
            if arp.len() < 28 || arp[..6] != [0, 1, 8, 0, 6, 4] {
                return Err("malformed ARP".into());
            }
            Ok("arp")
        }
        [0x08, 0x00] => {
            let ip = &frame[14..];
            if ip.len() < 20 || ip[0] >> 4 != 4 {
                return Err("not IPv4".into());
            }
            let ihl = usize::from(ip[0] & 0xf) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if ihl < 20 || total < ihl || total > ip.len() {
                return Err(format!("IPv4 header length {ihl}, total {total}, {} bytes present", ip.len()));
            }
            if !checksum_ok(0, &ip[..ihl]) {
                return Err("IPv4 header checksum wrong".into());
            }
            let payload = &ip[ihl..total];
            let proto = ip[9];
            let pseudo = ones_complement_sum(0, &ip[12..20]) + u32::from(proto) + payload.len() as u32;
            match proto {
                1 if checksum_ok(0, payload) => Ok("icmp"),
                1 => Err("ICMP checksum wrong".into()),
                6 if checksum_ok(pseudo, payload) => Ok("tcp"),
                6 => Err("TCP checksum wrong".into()),
                17 if payload.len() >= 8 && (payload[6..8] == [0, 0] || checksum_ok(pseudo, payload)) => Ok("udp"),
                17 => Err("UDP checksum wrong".into()),
                other => Err(format!("IP protocol {other}")),
            }
        }
        other => Err(format!("EtherType {:02x}{:02x}", other[0], other[1])),
    }
}

/// The records of a pcap file (24-byte global header, 16-byte record headers).
pub(crate) fn pcap_records(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    if bytes.len() < 24 {
        return Err(format!("pcap of {} bytes has no global header", bytes.len()));
    }
    let magic = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let little = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        other => return Err(format!("not a pcap file (magic {other:#x})")),
    };
    let word = |at: usize| {
        let b = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }
    };
    if word(20) != 1 {
        return Err(format!("link type {} is not Ethernet", word(20)));
    }
    let mut records = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = word(at + 8) as usize;
        let start = at + 16;
        let end = start.checked_add(len).filter(|&e| e <= bytes.len()).ok_or("truncated pcap record")?;
        records.push(&bytes[start..end]);
        at = end;
    }
    Ok(records)
}

fn check_pcap(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let records = pcap_records(&bytes)?;
    let mut kinds = std::collections::BTreeMap::new();
    for (i, frame) in records.iter().enumerate() {
        if frame.len() < 12 || frame[6..12] != GUEST_MAC {
            continue;
        }
        let kind = check_frame(frame).map_err(|e| format!("frame {i} sent by the kernel: {e}"))?;
        *kinds.entry(kind).or_insert(0usize) += 1;
    }
    let sent: usize = kinds.values().sum();
    for needed in ["udp", "icmp", "tcp"] {
        if !kinds.contains_key(needed) {
            return Err(format!("no {needed} frame from the kernel among {} records ({kinds:?})", records.len()));
        }
    }
    println!(
        "host: pcap {}: {} records, {sent} from the kernel, all well-formed: {kinds:?}",
        path.display(),
        records.len()
    );
    Ok(())
}

/// The `i`th test frame: to the guest, from the peer, test EtherType, sequence number, pattern.
pub(crate) fn test_frame(i: usize) -> Vec<u8> {
    let len = match i {
        0 => 60,
        1 => 1514,
        _ => 60 + (i * 7919) % (1514 - 60 + 1),
    };
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&GUEST_MAC);
    f[6..12].copy_from_slice(&PEER_MAC);
    f[12..14].copy_from_slice(&TEST_ETHERTYPE);
    f[14..18].copy_from_slice(&(i as u32).to_be_bytes());
    for (j, b) in f[18..].iter_mut().enumerate() {
        *b = (j as u8).wrapping_mul(13).wrapping_add(i as u8);
    }
    f
}

/// What the kernel must send back: the same frame with the MACs swapped.
pub(crate) fn expected_echo(frame: &[u8]) -> Vec<u8> {
    let mut e = frame.to_vec();
    e[..6].copy_from_slice(&frame[6..12]);
    e[6..12].copy_from_slice(&frame[..6]);
    e
}

/// A socket netdev whose far end is `peer`. Returns the QEMU arguments and QEMU's port.
pub(crate) fn socket_network(peer: &UdpSocket) -> Result<(Vec<String>, u16), String> {
    let peer_port = peer.local_addr().map_err(|e| e.to_string())?.port();
    let qemu_port = free_udp_port()?;
    let args = vec![
        "-netdev".into(),
        format!("socket,id=n0,udp=127.0.0.1:{peer_port},localaddr=127.0.0.1:{qemu_port}"),
        "-device".into(),
        "e1000,netdev=n0".into(),
    ];
    Ok((args, qemu_port))
}

/// Receives the next test-protocol frame (other frames, e.g. DHCP from the idle stack, are
/// skipped).
pub(crate) fn next_test_frame(peer: &UdpSocket, buf: &mut [u8]) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let n = peer.recv(buf).map_err(|e| format!("no frame back: {e}"))?;
        if n >= 14 && buf[12..14] == TEST_ETHERTYPE {
            return Ok(n);
        }
    }
    Err("no test frame back within 10 s (only other traffic)".into())
}

fn raw_frames(config: &str, iommu: bool, images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    let name = |check: &str| format!("net::{config}::{check}");
    let setup = UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind the peer: {e}"))
        .and_then(|peer| socket_network(&peer).map(|n| (peer, n)));
    let (peer, (network, qemu_port)) = match setup {
        Ok(s) => s,
        Err(e) => return tally.record(&name("raw_setup"), Err(e)),
    };
    let machine = machine(config, iommu, network);
    let mut session = match boot(&machine, images, work, "raw") {
        Ok(s) => s,
        Err(e) => return tally.record(&name("raw_boot"), Err(e)),
    };
    let result = echo_frames(&mut session, &peer, qemu_port, RAW_FRAMES);
    tally.record(&name("raw_frames_echoed_byte_for_byte"), result);
    tally.record(
        &name("raw_frames_no_drops"),
        command(&mut session, "cat net:stats").and_then(|t| contains(t, "\ndrops 0\n")),
    );
    let _ = session.send_line("exit");
    let _ = session.wait_exit(LONG);
}

/// `frame-echo COUNT` in the guest; the peer sends `count` test frames (window of 8) and checks
/// that each comes back byte for byte with the MACs swapped.
fn echo_frames(
    session: &mut crate::qemu::Session,
    peer: &UdpSocket,
    qemu_port: u16,
    count: usize,
) -> Result<(), String> {
    session.send_line(&format!("frame-echo {count} 20"))?;
    session.expect("frame-echo: ready", LONG).map_err(|e| format!("frame-echo did not start: {e:?}"))?;
    peer.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let frames: Vec<Vec<u8>> = (0..count).map(test_frame).collect();
    let mut buf = vec![0u8; 2048];
    let (mut sent, mut checked) = (0, 0);
    while checked < count {
        while sent < count && sent - checked < RAW_WINDOW {
            peer.send_to(&frames[sent], ("127.0.0.1", qemu_port)).map_err(|e| format!("send: {e}"))?;
            sent += 1;
        }
        let n = next_test_frame(peer, &mut buf).map_err(|e| format!("after {checked} echoes: {e}"))?;
        let want = expected_echo(&frames[checked]);
        if buf[..n] != want[..] {
            return Err(format!("echo {checked}: {n} bytes, expected {} (sequence {:?})", want.len(), buf.get(14..18)));
        }
        checked += 1;
    }
    let done = session.expect("kernel> ", LONG).map_err(|e| format!("frame-echo did not return: {e:?}"))?;
    contains(done, &format!("echoed {count} frames, 0 not echoed"))
}

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(10);
/// The most the shell may take to answer a command during the flood. Measured under TCG: about
/// 20 ms. With the per-poll receive budget removed and 300 µs of work per frame, one answer took
/// 3.5 s (100 ms with the budget), so this limit catches a poll that will not let go.
const RESPONSIVE: Duration = Duration::from_secs(2);

/// `key=N` from a `rxcheck:` or `net:stats` text.
fn field(text: &str, key: &str) -> Option<u64> {
    text.split(|c: char| c.is_whitespace())
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .or_else(|| text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()))
}

/// The receive path under stress (socket networking, VT-d): a 10 s flood at the host's full
/// rate with interrupts on, then a receive ring the kernel stops draining. See
/// `kernel/src/services/net/flood.rs` for the kernel side.
pub fn rx_flood(images: &boot::DiskImages, work: &Path, tally: &mut Tally) {
    println!("\n== network under stress: RX flood and an exhausted receive ring ==");
    let name = |check: &str| format!("net::flood::{check}");
    let setup = UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind the peer: {e}"))
        .and_then(|peer| socket_network(&peer).map(|n| (peer, n)));
    let (peer, (network, qemu_port)) = match setup {
        Ok(s) => s,
        Err(e) => return tally.record(&name("setup"), Err(e)),
    };
    let machine = machine("net-flood", true, network);
    let mut session = match boot(&machine, images, work, "flood") {
        Ok(s) => s,
        Err(e) => return tally.record(&name("boot"), Err(e)),
    };
    let send = move |peer: &UdpSocket, seq: usize| peer.send_to(&test_frame(seq), ("127.0.0.1", qemu_port)).is_ok();

    // 1. The flood: a thread sends as fast as the host can; the shell must answer meanwhile.
    let flood = command(&mut session, "rxcheck on").and_then(|t| contains(t, "rxcheck: on")).and_then(|()| {
        let sender = peer.try_clone().map_err(|e| e.to_string())?;
        let flooder = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seq = 0usize;
            while start.elapsed() < FLOOD {
                if send(&sender, seq) {
                    seq += 1;
                }
            }
            seq
        });
        let mut slowest = Duration::ZERO;
        let mut answers = Vec::new();
        for line in ["rxcheck show", "cat net:stats"] {
            std::thread::sleep(Duration::from_secs(3));
            let asked = Instant::now();
            let answer = command(&mut session, line);
            slowest = slowest.max(asked.elapsed());
            answers.push(answer);
        }
        let sent = flooder.join().map_err(|_| "the flood thread panicked".to_string())?;
        Ok((sent, slowest, answers))
    });
    let (sent, slowest, answers) = match flood {
        Ok(f) => f,
        Err(e) => return tally.record(&name("flood"), Err(e)),
    };
    println!("flood: {sent} frames sent in {} s; slowest shell answer during it {:?}", FLOOD.as_secs(), slowest);
    tally.record(
        &name("shell_answers_during_the_flood"),
        if slowest <= RESPONSIVE && answers.iter().all(|a| a.is_ok()) {
            Ok(())
        } else {
            Err(format!("slowest answer {slowest:?} (limit {RESPONSIVE:?}): {answers:?}"))
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let shown = command(&mut session, "rxcheck show");
    let stats = command(&mut session, "cat net:stats").unwrap_or_default();
    tally.record(
        &name("no_frame_corrupted_and_losses_counted"),
        shown.and_then(|t| {
            let (good, corrupt, lost) = (field(&t, "good"), field(&t, "corrupt"), field(&t, "lost"));
            println!(
                "flood: kernel checked good={good:?} corrupt={corrupt:?} lost={lost:?} of {sent} sent; NIC: MPC={:?} RNBC={:?} \
                 rx_overruns={:?} rx_dropped={:?}",
                field(&stats, "hw.MPC"),
                field(&stats, "hw.RNBC"),
                field(&stats, "rx_overruns"),
                field(&stats, "rx_dropped")
            );
            match (good, corrupt, lost) {
                (Some(g), Some(0), Some(l)) if g > 0 && g + l <= sent as u64 => Ok(()),
                _ => Err(format!("expected good>0, corrupt=0 and good+lost <= {sent}: {}", t.trim())),
            }
        }),
    );
    tally.record(
        &name("frames_flow_after_the_flood"),
        command(&mut session, "rxcheck off").and_then(|_| echo_frames(&mut session, &peer, qemu_port, 50)),
    );

    // 2. The ring exhausted: the kernel stops draining, the NIC fills every descriptor.
    let ring = command(&mut session, "rxcheck on").and_then(|_| command(&mut session, "rxcheck hold")).and_then(|_| {
        for seq in 0..400 {
            send(&peer, seq);
            if seq % 50 == 49 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        command(&mut session, "rxcheck ring")
    });
    let stats = command(&mut session, "cat net:stats").unwrap_or_default();
    println!(
        "ring: {}; rx_ring_exhausted={:?} RNBC={:?} MPC={:?} rx_overruns={:?}",
        ring.as_deref().unwrap_or("?").trim(),
        field(&stats, "rx_ring_exhausted"),
        field(&stats, "hw.RNBC"),
        field(&stats, "hw.MPC"),
        field(&stats, "rx_overruns")
    );
    tally.record(
        &name("held_ring_is_exhausted_and_counted"),
        ring.and_then(|t| contains(t, "exhausted=yes")).and_then(|()| match field(&stats, "rx_ring_exhausted") {
            Some(n) if n >= 1 => Ok(()),
            other => Err(format!("rx_ring_exhausted = {other:?} in net:stats")),
        }),
    );
    tally.record(
        &name("draining_resumes_and_every_held_frame_is_right"),
        command(&mut session, "rxcheck release").and_then(|_| {
            std::thread::sleep(Duration::from_millis(500));
            let t = command(&mut session, "rxcheck show")?;
            match (field(&t, "good"), field(&t, "corrupt")) {
                (Some(g), Some(0)) if g >= 127 => Ok(()),
                _ => Err(format!("expected at least the 127 held frames, none corrupt: {}", t.trim())),
            }
        }),
    );
    tally.record(
        &name("traffic_flows_after_the_ring_ran_out"),
        command(&mut session, "rxcheck off").and_then(|_| echo_frames(&mut session, &peer, qemu_port, 50)),
    );
    let _ = session.send_line("exit");
    let _ = session.wait_exit(LONG);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp_frame() -> Vec<u8> {
        // A DHCP-like UDP datagram with correct checksums, built by hand.
        let payload = b"hello";
        let mut udp = vec![0, 68, 0, 67, 0, 13, 0, 0];
        udp.extend_from_slice(payload);
        let mut ip = vec![0x45, 0, 0, 33, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2];
        let c = !fold(ones_complement_sum(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let pseudo = ones_complement_sum(0, &ip[12..20]) + 17 + udp.len() as u32;
        let c = !fold(ones_complement_sum(pseudo, &udp));
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&GUEST_MAC);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&udp);
        frame
    }

    #[test]
    fn fields_are_read_from_rxcheck_and_stats_lines() {
        let shown = "rxcheck: good=141974 corrupt=0 lost=232495 reordered=0 next=374469\nkernel> ";
        assert_eq!(
            (field(shown, "good"), field(shown, "corrupt"), field(shown, "lost")),
            (Some(141974), Some(0), Some(232495))
        );
        let stats = "drops 0\nrx_overruns 3\nrx_ring_exhausted 1\nhw.MPC 7\nhw.RNBC 9\n";
        assert_eq!(field(stats, "rx_overruns"), Some(3));
        assert_eq!(field(stats, "rx_ring_exhausted"), Some(1));
        assert_eq!((field(stats, "hw.MPC"), field(stats, "hw.RNBC")), (Some(7), Some(9)));
        assert_eq!(field(stats, "missing"), None);
    }

    #[test]
    fn frame_checker_accepts_good_and_rejects_bad_checksums() {
        let good = ipv4_udp_frame();
        assert_eq!(check_frame(&good), Ok("udp"));
        let mut bad_ip = good.clone();
        bad_ip[14 + 8] ^= 1; // TTL changed, checksum not
        assert!(check_frame(&bad_ip).unwrap_err().contains("IPv4 header checksum"));
        let mut bad_udp = good.clone();
        *bad_udp.last_mut().unwrap() ^= 0x20;
        assert!(check_frame(&bad_udp).unwrap_err().contains("UDP checksum"));
        assert!(check_frame(&good[..10]).is_err());
    }

    #[test]
    fn pcap_parser_reads_records() {
        let frame = ipv4_udp_frame();
        let mut pcap = Vec::new();
        pcap.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        pcap.extend_from_slice(&2u16.to_le_bytes());
        pcap.extend_from_slice(&4u16.to_le_bytes());
        for w in [0u32, 0, 65535, 1] {
            pcap.extend_from_slice(&w.to_le_bytes());
        }
        for _ in 0..2 {
            for w in [0u32, 0, frame.len() as u32, frame.len() as u32] {
                pcap.extend_from_slice(&w.to_le_bytes());
            }
            pcap.extend_from_slice(&frame);
        }
        let records = pcap_records(&pcap).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1], &frame[..]);
        assert!(pcap_records(&pcap[..pcap.len() - 1]).is_err());
        assert!(pcap_records(&[0; 24]).is_err());
    }

    #[test]
    fn test_frames_cover_the_size_range_and_echo_swaps_macs() {
        let sizes: Vec<usize> = (0..RAW_FRAMES).map(|i| test_frame(i).len()).collect();
        assert_eq!(sizes.iter().min(), Some(&60));
        assert_eq!(sizes.iter().max(), Some(&1514));
        let f = test_frame(5);
        let e = expected_echo(&f);
        assert_eq!(e[..6], PEER_MAC);
        assert_eq!(e[6..12], GUEST_MAC);
        assert_eq!(e[12..], f[12..]);
    }
}
