//! Host tests of the console's pure logic: the font, scan-code decoding, and the text screen over
//! framebuffers held in memory (several pixel formats, sizes and strides), read back pixel by
//! pixel.

use super::font::{self, FONT, GLYPH_HEIGHT, GLYPH_WIDTH, MISSING_GLYPH};
use super::keyboard::ScancodeDecoder;
use super::screen::{BACKGROUND, FOREGROUND, TextScreen, UnusableFramebuffer, encode_pixel};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use bootloader_api::info::{FrameBufferInfo, PixelFormat};

// ---- font ----

#[test]
fn every_printable_character_has_a_glyph_and_only_space_is_blank() {
    assert_eq!(FONT.len(), 95);
    for byte in 0x20u8..=0x7E {
        let glyph = font::glyph(byte);
        let lit = glyph.iter().any(|&row| row != 0);
        assert_eq!(lit, byte != b' ', "glyph of {:?}", byte as char);
    }
}

#[test]
fn every_glyph_is_different_from_every_other() {
    for (i, a) in FONT.iter().enumerate() {
        for (j, b) in FONT.iter().enumerate().skip(i + 1) {
            assert_ne!(a, b, "{:?} and {:?} look the same", (0x20 + i as u8) as char, (0x20 + j as u8) as char);
        }
        assert_ne!(a, &MISSING_GLYPH);
    }
}

#[test]
fn bytes_without_a_glyph_get_the_box() {
    for byte in (0u8..0x20).chain(0x7F..=0xFF) {
        assert_eq!(font::glyph(byte), &MISSING_GLYPH);
    }
}

// ---- keyboard ----

/// Scan code set 1 make codes for a few keys.
const KEY_H: u8 = 0x23;
const KEY_E: u8 = 0x12;
const KEY_L: u8 = 0x26;
const KEY_P: u8 = 0x19;
const KEY_C: u8 = 0x2E;
const KEY_1: u8 = 0x02;
const KEY_SEMICOLON: u8 = 0x27;
const KEY_ENTER: u8 = 0x1C;
const KEY_BACKSPACE: u8 = 0x0E;
const KEY_SPACE: u8 = 0x39;
const KEY_LEFT_SHIFT: u8 = 0x2A;
const KEY_RIGHT_SHIFT: u8 = 0x36;
const KEY_CTRL: u8 = 0x1D;
const KEY_CAPS: u8 = 0x3A;
const BREAK: u8 = 0x80;

/// Feeds `bytes` and collects what they typed.
fn typed(decoder: &mut ScancodeDecoder, bytes: &[u8]) -> Vec<u8> {
    bytes.iter().filter_map(|&b| decoder.feed(b)).collect()
}

/// Press and release of each key.
fn taps(keys: &[u8]) -> Vec<u8> {
    keys.iter().flat_map(|&k| [k, k | BREAK]).collect()
}

#[test]
fn make_codes_type_lowercase_letters_digits_and_space() {
    let mut d = ScancodeDecoder::new();
    assert_eq!(typed(&mut d, &taps(&[KEY_H, KEY_E, KEY_L, KEY_P, KEY_SPACE, KEY_1])), b"help 1");
}

#[test]
fn enter_is_newline_and_backspace_is_0x08() {
    let mut d = ScancodeDecoder::new();
    assert_eq!(typed(&mut d, &taps(&[KEY_ENTER, KEY_BACKSPACE])), b"\n\x08");
}

#[test]
fn either_shift_gives_capitals_and_symbols_while_held() {
    let mut d = ScancodeDecoder::new();
    let mut bytes = vec![KEY_LEFT_SHIFT];
    bytes.extend(taps(&[KEY_C, KEY_SEMICOLON, KEY_1]));
    bytes.push(KEY_LEFT_SHIFT | BREAK);
    bytes.extend(taps(&[KEY_C]));
    bytes.push(KEY_RIGHT_SHIFT);
    bytes.extend(taps(&[KEY_SEMICOLON]));
    bytes.push(KEY_RIGHT_SHIFT | BREAK);
    assert_eq!(typed(&mut d, &bytes), b"C:!c:");
}

