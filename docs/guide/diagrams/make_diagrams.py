#!/usr/bin/env python3
"""Writes the guide's SVG diagrams. Standard library only; output is deterministic.

    python3 docs/guide/diagrams/make_diagrams.py            # rewrite the .svg files beside this script
    python3 docs/guide/diagrams/make_diagrams.py --out DIR  # write them into DIR instead

The checked-in .svg files must be exactly what this script writes: `cargo test -p xtask`
(xtask/src/docs_check.rs) regenerates them into a temporary directory and compares byte for byte.
So: edit this script, run it, commit both.

Each diagram is one function returning an Svg. Coordinates are integers (pixels); colours say
who owns a piece of memory: blue = the CPU (driver), orange = the device, grey = neither/meta.
"""

import os
import sys
from xml.sax.saxutils import escape

CPU = "#d6e6fb"  # the CPU / driver owns it
DEV = "#fde2c8"  # the device owns it
META = "#eeeeee"  # registers, tables, bookkeeping
DONE = "#d8f0d0"  # finished by the device, waiting for the driver
WHITE = "#ffffff"
INK = "#222222"
MUTED = "#666666"
ACCENT = "#b03a2e"


class Svg:
    def __init__(self, width, height, title):
        self.width = width
        self.height = height
        self.title = title
        self.parts = []

    def rect(self, x, y, w, h, fill=WHITE, stroke=INK, dash=False, rx=3, sw=1):
        extra = ' stroke-dasharray="5,4"' if dash else ""
        self.parts.append(
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="{sw}"{extra}/>'
        )

    def text(self, x, y, s, size=13, anchor="start", weight="normal", color=INK, mono=False, italic=False):
        family = "DejaVu Sans Mono, Menlo, Consolas, monospace" if mono else "DejaVu Sans, Helvetica, Arial, sans-serif"
        style = ' font-style="italic"' if italic else ""
        self.parts.append(
            f'<text x="{x}" y="{y}" font-family="{family}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{color}"{style}>{escape(s)}</text>'
        )

    def lines(self, x, y, rows, size=13, anchor="start", step=None, **kw):
        step = step or size + 4
        for i, row in enumerate(rows):
            self.text(x, y + i * step, row, size=size, anchor=anchor, **kw)

    def box(self, x, y, w, h, title, rows=(), fill=WHITE, dash=False, size=13, mono_rows=False):
        self.rect(x, y, w, h, fill=fill, dash=dash)
        self.text(x + w // 2, y + 20, title, size=size + 1, anchor="middle", weight="bold")
        self.lines(x + 10, y + 40, rows, size=size - 1, mono=mono_rows)

    def arrow(self, points, color=INK, dash=False, label=None, label_at=None, label_anchor="start", sw=1.5):
        d = "M " + " L ".join(f"{px} {py}" for px, py in points)
        extra = ' stroke-dasharray="6,4"' if dash else ""
        marker = "url(#head-accent)" if color == ACCENT else "url(#head)"
        self.parts.append(
            f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{sw}"{extra} marker-end="{marker}"/>'
        )
        if label:
            lx, ly = label_at if label_at else points[0]
            self.text(lx, ly, label, size=11, anchor=label_anchor, color=color if color != INK else MUTED)

    def line(self, x1, y1, x2, y2, color=INK, dash=False, sw=1):
        extra = ' stroke-dasharray="4,3"' if dash else ""
        self.parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="{sw}"{extra}/>')

    def legend(self, x, y, items):
        for i, (fill, label) in enumerate(items):
            self.rect(x, y + i * 20, 14, 14, fill=fill, rx=2)
            self.text(x + 22, y + i * 20 + 12, label, size=12)

    def render(self):
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}">\n'
            f"<title>{escape(self.title)}</title>\n"
            "<defs>\n"
            '<marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" '
            'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#222222"/></marker>\n'
            '<marker id="head-accent" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" '
            f'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{ACCENT}"/></marker>\n'
            "</defs>\n"
            f'<rect x="0" y="0" width="{self.width}" height="{self.height}" fill="#ffffff"/>\n'
        )
        return head + "\n".join(self.parts) + "\n</svg>\n"


