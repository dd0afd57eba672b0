//! Watching DMA happen: the `trace` command and `dma:trace` view (the DMA event trace of
//! [`dma::trace`]), and `iommu walk`, which prints the walk a VT-d unit makes for one request.
//!
//! Lines meant for `cargo xtask test` to parse start with `trace: ` or `walk `.

use crate::println;
use crate::registry::commands::Command;
use alloc::string::String;
use iommu_vtd::walker::{render_walk, walk};
use iommu_vtd::{AccessKind, SourceId};

/// `trace` and `iommu`.
pub static COMMANDS: &[Command] = &[
    Command {
        name: "trace",
        usage: "trace on [DEVICE] | off | show [N]",
        about: "DMA event trace: maps, syncs, bounces, pool/coherent allocs, IOTLB invalidations, faults",
        run: trace,
    },
    Command {
        name: "iommu",
        usage: "iommu walk BDF IOVA [r|w]",
        about: "the VT-d page walk for one request: root, context, each level, result or fault reason",
        run: iommu,
    },
];

/// Installs the trace's clock and publishes `dma:trace`. After `arch::time` is calibrated.
pub fn init() {
    dma::trace::set_clock(crate::arch::time::now_us, "us");
    crate::registry::scheme::register("dma:trace", "the DMA event trace (`trace on` starts it)", || {
        dma::trace::render(None)
    });
}

fn trace(args: &[&str]) {
    match args {
        ["on"] => {
            dma::trace::enable(None);
            println!("trace: on (every device)");
        }
        ["on", device] => {
            dma::trace::enable(Some(device));
            println!("trace: on (devices whose name starts with `{device}`)");
        }
        ["off"] => {
            dma::trace::disable();
            println!("trace: off");
        }
        ["show"] => crate::print!("{}", dma::trace::render(Some(20))),
        ["show", n] => match n.parse::<usize>() {
            Ok(n) => crate::print!("{}", dma::trace::render(Some(n))),
            Err(_) => println!("trace: `{n}` is not a count; usage: trace show [N]"),
        },
        _ => println!("usage: trace on [DEVICE] | off | show [N]"),
    }
}

/// Parses `bb:dd.f` or `ssss:bb:dd.f` (segment ignored: one unit table per segment here).
pub fn parse_bdf(text: &str) -> Option<SourceId> {
    let mut parts: alloc::vec::Vec<&str> = text.split(':').collect();
    if parts.len() == 3 {
        parts.remove(0);
    }
    let [bus, rest] = parts[..] else { return None };
    let (dev, func) = rest.split_once('.')?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let dev = u8::from_str_radix(dev, 16).ok().filter(|d| *d < 32)?;
    let func = u8::from_str_radix(func, 16).ok().filter(|f| *f < 8)?;
    Some(SourceId::new(bus, dev, func))
}

fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => text.parse().ok(),
    }
}

fn iommu(args: &[&str]) {
    let (bdf, iova, access) = match args {
        ["walk", bdf, iova] => (bdf, iova, AccessKind::Read),
        ["walk", bdf, iova, "r"] => (bdf, iova, AccessKind::Read),
        ["walk", bdf, iova, "w"] => (bdf, iova, AccessKind::Write),
        _ => return println!("usage: iommu walk BDF IOVA [r|w]   (e.g. iommu walk 00:02.0 0xfffff000 w)"),
    };
    let (Some(bdf), Some(iova)) = (parse_bdf(bdf), parse_u64(iova)) else {
        return println!("iommu: cannot parse `{bdf}` as bb:dd.f or `{iova}` as an address");
    };
    print_walk(bdf, iova, access);
}

/// Prints the walk a request from `bdf` to `iova` takes (see [`walk_text`]).
pub fn print_walk(bdf: SourceId, iova: u64, access: AccessKind) {
    crate::print!("{}", walk_text(bdf, iova, access));
}

/// The walk a request from `bdf` to `iova` takes through each unit that could see it: the unit
/// of the function's domain (with the requester id a bridge gives it), else every unit.
pub fn walk_text(bdf: SourceId, iova: u64, access: AccessKind) -> String {
    let Some(state) = crate::platform::iommu::state() else {
        return String::from("iommu: no VT-d unit is translating (no DMAR table, or booted with VT-d off)\n");
    };
    let mut out = String::new();
    let function = crate::platform::pci::functions().iter().find(|f| {
        f.address.bus() == bdf.bus() && f.address.device() == bdf.device() && f.address.function() == bdf.function()
    });
    let targets: alloc::vec::Vec<_> = match function.and_then(|f| Some((f, crate::platform::iommu::domain_of(f)?))) {
        Some((function, domain)) => {
            let source = crate::platform::iommu::requester_id(function);
            if source != bdf {
                out += &alloc::format!("iommu: {bdf} sits behind a PCIe-to-PCI bridge; its requests carry {source}\n");
            }
            alloc::vec![(domain.unit().clone(), source)]
        }
        None => state.units.iter().map(|u| (u.clone(), bdf)).collect(),
    };
    for (unit, source) in targets {
        let memory = crate::services::dma_service::memory();
        let (trail, result) = walk(&*memory, unit.root_table().as_u64(), &unit.walk_caps(), source, iova, access);
        out += &alloc::format!("{}:\n", unit.name());
        out += &render_walk(source, iova, access, &trail, &result);
    }
    out
}
