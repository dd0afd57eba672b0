//! The kernel binary: a thin entry point. Everything it does lives in the `kernel` library.
//!
//! Built for `x86_64-unknown-none` by `cargo xtask build`. Built for the host (as `cargo build
//! --workspace` or `cargo clippy --workspace` do) it is a stub that says how to build it.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod entry {
    use bootloader_api::{BootInfo, entry_point};

    entry_point!(start, config = &kernel::boot::BOOTLOADER_CONFIG);

    fn start(boot_info: &'static mut BootInfo) -> ! {
        kernel::boot::kernel_main(boot_info)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the kernel runs on bare metal: build and boot it with `cargo xtask run`");
    std::process::exit(1);
}
