//! Networking: the e1000 driver's kernel glue and the smoltcp stack (issue 5).
//!
//! * [`init`] finds the first 8254x on the PCI bus, gives it a DMA handle and its registers,
//!   starts the driver, wires its interrupt, and builds a smoltcp interface with a DHCP client.
//! * **Interrupts**: QEMU's 82540EM has no MSI capability, so it interrupts through its INTx
//!   pin. On q35 the firmware writes the ISA IRQ its PIRQ link is routed to into the function's
//!   interrupt-line register (SeaBIOS and OVMF both do), and ICH9 also drives the I/O APIC input
//!   of that number; the MADT's interrupt source override for that IRQ says level-triggered,
//!   active-high (found by experiment too: see [`irq`]). Delivery is proven at start-up by
//!   raising a cause through ICS; if nothing arrives the driver falls back to polling.
//! * **No scheduler**: the stack runs when someone polls it — the shell's idle loop through
//!   [`poll_idle`], and every network command while it waits.
//! * **Locking**: everything lives in one `NET` lock, always taken with interrupts off; the
//!   interrupt handler (which only acknowledges ICR) therefore always finds it free on this
//!   single-CPU kernel.

mod commands;
pub mod flood;
pub mod irq;
pub mod phy;

use crate::arch::time::{KernelClock, now_us};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use device_io::Mmio;
use e1000::E1000;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};
use spin::Mutex;

/// The driver as the kernel instantiates it.
pub type Nic = E1000<Mmio, KernelClock>;

/// Shell commands this service adds.
pub static COMMANDS: &[crate::registry::commands::Command] = commands::COMMANDS;

/// An address obtained by DHCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Our address and prefix.
    pub address: Ipv4Cidr,
    /// Default gateway.
    pub router: Option<Ipv4Address>,
    /// First DNS server.
    pub dns: Option<Ipv4Address>,
}

/// The network service's state: one NIC, one interface.
pub struct Net {
    /// The driver.
    pub nic: Nic,
    /// PCI address, for messages.
    pub bdf: String,
    /// How the NIC's interrupts arrive.
    pub irq: irq::IrqMode,
    /// The smoltcp interface.
    pub iface: Interface,
    /// Its sockets.
    pub sockets: SocketSet<'static>,
    dhcp: SocketHandle,
    /// The current DHCP lease.
    pub lease: Option<Lease>,
    last_maintenance_us: u64,
}

static NET: Mutex<Option<Net>> = Mutex::new(None);

/// Runs `f` on the network state with interrupts off; `None` if there is no NIC.
pub fn with_net<T>(f: impl FnOnce(&mut Net) -> T) -> Option<T> {
    x86_64::instructions::interrupts::without_interrupts(|| NET.lock().as_mut().map(f))
}

/// Whether a NIC is driven.
pub fn is_up() -> bool {
    with_net(|_| ()).is_some()
}

/// smoltcp's clock.
pub fn timestamp() -> Instant {
    Instant::from_micros(now_us() as i64)
}

/// Finds and starts the first supported NIC. No NIC: one log line, no driver.
pub fn init() {
    let Some((function, model)) = crate::platform::pci::functions()
        .iter()
        .find_map(|f| e1000::model_for(f.vendor_id, f.device_id).map(|m| (f, m)))
    else {
        log::info!("net: no Intel 8254x network controller found; networking is off");
        return;
    };
    let bdf = format!("{}", pci::Bdf(function.address));
    let name = format!("{bdf} e1000");
    let regs = match crate::platform::pci::map_bar(function, 0) {
        Ok(regs) => regs,
        Err(e) => {
            log::error!("net: {name}: cannot reach the registers: {e}");
            return;
        }
    };
    let dev = crate::services::dma_service::device_for(function, "e1000");
    // The 8254x drives 64-bit addresses (RDBAH/TDBAH, 64-bit descriptor addresses; SDM §3.2.3).
    if let Err(e) = dev.set_mask(64) {
        log::warn!("net: {name}: keeping the 32-bit DMA mask: {e}");
    }
    let mut nic = match E1000::new(regs, KernelClock, dev, name.clone(), model, e1000::Config::default()) {
        Ok(nic) => nic,
        Err(e) => {
            log::error!("net: {name}: {e}");
            return;
        }
    };
    let mac = EthernetAddress(nic.mac());
    let mut config = IfaceConfig::new(HardwareAddress::Ethernet(mac));
    config.random_seed = crate::arch::time::tsc();
    let iface = Interface::new(config, &mut phy::Phy::new(&mut nic), timestamp());
    let mut sockets = SocketSet::new(vec![]);
    let dhcp = sockets.add(dhcpv4::Socket::new());
    let net = Net {
        nic,
        bdf,
        irq: irq::IrqMode::Polling { reason: "not set up yet" },
        iface,
        sockets,
        dhcp,
        lease: None,
        last_maintenance_us: 0,
    };
    x86_64::instructions::interrupts::without_interrupts(|| *NET.lock() = Some(net));
    irq::setup(function);
    crate::registry::scheme::register("net:stats", "e1000 counters: driver, device registers, stack", render_stats);
    crate::registry::scheme::register(
        "net:rings",
        "e1000 descriptors: owner, address, length, status; head/tail",
        || with_net(|net| net.nic.render_rings()).unwrap_or_else(|| String::from("no network device\n")),
    );
}

