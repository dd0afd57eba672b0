//! The Interrupt Descriptor Table: one handler per CPU exception.
//!
//! Every exception handler prints what an engineer needs to find the bug: the exception's name,
//! the faulting instruction pointer, the error code (decoded for page faults, with the address
//! from CR2), then stops the kernel through [`crate::arch::crash`], which tells the in-kernel test
//! runner (when it is built in) so that it reports the running test as failed. Vectors and error
//! codes: Intel SDM Vol. 3A §6.15.

use crate::arch::gdt;
use core::fmt;
use spin::Lazy;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

static IDT: Lazy<InterruptDescriptorTable> = Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(divide_error);
    idt.debug.set_handler_fn(debug);
    idt.non_maskable_interrupt.set_handler_fn(nmi);
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.overflow.set_handler_fn(overflow);
    idt.bound_range_exceeded.set_handler_fn(bound_range);
    idt.invalid_opcode.set_handler_fn(invalid_opcode);
    idt.device_not_available.set_handler_fn(device_not_available);
    idt.invalid_tss.set_handler_fn(invalid_tss);
    idt.segment_not_present.set_handler_fn(segment_not_present);
    idt.stack_segment_fault.set_handler_fn(stack_segment_fault);
    idt.general_protection_fault.set_handler_fn(general_protection);
    idt.page_fault.set_handler_fn(page_fault);
    idt.x87_floating_point.set_handler_fn(x87_floating_point);
    idt.alignment_check.set_handler_fn(alignment_check);
    idt.simd_floating_point.set_handler_fn(simd_floating_point);
    for (i, handler) in DEVICE_HANDLERS.iter().enumerate() {
        idt[FIRST_DEVICE_VECTOR + i as u8].set_handler_fn(*handler);
    }
    idt[crate::arch::apic::SPURIOUS_VECTOR].set_handler_fn(spurious);
    // SAFETY: the IST index names the stack set up in gdt::TSS, which is used for nothing else.
    unsafe {
        idt.double_fault.set_handler_fn(double_fault).set_stack_index(gdt::DOUBLE_FAULT_IST_INDEX);
    }
    idt
});

/// Loads the IDT. Call after [`gdt::init`].
pub fn init() {
    IDT.load();
}

/// Turns interrupts on (after the APIC is set up).
pub fn enable() {
    x86_64::instructions::interrupts::enable();
}

// ---------------------------------------------------------------------------------------------
// Device interrupts: vectors handed out at run time.
// ---------------------------------------------------------------------------------------------

/// First vector handed to devices. Vectors 0..32 are exceptions; 0x20..0x30 stay free for the
/// (masked) legacy PICs' remapped range.
pub const FIRST_DEVICE_VECTOR: u8 = 0x40;
/// Number of device vectors.
pub const DEVICE_VECTORS: usize = 32;

/// What runs when a device vector fires: a plain function and a word of context.
#[derive(Clone, Copy)]
struct DeviceHandler {
    handler: fn(usize),
    context: usize,
}

static HANDLERS: spin::Mutex<[Option<DeviceHandler>; DEVICE_VECTORS]> = spin::Mutex::new([None; DEVICE_VECTORS]);

/// Why a vector could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFreeVector;

/// Hands out a free vector whose interrupts call `handler(context)` (then EOI).
pub fn allocate_vector(handler: fn(usize), context: usize) -> Result<u8, NoFreeVector> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut handlers = HANDLERS.lock();
        let slot = handlers.iter().position(Option::is_none).ok_or(NoFreeVector)?;
        handlers[slot] = Some(DeviceHandler { handler, context });
        Ok(FIRST_DEVICE_VECTOR + slot as u8)
    })
}

/// Returns a vector; its interrupts are ignored from now on.
pub fn free_vector(vector: u8) {
    let Some(slot) = vector.checked_sub(FIRST_DEVICE_VECTOR).map(usize::from) else { return };
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(h) = HANDLERS.lock().get_mut(slot) {
            *h = None;
        }
    });
}

fn dispatch(slot: usize) {
    // Copy the handler out: it may allocate or free vectors itself.
    let handler = HANDLERS.lock()[slot];
    match handler {
        Some(h) => (h.handler)(h.context),
        None => log::warn!("interrupt on unassigned vector {:#x}", FIRST_DEVICE_VECTOR as usize + slot),
    }
    crate::arch::apic::eoi();
}

