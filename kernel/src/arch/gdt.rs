//! Segmentation, the little of it long mode still uses: a GDT with a kernel code segment and a
//! TSS whose Interrupt Stack Table gives the double-fault handler a stack of its own.
//!
//! Why a separate stack: a double fault often comes from a kernel stack overflow. Handling it on
//! the same (overflowed) stack would fault again — a triple fault, which resets the machine
//! without a word. Intel SDM Vol. 3A §6.14.5 (Interrupt Stack Table).

use spin::Lazy;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot used by the double-fault handler.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;

const IST_STACK_SIZE: usize = 32 * 1024;

/// The kernel stack's size, asked of the bootloader (`boot::BOOTLOADER_CONFIG`), which maps it
/// with a guard page below.
pub const KERNEL_STACK_SIZE: u64 = 512 * 1024;

#[repr(align(16))]
struct IstStack(#[expect(dead_code, reason = "only the CPU uses the stack, through the TSS")] [u8; IST_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: IstStack = IstStack([0; IST_STACK_SIZE]);

/// The addresses of the double-fault stack, for the backtrace walker.
pub fn double_fault_stack() -> core::ops::Range<u64> {
    let start = core::ptr::addr_of!(DOUBLE_FAULT_STACK) as u64;
    start..start + IST_STACK_SIZE as u64
}

static TSS: Lazy<TaskStateSegment> = Lazy::new(|| {
    let mut tss = TaskStateSegment::new();
    // Only the address of the static is taken, never a reference: the CPU is the only writer of
    // this stack, and only while handling a double fault.
    let start = VirtAddr::from_ptr(core::ptr::addr_of!(DOUBLE_FAULT_STACK));
    // Stacks grow down: the IST entry holds the top.
    tss.interrupt_stack_table[DOUBLE_FAULT_IST_INDEX as usize] = start + IST_STACK_SIZE as u64;
    tss
});

struct Selectors {
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

static GDT: Lazy<(GlobalDescriptorTable, Selectors)> = Lazy::new(|| {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(&TSS));
    (gdt, Selectors { code, data, tss })
});

/// Loads the GDT and TSS and reloads the segment registers.
pub fn init() {
    GDT.0.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives in a static
    // and so is never freed.
    unsafe {
        CS::set_reg(GDT.1.code);
        DS::set_reg(GDT.1.data);
        ES::set_reg(GDT.1.data);
        SS::set_reg(GDT.1.data);
        load_tss(GDT.1.tss);
    }
}
