//! The APIC interrupt architecture: the local APIC in the CPU, I/O APICs for pin interrupts.
//!
//! Devices interrupt the CPU in one of two ways:
//! * **MSI**: the device writes a small message to address 0xFEEx_xxxx; the local APIC of the
//!   CPU named in the address takes it as the vector in the data (Intel SDM Vol. 3A §11.11).
//! * **Pin (INTx)**: the device pulls a wire; an I/O APIC turns the wire's level into a message
//!   with a vector from its redirection table (82093AA I/O APIC datasheet §3.2.4).
//!
//! Either way, the handler must tell the local APIC it is done (EOI) before the next interrupt
//! of equal or lower priority can arrive. The 8259 PICs of the PC/AT are masked: with an APIC
//! they would only deliver spurious interrupts on vectors we use for exceptions.

use crate::firmware::acpi::ApicInfo;
use crate::mm::memory::paging;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};
use spin::Mutex;
use x86_64::instructions::port::Port;

/// Local APIC register offsets (Intel SDM Vol. 3A Table 11-1).
pub(super) mod reg {
    pub const ID: usize = 0x20;
    pub const VERSION: usize = 0x30;
    pub const TPR: usize = 0x80;
    pub const EOI: usize = 0xB0;
    pub const SVR: usize = 0xF0;
    pub const ICR_LOW: usize = 0x300;
    pub const ICR_HIGH: usize = 0x310;
    pub const LVT_TIMER: usize = 0x320;
    pub const TIMER_INITIAL_COUNT: usize = 0x380;
    pub const TIMER_CURRENT_COUNT: usize = 0x390;
    pub const TIMER_DIVIDE: usize = 0x3E0;
}

/// The spurious-interrupt vector. Its handler must not send EOI (SDM §11.9).
pub const SPURIOUS_VECTOR: u8 = 0xFF;

static LOCAL_APIC: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// An I/O APIC: its registers and the first GSI it serves.
struct IoApic {
    id: u8,
    base: *mut u32,
    gsi_base: u32,
    pins: u32,
}

// SAFETY: the registers are only touched with IO_APICS' lock held.
unsafe impl Send for IoApic {}

static IO_APICS: Mutex<Vec<IoApic>> = Mutex::new(Vec::new());
static OVERRIDES: Mutex<Vec<(u8, u32, bool, bool)>> = Mutex::new(Vec::new());

impl IoApic {
    fn read(&self, index: u32) -> u32 {
        // SAFETY: IOREGSEL (+0x00) and IOWIN (+0x10) are the I/O APIC's two registers, mapped
        // uncached at `base`; the caller holds the IO_APICS lock so the select/access pair is atomic.
        unsafe {
            self.base.write_volatile(index);
            self.base.add(4).read_volatile()
        }
    }

    fn write(&self, index: u32, value: u32) {
        // SAFETY: as in `read`.
        unsafe {
            self.base.write_volatile(index);
            self.base.add(4).write_volatile(value);
        }
    }

    /// Programs redirection entry `pin` (datasheet §3.2.4): vector, fixed delivery, physical
    /// destination APIC `dest`, polarity, trigger mode and mask.
    fn redirect(&self, pin: u32, vector: u8, level: bool, active_low: bool, masked: bool, dest: u8) {
        let low =
            u32::from(vector) | (u32::from(active_low) << 13) | (u32::from(level) << 15) | (u32::from(masked) << 16);
        self.write_entry(pin, u64::from(low) | u64::from(dest) << 56);
    }

    /// Writes redirection entry `pin` whole: the high dword (destination, or in remappable
    /// format the handle) first, so the entry is complete when the low dword unmasks it.
    fn write_entry(&self, pin: u32, entry: u64) {
        self.write(0x10 + 2 * pin + 1, (entry >> 32) as u32);
        self.write(0x10 + 2 * pin, entry as u32);
    }
}