# ---------------------------------------------------------------------------------------------
def dma_buffer_path():
    s = Svg(960, 610, "The path of one DMA buffer: driver, DmaDevice, mapper, PhysMemory")
    s.text(480, 28, "The path of one DMA buffer", size=18, anchor="middle", weight="bold")

    s.box(40, 50, 560, 70, "driver  (drivers/e1000, drivers/ahci)", [
        "holds one DmaDevice and nothing else that reaches memory",
        "never computes a bus address: asks for one and programs it into the device",
    ], fill=CPU)

    s.box(40, 160, 560, 120, "DmaDevice  (dma/src/device.rs)", [
        'name "00:02.0 e1000" · DMA mask (default 32 bits) · max segment, boundary',
        "debug tracker: live mappings, misuse reports (dma:mappings, dma:errors)",
        "alloc_coherent · DmaPool::create · map(buf, ToDevice) · map_sg · map_single_raw",
        "the capability: every allocation and mapping is checked and named",
    ])
    s.arrow([(320, 120), (320, 158)], label="calls", label_at=(328, 145))

    s.text(330, 300, "Arc<dyn DmaMapper>  (dma/src/mapper/mod.rs)", size=12, anchor="middle", weight="bold")
    s.text(330, 316, "map · unmap · sync_for_cpu/device · alloc_coherent · bus_to_phys", size=12, anchor="middle",
           color=MUTED)
    s.text(330, 331, "one mapper may serve many devices (a whole IOMMU domain)", size=12, anchor="middle",
           color=MUTED)
    s.arrow([(320, 280), (320, 287)])

    s.box(40, 340, 175, 120, "Direct", [
        "bus addr = phys addr",
        "beyond the mask:",
        "copy via BounceArea",
        "(swiotlb, < 4 GiB)",
    ], fill=META)
    s.box(232, 340, 175, 120, "Bounce", [
        "swiotlb=force:",
        "every streaming map",
        "goes through a slot",
        "(tests, isolation)",
    ], fill=META)
    s.box(424, 340, 176, 120, "Iommu", [
        "bus addr = IOVA",
        "Domain: IOVA alloc,",
        "page tables, IOTLB",
        "invalidation",
    ], fill=META)

    s.box(40, 500, 560, 90, "PhysMemory  (dma/src/phys.rs)", [
        "alloc_frames(count, max_addr, align) · free_frames · phys_to_virt · virt_to_phys",
        "kernel: memory::KernelMemory (frame allocator + direct map)",
        "host tests: sim::SimMemory (simulated RAM at chosen physical addresses)",
    ])
    for x in (127, 320, 512):
        s.arrow([(x, 460), (x, 498)], sw=1)

    # The device side.
    s.box(680, 50, 240, 90, "the device (e1000, AHCI)", [
        "puts a bus address on the bus",
        "never sees virtual addresses",
    ], fill=DEV)
    s.box(680, 340, 240, 120, "VT-d unit (when present)", [
        "requester id -> domain",
        "IOVA -> physical, R/W checked",
        "IOTLB caches translations",
        "fault record if not mapped",
    ], fill=META)
    s.rect(680, 500, 240, 80, fill=WHITE)
    s.text(800, 532, "RAM", size=15, anchor="middle", weight="bold")
    s.text(800, 552, "(physical addresses)", size=12, anchor="middle", color=MUTED)
    s.arrow([(800, 140), (800, 338)], color=ACCENT, label="DMA to bus address (IOVA)", label_at=(808, 240))
    s.arrow([(800, 460), (800, 498)], color=ACCENT, label="physical", label_at=(808, 484))
    s.arrow([(760, 140), (760, 240), (650, 240), (650, 560), (678, 560)], color=ACCENT, dash=True)
    s.text(658, 262, "no IOMMU:", size=11, color=ACCENT)
    s.text(658, 277, "bus = physical", size=11, color=ACCENT)
    s.arrow([(600, 85), (678, 85)], label="bus addr", label_at=(606, 78))
    return s


