//! Text on a linear framebuffer: a grid of 8×16 character cells drawn with [`super::font`].
//!
//! The boot framebuffer is what the firmware set up — VESA BIOS Extensions under BIOS (VBE 3.0
//! §4.4, mode info `BytesPerScanLine`, `RedFieldPosition`…) or the UEFI Graphics Output Protocol
//! (UEFI 2.10 §12.9, `EFI_GRAPHICS_PIXEL_FORMAT`: `PixelRedGreenBlueReserved8BitPerColor`,
//! `PixelBlueGreenRedReserved8BitPerColor`, `PixelBitMask`) — and the bootloader describes it in a
//! [`FrameBufferInfo`]: width and height in pixels, the *stride* (pixels from one scan line to
//! the next, at least the width), bytes per pixel and the order of the colour bytes.
//!
//! # Why it is built this way: pixels are expensive
//!
//! Under QEMU's TCG every store is an emulated instruction, and on real hardware the framebuffer
//! is uncached or write-combined memory where *reads* are very slow. So:
//!
//! * **The cells are the truth.** [`TextScreen`] keeps a shadow of every cell's character and
//!   never reads the framebuffer back. A cell is drawn only when its character changes.
//! * **A glyph row is one copy.** For each of the 256 possible glyph-row bytes the pixels (8 ×
//!   bytes per pixel) are rendered once into a table, so drawing a character is 16 small copies.
//! * **Scrolling is amortised.** Moving the whole screen up one line would rewrite every pixel
//!   for each new line. Instead, when the cursor falls off the bottom the text moves up by half a
//!   screen at once, and only the cells whose character changed are redrawn (blank cells that stay
//!   blank — most of a log line's tail — cost nothing).
//!
//! Nothing here allocates, prints, takes a lock or panics: the console draws while the serial
//! lock is held with interrupts off, and every geometry is checked once in [`TextScreen::new`].
//! After that, every cell lies inside the framebuffer, which is what lets the one `unsafe` block
//! (the glyph-row copy in `draw_cell`, the hot loop) skip per-row bounds checks.

use super::font::{self, GLYPH_HEIGHT, GLYPH_WIDTH};
use bootloader_api::info::{FrameBufferInfo, PixelFormat};
use core::fmt;

/// The largest bytes-per-pixel we draw (32-bit pixels); the row table is sized for it.
const MAX_BYTES_PER_PIXEL: usize = 4;
/// Bytes of one rendered glyph row at [`MAX_BYTES_PER_PIXEL`].
const MAX_ROW_BYTES: usize = GLYPH_WIDTH * MAX_BYTES_PER_PIXEL;

/// The text colour: light grey, as on a VGA text screen (bright enough to read, not glaring).
pub const FOREGROUND: Rgb = Rgb { red: 0xCC, green: 0xCC, blue: 0xCC };
/// The background colour: black, so clearing is a plain zero fill in every pixel format.
pub const BACKGROUND: Rgb = Rgb { red: 0, green: 0, blue: 0 };

/// The first glyph row covered by the cursor (an underline to the bottom of the cell).
const CURSOR_FIRST_ROW: usize = 14;

/// A colour before it is encoded for a framebuffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb {
    /// Red intensity, 0–255.
    pub red: u8,
    /// Green intensity, 0–255.
    pub green: u8,
    /// Blue intensity, 0–255.
    pub blue: u8,
}

/// Why a framebuffer cannot carry text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnusableFramebuffer {
    /// Bytes per pixel outside 1..=4.
    BytesPerPixel(usize),
    /// Smaller than one 8×16 cell.
    TooSmall {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// The stride is less than the width.
    StrideBelowWidth {
        /// Pixels per scan line in memory.
        stride: usize,
        /// Visible pixels per line.
        width: usize,
    },
    /// Width, height and stride describe more bytes than the buffer has (or than fit a `usize`).
    BufferTooShort {
        /// Bytes the mode needs (`None` if that overflows).
        needed: Option<usize>,
        /// Bytes the bootloader mapped.
        available: usize,
    },
    /// No room for even one cell in the shadow.
    NoCellStorage,
}