#[test]
fn caps_lock_toggles_letters_only_and_shift_inverts_it() {
    let mut d = ScancodeDecoder::new();
    // Held Caps Lock repeats its make code: it must toggle once.
    let mut bytes = vec![KEY_CAPS, KEY_CAPS, KEY_CAPS, KEY_CAPS | BREAK];
    bytes.extend(taps(&[KEY_C, KEY_1]));
    bytes.push(KEY_LEFT_SHIFT);
    bytes.extend(taps(&[KEY_C]));
    bytes.push(KEY_LEFT_SHIFT | BREAK);
    assert_eq!(typed(&mut d, &bytes), b"C1c");
    assert!(d.caps_lock());
    assert_eq!(typed(&mut d, &[KEY_CAPS, KEY_CAPS | BREAK, KEY_C]), b"c");
    assert!(!d.caps_lock());
}

#[test]
fn ctrl_with_a_letter_gives_its_control_code() {
    let mut d = ScancodeDecoder::new();
    assert_eq!(typed(&mut d, &[KEY_CTRL, KEY_C, KEY_C | BREAK, KEY_CTRL | BREAK, KEY_C]), b"\x03c");
    // Right Ctrl is E0 1D.
    assert_eq!(typed(&mut d, &[0xE0, KEY_CTRL, KEY_C, 0xE0, KEY_CTRL | BREAK, KEY_C]), b"\x03c");
}

#[test]
fn break_codes_and_extended_keys_type_nothing() {
    let mut d = ScancodeDecoder::new();
    // Releases alone.
    assert_eq!(typed(&mut d, &[KEY_H | BREAK, KEY_1 | BREAK]), b"");
    // Arrow up is E0 48: not keypad 8. Print Screen is E0 2A E0 37 (a "fake shift"), and its
    // release E0 B7 E0 AA: Shift must not stick.
    assert_eq!(typed(&mut d, &[0xE0, 0x48, 0xE0, 0xC8, 0xE0, 0x2A, 0xE0, 0x37, 0xE0, 0xB7, 0xE0, 0xAA]), b"");
    assert_eq!(typed(&mut d, &taps(&[KEY_C])), b"c");
    // Pause: E1 1D 45 E1 9D C5, no release; the next key types normally.
    assert_eq!(typed(&mut d, &[0xE1, 0x1D, 0x45, 0xE1, 0x9D, 0xC5, KEY_H]), b"h");
    // Keypad Enter and keypad slash are extended but type.
    assert_eq!(typed(&mut d, &[0xE0, 0x1C, 0xE0, 0x9C, 0xE0, 0x35, 0xE0, 0xB5]), b"\n/");
}

#[test]
fn any_byte_sequence_is_decoded_without_panicking() {
    let mut d = ScancodeDecoder::new();
    for a in 0..=255u8 {
        for b in [0x00, 0x2A, 0x3A, 0x80, 0xE0, 0xE1, 0xFA, 0xFF] {
            if let Some(c) = d.feed(a).or(d.feed(b)) {
                assert!(c.is_ascii(), "{a:#x} {b:#x} gave {c:#x}");
            }
        }
    }
}

// ---- the text screen ----

/// A framebuffer in memory.
struct FakeFramebuffer {
    pixels: Vec<u8>,
    info: FrameBufferInfo,
}

impl FakeFramebuffer {
    fn new(width: usize, height: usize, stride: usize, bytes_per_pixel: usize, pixel_format: PixelFormat) -> Self {
        let byte_len = stride * height * bytes_per_pixel;
        FakeFramebuffer {
            pixels: vec![0x5A; byte_len],
            info: FrameBufferInfo { byte_len, width, height, pixel_format, bytes_per_pixel, stride },
        }
    }

