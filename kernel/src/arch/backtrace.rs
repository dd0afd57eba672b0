//! Backtraces from frame pointers: which calls led to a panic or a CPU exception.
//!
//! The kernel is built with `-C force-frame-pointers=yes` (`.cargo/config.toml`), and the
//! precompiled `core` and `alloc` for `x86_64-unknown-none` keep frame pointers too. So every
//! function starts with `push rbp; mov rbp, rsp`, and the stack holds a linked list:
//!
//! ```text
//!   higher addresses (the stack grows down)
//!   ┌──────────────────────┐
//!   │ return address       │  rbp + 8   where the caller resumes
//!   │ caller's rbp  ───────┼─► rbp      the next frame up
//!   │ locals …             │
//!   └──────────────────────┘
//! ```
//!
//! Walking it needs no debug information, no unwinder and no heap, which is what a panic handler
//! can afford. The kernel prints bare return addresses; the host, which has the ELF with its
//! DWARF, turns them into `function (file:line)` (`cargo xtask` does it for every line of the
//! form `  #N 0x…`, see `xtask/src/symbols.rs`). The boot image carries no debug information,
//! so the kernel could not do this itself anyway.
//!
//! A walk must never fault: a panic handler that page-faults on a corrupt frame pointer reports
//! nothing. So a frame is followed only while it lies on a stack the kernel knows (the boot stack
//! or the double-fault stack), is 8-byte aligned, and moves up that stack; and at most
//! [`MAX_FRAMES`] are printed. Linux's x86 frame-pointer unwinder (`arch/x86/kernel/unwind_frame.c`
//! in 6.1) applies the same on-stack test before each read.

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

/// The deepest backtrace printed.
pub const MAX_FRAMES: usize = 32;

/// The kernel stack's size, as asked of the bootloader (`boot::BOOTLOADER_CONFIG`).
const BOOT_STACK_SIZE: u64 = crate::arch::gdt::KERNEL_STACK_SIZE;

/// `rbp` of the outermost kernel frame (`boot::kernel_main`), recorded at boot. Frames above it
/// belong to the bootloader's entry glue, which is not ours to read.
static OUTERMOST_FRAME: AtomicU64 = AtomicU64::new(0);

/// Records the calling function's frame as the outermost one. Called first thing in
/// `kernel_main`, which must not be inlined into its caller.
#[inline(always)]
pub fn record_outermost_frame() {
    OUTERMOST_FRAME.store(frame_pointer(), Ordering::Relaxed);
}

/// The current function's frame pointer.
#[inline(always)]
pub fn frame_pointer() -> u64 {
    let rbp: u64;
    // SAFETY: reads a register; no memory is touched and no flag changes.
    unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags)) };
    rbp
}

/// The address ranges a frame may lie in: the boot stack and the double-fault stack.
fn known_stacks() -> [Range<u64>; 2] {
    let top = OUTERMOST_FRAME.load(Ordering::Relaxed);
    // The outermost frame's two words (saved rbp, return address) are the last we read.
    let boot = if top == 0 { 0..0 } else { top.saturating_sub(BOOT_STACK_SIZE)..top + 16 };
    [boot, crate::arch::gdt::double_fault_stack()]
}

/// Which known stack holds the 16 bytes at `rbp`, if any.
fn stack_of(rbp: u64, stacks: &[Range<u64>; 2]) -> Option<usize> {
    if rbp % 8 != 0 {
        return None;
    }
    let end = rbp.checked_add(16)?;
    stacks.iter().position(|s| s.start <= rbp && end <= s.end)
}

/// The frame at `rbp`: its saved rbp (the caller's frame) and its return address, read only if
/// both words lie on a known stack. Also returns which stack that is.
fn read_frame(rbp: u64, stacks: &[Range<u64>; 2]) -> Option<(usize, u64, u64)> {
    let stack = stack_of(rbp, stacks)?;
    // SAFETY: `stack_of` checked that the 16 bytes at `rbp` lie inside a stack that is mapped
    // for the kernel's whole life (the boot stack, or the static double-fault stack), and that
    // `rbp` is aligned for u64 reads.
    let (caller_rbp, return_address) =
        unsafe { ((rbp as *const u64).read_volatile(), ((rbp + 8) as *const u64).read_volatile()) };
    Some((stack, caller_rbp, return_address))
}

/// The return addresses of the frames starting at `rbp`, innermost first.
///
/// Each step reads the two words at `rbp` only after checking they lie on a known stack. A frame
/// must be higher on its stack than the one it was called from; a switch of stacks is allowed
/// once per frame (an exception taken on the double-fault stack returns to the boot stack).
pub fn return_addresses(rbp: u64) -> impl Iterator<Item = u64> {
    let stacks = known_stacks();
    let outermost = OUTERMOST_FRAME.load(Ordering::Relaxed);
    let mut next = Some(rbp);
    core::iter::from_fn(move || {
        let rbp = next.take()?;
        let (stack, caller_rbp, return_address) = read_frame(rbp, &stacks)?;
        if return_address == 0 {
            return None;
        }
        let moves_up = caller_rbp > rbp || stack_of(caller_rbp, &stacks).is_some_and(|s| s != stack);
        if rbp != outermost && moves_up {
            next = Some(caller_rbp);
        }
        Some(return_address)
    })
    .take(MAX_FRAMES)
}

/// Prints a backtrace: `first` (the faulting instruction, for an exception) as frame 0 if given,
/// then the return addresses of the frames from `rbp` up.
///
/// The lines are `  #N 0x…`: the host symbolises exactly that shape. Printing allocates nothing.
pub fn print(first: Option<u64>, rbp: u64) {
    crate::println!("backtrace (innermost first; `cargo xtask` adds function, file and line):");
    let mut index = 0;
    // Runs of one return address (a recursion) are printed once, then counted.
    let mut previous = None;
    let mut repeats = 0;
    for address in first.into_iter().chain(return_addresses(rbp)) {
        if previous == Some(address) {
            repeats += 1;
        } else {
            if repeats > 0 {
                crate::println!("  ... the same return address {repeats} more time(s)");
                repeats = 0;
            }
            crate::println!("  #{index} {address:#018x}");
            previous = Some(address);
        }
        index += 1;
    }
    if repeats > 0 {
        crate::println!("  ... the same return address {repeats} more time(s)");
    }
    if index == 0 {
        crate::println!("  (no frame found on a known stack)");
    }
}

/// Prints the backtrace of an exception: the faulting instruction `rip`, then the frames of the
/// code the exception interrupted.
///
/// `fatal_rbp` is the frame of the (never inlined) function the exception handler called. Its
/// saved rbp is the handler's frame, and the handler's saved rbp is the interrupted function's
/// frame: the CPU pushed its interrupt frame (and error code) where a return address would be,
/// so the handler's own frame is skipped, not read as a call.
pub fn print_exception(rip: u64, fatal_rbp: u64) {
    let stacks = known_stacks();
    let saved_rbp = |rbp: u64| read_frame(rbp, &stacks).map(|(_, caller_rbp, _)| caller_rbp);
    let interrupted = saved_rbp(fatal_rbp).and_then(saved_rbp).unwrap_or(0);
    print(Some(rip), interrupted);
}

/// Prints the backtrace of the calling function.
#[inline(always)]
pub fn print_here() {
    print(None, frame_pointer());
}