impl fmt::Display for UnusableFramebuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UnusableFramebuffer::BytesPerPixel(n) => write!(f, "{n} bytes per pixel (1 to 4 are drawn)"),
            UnusableFramebuffer::TooSmall { width, height } => {
                write!(f, "{width}x{height} pixels is smaller than one 8x16 character")
            }
            UnusableFramebuffer::StrideBelowWidth { stride, width } => {
                write!(f, "stride {stride} is less than the width {width}")
            }
            UnusableFramebuffer::BufferTooShort { needed: Some(n), available } => {
                write!(f, "the geometry needs {n} bytes but the buffer has {available}")
            }
            UnusableFramebuffer::BufferTooShort { needed: None, available } => {
                write!(f, "the geometry overflows the address space (buffer: {available} bytes)")
            }
            UnusableFramebuffer::NoCellStorage => write!(f, "no storage for the text cells"),
        }
    }
}

/// Encodes `colour` as the bytes of one pixel in `format`, `bytes_per_pixel` long (at most 4;
/// bytes past the colour channels are zero).
///
/// `Rgb`/`Bgr` are GOP's `PixelRedGreenBlueReserved8BitPerColor` and
/// `PixelBlueGreenRedReserved8BitPerColor` (and the common VBE direct-colour layouts); `U8` is a
/// grey level; `Unknown` gives each channel's bit position (GOP `PixelBitMask`, VBE field
/// positions), and a channel whose 8 bits would not fit in the pixel is left out.
pub fn encode_pixel(format: PixelFormat, bytes_per_pixel: usize, colour: Rgb) -> [u8; MAX_BYTES_PER_PIXEL] {
    let Rgb { red, green, blue } = colour;
    let mut bytes = match format {
        PixelFormat::Rgb => [red, green, blue, 0],
        PixelFormat::Bgr => [blue, green, red, 0],
        PixelFormat::U8 => {
            // ITU-R BT.601 luma, in integers: 0.299 R + 0.587 G + 0.114 B.
            let grey = (299 * u32::from(red) + 587 * u32::from(green) + 114 * u32::from(blue)) / 1000;
            [grey as u8, 0, 0, 0]
        }
        PixelFormat::Unknown { red_position, green_position, blue_position } => {
            let bits = bytes_per_pixel.min(MAX_BYTES_PER_PIXEL) as u32 * 8;
            let place = |value: u8, position: u8| {
                let position = u32::from(position);
                if position + 8 <= bits { u32::from(value) << position } else { 0 }
            };
            (place(red, red_position) | place(green, green_position) | place(blue, blue_position)).to_le_bytes()
        }
        // A format added to bootloader_api later: draw grey levels in every byte, which shows
        // something readable on most layouts.
        _ => [red; MAX_BYTES_PER_PIXEL],
    };
    for byte in bytes.iter_mut().skip(bytes_per_pixel) {
        *byte = 0;
    }
    bytes
}

/// A grid of character cells drawn on a framebuffer.
///
/// Invariants (established by [`TextScreen::new`]): `1 <= bytes_per_pixel <= 4`;
/// `columns * 8 <= width`, `rows * 16 <= height`; every pixel of every cell lies inside
/// `pixels` (`(height - 1) * stride_bytes + width * bytes_per_pixel <= pixels.len()`);
/// `cells.len() >= columns * rows >= 1`; `cursor_row < rows`, `cursor_column <= columns`
/// (`== columns` means "the line is full; the next character wraps"). While `drawing` is true,
/// the framebuffer shows exactly `cells` (plus the cursor when `cursor_shown`).
pub struct TextScreen<'a> {
    pixels: &'a mut [u8],
    stride_bytes: usize,
    bytes_per_pixel: usize,
    columns: usize,
    rows: usize,
    /// Shadow of the screen: the character in each cell, row-major.
    cells: &'a mut [u8],
    cursor_column: usize,
    cursor_row: usize,
    /// `glyph_rows[bits]`: the pixels of a glyph row whose lit pixels are `bits`.
    glyph_rows: [[u8; MAX_ROW_BYTES]; 256],
    /// When false the shadow is kept up to date but nothing is drawn (`fbcon off`).
    drawing: bool,
    cursor_shown: bool,
    escape: EscapeState,
}