    /// Reads the screen back: each cell must be exactly a glyph in the foreground and background
    /// colours (`@` when it is not one; `#` for the missing-glyph box).
    fn read_text(&self, columns: usize, rows: usize) -> Vec<String> {
        let bpp = self.info.bytes_per_pixel;
        let fg = encode_pixel(self.info.pixel_format, bpp, FOREGROUND);
        let bg = encode_pixel(self.info.pixel_format, bpp, BACKGROUND);
        (0..rows)
            .map(|row| {
                (0..columns)
                    .map(|column| {
                        let mut bits = [0u8; GLYPH_HEIGHT];
                        for (line, bits) in bits.iter_mut().enumerate() {
                            for x in 0..GLYPH_WIDTH {
                                let at =
                                    ((row * GLYPH_HEIGHT + line) * self.info.stride + column * GLYPH_WIDTH + x) * bpp;
                                let pixel = &self.pixels[at..at + bpp];
                                if pixel == &fg[..bpp] && fg[..bpp] != bg[..bpp] {
                                    *bits |= 0x80 >> x;
                                } else if pixel != &bg[..bpp] {
                                    return '@';
                                }
                            }
                        }
                        if bits == MISSING_GLYPH {
                            return '#';
                        }
                        match FONT.iter().position(|g| *g == bits) {
                            Some(i) => (0x20 + i as u8) as char,
                            None => '@',
                        }
                    })
                    .collect::<String>()
                    .trim_end()
                    .into()
            })
            .collect()
    }
}

/// The shadow's rows, trailing blanks trimmed.
fn shadow_text(screen: &TextScreen) -> Vec<String> {
    (0..screen.rows())
        .map(|r| {
            let row = screen.row_text(r).unwrap().iter().map(|&b| if b.is_ascii() { b as char } else { '#' });
            row.collect::<String>().trim_end().into()
        })
        .collect()
}

/// Runs `f` on a screen over `fb`, then checks that the pixels show exactly the shadow; returns
/// the text.
fn on_screen(fb: &mut FakeFramebuffer, f: impl FnOnce(&mut TextScreen)) -> Vec<String> {
    let mut cells = vec![0u8; 4096];
    let info = fb.info;
    let (columns, rows, shadow) = {
        let mut screen = TextScreen::new(&mut fb.pixels, info, &mut cells).expect("usable");
        f(&mut screen);
        (screen.columns(), screen.rows(), shadow_text(&screen))
    };
    assert_eq!(fb.read_text(columns, rows), shadow, "pixels differ from the shadow");
    shadow
}

fn rgb32(width: usize, height: usize) -> FakeFramebuffer {
    FakeFramebuffer::new(width, height, width, 4, PixelFormat::Rgb)
}

#[test]
fn text_reads_back_from_pixels_in_every_format() {
    let formats = [
        (PixelFormat::Rgb, 4),
        (PixelFormat::Bgr, 4),
        (PixelFormat::Bgr, 3),
        (PixelFormat::Rgb, 3),
        (PixelFormat::U8, 1),
        (PixelFormat::U8, 2),
        (PixelFormat::Unknown { red_position: 11, green_position: 5, blue_position: 0 }, 2),
        (PixelFormat::Unknown { red_position: 16, green_position: 8, blue_position: 0 }, 4),
    ];
    for (format, bpp) in formats {
        // Width not a multiple of 8, stride well beyond it.
        let mut fb = FakeFramebuffer::new(100, 70, 133, bpp, format);
        let text = on_screen(&mut fb, |s| s.write_str("Hello, DMA!\nlspci 100e"));
        assert_eq!(text[..2], ["Hello, DMA!", "lspci 100e"], "{format:?} {bpp}");
        // Padding right of the width and below the last full row is background.
        for y in 0..70 {
            for x in 96..133 {
                let at = (y * 133 + x) * bpp;
                assert!(fb.pixels[at..at + bpp].iter().all(|&b| b == 0), "{format:?}: ({x},{y}) touched");
            }
        }
    }
}

#[test]
fn long_lines_wrap_and_a_full_line_then_newline_makes_no_blank_line() {
    let mut fb = rgb32(80, 64); // 10 columns, 4 rows
    let text = on_screen(&mut fb, |s| {
        s.write_str("0123456789abc\n");
        s.write_str("0123456789\nxy");
        assert_eq!(s.cursor(), (2, 3));
    });
    assert_eq!(text, ["0123456789", "abc", "0123456789", "xy"]);
}

