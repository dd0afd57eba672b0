//! Receive-path stress support: a frame checker for floods, and a hook that stops draining the
//! receive ring. `cargo xtask test` (job `net-flood`, `xtask/src/net_tests.rs`) drives both through the
//! `rxcheck` shell command while a host peer floods the NIC.
//!
//! # The test frames
//! Each flood frame is the host's `test_frame(seq)`: destination the guest, source the peer,
//! EtherType 88B5h (IEEE 802 local experimental), a big-endian `u32` sequence number at byte
//! 14, then byte `18 + j` = `j * 13 + seq` (mod 256); its length is a function of `seq`
//! ([`expected_len`]). A frame that is cut short, lengthened, or has any byte changed fails
//! [`check_frame`]: with the sequence number in the pattern, a frame delivered twice or mixed
//! with another one's buffer fails too.
//!
//! # What is counted
//! `good` and `corrupt` frames; `lost`: sequence numbers skipped over (frames that never reached
//! the driver: missed by the NIC — RNBC/MPC — or dropped before it, for example in the host's
//! socket buffer when QEMU's e1000 stops taking frames because its ring is full); `reordered`:
//! a sequence number lower than one already seen.
//!
//! # What QEMU 7.2 counts
//! Its e1000 (`hw/net/e1000.c`) says it cannot receive (`e1000_can_receive`) when it has no
//! free descriptor, so QEMU keeps the frame and stops reading the socket, and the host's socket
//! buffer drops the rest: the device's RNBC and MPC and ICR.RXO (`e1000_receiver_overrun`)
//! stay at 0 under a flood there, and the losses show up only as `lost` here. Real hardware
//! counts them in RNBC/MPC; `net:stats` shows both.
//!
//! # Holding the ring
//! `rxcheck hold` makes the stack's poll stop taking frames from the NIC ([`holding`]), as a
//! driver that is starved of CPU would: the device fills every descriptor it owns and runs out
//! (RDH reaches RDT). `rxcheck release` lets the poll drain again. Interrupts stay on
//! throughout; the handler only acknowledges.

use core::sync::atomic::{AtomicBool, Ordering};

/// EtherType of the test frames.
pub const TEST_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

static CHECKING: AtomicBool = AtomicBool::new(false);
static HOLD: AtomicBool = AtomicBool::new(false);

/// What the checker has seen since it was turned on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Frames whose every byte was right.
    pub good: u64,
    /// Test frames with a wrong length or a wrong byte.
    pub corrupt: u64,
    /// Sequence numbers skipped over.
    pub lost: u64,
    /// Frames older than one already seen.
    pub reordered: u64,
    /// The sequence number expected next.
    pub next: u64,
}

static TALLY: spin::Mutex<Tally> = spin::Mutex::new(Tally { good: 0, corrupt: 0, lost: 0, reordered: 0, next: 0 });

/// The length of test frame `seq` (the host's `test_frame` uses the same rule): 60 and 1514
/// bytes for the first two, then spread over 60..=1514.
pub fn expected_len(seq: u32) -> usize {
    match seq {
        0 => 60,
        1 => 1514,
        _ => 60 + (seq as usize * 7919) % (1514 - 60 + 1),
    }
}

/// Checks one frame of the test protocol; returns its sequence number, or what is wrong.
pub fn check_frame(frame: &[u8]) -> Result<u32, &'static str> {
    let seq = frame.get(14..18).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or("shorter than 18 bytes")?;
    if frame.len() != expected_len(seq) {
        return Err("wrong length for its sequence number");
    }
    let pattern_ok =
        frame[18..].iter().enumerate().all(|(j, &b)| b == (j as u8).wrapping_mul(13).wrapping_add(seq as u8));
    if pattern_ok { Ok(seq) } else { Err("payload differs from the pattern") }
}

/// Whether the stack's poll must leave the receive ring alone (`rxcheck hold`).
pub fn holding() -> bool {
    HOLD.load(Ordering::Relaxed)
}

/// Stops (true) or resumes (false) draining the receive ring: the test hook behind
/// `rxcheck hold` and `rxcheck release`.
pub fn set_hold(on: bool) {
    HOLD.store(on, Ordering::SeqCst);
}

/// Called for every received frame before the stack sees it: while checking, a test frame is
/// checked, counted and consumed (true); anything else goes on to the stack (false).
pub fn inspect(frame: &[u8]) -> bool {
    if !CHECKING.load(Ordering::Relaxed) || frame.get(12..14) != Some(&TEST_ETHERTYPE[..]) {
        return false;
    }
    let mut t = TALLY.lock();
    match check_frame(frame) {
        Ok(seq) => {
            t.good += 1;
            let seq = u64::from(seq);
            if seq >= t.next {
                t.lost += seq - t.next;
                t.next = seq + 1;
            } else {
                t.reordered += 1;
            }
        }
        Err(why) => {
            t.corrupt += 1;
            if t.corrupt <= 3 {
                log::error!("rxcheck: corrupt test frame of {} bytes: {why}", frame.len());
            }
        }
    }
    true
}

/// The tally so far.
pub fn tally() -> Tally {
    *TALLY.lock()
}

/// `rxcheck on|off|hold|release|show|ring`.
pub fn command(args: &[&str]) {
    use crate::println;
    match args {
        ["on"] => {
            *TALLY.lock() = Tally::default();
            CHECKING.store(true, Ordering::SeqCst);
            println!("rxcheck: on");
        }
        ["off"] => {
            CHECKING.store(false, Ordering::SeqCst);
            println!("rxcheck: off");
        }
        ["hold"] => {
            set_hold(true);
            println!("rxcheck: holding the receive ring");
        }
        ["release"] => {
            set_hold(false);
            super::poll();
            println!("rxcheck: draining again");
        }
        ["show"] => {
            let t = tally();
            println!(
                "rxcheck: good={} corrupt={} lost={} reordered={} next={}",
                t.good, t.corrupt, t.lost, t.reordered, t.next
            );
        }
        ["ring"] => match super::with_net(|net| net.nic.rx_ring_state()) {
            Some(s) => println!(
                "rxcheck: ring rdh={} rdt={} ready={} exhausted={}",
                s.rdh,
                s.rdt,
                s.ready,
                if s.exhausted { "yes" } else { "no" }
            ),
            None => println!("rxcheck: no network device"),
        },
        _ => println!("usage: rxcheck on|off|hold|release|show|ring"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn frame(seq: u32) -> alloc::vec::Vec<u8> {
        let mut f = vec![0u8; expected_len(seq)];
        f[12..14].copy_from_slice(&TEST_ETHERTYPE);
        f[14..18].copy_from_slice(&seq.to_be_bytes());
        for (j, b) in f[18..].iter_mut().enumerate() {
            *b = (j as u8).wrapping_mul(13).wrapping_add(seq as u8);
        }
        f
    }

    #[test]
    fn good_frames_pass_and_any_change_is_caught() {
        for seq in [0, 1, 2, 77, 100_000] {
            assert_eq!(check_frame(&frame(seq)), Ok(seq));
        }
        let mut f = frame(5);
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(check_frame(&f).is_err());
        let mut f = frame(5);
        f.pop();
        assert!(check_frame(&f).is_err());
        let mut f = frame(6);
        f[14..18].copy_from_slice(&7u32.to_be_bytes());
        assert!(check_frame(&f).is_err(), "another frame's sequence number");
    }
}