pub(super) fn local_apic_reg(offset: usize) -> *mut u32 {
    let base = LOCAL_APIC.load(Ordering::Acquire);
    // The caller checks for null via `is_ready`.
    base.wrapping_add(offset).cast()
}

/// True once [`init`] has mapped the local APIC.
pub fn is_ready() -> bool {
    !LOCAL_APIC.load(Ordering::Acquire).is_null()
}

/// Masks the 8259 PICs, enables the local APIC and masks every I/O APIC pin.
pub fn init(info: &ApicInfo) {
    if info.legacy_pics {
        mask_legacy_pics();
    }
    let base = match paging::map_mmio(info.local_apic, 4096) {
        Ok(base) => base,
        Err(e) => {
            log::error!("APIC: cannot map the local APIC at {:#x}: {e}; interrupts off", info.local_apic);
            return;
        }
    };
    LOCAL_APIC.store(base, Ordering::Release);
    // SAFETY: the local APIC's registers are mapped uncached at `base`. Writing SVR with bit 8
    // software-enables the APIC with 0xFF as the spurious vector; TPR 0 accepts every priority.
    unsafe {
        local_apic_reg(reg::SVR).write_volatile(0x100 | u32::from(SPURIOUS_VECTOR));
        local_apic_reg(reg::TPR).write_volatile(0);
    }
    let mut io_apics = IO_APICS.lock();
    for &(id, address, gsi_base) in &info.io_apics {
        let base = match paging::map_mmio(address, 4096) {
            Ok(base) => base.cast::<u32>(),
            Err(e) => {
                log::error!("APIC: cannot map I/O APIC {id} at {address:#x}: {e}");
                continue;
            }
        };
        let mut io = IoApic { id, base, gsi_base, pins: 0 };
        // IOAPICVER bits 16..24: index of the last redirection entry.
        io.pins = ((io.read(1) >> 16) & 0xff) + 1;
        for pin in 0..io.pins {
            io.redirect(pin, 0, false, false, true, 0);
        }
        log::info!("APIC: I/O APIC {id} at {address:#x}, GSIs {}..{}", gsi_base, gsi_base + io.pins - 1);
        io_apics.push(io);
    }
    *OVERRIDES.lock() = info.overrides.clone();
    log::info!("APIC: local APIC {} (version {:#x}) enabled", local_apic_id(), version());
}

/// Remaps the PICs away from the exception vectors (to 0x20..0x2F) and masks all their lines.
fn mask_legacy_pics() {
    let mut pic1_cmd: Port<u8> = Port::new(0x20);
    let mut pic1_data: Port<u8> = Port::new(0x21);
    let mut pic2_cmd: Port<u8> = Port::new(0xA0);
    let mut pic2_data: Port<u8> = Port::new(0xA1);
    // SAFETY: the standard 8259A initialisation sequence (ICW1..ICW4) on the PC's fixed ports,
    // then OCW1 masking every line; no other code uses the PICs.
    unsafe {
        pic1_cmd.write(0x11);
        pic2_cmd.write(0x11);
        pic1_data.write(0x20);
        pic2_data.write(0x28);
        pic1_data.write(4);
        pic2_data.write(2);
        pic1_data.write(1);
        pic2_data.write(1);
        pic1_data.write(0xff);
        pic2_data.write(0xff);
    }
}

/// This CPU's local APIC id.
pub fn local_apic_id() -> u8 {
    if !is_ready() {
        return 0;
    }
    // SAFETY: the ID register is readable and has no side effects.
    (unsafe { local_apic_reg(reg::ID).read_volatile() } >> 24) as u8
}

fn version() -> u32 {
    // SAFETY: the version register is read-only without side effects.
    unsafe { local_apic_reg(reg::VERSION).read_volatile() }
}

/// Signals end of interrupt to the local APIC.
pub fn eoi() {
    if is_ready() {
        // SAFETY: writing 0 to EOI acknowledges the in-service interrupt.
        unsafe { local_apic_reg(reg::EOI).write_volatile(0) };
    }
}

