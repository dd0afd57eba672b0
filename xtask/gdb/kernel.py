# gdb helpers for this kernel, loaded by `cargo xtask gdb` (xtask/src/gdb.rs).
#
# gdb 13 finds a Rust function by its path only when the function is not generic: the DWARF
# name of `E1000::transmit_with` in this kernel is
# `e1000::E1000<device_io::Mmio, kernel::time::KernelClock>::transmit_with<…>`, one per
# instantiation, and `break e1000::E1000::transmit_with` says "not defined". This file makes
# `break` (and `b`) accept the path without generic arguments: when gdb cannot place a
# breakpoint, it looks for functions whose name, with every `<…>` removed, ends in that path,
# and breaks at the line each one starts on (one breakpoint covers every instantiation there).
# Every other form of `break` behaves as gdb's own.

import re

import gdb


def strip_generics(name):
    """`a::B<x::Y<z>>::f<T>` -> `a::B::f`."""
    out, depth = [], 0
    for ch in name:
        if ch == "<":
            depth += 1
        elif ch == ">" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def rust_function_lines(path):
    """(file, line) of every function whose generic-free name is `path` or ends in `::path`."""
    last = path.split("::")[-1]
    listing = gdb.execute("info functions -n %s" % re.escape(last), to_string=True)
    found, current_file = [], None
    for line in listing.splitlines():
        if line.startswith("File ") and line.endswith(":"):
            current_file = line[5:-1]
            continue
        m = re.match(r"^(\d+):\s+(?:static )?fn (.*?)\(", line)
        if not m or current_file is None:
            continue
        name = strip_generics(m.group(2))
        if name == path or name.endswith("::" + path):
            location = (current_file, int(m.group(1)))
            if location not in found:
                found.append(location)
    return found


class RustAwareBreak(gdb.Command):
    """break LOCATION [if CONDITION]: gdb's break, plus generic Rust functions by path.

    `break e1000::E1000::transmit_with` stops in every instantiation of that method."""

    def __init__(self):
        super().__init__("break", gdb.COMMAND_BREAKPOINTS, gdb.COMPLETE_LOCATION)

    def invoke(self, arg, from_tty):
        spec, _, condition = arg.partition(" if ")
        spec = spec.strip() or "*$pc"
        try:
            gdb.decode_line(spec)
            breakpoints = [gdb.Breakpoint(spec)]
        except gdb.error:
            lines = rust_function_lines(spec)
            # Nothing by that path either: gdb's own answer (a pending breakpoint, or an error).
            breakpoints = [gdb.Breakpoint("%s:%d" % fl) for fl in lines] or [gdb.Breakpoint(spec)]
        for bp in breakpoints:
            if condition:
                bp.condition = condition.strip()


RustAwareBreak()