/// Where we are in an ANSI escape sequence (ECMA-48 CSI: ESC `[` parameters final-byte), which
/// is skipped rather than shown as text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EscapeState {
    Text,
    /// After ESC.
    Escape,
    /// After ESC `[`, until a final byte 0x40..=0x7E.
    ControlSequence,
}

impl<'a> TextScreen<'a> {
    /// Checks `info` against `pixels`, clears the screen and returns a console on it using
    /// `cells` as the shadow (the grid is cut down to fit `cells` if the screen is larger).
    pub fn new(pixels: &'a mut [u8], info: FrameBufferInfo, cells: &'a mut [u8]) -> Result<Self, UnusableFramebuffer> {
        let bytes_per_pixel = info.bytes_per_pixel;
        if !(1..=MAX_BYTES_PER_PIXEL).contains(&bytes_per_pixel) {
            return Err(UnusableFramebuffer::BytesPerPixel(bytes_per_pixel));
        }
        let (width, height, stride) = (info.width, info.height, info.stride);
        if width < GLYPH_WIDTH || height < GLYPH_HEIGHT {
            return Err(UnusableFramebuffer::TooSmall { width, height });
        }
        if stride < width {
            return Err(UnusableFramebuffer::StrideBelowWidth { stride, width });
        }
        let available = pixels.len().min(info.byte_len);
        let Some(pixels) = pixels.get_mut(..available) else {
            return Err(UnusableFramebuffer::BufferTooShort { needed: None, available });
        };
        let stride_bytes = stride.checked_mul(bytes_per_pixel);
        let needed =
            stride_bytes.and_then(|s| s.checked_mul(height - 1)).and_then(|n| n.checked_add(width * bytes_per_pixel));
        let (Some(stride_bytes), Some(needed)) = (stride_bytes, needed) else {
            return Err(UnusableFramebuffer::BufferTooShort { needed: None, available });
        };
        if needed > available {
            return Err(UnusableFramebuffer::BufferTooShort { needed: Some(needed), available });
        }
        let columns = (width / GLYPH_WIDTH).min(cells.len());
        if columns == 0 {
            return Err(UnusableFramebuffer::NoCellStorage);
        }
        let rows = (height / GLYPH_HEIGHT).min(cells.len() / columns);
        let foreground = encode_pixel(info.pixel_format, bytes_per_pixel, FOREGROUND);
        let background = encode_pixel(info.pixel_format, bytes_per_pixel, BACKGROUND);
        let mut glyph_rows = [[0u8; MAX_ROW_BYTES]; 256];
        for (bits, row) in glyph_rows.iter_mut().enumerate() {
            for (x, pixel) in row.chunks_exact_mut(bytes_per_pixel).take(GLYPH_WIDTH).enumerate() {
                let lit = bits & (0x80 >> x) != 0;
                pixel.copy_from_slice(&(if lit { foreground } else { background })[..bytes_per_pixel]);
            }
        }
        let mut screen = TextScreen {
            pixels,
            stride_bytes,
            bytes_per_pixel,
            columns,
            rows,
            cells,
            cursor_column: 0,
            cursor_row: 0,
            glyph_rows,
            drawing: true,
            cursor_shown: false,
            escape: EscapeState::Text,
        };
        screen.cells.fill(b' ');
        screen.clear_pixels();
        Ok(screen)
    }

    /// Columns of text.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Rows of text.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The cursor: (column, row).
    pub fn cursor(&self) -> (usize, usize) {
        (self.cursor_column, self.cursor_row)
    }