#[test]
fn carriage_return_backspace_and_tab_move_the_cursor() {
    let mut fb = rgb32(160, 64); // 20 columns, 4 rows
    let text = on_screen(&mut fb, |s| {
        s.write_str("abcdef\rX");
        s.write_str("\nhelp");
        s.write_str("\x08 \x08"); // the shell's erase
        s.write_str("\nA\tB\tC");
        assert_eq!(s.cursor(), (17, 2));
        s.write_str("\tD"); // the tab reaches the end of the line: D wraps
        s.write_str("\x08\x08\x08"); // backspace stops at the start of the line
        assert_eq!(s.cursor(), (0, 3));
    });
    assert_eq!(text, ["Xbcdef", "hel", "A       B       C", "D"]);
}

#[test]
fn scrolling_moves_text_up_by_half_a_screen() {
    let mut fb = rgb32(64, 96); // 8 columns, 6 rows
    let text = on_screen(&mut fb, |s| {
        for i in 0..7 {
            s.write_str(&alloc::format!("line {i}\n"));
        }
        // 7 newlines on 6 rows: one scroll by 3 after line 5; line 6 then row 3, cursor row 4.
        assert_eq!(s.cursor(), (0, 4));
    });
    assert_eq!(text, ["line 3", "line 4", "line 5", "line 6", "", ""]);
}

#[test]
fn a_long_run_of_output_keeps_pixels_equal_to_the_shadow() {
    for rows_px in [16, 32, 48, 80, 200] {
        let mut fb = FakeFramebuffer::new(72, rows_px, 80, 3, PixelFormat::Bgr);
        let text = on_screen(&mut fb, |s| {
            for i in 0..200 {
                let line = alloc::format!("{i:>3}{}\n", &"-=#abcXYZ~"[..i % 10]);
                s.write_str(&line);
            }
            s.write_str("tail");
        });
        assert_eq!(text.iter().rev().find(|l| !l.is_empty()).map(String::as_str), Some("tail"));
    }
}

#[test]
fn rows_that_stay_blank_are_not_redrawn_when_scrolling() {
    let mut fb = rgb32(160, 96); // 20 columns, 6 rows
    let mut cells = vec![0u8; 120];
    let info = fb.info;
    // A pixel in row 1, which is blank before the scroll and after it.
    let mark = (16 * 160 + 10 * 8) * 4;
    let text = {
        let mut screen = TextScreen::new(&mut fb.pixels, info, &mut cells).unwrap();
        screen.write_str("a\n\n\n\n\n");
        screen.pixels_for_test()[mark] = 0x77;
        screen.write_str("\nb"); // scrolls by 3: row 0 gets row 3 (blank), row 1 gets row 4 (blank)
        shadow_text(&screen)
    };
    assert_eq!(text, ["", "", "", "b", "", ""]);
    assert_eq!(fb.pixels[mark], 0x77, "a row that stayed blank was redrawn");
}

#[test]
fn output_while_drawing_is_off_shows_when_it_is_turned_back_on() {
    let mut fb = rgb32(80, 64);
    let text = on_screen(&mut fb, |s| {
        s.write_str("one\n");
        s.set_drawing(false);
        assert!(!s.is_drawing());
        s.write_str("two\nthree\nfour\nfive\n");
        s.set_drawing(true);
    });
    assert_eq!(text, ["three", "four", "five", ""]);
    // While off, nothing reaches the pixels.
    let mut fb = rgb32(80, 64);
    let mut cells = vec![0u8; 40];
    let info = fb.info;
    {
        let mut s = TextScreen::new(&mut fb.pixels, info, &mut cells).unwrap();
        s.set_drawing(false);
        s.write_str("hidden");
    }
    assert!(fb.pixels.iter().all(|&b| b == 0));
}

#[test]
fn the_cursor_underlines_the_next_cell_until_text_is_written() {
    let mut fb = rgb32(80, 32);
    let mut cells = vec![0u8; 20];
    let info = fb.info;
    {
        let mut s = TextScreen::new(&mut fb.pixels, info, &mut cells).unwrap();
        s.write_str("ab");
        s.set_cursor_visible(true);
    }
    // Column 2, glyph rows 14 and 15 are lit; row 13 is not.
    let lit = |fb: &FakeFramebuffer, line: usize| fb.pixels[(line * 80 + 2 * 8) * 4] == FOREGROUND.red;
    assert!(lit(&fb, 14) && lit(&fb, 15) && !lit(&fb, 13));
    let text = on_screen(&mut fb, |s| {
        s.write_str("ab");
        s.set_cursor_visible(true);
        s.write_str("c");
    });
    assert_eq!(text[0], "abc");
}

