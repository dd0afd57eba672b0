//! The test pattern disk images carry, so a sector's content proves where it came from.
//!
//! Sector `lba` written with `seed`: bytes 0..8 are `lba` (u64 LE), 8..16 are `seed` (u64 LE),
//! the rest comes from xorshift64* seeded with `lba × 0x9E3779B97F4A7C15 ^ seed`. xtask writes
//! the same pattern into image files (`xtask/src/disk_tests.rs` uses this very function), so a
//! sector read from the wrong LBA, a stale one, or one written with the wrong seed is caught.

/// Fills `sector` with the pattern for `lba` and `seed`.
pub fn fill_sector(sector: &mut [u8], lba: u64, seed: u64) {
    let mut state = lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
    if state == 0 {
        state = 0x2545_F491_4F6C_DD1D;
    }
    for (i, chunk) in sector.chunks_mut(8).enumerate() {
        let word = match i {
            0 => lba,
            1 => seed,
            _ => {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                state.wrapping_mul(0x2545_F491_4F6C_DD1D)
            }
        };
        let bytes = word.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Checks `sector` against the pattern; `Err((offset, expected, found))` at the first mismatch.
pub fn check_sector(sector: &[u8], lba: u64, seed: u64) -> Result<(), (usize, u8, u8)> {
    let mut expected = [0u8; 512];
    for (base, chunk) in sector.chunks(512).enumerate() {
        let want = &mut expected[..chunk.len()];
        fill_sector(want, lba, seed);
        if let Some(i) = chunk.iter().zip(want.iter()).position(|(a, b)| a != b) {
            return Err((base * 512 + i, want[i], chunk[i]));
        }
    }
    Ok(())
}

/// A 64-bit FNV-1a digest of the pattern of sector 7, seed 0x5EED: the value xtask's copy must
/// produce too.
pub fn reference_digest() -> u64 {
    let mut sector = [0u8; 512];
    fill_sector(&mut sector, 7, 0x5EED);
    sector.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_names_lba_and_seed_and_differs_per_sector() {
        let mut a = [0u8; 512];
        let mut b = [0u8; 512];
        fill_sector(&mut a, 1, 2);
        fill_sector(&mut b, 2, 2);
        assert_eq!(&a[..8], &1u64.to_le_bytes());
        assert_eq!(&a[8..16], &2u64.to_le_bytes());
        assert_ne!(&a[16..], &b[16..]);
        assert_eq!(check_sector(&a, 1, 2), Ok(()));
        assert!(check_sector(&a, 1, 3).is_err());
        // xtask's copy asserts the same value.
        assert_eq!(reference_digest(), 0xe9c4_b89a_1ea8_e6eb);
    }
}
