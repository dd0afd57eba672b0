#!/usr/bin/env python3
"""Turns the output of `cargo bench -p dma --bench pool` into the tables of dma/BENCHMARKS.md.

Usage: cargo bench -p dma --bench pool 2>&1 | tee bench.log; python3 dma/scripts/bench_table.py bench.log

Every figure is the cost of ONE alloc+free pair: the `burst` benchmarks time 32 pairs per
iteration, so they are divided by 32 here. The ratios are the ones the targets are stated in:
  cache / bare          the per-owner fast path against the unlocked free list (target: <= 2x)
  shared / locked       the shared, locked path against the same list behind a spin lock, the
                        fair limit for anything several CPUs share (target: <= 2x)
  pool(N) / pool(0)     cost with N blocks live against none (target: <= 1.3x at 100,000);
                        `replace` has no 0-live run: its table gives N / churn(0), which also
                        counts the work only `replace` does (a random index, a 64-bit division,
                        a random access), and 100,000 / 1,000, the effect of the live count alone
  LLA / cache           linked_list_allocator against the cache (target: >= 10x at 1,000 live)
"""
import re
import sys

UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
BURST = 32
LIVES = (0, 1000, 100000)
PATTERNS = {
    "churn": "allocate one block, free it (N blocks live)",
    "burst": f"allocate {BURST} blocks, free them in allocation order (N blocks live); per pair",
    "replace": "free a random live block, allocate a new one in its place (N blocks live)",
}

text = open(sys.argv[1]).read() if len(sys.argv) > 1 else sys.stdin.read()
# "name   time:   [lo unit mid unit hi unit]", where the name may sit on the line before.
pat = re.compile(r"^((?:churn|burst|replace)/\d+/[\w-]+/\d+)\s*\n?\s*time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", re.M)
res = {}
for name, val, unit in pat.findall(text):
    pattern, size, alloc, live = name.split("/")
    ns = float(val) * UNITS[unit]
    res[(pattern, int(size), alloc, int(live))] = ns / BURST if pattern == "burst" else ns


def t(ns):
    if ns is None:
        return "–"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1000:
        return f"{ns / 1000:.1f} µs"
    return f"{ns:.1f} ns" if ns >= 10 else f"{ns:.2f} ns"


def r(a, b):
    if a is None or b is None:
        return "–"
    x = a / b
    return f"{x:.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def ratio(a, b):
    return None if a is None or b is None else a / b


sizes = sorted({k[1] for k in res})
summary = {}
for pattern, title in PATTERNS.items():
    small = pattern == "burst"
    print(f"### {pattern}: {title}\n")
    ref = " churn(0)" if pattern == "replace" else "(0)"
    head = ["block", "live", "cache", "shared", "bare", "locked bare", "LLA"]
    head += ["cache16"] if small else []
    head += ["cache ÷ bare", "shared ÷ locked", f"cache(N) ÷ cache{ref}", f"shared(N) ÷ shared{ref}"]
    head += ["cache(N) ÷ cache(1k)", "shared(N) ÷ shared(1k)"] if pattern == "replace" else []
    head += ["LLA ÷ cache"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    s = summary.setdefault(pattern, {"a": [], "a_shared": [], "b_cache": [], "b_shared": [], "b_1k": [], "c": []})
    for size in sizes:
        base = "churn" if pattern == "replace" else pattern
        c0 = res.get((base, size, "pool-cache", 0))
        s0 = res.get((base, size, "pool-shared", 0))
        for live in LIVES:
            g = lambda a: res.get((pattern, size, a, live))
            cache, shared, bare, locked, lla = (
                g("pool-cache"), g("pool-shared"), g("bare"), g("bare-locked"), g("linked_list_allocator"))
            if cache is None:
                continue
            row = [str(size), f"{live:,}", t(cache), t(shared), t(bare), t(locked), t(lla)]
            row += [t(g("pool-cache16"))] if small else []
            row += [r(cache, bare), r(shared, locked), r(cache, c0), r(shared, s0)]
            if pattern == "replace":
                c1k = res.get((pattern, size, "pool-cache", 1000))
                s1k = res.get((pattern, size, "pool-shared", 1000))
                row += [r(cache, c1k), r(shared, s1k)]
                if live == 100000:
                    s["b_1k"].append(ratio(cache, c1k))
            row += [r(lla, cache)]
            print("| " + " | ".join(row) + " |")
            s["a"].append(ratio(cache, bare))
            s["a_shared"].append(ratio(shared, locked))
            if live == 100000:
                s["b_cache"].append(ratio(cache, c0))
                s["b_shared"].append(ratio(shared, s0))
            if live == 1000:
                s["c"].append(ratio(lla, cache))
    print()


def span(xs):
    xs = [x for x in xs if x is not None]
    return f"{min(xs):.2f}–{max(xs):.2f}×" if xs else "–"


def count(xs, ok):
    xs = [x for x in xs if x is not None]
    return f"{sum(1 for x in xs if ok(x))} of {len(xs)}"


print("### Against the targets (range over block sizes; rows meeting the target)\n")
print(
    "| pattern | (a) cache ÷ bare ≤ 2× | (a) shared ÷ locked bare ≤ 2× | (b) cache(100k) ÷ cache(0) ≤ 1.3× "
    "| (b) shared(100k) ÷ shared(0) | (c) LLA ÷ cache ≥ 10× at 1,000 live |"
)
print("|---|---|---|---|---|---|")
for pattern, s in summary.items():
    b = f"{span(s['b_cache'])} ({count(s['b_cache'], lambda x: x <= 1.3)})"
    if s["b_1k"]:
        b += f"; ÷ replace(1k): {span(s['b_1k'])} ({count(s['b_1k'], lambda x: x <= 1.3)})"
    print(
        f"| {pattern} | {span(s['a'])} ({count(s['a'], lambda x: x <= 2)}) "
        f"| {span(s['a_shared'])} ({count(s['a_shared'], lambda x: x <= 2)}) "
        f"| {b} "
        f"| {span(s['b_shared'])} ({count(s['b_shared'], lambda x: x <= 1.3)}) "
        f"| {span(s['c'])} ({count(s['c'], lambda x: x >= 10)}) |"
    )