#[test]
fn escape_sequences_are_skipped_and_other_characters_are_boxes() {
    let mut fb = rgb32(160, 32);
    let text = on_screen(&mut fb, |s| s.write_str("\x1b[1;31mred\x1b[0m ok \u{2014} \u{e9}\x07!"));
    assert_eq!(text[0], "red ok # #!");
}

#[test]
fn odd_geometries_are_refused_or_used_without_panicking() {
    let info = |width, height, stride, bytes_per_pixel, byte_len| FrameBufferInfo {
        byte_len,
        width,
        height,
        pixel_format: PixelFormat::Bgr,
        bytes_per_pixel,
        stride,
    };
    let mut pixels = vec![0u8; 64 * 1024];
    let mut cells = vec![0u8; 1024];
    let mut try_new = |i: FrameBufferInfo| TextScreen::new(&mut pixels, i, &mut cells).map(|s| (s.columns(), s.rows()));
    assert!(matches!(try_new(info(0, 0, 0, 4, 0)), Err(UnusableFramebuffer::TooSmall { .. })));
    assert!(matches!(try_new(info(0, 100, 100, 4, 40_000)), Err(UnusableFramebuffer::TooSmall { .. })));
    assert!(matches!(try_new(info(7, 100, 100, 4, 40_000)), Err(UnusableFramebuffer::TooSmall { .. })));
    assert!(matches!(try_new(info(64, 15, 64, 4, 40_000)), Err(UnusableFramebuffer::TooSmall { .. })));
    assert_eq!(try_new(info(64, 16, 64, 0, 40_000)), Err(UnusableFramebuffer::BytesPerPixel(0)));
    assert_eq!(try_new(info(64, 16, 64, 8, 40_000)), Err(UnusableFramebuffer::BytesPerPixel(8)));
    assert!(matches!(try_new(info(64, 16, 32, 4, 40_000)), Err(UnusableFramebuffer::StrideBelowWidth { .. })));
    assert!(matches!(
        try_new(info(64, 16, usize::MAX / 2, 4, 40_000)),
        Err(UnusableFramebuffer::BufferTooShort { needed: None, .. })
    ));
    assert!(matches!(
        try_new(info(64, 160, 1 << 20, 4, usize::MAX)),
        Err(UnusableFramebuffer::BufferTooShort { needed: Some(_), .. })
    ));
    // byte_len larger than the real buffer: the buffer's length wins.
    assert!(matches!(try_new(info(640, 480, 640, 4, usize::MAX)), Err(UnusableFramebuffer::BufferTooShort { .. })));
    // Smallest usable screens, 1 and 2 bytes per pixel, and a grid cut down to the shadow.
    assert_eq!(try_new(info(8, 16, 8, 1, 128)), Ok((1, 1)));
    assert_eq!(try_new(info(17, 33, 17, 2, 17 * 33 * 2)), Ok((2, 2)));
    assert_eq!(try_new(info(200, 100, 200, 1, 20_000)), Ok((25, 6)));
    let mut few_cells = [0u8; 30];
    assert_eq!(
        TextScreen::new(&mut pixels, info(200, 100, 200, 1, 20_000), &mut few_cells).map(|s| (s.columns(), s.rows())),
        Ok((25, 1))
    );
    assert_eq!(
        TextScreen::new(&mut pixels, info(200, 100, 200, 1, 20_000), &mut []).map(|s| s.rows()),
        Err(UnusableFramebuffer::NoCellStorage)
    );
}

#[test]
fn a_one_cell_screen_survives_everything() {
    let mut fb = rgb32(8, 16);
    let text = on_screen(&mut fb, |s| {
        s.set_cursor_visible(true);
        s.write_str("abc\n\n\t\x08\x08\rxyz\u{1F600}\x1b[");
        s.set_cursor_visible(true);
        s.set_cursor_visible(false);
    });
    assert_eq!(text, ["#"]);
}