/// Sends this CPU an interrupt on `vector` (fixed delivery, "self" shorthand; SDM §11.6.1).
pub fn send_self_ipi(vector: u8) {
    if !is_ready() {
        return;
    }
    // SAFETY: ICR writes send an IPI; shorthand 01 (self) ignores the destination field.
    unsafe {
        local_apic_reg(reg::ICR_HIGH).write_volatile(0);
        local_apic_reg(reg::ICR_LOW).write_volatile(u32::from(vector) | (0b01 << 18));
    }
}

/// The GSI ISA IRQ `irq` arrives on, with its trigger mode and polarity (level, active low): the
/// MADT's override for it if there is one, else the IRQ number itself with the defaults given.
pub fn isa_irq_input(irq: u8, level_default: bool, active_low_default: bool) -> (u32, bool, bool) {
    OVERRIDES.lock().iter().find(|o| o.0 == irq).map(|o| (o.1, o.3, o.2)).unwrap_or((
        u32::from(irq),
        level_default,
        active_low_default,
    ))
}

/// Routes ISA IRQ `irq` (as the firmware's interrupt-line register names it) to `vector`,
/// applying the MADT's overrides. ISA interrupts are edge-triggered active-high by default.
pub fn route_isa_irq(irq: u8, vector: u8, level_default: bool, active_low_default: bool) -> bool {
    let (gsi, level, active_low) = isa_irq_input(irq, level_default, active_low_default);
    route_gsi(gsi, vector, level, active_low)
}

/// Masks the I/O APIC input that ISA IRQ `irq` arrives on (after the MADT's overrides).
pub fn mask_isa_irq(irq: u8) {
    let (gsi, _, _) = isa_irq_input(irq, false, false);
    redirect_gsi(gsi, 0, false, false, true);
}

/// Routes global system interrupt `gsi` to `vector` on this CPU, unmasked.
pub fn route_gsi(gsi: u32, vector: u8, level: bool, active_low: bool) -> bool {
    redirect_gsi(gsi, vector, level, active_low, false)
}

/// Programs the redirection entry of the I/O APIC input that serves `gsi`; false (and an error
/// line) if no I/O APIC serves it.
fn redirect_gsi(gsi: u32, vector: u8, level: bool, active_low: bool, masked: bool) -> bool {
    let dest = local_apic_id();
    let io_apics = IO_APICS.lock();
    match io_apics.iter().find(|io| (io.gsi_base..io.gsi_base + io.pins).contains(&gsi)) {
        Some(io) => {
            io.redirect(gsi - io.gsi_base, vector, level, active_low, masked, dest);
            true
        }
        None => {
            log::error!("APIC: no I/O APIC serves GSI {gsi}");
            false
        }
    }
}

/// The MADT id of the I/O APIC that serves `gsi`.
pub fn io_apic_of_gsi(gsi: u32) -> Option<u8> {
    IO_APICS.lock().iter().find(|io| (io.gsi_base..io.gsi_base + io.pins).contains(&gsi)).map(|io| io.id)
}

/// Programs the redirection entry serving `gsi` with `entry`, built by the caller: the
/// remappable format of VT-d §5.1.5.1 when interrupt remapping is on. False if no I/O APIC
/// serves `gsi`.
pub fn program_gsi_entry(gsi: u32, entry: u64) -> bool {
    let io_apics = IO_APICS.lock();
    match io_apics.iter().find(|io| (io.gsi_base..io.gsi_base + io.pins).contains(&gsi)) {
        Some(io) => {
            io.write_entry(gsi - io.gsi_base, entry);
            true
        }
        None => false,
    }
}

/// The MSI address and data that deliver `vector` to this CPU (SDM §11.11.1, §11.11.2):
/// address 0xFEE0_0000 | dest << 12 (physical mode), data = vector (fixed, edge).
pub fn msi_message(vector: u8) -> (u64, u16) {
    (0xFEE0_0000 | (u64::from(local_apic_id()) << 12), u16::from(vector))
}
