//! The Interrupt Descriptor Table: one handler per CPU exception.
//!
//! Every exception handler prints what an engineer needs to find the bug: the exception's name,
//! the faulting instruction pointer, the error code (decoded for page faults, with the address
//! from CR2), then stops the kernel — or, when the in-kernel test runner is active, reports the
//! running test as failed. Vectors and error codes: Intel SDM Vol. 3A §6.15.

use crate::gdt;
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

/// Reports an exception the kernel cannot continue from and stops.
fn fatal(name: &str, frame: &InterruptStackFrame, error_code: Option<u64>) -> ! {
    let mut report = alloc::format!("{name} at rip {:#x}", frame.instruction_pointer.as_u64());
    if let Some(code) = error_code {
        report += &alloc::format!(", error code {code:#x}");
    }
    report += &alloc::format!(", rsp {:#x}", frame.stack_pointer.as_u64());
    crate::println!("EXCEPTION: {report}");
    crate::ktest::fail_running_test_and_stop(&report)
}

macro_rules! fatal_handler {
    ($fn_name:ident, $name:literal) => {
        extern "x86-interrupt" fn $fn_name(frame: InterruptStackFrame) {
            fatal($name, &frame, None)
        }
    };
    ($fn_name:ident, $name:literal, error_code) => {
        extern "x86-interrupt" fn $fn_name(frame: InterruptStackFrame, code: u64) {
            fatal($name, &frame, Some(code))
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
    let name = alloc::format!("page fault (#PF): {access} of {address:#x}, {cause}");
    fatal(&name, &frame, Some(code.bits()))
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    fatal("double fault (#DF)", &frame, Some(code))
}
