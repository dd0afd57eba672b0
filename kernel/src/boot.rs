//! From the bootloader's hand-off to the shell prompt.
//!
//! The top of the layer stack (see the crate's documentation): the only module that names every
//! layer, to bring them up in order.

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::info::BootInfo;

/// The kernel stack's size (defined beside the other stacks, in [`crate::arch::gdt`]).
pub use crate::arch::gdt::KERNEL_STACK_SIZE;

/// Where the bootloader places the kernel: the ELF's address 0 is mapped here, so a symbol at
/// ELF address `a` runs at `KERNEL_BASE + a`. A fixed base (the top 2 GiB, as Linux's
/// `__START_KERNEL_map`) lets gdb and `cargo xtask` find symbols without asking the kernel
/// where it is; `xtask/src/symbols.rs` holds the same number.
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;

/// What we ask of the bootloader: the kernel at [`KERNEL_BASE`], all physical memory mapped (at
/// an offset it chooses), and a kernel stack big enough for the tests.
pub static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.kernel_base = Mapping::FixedAddress(KERNEL_BASE);
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = KERNEL_STACK_SIZE;
    config
};

/// The kernel's main function, called by the entry point in `main.rs`.
///
/// Never inlined: its frame is the outermost one a backtrace reads (see [`crate::arch::backtrace`]).
#[inline(never)]
pub fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    crate::arch::backtrace::record_outermost_frame();
    crate::arch::serial::init();
    crate::ui::logger::init(log::LevelFilter::Info);
    crate::println!();
    log::info!("dma-kernel {} booting", env!("CARGO_PKG_VERSION"));

    crate::ui::console::init(boot_info.framebuffer.as_mut());
    crate::arch::gdt::init();
    crate::arch::interrupts::init();

    let offset = boot_info.physical_memory_offset.into_option();
    if let Err(e) = crate::mm::memory::init(&boot_info.memory_regions, offset, crate::mm::init_heap) {
        crate::println!("cannot set up memory: {e:?}");
        crate::arch::exit::exit_qemu(crate::arch::exit::QemuExitCode::Failed);
    }
    let stats = crate::mm::memory::frame_stats();
    log::info!(
        "memory: {} MiB usable in {} regions, heap {} MiB",
        stats.total_frames / 256,
        boot_info.memory_regions.len(),
        crate::mm::memory::HEAP_SIZE >> 20
    );

    // The direct map covers every region of the memory map (RAM, ACPI tables, reserved areas).
    let limit = boot_info.memory_regions.iter().map(|r| r.end).max().unwrap_or(0);
    let direct_map = crate::firmware::acpi::DirectMap { offset: offset.unwrap_or(0), limit };
    let acpi = crate::firmware::acpi::init(boot_info.rsdp_addr.into_option(), direct_map);
    crate::arch::time::init(acpi.pm_timer_port);
    match &acpi.apic {
        Some(apic) => {
            crate::arch::apic::init(apic);
            crate::arch::interrupts::enable();
            crate::arch::time::init_wakeup_timer();
        }
        None => log::warn!("no MADT: interrupts stay off; drivers poll"),
    }

    crate::platform::pci::init();
    crate::services::init();
    #[cfg(feature = "test-support")]
    {
        crate::ktest::init();
        crate::registry::commands::register(crate::bench::COMMANDS);
    }
    crate::registry::scheme::register("mem:info", "physical memory counters", || {
        let s = crate::mm::memory::frame_stats();
        alloc::format!(
            "total_frames {}\nfree_frames {}\nfree_frames_below_4g {}\nfree_ranges {}\nlargest_free_run {}\n",
            s.total_frames,
            s.free_frames,
            s.free_frames_below_4g,
            s.free_ranges,
            s.largest_free_run
        )
    });
    crate::registry::scheme::register("acpi:tables", "ACPI tables found and their state", || {
        let mut out = alloc::string::String::new();
        for t in &crate::firmware::acpi::info().inventory.tables {
            out += &alloc::format!(
                "{} {:#x} {} {}\n",
                t.name(),
                t.address,
                t.length,
                if t.valid { "valid" } else { "INVALID" }
            );
        }
        out
    });

    crate::ui::report::init();
    log::info!("boot complete; type `help`");
    crate::ui::shell::run()
}
