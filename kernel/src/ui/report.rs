//! The hardware report: what a user should paste into a bug report (issue 7).
//!
//! Real machines differ from QEMU in ways the kernel copes with but a maintainer needs to know
//! about: which firmware booted it, how much memory there is and where, which ACPI tables exist
//! (and which are broken), whether PCI configuration space is memory-mapped, whether there is an
//! IOMMU, what the screen and keyboard are. `report` (shell) and `cat sys:report` print it all as
//! plain text, one fact per line, so it survives being copied from a screen photo or a serial log.

use crate::registry::commands::Command;
use alloc::format;
use alloc::string::String;
use core::fmt::Write;

/// Shell commands for someone at the machine itself: the report and the framebuffer switch.
pub static COMMANDS: &[Command] = &[
    Command { name: "report", usage: "report", about: "hardware report to paste into a bug report", run: report },
    Command {
        name: "fbcon",
        usage: "fbcon [on|off]",
        about: "framebuffer console: show state, or turn drawing on or off",
        run: fbcon,
    },
];

/// Publishes `sys:report` and registers the commands. Needs the heap (and is most useful after
/// every service started).
pub fn init() {
    crate::registry::commands::register(COMMANDS);
    crate::registry::scheme::register("sys:report", "hardware report for bug reports (same as `report`)", render);
}

fn report(_: &[&str]) {
    crate::print!("{}", render());
}

fn fbcon(args: &[&str]) {
    let on = match args {
        [] => {
            crate::println!(
                "fbcon: {}",
                if crate::ui::console::framebuffer_output_on() { "on" } else { "off (or no framebuffer)" }
            );
            return;
        }
        ["on"] => true,
        ["off"] => false,
        _ => {
            crate::println!("usage: fbcon [on|off]");
            return;
        }
    };
    if crate::ui::console::set_framebuffer_output(on) {
        crate::println!("fbcon: drawing {}", if on { "on" } else { "off" });
    } else {
        crate::println!("fbcon: no framebuffer console on this machine");
    }
}

/// The legacy BIOS areas an RSDP is searched in (ACPI 6.5 §5.2.5.1): the first KiB of the
/// Extended BIOS Data Area — which lies below 640 KiB, at most 128 KiB below it — and the BIOS
/// read-only memory space 0xE0000..=0xFFFFF.
const BIOS_RSDP_AREAS: [core::ops::Range<u64>; 2] = [0x8_0000..0xA_0000, 0xE_0000..0x10_0000];

/// What the RSDP's address says about the firmware.
///
/// The bootloader does not tell the kernel which firmware started it, but it finds the RSDP in
/// different ways: under BIOS by scanning the areas above, under UEFI in the EFI configuration
/// table, where the firmware may put it anywhere. So an RSDP outside those areas means UEFI; one
/// inside them means BIOS — or UEFI with a compatibility module that placed it there.
pub fn firmware_from_rsdp(rsdp: Option<u64>) -> &'static str {
    match rsdp {
        None => "unknown (the bootloader found no RSDP)",
        Some(address) if BIOS_RSDP_AREAS.iter().any(|area| area.contains(&address)) => {
            "legacy BIOS, most likely (RSDP in the BIOS area; UEFI with a CSM can put it there too)"
        }
        Some(_) => "UEFI (RSDP outside the legacy BIOS areas, so it came from the EFI configuration table)",
    }
}

/// The whole report.
pub fn render() -> String {
    let mut out = String::new();
    let _ = write_report(&mut out);
    out
}

