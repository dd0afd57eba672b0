//! smoltcp's view of the NIC: a `phy::Device` over the e1000 driver.
//!
//! smoltcp asks for tokens: a receive token hands it one frame, a transmit token lets it build
//! one. Both work on the driver's pool buffers in place — the receive token copies the frame
//! out once (smoltcp may hold it while it also transmits), the transmit token has smoltcp write
//! straight into the transmit buffer the descriptor will point at.

use super::Nic;
use alloc::vec::Vec;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Frames one `Interface::poll` may take from the NIC (Linux's NAPI weight is 64 too). Under a
/// flood the ring refills as fast as it is drained, and without a bound one poll would never
/// return: the shell, which polls between keys, would stop answering.
pub const RX_BUDGET: usize = 64;

/// The NIC, borrowed for one `Interface::poll`.
pub struct Phy<'a> {
    /// The driver smoltcp sends and receives through.
    pub nic: &'a mut Nic,
    /// Frames this poll may still take ([`RX_BUDGET`] at the start).
    pub budget: usize,
}

impl<'a> Phy<'a> {
    /// The NIC for one poll, with a full receive budget.
    pub fn new(nic: &'a mut Nic) -> Self {
        Phy { nic, budget: RX_BUDGET }
    }
}

/// A received frame, copied out of its (already recycled) receive buffer.
pub struct RxToken {
    frame: Vec<u8>,
}

/// Permission to queue one frame.
pub struct TxToken<'a> {
    nic: &'a mut Nic,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        match self.nic.transmit_with(len, |buffer| f.take().map(|f| f(buffer))) {
            Ok(Some(r)) => r,
            Ok(None) => unreachable_fill(),
            Err(e) => {
                // `transmit` checked for a free descriptor, so only a failed buffer allocation
                // gets here. smoltcp still needs its closure run; the frame is then dropped.
                log::warn!("{}: frame of {len} bytes not sent: {e}", self.nic.name());
                let mut scratch = alloc::vec![0u8; len];
                match f.take() {
                    Some(f) => f(&mut scratch),
                    None => unreachable_fill(),
                }
            }
        }
    }
}

/// `transmit_with` runs its closure exactly once when it succeeds, so the `Option` dance above
/// never sees `None`; this keeps that path panic-free all the same.
fn unreachable_fill<R>() -> R {
    log::error!("net: transmit closure ran twice (driver bug)");
    crate::arch::exit::exit_qemu(crate::arch::exit::QemuExitCode::Failed)
}

impl Device for Phy<'_> {
    type RxToken<'a>
        = RxToken
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken, TxToken<'_>)> {
        if super::flood::holding() {
            return None;
        }
        loop {
            self.budget = self.budget.checked_sub(1)?;
            // The flood checker consumes its test frames; everything else goes to the stack.
            if let Some(frame) = self.nic.receive_with(|f| (!super::flood::inspect(f)).then(|| f.to_vec()))? {
                return Some((RxToken { frame }, TxToken { nic: self.nic }));
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        if self.nic.transmit_space() == 0 {
            self.nic.reclaim_transmitted();
        }
        (self.nic.transmit_space() > 0).then_some(TxToken { nic: self.nic })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // 1500-byte IP MTU plus the 14-byte Ethernet header.
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(self.nic.config().tx_descriptors / 2);
        caps
    }
}