# ---------------------------------------------------------------------------------------------
def ring(s, x, y, n, cell, fills, labels, head, tail, head_name, tail_name, clean=None, clean_name="clean"):
    for i in range(n):
        s.rect(x + i * cell, y, cell, 44, fill=fills[i], rx=0)
        s.text(x + i * cell + cell // 2, y + 17, str(i), size=11, anchor="middle", color=MUTED)
        s.text(x + i * cell + cell // 2, y + 35, labels[i], size=10, anchor="middle", mono=True)
    # head above, tail below
    hx = x + head * cell + cell // 2
    s.arrow([(hx, y - 34), (hx, y - 2)], color=ACCENT)
    s.text(hx, y - 40, head_name, size=12, anchor="middle", weight="bold", color=ACCENT)
    tx = x + tail * cell + cell // 2
    # When two markers stand side by side, their labels go outwards.
    near = clean is not None and abs(clean - tail) == 1
    tail_anchor = ("end" if tail < clean else "start") if near else "middle"
    s.arrow([(tx, y + 80), (tx, y + 46)], color=CPU_ARROW)
    s.text(tx + {"end": 6, "start": -6, "middle": 0}[tail_anchor], y + 96, tail_name, size=12, anchor=tail_anchor,
           weight="bold", color=CPU_ARROW)
    if clean is not None:
        cx = x + clean * cell + cell // 2
        clean_anchor = ("start" if tail < clean else "end") if near else "middle"
        s.arrow([(cx, y + 80), (cx, y + 46)], color=MUTED)
        s.text(cx + {"end": 6, "start": -6, "middle": 0}[clean_anchor], y + 96, clean_name, size=12,
               anchor=clean_anchor, weight="bold", color=MUTED)
    # wrap-around
    s.arrow([(x + n * cell, y + 22), (x + n * cell + 18, y + 22), (x + n * cell + 18, y + 58),
             (x - 18, y + 58), (x - 18, y + 22), (x - 2, y + 22)], dash=True, sw=1)


CPU_ARROW = "#1f5fa8"


def e1000_rings():
    s = Svg(980, 650, "e1000 receive and transmit descriptor rings with head and tail")
    s.text(490, 28, "e1000 descriptor rings (16 of the real 128 descriptors drawn)", size=18, anchor="middle",
           weight="bold")
    n, cell, x = 16, 52, 70

    # Receive ring: device owns RDH .. RDT-1; software owns the rest (RDT is kept empty).
    s.text(20, 62, "Receive ring (RDBAL/RDBAH, RDLEN = 128 × 16 bytes, a block of the e1000-rings pool)",
           size=14, weight="bold")
    rdh, rdt = 5, 2
    fills, labels = [], []
    for i in range(n):
        if rdh <= i or i < rdt:
            owned = (i - rdh) % n < (rdt - rdh) % n
        else:
            owned = False
        if owned:
            fills.append(DEV)
            labels.append("empty")
        elif i == rdt:
            fills.append(CPU)
            labels.append("spare")
        else:
            fills.append(DONE)
            labels.append("DD=1")
    ring(s, x, 130, n, cell, fills, labels, rdh, rdt, "RDH (device: next to fill)",
         "RDT (driver: first not given)", clean=3, clean_name="rx.next")
    s.lines(20, 264, [
        "1. The device DMA-writes a frame into the 2 KiB e1000-rx-buf block named by descriptor RDH,",
        "   writes length/status back with DD=1, EOP=1, and advances RDH.",
        "2. E1000::receive_with sees DD at rx.next, hands the frame to the stack in place,",
        "   recycle_rx clears the status (same buffer!), and return_rx_descriptors moves RDT up (MMIO write).",
    ], size=12)

    # Transmit ring: device owns TDH .. TDT-1 (queued); clean .. TDH-1 sent (DD=1), waiting for reclaim.
    s.text(20, 352, "Transmit ring (TDBAL/TDBAH, TDLEN; TDH = TDT means empty; one descriptor always unused)",
           size=14, weight="bold")
    clean, tdh, tdt = 3, 6, 11
    fills, labels = [], []
    for i in range(n):
        if clean <= i < tdh:
            fills.append(DONE)
            labels.append("DD=1")
        elif tdh <= i < tdt:
            fills.append(DEV)
            labels.append("queued")
        else:
            fills.append(CPU)
            labels.append("free")
    ring(s, x, 420, n, cell, fills, labels, tdh, tdt, "TDH (device: next to send)", "TDT (driver: next to fill)",
         clean=clean)
    s.lines(20, 554, [
        "1. E1000::transmit_with copies the frame into an e1000-tx-buf block, writes descriptor TDT",
        "   (address, length, EOP|IFCS|RS), fences, and writes TDT+1: the doorbell.",
        "2. The device reads descriptor and buffer, sends the frame, writes DD=1 (RS asked for it), advances TDH.",
        "3. E1000::reclaim_transmitted walks from clean while DD=1 and returns each block to its pool.",
    ], size=12)
    s.legend(800, 56, [(DEV, "device owns"), (DONE, "done, driver's turn"), (CPU, "driver owns")])
    return s


# ---------------------------------------------------------------------------------------------
def vtd_walk():
    s = Svg(1060, 690, "VT-d translation: root table, context table, second-level page tables")
    s.text(530, 28, "How VT-d translates one DMA request (4-level tables, 48-bit IOVA)", size=18, anchor="middle",
           weight="bold")

    s.box(20, 50, 320, 86, "DMA request from the device", [
        "requester id (source-id) = bus : devfn",
        "IOVA = the bus address it was given",
        "read or write",
    ], fill=DEV)

    # IOVA bit fields, each above the table its index selects from.
    fields = [(360, 60, "63:48", "zero"), (420, 130, "47:39", "L4 index"), (550, 130, "38:30", "L3 index"),
              (680, 130, "29:21", "L2 index"), (810, 130, "20:12", "L1 index"), (940, 100, "11:0", "offset")]
    s.text(360, 62, "IOVA bits", size=12, color=MUTED)
    for fx, w, bits, name in fields:
        s.rect(fx, 70, w, 50, fill=META, rx=0)
        s.text(fx + w // 2, 90, bits, size=11, anchor="middle", mono=True, color=MUTED)
        s.text(fx + w // 2, 110, name, size=12, anchor="middle")

    top, bottom = 270, 480

    def table(x, w, title, size_note, entry_y, entry_text):
        s.text(x + w // 2, top - 8, title, size=13, anchor="middle", weight="bold")
        s.rect(x, top, w, bottom - top, fill=WHITE, rx=0)
        for ry in range(top + 20, bottom, 20):
            s.line(x, ry, x + w, ry, color="#dddddd")
        s.rect(x, entry_y - 10, w, 20, fill=CPU, rx=0)
        s.text(x + w // 2, entry_y + 5, entry_text, size=11, anchor="middle", mono=True)
        s.text(x + w // 2, bottom - 6, size_note, size=10, anchor="middle", color=MUTED)

    def pointer(x_from, y_from, x_to, label=None):
        s.arrow([(x_from, y_from), (x_from + 12, y_from), (x_from + 12, top + 10), (x_to - 2, top + 10)],
                label=label, label_at=(x_from + 16, top + 4) if label else None)

    s.box(20, 160, 110, 56, "RTADDR", ["register"], fill=META)
    s.arrow([(75, 216), (75, top - 22)])
    table(20, 140, "root table", "256 × 16 B, per bus", 310, "[bus]: ctx ptr")
    s.arrow([(150, 136), (150, 298)], dash=True, label="bus", label_at=(156, 240))

    table(200, 150, "context table", "256 × 16 B, per devfn", 390, "[devfn]: DID, SLPT")
    s.arrow([(300, 136), (300, 378)], dash=True, label="devfn", label_at=(306, 240))
    pointer(160, 310, 200)

    entries = [(430, 110, "L4 table", 330), (560, 110, "L3 table", 410), (690, 110, "L2 table", 350),
               (820, 110, "L1 table", 440)]
    prev = (350, 390)
    for x, w, title, ey in entries:
        table(x, w, title, "512 × 8 B", ey, "R W addr")
        pointer(prev[0], prev[1], x)
        s.arrow([(x + w // 2, 120), (x + w // 2, ey - 12)], dash=True)
        prev = (x + w, ey)
    # The page.
    s.text(995, top - 8, "4 KiB page", size=13, anchor="middle", weight="bold")
    s.rect(950, top, 90, bottom - top, fill=DEV, rx=0)
    s.rect(950, 450, 90, 20, fill=CPU, rx=0)
    s.text(995, 465, "the byte", size=11, anchor="middle", mono=True)
    pointer(prev[0], prev[1], 950)
    s.arrow([(990, 120), (990, 438)], dash=True)

    s.text(20, 510, "Each arrow from an entry points at the base of the next table; each dashed line is the index "
           "that picks the entry.", size=12, color=MUTED)
    s.text(20, 527, "Permissions are the AND of R/W over all levels. An L2 entry with PS=1 is a 2 MiB page, an L3 "
           "entry with PS=1 a 1 GiB page.", size=12, color=MUTED)
    s.text(20, 544, "A 39-bit (3-level) domain starts at L3; the context entry's AW field says which.", size=12,
           color=MUTED)

    s.box(20, 565, 500, 115, "caches the unit keeps (why invalidation exists)", [
        "context cache: source-id -> context entry (domain id, table)",
        "IOTLB: (domain id, IOVA page) -> physical page + R/W",
        "after changing an entry software must invalidate (§6.5):",
        "strict unmap waits for it; deferred unmap batches it",
    ], fill=META)
    s.box(540, 565, 500, 115, "what can go wrong: a fault record (§7)", [
        "context entry not present: the device is blocked",
        "an entry not present on the way: the IOVA is not mapped",
        "a write through an entry without W (a ToDevice buffer)",
        "logged with requester id, IOVA page and reason: cat iommu:faults",
    ], fill=WHITE)
    return s


# ---------------------------------------------------------------------------------------------
def ahci_chain():
    s = Svg(1000, 660, "AHCI command list, command header, command table and PRDT")
    s.text(500, 28, "How an AHCI port finds a command and its data", size=18, anchor="middle", weight="bold")

    s.box(20, 70, 190, 150, "port registers", ["PxCLB: command list", "PxFB: received FIS", "PxCI: issue bits",
                                               "PxSACT: NCQ tags", "PxIS: interrupt status"], fill=META,
          mono_rows=True, size=13)

    # Command list: 32 headers.
    s.text(250, 56, "command list (ahci-cmd-list pool)", size=12, color=MUTED)
    s.text(250, 70, "32 × 32 B = 1 KiB, 1 KiB aligned", size=12, color=MUTED)
    for i in range(8):
        y = 80 + i * 22
        fill = CPU if i == 3 else WHITE
        s.rect(250, y, 180, 22, fill=fill, rx=0)
        label = f"header {i}" if i < 7 else "…  header 31"
        s.text(260, y + 15, label, size=11, mono=True)
    s.arrow([(210, 96), (248, 96)], label="PxCLB", label_at=(212, 89))

    s.box(250, 290, 200, 160, "command header 3", [
        "DW0 CFL: FIS length = 5 dwords",
        "DW0 W: data goes to the disk",
        "DW0 PRDTL: PRDT entries",
        "DW1 PRDBC: bytes moved",
        "DW2/3 CTBA: table address",
    ], fill=CPU, size=12)
    s.line(430, 157, 460, 157, dash=True)
    s.line(460, 157, 460, 270, dash=True)
    s.line(460, 270, 350, 270, dash=True)
    s.arrow([(350, 270), (350, 288)])

    # Command table.
    s.text(520, 56, "command table for slot 3 (ahci-cmd-table pool)", size=12, color=MUTED)
    s.text(520, 70, "4 KiB: 0x80 + 248 PRDT entries × 16 B, 128-byte aligned", size=12, color=MUTED)
    rows = [("0x00", "CFIS: Register H2D FIS", CPU, 40), ("0x40", "ACMD: ATAPI command", WHITE, 26),
            ("0x50", "reserved", META, 26), ("0x80", "PRDT entry 0", CPU, 28), ("0x90", "PRDT entry 1", CPU, 28),
            ("0xA0", "PRDT entry 2", CPU, 28), ("…", "… up to entry 247", WHITE, 28)]
    y = 80
    for off, label, fill, h in rows:
        s.rect(520, y, 250, h, fill=fill, rx=0)
        s.text(528, y + h // 2 + 5, off, size=11, mono=True, color=MUTED)
        s.text(572, y + h // 2 + 5, label, size=12)
        y += h
    s.arrow([(450, 440), (490, 440), (490, 96), (518, 96)], label="CTBA", label_at=(454, 433))

    s.text(520, 300, "PRDT entry (16 B): DBA = data bus address (even),", size=12, color=MUTED)
    s.text(520, 316, "DBC = byte count − 1 (even count, ≤ 4 MiB), I bit", size=12, color=MUTED)
    s.text(520, 332, "one entry per segment of DmaDevice::map_sg", size=12, color=MUTED)

    # Data buffers.
    for i, y in enumerate((150, 210, 270)):
        s.rect(840, y, 140, 40, fill=DEV, rx=2)
        s.text(910, y + 25, f"data segment {i}", size=12, anchor="middle")
    s.arrow([(770, 200), (838, 170)])
    s.arrow([(770, 228), (838, 230)])
    s.arrow([(770, 256), (838, 290)])
    s.text(910, 336, "a streaming scatter-gather", size=11, anchor="middle", color=MUTED)
    s.text(910, 351, "mapping of the buffers", size=11, anchor="middle", color=MUTED)

    s.lines(20, 490, [
        "Issuing a command in slot 3 (Controller::submit_with):",
        "1. map the buffers (map_sg, in the transfer's direction) and turn the segments into PRDT entries;",
        "2. fill command table 3: the ATA command as a Register H2D FIS at 0x00, the PRDT at 0x80;",
        "3. fill command header 3: CFL = 5, W for writes, PRDTL, CTBA; PRDBC = 0;",
        "4. fence; NCQ only: set bit 3 of PxSACT (the tag); then set bit 3 of PxCI (the doorbell).",
        "The HBA fetches header 3, then the table, and moves the data through the PRDT. PxCI bit 3 clears when",
        "a FIS clears BSY: at completion without NCQ; with NCQ as soon as the disk accepts the command, and",
        "then the disk finishes tags in any order, Set Device Bits FISes clearing their PxSACT bits.",
        "Status FISes land in the 256-byte received-FIS area at PxFB (ahci-rx-fis pool).",
    ], size=12)
    s.legend(20, 250, [(CPU, "written by the driver"), (DEV, "data the device moves"), (META, "registers / unused")])
    return s


# ---------------------------------------------------------------------------------------------
def streaming_ownership():
    s = Svg(960, 420, "Ownership of a streaming mapping: map, sync_for_cpu, sync_for_device, unmap")
    s.text(480, 28, "Who owns a streaming buffer, and which call moves it", size=18, anchor="middle", weight="bold")

    s.box(30, 150, 200, 90, "CPU owns buf", ["a B: DmaBuf value", "(Vec, Box, PageBuffer)"], fill=CPU)
    s.box(360, 150, 240, 90, "device owns it", ["Mapping<B, D>", "bus_addr() goes to the device"], fill=DEV)
    s.box(720, 40, 220, 100, "CPU looks, briefly", ["CpuAccess<'_, D> borrow", "read if D: CpuReadable",
                                                     "write if D: CpuWritable"], fill=CPU)
    s.box(720, 280, 220, 90, "CPU owns buf again", ["the B value, with the", "device's data in it"], fill=CPU)

    s.arrow([(230, 180), (358, 180)], label="dev.map(buf, dir)", label_at=(238, 172))
    s.text(238, 200, "consumes buf", size=11, color=MUTED)
    s.arrow([(560, 150), (560, 75), (718, 75)], label="sync_for_cpu()", label_at=(568, 68))
    s.arrow([(800, 140), (800, 200), (602, 200)], color=CPU_ARROW)
    s.text(612, 194, "sync_for_device()", size=11, color=CPU_ARROW)
    s.text(612, 216, "only once the borrow is gone", size=11, color=MUTED)
    s.arrow([(480, 240), (480, 325), (718, 325)], label="mapping.unmap() -> B", label_at=(490, 317))
    s.arrow([(400, 240), (400, 372)], dash=True, color=ACCENT)
    s.text(410, 390, "dropped without unmap: Drop unmaps it, reports DroppedWhileMapped, drops buf", size=11,
           color=ACCENT)

    s.lines(30, 280, ["ToDevice: the CPU may write", "FromDevice: the CPU may read", "Bidirectional: both",
                      "no fourth direction (no DMA_NONE)"], size=12)
    return s


# ---------------------------------------------------------------------------------------------
def pool_layout():
    s = Svg(980, 420, "A DMA pool unit: 48-byte blocks, 16-byte alignment, 128-byte boundary, free list")
    s.text(490, 28, "Inside one pool unit: DmaPool::create(name, dev, 48, 16, 128)", size=18, anchor="middle",
           weight="bold")
    scale = 1.75  # pixels per byte
    x0, y0 = 30, 110
    s.text(x0, 62, "first 512 bytes of a 4096-byte unit (coherent memory below the device's mask)", size=12,
           color=MUTED)
    states = ["used", "free", "used", "free", "free", "used", "free", "free"]
    links = {}
    free_order = [1, 3, 4, 6, 7]
    for k, b in enumerate(free_order):
        links[b] = free_order[k + 1] if k + 1 < len(free_order) else None
    for w in range(4):
        wx = x0 + int(w * 128 * scale)
        for j in range(2):
            b = w * 2 + j
            bx = wx + int(j * 48 * scale)
            fill = CPU if states[b] == "used" else WHITE
            s.rect(bx, y0, int(48 * scale), 60, fill=fill, rx=0)
            s.text(bx + int(24 * scale), y0 + 22, f"block {b}", size=11, anchor="middle")
            s.text(bx + int(24 * scale), y0 + 40, "in use" if states[b] == "used" else "free", size=11,
                   anchor="middle", color=MUTED)
        gx = wx + int(96 * scale)
        s.rect(gx, y0, int(32 * scale), 60, fill=META, rx=0)
        s.text(gx + int(16 * scale), y0 + 35, "gap", size=10, anchor="middle", color=MUTED)
        s.line(wx, y0 - 14, wx, y0 + 74, color=ACCENT, dash=True)
        s.text(wx + 2, y0 - 18, f"{w * 128}", size=11, color=ACCENT, mono=True)
    endx = x0 + int(512 * scale)
    s.line(endx, y0 - 14, endx, y0 + 74, color=ACCENT, dash=True)
    s.text(endx - 2, y0 - 18, "512", size=11, anchor="end", color=ACCENT, mono=True)

    # Free list links, drawn below.
    def centre(b):
        w, j = divmod(b, 2)
        return x0 + int(w * 128 * scale) + int(j * 48 * scale) + int(24 * scale)

    s.text(x0, y0 + 110, "free_head", size=12, weight="bold")
    s.arrow([(x0 + 70, y0 + 106), (centre(1) - 6, y0 + 106), (centre(1) - 6, y0 + 62)], sw=1)
    for b, nxt in links.items():
        if nxt is None:
            s.text(centre(b), y0 + 92, "NIL", size=11, anchor="middle", mono=True)
            continue
        s.arrow([(centre(b) + 6, y0 + 62), (centre(b) + 6, y0 + 80), (centre(nxt) - 6, y0 + 80),
                 (centre(nxt) - 6, y0 + 62)], sw=1, color=CPU_ARROW)

    s.lines(30, 280, [
        "size 48, align 16: blocks are 48 bytes, every bus address a multiple of 16.",
        "boundary 128: no block may cross a multiple of 128, so each 128-byte window holds two blocks and a",
        "32-byte gap: 64 blocks per 4 KiB unit instead of 85 without a boundary.",
        "The first 8 bytes of every free block hold the (unit, block) of the next free block: the free list",
        "lives in the free memory itself, as in mm/dmapool.c. alloc pops the head, free pushes: O(1).",
        "A bitmap of allocated blocks lets free detect double frees and lets alloc distrust a damaged link.",
    ], size=12)
    s.legend(760, 270, [(CPU, "allocated block"), (WHITE, "free block"), (META, "never used (boundary)")])
    return s


# ---------------------------------------------------------------------------------------------
def sequence(title, heading, lanes, steps, footer=()):
    """A sequence diagram: one lifeline per lane; each step is (from, to, label, style), an arrow
    between lanes (from == to: a note on one lifeline). Styles: "mmio" (a register access,
    accent), "dma" (the device reaching memory, dashed), "irq" (an interrupt), "cpu" (plain)."""
    row, top = 34, 112
    width = 1000
    height = top + row * len(steps) + 40 + 18 * len(footer)
    svg = Svg(width, height, title)
    svg.text(width // 2, 28, heading, size=18, anchor="middle", weight="bold")
    xs = {}
    for i, (name, sub, fill) in enumerate(lanes):
        x = 170 + i * 330
        xs[name] = x
        svg.rect(x - 95, 44, 190, 44, fill=fill)
        svg.text(x, 63, name, size=14, anchor="middle", weight="bold")
        svg.text(x, 80, sub, size=11, anchor="middle", color=MUTED)
        svg.line(x, 88, x, top + row * len(steps), color=MUTED, dash=True)
    for n, (a, b, label, style) in enumerate(steps):
        y = top + n * row + 14
        svg.text(18, y + 4, f"{n + 1}", size=11, color=MUTED)
        color = {"mmio": ACCENT, "irq": ACCENT, "dma": "#8a4b08", "cpu": INK}[style]
        if a == b:
            x = xs[a]
            svg.rect(x - 8, y - 10, 16, 20, fill=META, rx=2)
            # Notes read away from the right edge on the last lifeline.
            if a == lanes[-1][0]:
                svg.text(x - 16, y + 4, label, size=12, anchor="end", color=color)
            else:
                svg.text(x + 16, y + 4, label, size=12, color=color)
            continue
        x1, x2 = xs[a], xs[b]
        direction = 1 if x2 > x1 else -1
        svg.arrow([(x1 + 10 * direction, y), (x2 - 10 * direction, y)], color=color, dash=style == "dma",
                  sw=2 if style in ("mmio", "irq") else 1.5)
        mid = (x1 + x2) // 2
        svg.text(mid, y - 6, label, size=12, anchor="middle", color=color)
    svg.lines(18, top + row * len(steps) + 24, list(footer), size=12, color=MUTED)
    return svg


def e1000_transmit_sequence():
    lanes = [("CPU", "driver: E1000::transmit_with", CPU), ("memory", "pool blocks, TX ring", WHITE),
             ("e1000", "the 8254x", DEV)]
    steps = [
        ("CPU", "memory", "frame into an e1000-tx-buf block", "cpu"),
        ("CPU", "memory", "descriptor TDT: address, length, EOP|IFCS|RS", "cpu"),
        ("CPU", "CPU", "fence(SeqCst): both writes before the doorbell", "cpu"),
        ("CPU", "e1000", "MMIO write TDT = TDT + 1  (the doorbell)", "mmio"),
        ("e1000", "memory", "DMA read: the descriptor at TDH", "dma"),
        ("e1000", "memory", "DMA read: the frame at its bus address", "dma"),
        ("e1000", "e1000", "frame on the wire", "cpu"),
        ("e1000", "memory", "DMA write: DD into the descriptor; TDH advances", "dma"),
        ("e1000", "CPU", "interrupt (TXDW), if enabled: MSI or INTx", "irq"),
        ("CPU", "e1000", "MMIO read ICR: acknowledge (the top half)", "mmio"),
        ("CPU", "memory", "reclaim_transmitted: DD seen (acquire), block back to its pool", "cpu"),
    ]
    footer = ["Solid: the CPU's loads and stores. Accent: MMIO and interrupts. Dashed: the device's DMA,",
              "through the IOMMU when VT-d is on. Linux: e1000_tx_queue (dma_wmb), then e1000_xmit_frame",
              "writes TDT, only when netdev_xmit_more() is false: one doorbell per batch of frames."]
    return sequence("One e1000 transmit: CPU, memory and device", "One e1000 transmit", lanes, steps, footer)


def ahci_read_sequence():
    lanes = [("CPU", "driver: Controller::submit_with", CPU), ("memory", "buffers, tables, FIS area", WHITE),
             ("HBA + disk", "AHCI port", DEV)]
    steps = [
        ("CPU", "CPU", "map_sg(buffers, FromDevice): bus segments (IOVAs)", "cpu"),
        ("CPU", "memory", "command table: READ FPDMA QUEUED FIS, PRDT", "cpu"),
        ("CPU", "memory", "command header: CFL, PRDTL, CTBA, PRDBC = 0", "cpu"),
        ("CPU", "CPU", "fence: table and header before the doorbell", "cpu"),
        ("CPU", "HBA + disk", "MMIO: PxSACT bit, then PxCI bit (the doorbell)", "mmio"),
        ("HBA + disk", "memory", "DMA read: command header, then command table", "dma"),
        ("HBA + disk", "HBA + disk", "FIS to the disk; it accepts: BSY clears, PxCI bit clears", "cpu"),
        ("HBA + disk", "memory", "DMA write: the sectors, through the PRDT; PRDBC", "dma"),
        ("HBA + disk", "memory", "Set Device Bits FIS into the received-FIS area", "dma"),
        ("HBA + disk", "HBA + disk", "PxSACT bit clears; PxIS.SDBS, IS set", "cpu"),
        ("HBA + disk", "CPU", "interrupt (MSI)", "irq"),
        ("CPU", "HBA + disk", "top half: read IS, PxIS; write them back; note the port", "mmio"),
        ("CPU", "HBA + disk", "bottom half: clear PxIS, then read PxCI and PxSACT", "mmio"),
        ("CPU", "CPU", "slot done: unmap (bounce/isolation data reaches the Vec)", "cpu"),
    ]
    footer = ["Without NCQ (READ DMA EXT) there is no PxSACT: the disk's final D2H Register FIS clears BSY,",
              "and PxCI clears at completion instead of at step 7. Linux: ahci_qc_issue writes PORT_SCR_ACT,",
              "then PORT_CMD_ISSUE; ahci_port_intr completes with ata_qc_complete_multiple."]
    return sequence("One AHCI disk read with NCQ: CPU, memory and device", "One AHCI disk read (NCQ)", lanes, steps,
                    footer)


DIAGRAMS = {
    "dma-buffer-path.svg": dma_buffer_path,
    "e1000-rings.svg": e1000_rings,
    "vtd-walk.svg": vtd_walk,
    "ahci-command-chain.svg": ahci_chain,
    "streaming-ownership.svg": streaming_ownership,
    "pool-layout.svg": pool_layout,
    "e1000-transmit-sequence.svg": e1000_transmit_sequence,
    "ahci-read-sequence.svg": ahci_read_sequence,
}


def main(argv):
    out = os.path.dirname(os.path.abspath(__file__))
    if len(argv) == 3 and argv[1] == "--out":
        out = argv[2]
    elif len(argv) != 1:
        sys.stderr.write(__doc__)
        return 2
    os.makedirs(out, exist_ok=True)
    for name, make in DIAGRAMS.items():
        with open(os.path.join(out, name), "w", encoding="utf-8", newline="\n") as f:
            f.write(make().render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