macro_rules! device_handlers {
    ($($slot:literal)*) => {
        [$({
            extern "x86-interrupt" fn handler(_frame: InterruptStackFrame) {
                dispatch($slot)
            }
            handler as extern "x86-interrupt" fn(InterruptStackFrame)
        }),*]
    };
}

static DEVICE_HANDLERS: [extern "x86-interrupt" fn(InterruptStackFrame); DEVICE_VECTORS] = device_handlers!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
);

/// Spurious interrupts need no EOI (Intel SDM Vol. 3A §11.9).
extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {}

/// What `fatal` prints about an exception: its name, where it struck, and the error code.
struct ExceptionReport<'a> {
    name: &'a dyn fmt::Display,
    frame: &'a InterruptStackFrame,
    error_code: Option<u64>,
}

impl fmt::Display for ExceptionReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at rip {:#x}", self.name, self.frame.instruction_pointer.as_u64())?;
        if let Some(code) = self.error_code {
            write!(f, ", error code {code:#x}")?;
        }
        write!(f, ", rsp {:#x}", self.frame.stack_pointer.as_u64())
    }
}

/// Reports an exception the kernel cannot continue from, with a backtrace, and stops.
///
/// Nothing here allocates: the exception may have struck while the heap's lock was held.
/// Never inlined, so that its caller is always the exception handler: the backtrace starts two
/// frames up, in the code the exception interrupted (see [`crate::arch::backtrace::print_exception`]).
#[inline(never)]
fn fatal(name: &dyn fmt::Display, frame: &InterruptStackFrame, error_code: Option<u64>) -> ! {
    crate::arch::serial::begin_crash_report();
    let report = ExceptionReport { name, frame, error_code };
    crate::println!("EXCEPTION: {report}");
    crate::arch::backtrace::print_exception(
        frame.instruction_pointer.as_u64(),
        crate::arch::backtrace::frame_pointer(),
    );
    crate::arch::crash::stop_after_exception(&report)
}

macro_rules! fatal_handler {
    ($fn_name:ident, $name:literal) => {
        extern "x86-interrupt" fn $fn_name(frame: InterruptStackFrame) {
            fatal(&$name, &frame, None)
        }
    };
    ($fn_name:ident, $name:literal, error_code) => {
        extern "x86-interrupt" fn $fn_name(frame: InterruptStackFrame, code: u64) {
            fatal(&$name, &frame, Some(code))
        }
    };
}

fatal_handler!(divide_error, "divide error (#DE)");
fatal_handler!(debug, "debug (#DB)");
fatal_handler!(nmi, "non-maskable interrupt");
fatal_handler!(overflow, "overflow (#OF)");
fatal_handler!(bound_range, "bound range exceeded (#BR)");
fatal_handler!(invalid_opcode, "invalid opcode (#UD)");
fatal_handler!(device_not_available, "device not available (#NM)");
fatal_handler!(invalid_tss, "invalid TSS (#TS)", error_code);
fatal_handler!(segment_not_present, "segment not present (#NP)", error_code);
fatal_handler!(stack_segment_fault, "stack-segment fault (#SS)", error_code);
fatal_handler!(general_protection, "general protection fault (#GP)", error_code);
fatal_handler!(x87_floating_point, "x87 floating point (#MF)");
fatal_handler!(alignment_check, "alignment check (#AC)", error_code);
fatal_handler!(simd_floating_point, "SIMD floating point (#XM)");

/// A breakpoint is not an error: report it and carry on.
extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    crate::println!("EXCEPTION: breakpoint (#BP) at rip {:#x}", frame.instruction_pointer.as_u64());
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let address = Cr2::read_raw();
    let access = if code.contains(PageFaultErrorCode::INSTRUCTION_FETCH) {
        "instruction fetch"
    } else if code.contains(PageFaultErrorCode::CAUSED_BY_WRITE) {
        "write"
    } else {
        "read"
    };
    let cause = if code.contains(PageFaultErrorCode::PROTECTION_VIOLATION) {
        "protection violation"
    } else {
        "page not present"
    };
    fatal(&format_args!("page fault (#PF): {access} of {address:#x}, {cause}"), &frame, Some(code.bits()))
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    fatal(&"double fault (#DF)", &frame, Some(code))
}