fn write_report(out: &mut String) -> core::fmt::Result {
    let acpi = crate::firmware::acpi::info();
    let inventory = &acpi.inventory;
    let rsdp = (inventory.rsdp != 0).then_some(inventory.rsdp);
    writeln!(out, "== dma-kernel hardware report ==")?;
    writeln!(
        out,
        "kernel: dma-kernel {} ({} build)",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    )?;
    writeln!(out, "firmware: {}", firmware_from_rsdp(rsdp))?;
    let (vendor, brand) = cpu_identity();
    writeln!(out, "cpu: {vendor} \"{brand}\"")?;
    writeln!(out, "tsc: {} MHz", crate::arch::time::tsc() / crate::arch::time::now_us().max(1))?;

    let stats = crate::mm::memory::frame_stats();
    let mib = |frames: usize| (frames as u64 * 4096) >> 20;
    writeln!(
        out,
        "memory: {} MiB usable, {} MiB free ({} MiB below 4 GiB), {} free ranges, largest {} MiB, RAM ends at {:#x}",
        mib(stats.total_frames),
        mib(stats.free_frames),
        mib(stats.free_frames_below_4g),
        stats.free_ranges,
        mib(stats.largest_free_run),
        crate::mm::memory::end_of_ram()
    )?;

    match rsdp {
        Some(address) => writeln!(
            out,
            "acpi: RSDP at {address:#x}, revision {} ({}), root table {}",
            inventory.revision,
            if inventory.revision >= 2 { "XSDT" } else { "RSDT" },
            inventory.root.map_or(String::from("unusable"), |root| format!("at {root:#x}"))
        )?,
        None => writeln!(out, "acpi: no RSDP")?,
    }
    if !inventory.tables.is_empty() {
        write!(out, "acpi tables:")?;
        for table in &inventory.tables {
            let oem: String =
                table.oem_id.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { ' ' }).collect();
            write!(
                out,
                " {}(rev {}, {}{})",
                table.name(),
                table.revision,
                oem.trim(),
                if table.valid { "" } else { ", INVALID" }
            )?;
        }
        writeln!(out)?;
    }
    for problem in &inventory.problems {
        writeln!(out, "acpi problem: {problem}")?;
    }
    match &acpi.apic {
        Some(apic) if crate::arch::apic::is_ready() => writeln!(
            out,
            "interrupts: local APIC at {:#x}, {} I/O APIC(s), {} ISA override(s)",
            apic.local_apic,
            apic.io_apics.len(),
            apic.overrides.len()
        )?,
        Some(_) => writeln!(out, "interrupts: MADT found but the local APIC could not be mapped; drivers poll")?,
        None => writeln!(out, "interrupts: off (no usable MADT); drivers poll")?,
    }
    let (sleeps, slept_us) = crate::arch::time::sleep_stats();
    let up_us = crate::arch::time::now_us().max(1);
    writeln!(
        out,
        "idle: halted {sleeps} times, {} ms of {} ms since the TSC started ({}%)",
        slept_us / 1000,
        up_us / 1000,
        slept_us * 100 / up_us
    )?;

    if acpi.ecam.is_empty() {
        writeln!(out, "pci config: port I/O 0xCF8/0xCFC (no usable MCFG; first 256 bytes of each function)")?;
    } else {
        for w in &acpi.ecam {
            writeln!(
                out,
                "pci config: ECAM from MCFG, segment {} buses {:#04x}-{:#04x} at {:#x}",
                w.segment, w.bus_start, w.bus_end, w.base
            )?;
        }
    }

    let view = |name: &str| crate::registry::scheme::read(name).unwrap_or_else(|| String::from("(not published)\n"));
    write_section(out, "iommu", &view("iommu:units"))?;
    write_section(out, "dma pools", &view("dma:pools"))?;

    write_framebuffer(out, crate::ui::console::framebuffer_state())?;
    match crate::ui::console::keyboard_state() {
        Some(crate::ui::console::KeyboardState::Present { firmware_config }) => {
            writeln!(out, "keyboard: PS/2 (i8042 configuration byte at boot {firmware_config:#04x})")?
        }
        Some(crate::ui::console::KeyboardState::Absent(why)) => writeln!(out, "keyboard: none: {why}")?,
        None => writeln!(out, "keyboard: not probed")?,
    }

    write_section(out, "pci devices", &crate::platform::pci::lspci_text())?;
    writeln!(out, "== end of report ==")
}

/// `title:` then `text` indented, or `title: (empty)`.
fn write_section(out: &mut String, title: &str, text: &str) -> core::fmt::Result {
    if text.trim().is_empty() {
        return writeln!(out, "{title}: (empty)");
    }
    writeln!(out, "{title}:")?;
    for line in text.lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn write_framebuffer(out: &mut String, state: crate::ui::console::FramebufferState) -> core::fmt::Result {
    use crate::ui::console::FramebufferState;
    let geometry = |info: &bootloader_api::info::FrameBufferInfo| {
        format!(
            "{}x{}, stride {} pixels, {} bytes/pixel, {:?}, {} bytes",
            info.width, info.height, info.stride, info.bytes_per_pixel, info.pixel_format, info.byte_len
        )
    };
    match state {
        FramebufferState::Absent => writeln!(out, "framebuffer: none (serial console only)"),
        FramebufferState::Unusable { info, why } => {
            writeln!(out, "framebuffer: {} - not used: {why}", geometry(&info))
        }
        FramebufferState::Text { info, columns, rows } => writeln!(
            out,
            "framebuffer: {} - {columns}x{rows} text, drawing {}",
            geometry(&info),
            if crate::ui::console::framebuffer_output_on() { "on" } else { "off" }
        ),
    }
}

/// The CPU vendor (CPUID leaf 0) and brand string (leaves 0x8000_0002..=0x8000_0004), Intel SDM
/// Vol. 2A, "CPUID".
fn cpu_identity() -> (String, String) {
    use core::arch::x86_64::__cpuid;
    let text = |words: &[u32]| -> String {
        let bytes: alloc::vec::Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        String::from_utf8_lossy(&bytes).trim_matches(|c: char| c == '\0' || c.is_whitespace()).into()
    };
    let leaf0 = __cpuid(0);
    let vendor = text(&[leaf0.ebx, leaf0.edx, leaf0.ecx]);
    let brand = if __cpuid(0x8000_0000).eax >= 0x8000_0004 {
        let words: alloc::vec::Vec<u32> = (0x8000_0002u32..=0x8000_0004)
            .flat_map(|leaf| {
                let r = __cpuid(leaf);
                [r.eax, r.ebx, r.ecx, r.edx]
            })
            .collect();
        text(&words)
    } else {
        String::from("(no brand string)")
    };
    (vendor, brand)
}

#[cfg(test)]
mod tests {
    use super::firmware_from_rsdp;

    #[test]
    fn rsdp_location_tells_bios_from_uefi() {
        assert!(firmware_from_rsdp(Some(0xF_52E0)).starts_with("legacy BIOS"));
        assert!(firmware_from_rsdp(Some(0x9_FC00)).starts_with("legacy BIOS")); // in the EBDA
        assert!(firmware_from_rsdp(Some(0x7FB7_E014)).starts_with("UEFI"));
        assert!(firmware_from_rsdp(Some(0x10_0000)).starts_with("UEFI"));
        assert!(firmware_from_rsdp(None).starts_with("unknown"));
    }
}