    /// The characters of row `row` (trailing blanks included), or `None` past the last row.
    pub fn row_text(&self, row: usize) -> Option<&[u8]> {
        if row >= self.rows {
            return None;
        }
        self.cells.get(row * self.columns..(row + 1) * self.columns)
    }

    /// Whether text is being drawn (false after `set_drawing(false)`).
    pub fn is_drawing(&self) -> bool {
        self.drawing
    }

    /// Stops or restarts drawing. Text written while stopped still reaches the shadow; restarting
    /// redraws the whole screen from it.
    pub fn set_drawing(&mut self, on: bool) {
        if on && !self.drawing {
            self.drawing = true;
            self.cursor_shown = false;
            self.clear_pixels();
            for index in 0..self.columns * self.rows {
                let byte = self.cells.get(index).copied().unwrap_or(b' ');
                if byte != b' ' {
                    self.draw_cell(index % self.columns, index / self.columns, byte, false);
                }
            }
        }
        self.drawing = on;
    }

    /// Shows or hides the cursor (an underline under the next character's cell).
    pub fn set_cursor_visible(&mut self, visible: bool) {
        if visible == self.cursor_shown || !self.drawing {
            return;
        }
        self.cursor_shown = visible;
        // A full line's cursor sits on its last cell.
        let column = self.cursor_column.min(self.columns - 1);
        let byte = self.cell(column, self.cursor_row);
        self.draw_cell(column, self.cursor_row, byte, visible);
    }

