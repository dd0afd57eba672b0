#!/usr/bin/env python3
"""Turns the output of `cargo bench -p dma --bench pool` into the ratio tables of BENCHMARKS.md.

Usage: cargo bench -p dma --bench pool 2>&1 | tee bench.log; python3 dma/scripts/bench_table.py bench.log
"""
import re
import sys

UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6}
text = open(sys.argv[1]).read() if len(sys.argv) > 1 else sys.stdin.read()
# "name   time:   [lo unit mid unit hi unit]", where the name may sit on the line before.
pat = re.compile(r"^((?:churn|replace)/\d+/[\w-]+/\d+)\s*\n?\s*time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", re.M)
res = {}
for name, val, unit in pat.findall(text):
    pattern, size, alloc, live = name.split("/")
    res[(pattern, int(size), alloc, int(live))] = float(val) * UNITS[unit]


def t(ns):
    return f"{ns:.1f} ns" if ns < 1000 else f"{ns / 1000:.1f} µs"


sizes = sorted({k[1] for k in res})
print("### churn: allocate one block, free it (N blocks live)\n")
print("| block | live | pool | bare list | locked bare list | linked_list_allocator | pool ÷ bare | pool ÷ locked | pool(N) ÷ pool(0) | LLA ÷ pool |")
print("|---|---|---|---|---|---|---|---|---|---|")
for s in sizes:
    p0 = res.get(("churn", s, "pool", 0))
    for live in (0, 1000, 100000):
        g = lambda a: res.get(("churn", s, a, live))
        p, b, bl, l = g("pool"), g("bare"), g("bare-locked"), g("linked_list_allocator")
        if None in (p, b, bl, l, p0):
            continue
        print(f"| {s} | {live} | {t(p)} | {t(b)} | {t(bl)} | {t(l)} | {p / b:.1f}× | {p / bl:.2f}× | {p / p0:.2f}× | {l / p:.2f}× |")
print("\n### replace: free a random live block, allocate a new one (N blocks live)\n")
print("| block | live | pool | bare list | linked_list_allocator | pool ÷ bare | pool(N) ÷ pool churn(0) | LLA ÷ pool |")
print("|---|---|---|---|---|---|---|---|")
for s in sizes:
    p0 = res.get(("churn", s, "pool", 0))
    for live in (1000, 100000):
        g = lambda a: res.get(("replace", s, a, live))
        p, b, l = g("pool"), g("bare"), g("linked_list_allocator")
        if None in (p, b, l, p0):
            continue
        print(f"| {s} | {live} | {t(p)} | {t(b)} | {t(l)} | {p / b:.1f}× | {p / p0:.2f}× | {l / p:.1f}× |")