/// The `net:stats` view.
fn render_stats() -> String {
    with_net(|net| {
        let mut out = net.nic.render_stats();
        out += &format!("irq {}\n", net.irq);
        out += &format!("irq_count {}\n", irq::count());
        match net.lease {
            Some(l) => out += &format!("ipv4 {}\n", l.address),
            None => out += "ipv4 none\n",
        }
        out
    })
    .unwrap_or_else(|| String::from("no network device\n"))
}

impl Net {
    /// Runs the stack once: frames in, frames out, timers; DHCP events; device maintenance.
    pub fn poll(&mut self) {
        self.nic.reclaim_transmitted();
        let now = timestamp();
        self.iface.poll(now, &mut phy::Phy::new(&mut self.nic), &mut self.sockets);
        self.dhcp_events();
        let t = now_us();
        if t.saturating_sub(self.last_maintenance_us) >= 100_000 {
            self.last_maintenance_us = t;
            self.nic.check_transmit_hang();
            if !self.irq.is_interrupt() {
                // ICR latches causes even while masked: this is how polling mode sees LSC.
                self.nic.acknowledge_interrupts();
            }
        }
    }

    fn dhcp_events(&mut self) {
        let event = self.sockets.get_mut::<dhcpv4::Socket>(self.dhcp).poll();
        match event {
            None => {}
            Some(dhcpv4::Event::Configured(config)) => {
                let lease =
                    Lease { address: config.address, router: config.router, dns: config.dns_servers.first().copied() };
                self.iface.update_ip_addrs(|addrs| {
                    addrs.clear();
                    let _ = addrs.push(IpCidr::Ipv4(config.address));
                });
                match config.router {
                    Some(router) => {
                        let _ = self.iface.routes_mut().add_default_ipv4_route(router);
                    }
                    None => {
                        self.iface.routes_mut().remove_default_ipv4_route();
                    }
                }
                if self.lease != Some(lease) {
                    log::info!(
                        "net: {}: DHCP lease {} gateway {}",
                        self.bdf,
                        config.address,
                        config.router.map_or(String::from("none"), |r| format!("{r}"))
                    );
                }
                self.lease = Some(lease);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                if self.lease.is_some() {
                    log::info!("net: {}: DHCP lease lost", self.bdf);
                }
                self.iface.update_ip_addrs(|addrs| addrs.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                self.lease = None;
            }
        }
    }
}

/// Runs the stack once, if there is a NIC.
pub fn poll() {
    with_net(Net::poll);
}

static LAST_IDLE_POLL_US: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Called by the shell while it waits for input: keeps DHCP, ARP and ping replies going.
/// Polls at most every 2 ms so the idle loop stays cheap.
pub fn poll_idle() {
    use core::sync::atomic::Ordering;
    let now = now_us();
    if now.saturating_sub(LAST_IDLE_POLL_US.load(Ordering::Relaxed)) < 2000 {
        return;
    }
    LAST_IDLE_POLL_US.store(now, Ordering::Relaxed);
    poll();
}

/// Polls until a DHCP lease exists or `timeout_us` passes.
pub fn wait_for_lease(timeout_us: u64) -> Option<Lease> {
    let deadline = crate::arch::time::Deadline::after_us(timeout_us);
    loop {
        match with_net(|net| {
            net.poll();
            net.lease
        }) {
            None => return None,
            Some(Some(lease)) => return Some(lease),
            Some(None) if deadline.expired() => return None,
            Some(None) => core::hint::spin_loop(),
        }
    }
}