    /// Writes text: printable ASCII is drawn, `\n` starts a new line, `\r` returns to the start of
    /// the line, backspace moves one cell left, tab moves to the next multiple of 8, ANSI escape
    /// sequences are skipped, and any other character is drawn as a box. The cursor is hidden
    /// (output is often followed by more output; the console shows it again when it goes idle).
    pub fn write_str(&mut self, text: &str) {
        self.set_cursor_visible(false);
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                byte @ 0..0x80 => self.write_byte(byte),
                // UTF-8 continuation bytes belong to the character already drawn.
                0x80..0xC0 => {}
                // The first byte of any other character: no glyph, drawn as the box.
                _ => self.write_byte(0xFF),
            }
            i += 1;
        }
    }

    fn write_byte(&mut self, byte: u8) {
        match self.escape {
            EscapeState::Escape => {
                self.escape = if byte == b'[' { EscapeState::ControlSequence } else { EscapeState::Text };
                return;
            }
            EscapeState::ControlSequence => {
                if (0x40..=0x7E).contains(&byte) {
                    self.escape = EscapeState::Text;
                }
                return;
            }
            EscapeState::Text => {}
        }
        match byte {
            b'\n' => self.new_line(),
            b'\r' => self.cursor_column = 0,
            0x08 => self.cursor_column = self.cursor_column.saturating_sub(1).min(self.columns - 1),
            b'\t' => self.cursor_column = ((self.cursor_column / 8 + 1) * 8).min(self.columns),
            0x1B => self.escape = EscapeState::Escape,
            0x00..=0x1F | 0x7F => {} // other control characters: nothing to show
            _ => {
                if self.cursor_column >= self.columns {
                    self.new_line();
                }
                self.put(self.cursor_column, self.cursor_row, byte);
                self.cursor_column += 1;
            }
        }
    }

    fn new_line(&mut self) {
        self.cursor_column = 0;
        if self.cursor_row + 1 < self.rows {
            self.cursor_row += 1;
        } else {
            // The cursor was on the last row; the text moved `lines` rows up, and the new line is
            // the first row that came free (row 0 when a one-row screen scrolls its only row).
            let lines = (self.rows / 2).max(1);
            self.scroll_up(lines);
            self.cursor_row = (self.rows - lines).min(self.rows - 1);
        }
    }

    /// Moves the text up by `lines` rows, blanking the rows that come free. The caller places the
    /// cursor.
    ///
    /// Rows are handled top to bottom, so a row's new text (the row `lines` below) is still intact
    /// when it is copied. A row whose text does not change (blank staying blank) costs one
    /// comparison; a changed row has its pixel band cleared with one fill and only its non-blank
    /// cells drawn.
    fn scroll_up(&mut self, lines: usize) {
        let (columns, rows) = (self.columns, self.rows);
        let lines = lines.min(rows);
        for row in 0..rows {
            let Some(cells) = self.cells.get_mut(..rows * columns) else { return };
            let target = row * columns..(row + 1) * columns;
            if row + lines < rows {
                let source = (row + lines) * columns..(row + lines + 1) * columns;
                if cells[source.clone()] == cells[target.clone()] {
                    continue;
                }
                cells.copy_within(source, target.start);
            } else {
                if cells[target.clone()].iter().all(|&c| c == b' ') {
                    continue;
                }
                cells[target].fill(b' ');
            }
            self.redraw_row(row);
        }
    }

    /// Clears row `row`'s pixels and draws its non-blank cells.
    fn redraw_row(&mut self, row: usize) {
        if !self.drawing || row >= self.rows {
            return;
        }
        let band = row * GLYPH_HEIGHT * self.stride_bytes;
        let band_end = (band + GLYPH_HEIGHT * self.stride_bytes).min(self.pixels.len());
        if let Some(pixels) = self.pixels.get_mut(band..band_end) {
            pixels.fill(0); // the background is black: zero bytes in every format
        }
        for column in 0..self.columns {
            let byte = self.cell(column, row);
            if byte != b' ' {
                self.draw_cell(column, row, byte, false);
            }
        }
    }

    fn cell(&self, column: usize, row: usize) -> u8 {
        self.cells.get(row * self.columns + column).copied().unwrap_or(b' ')
    }

    /// Sets a cell in the shadow and draws it if it changed.
    fn put(&mut self, column: usize, row: usize, byte: u8) {
        let Some(cell) = self.cells.get_mut(row * self.columns + column) else { return };
        if *cell != byte {
            *cell = byte;
            self.draw_cell(column, row, byte, false);
        }
    }

    /// Draws one cell's glyph (with the cursor underline if `cursor`), when drawing is on.
    fn draw_cell(&mut self, column: usize, row: usize, byte: u8, cursor: bool) {
        if !self.drawing || column >= self.columns || row >= self.rows {
            return;
        }
        // This loop runs for every character printed, in the debug kernel too, under an
        // emulator where every instruction counts: plain `while`, one copy per glyph row.
        let glyph = font::glyph(byte);
        let row_bytes = GLYPH_WIDTH * self.bytes_per_pixel;
        let mut offset = row * GLYPH_HEIGHT * self.stride_bytes + column * row_bytes;
        let pixels = self.pixels.as_mut_ptr();
        let mut line = 0;
        while line < GLYPH_HEIGHT {
            let bits = if cursor && line >= CURSOR_FIRST_ROW { 0xFF } else { glyph[line] };
            let source = self.glyph_rows[usize::from(bits)].as_ptr();
            // SAFETY: `column < columns` and `row < rows` (checked above), so by the invariant of
            // `new` this glyph row, `offset..offset + row_bytes` with `offset = (row * 16 + line)
            // * stride_bytes + column * 8 * bytes_per_pixel`, ends at or before
            // `(height - 1) * stride_bytes + width * bytes_per_pixel <= pixels.len()`. The source
            // is one row of `glyph_rows`, `MAX_ROW_BYTES >= row_bytes` long, inside `self` and
            // so disjoint from the framebuffer.
            unsafe { core::ptr::copy_nonoverlapping(source, pixels.add(offset), row_bytes) };
            offset += self.stride_bytes;
            line += 1;
        }
    }

    /// The framebuffer bytes, for tests that check what a write leaves alone.
    #[cfg(test)]
    pub fn pixels_for_test(&mut self) -> &mut [u8] {
        self.pixels
    }

    /// Paints the whole framebuffer with the background (black: all zero bytes in every format).
    fn clear_pixels(&mut self) {
        if self.drawing {
            self.pixels.fill(0);
        }
    }
}
