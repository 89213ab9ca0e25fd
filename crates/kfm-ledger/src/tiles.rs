//! C2SP tlog-tiles paths and entry bundles.
//!
//! Tiles have height 8 (256 hashes or entries). Paths: `tile/<L>/<N>` for
//! hash tiles, `tile/entries/<N>` for entry bundles, with `.p/<W>` for a
//! partial tile of width W < 256; N is written in groups of three digits,
//! all but the last prefixed with `x` (`x001/x234/067`).

/// Entries (or hashes) per full tile.
pub const TILE_WIDTH: u64 = 256;
const HEIGHT: u8 = 8;

/// The largest entry a bundle can hold (its length is a big-endian u16).
pub const MAX_ENTRY: usize = u16::MAX as usize;

fn index_path(n: u64) -> String {
    let mut parts = vec![format!("{:03}", n % 1000)];
    let mut rest = n / 1000;
    while rest > 0 {
        parts.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    parts.reverse();
    parts.join("/")
}

fn width_suffix(width: u64) -> String {
    if width == TILE_WIDTH {
        String::new()
    } else {
        format!(".p/{width}")
    }
}

/// Path of hash tile `n` at `level` with `width` hashes.
pub fn hash_tile_path(level: u8, n: u64, width: u64) -> String {
    format!("tile/{level}/{}{}", index_path(n), width_suffix(width))
}

/// Path of entry bundle `n` holding `width` entries.
pub fn entries_path(n: u64, width: u64) -> String {
    format!("tile/entries/{}{}", index_path(n), width_suffix(width))
}

/// A hash tile a tree of some size needs: level, index, width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashTile {
    pub level: u8,
    pub n: u64,
    pub width: u64,
}

impl HashTile {
    pub fn path(&self) -> String {
        hash_tile_path(self.level, self.n, self.width)
    }

    pub(crate) fn to_tlog(self) -> tlog_tiles::tile::Tile {
        // Width fits: at most 256.
        tlog_tiles::tile::Tile::new(HEIGHT, self.level, self.n, self.width as u32, false)
    }
}

/// The hash tiles that change when the tree grows from `old` to `new`
/// leaves (all tiles of a tree of size `new` when `old` is 0).
pub fn new_hash_tiles(old: u64, new: u64) -> Vec<HashTile> {
    tlog_tiles::tile::Tile::new_tiles(HEIGHT, old, new)
        .into_iter()
        .map(|t| HashTile {
            level: t.level(),
            n: t.level_index(),
            width: u64::from(t.width()),
        })
        .collect()
}

/// Appends `entry` to a bundle: big-endian u16 length, then the bytes.
pub fn push_entry(bundle: &mut Vec<u8>, entry: &[u8]) {
    // Callers refuse entries over MAX_ENTRY before they get here.
    let len = u16::try_from(entry.len()).unwrap_or(u16::MAX);
    bundle.extend_from_slice(&len.to_be_bytes());
    bundle.extend_from_slice(entry);
}

/// Splits a bundle into its entries; `None` if it is malformed (truncated
/// or with trailing bytes).
pub fn parse_bundle(mut bundle: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bundle.is_empty() {
        let (len, rest) = bundle.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            return None;
        }
        out.push(&rest[..len]);
        bundle = &rest[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_c2sp() {
        assert_eq!(hash_tile_path(0, 0, 256), "tile/0/000");
        assert_eq!(hash_tile_path(1, 1234067, 17), "tile/1/x001/x234/067.p/17");
        assert_eq!(entries_path(5, 256), "tile/entries/005");
        assert_eq!(entries_path(1000, 3), "tile/entries/x001/000.p/3");
    }

    #[test]
    fn bundles_round_trip_and_refuse_truncation() {
        let mut b = Vec::new();
        for e in [&b""[..], b"a", &[7u8; 300]] {
            push_entry(&mut b, e);
        }
        assert_eq!(
            parse_bundle(&b).unwrap(),
            vec![&b""[..], b"a", &[7u8; 300][..]]
        );
        assert!(parse_bundle(&b[..b.len() - 1]).is_none());
        assert!(parse_bundle(&b[..1]).is_none());
    }
}
