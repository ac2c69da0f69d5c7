//! Unicode character classes used by the hand-written pre-tokenizers, taken from `regex-syntax`
//! (the tables fancy-regex itself uses), so the fast splitters and the regexes agree on every
//! code point of the same Unicode version.

use std::sync::OnceLock;

/// `\p{L}`
pub const LETTER: u8 = 1;
/// `\p{N}`
pub const NUMBER: u8 = 2;
/// `\s` (Unicode White_Space)
pub const SPACE: u8 = 4;
/// o200k's "upper-ish" class `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`
pub const UPPER: u8 = 8;
/// o200k's "lower-ish" class `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`
pub const LOWER: u8 = 16;

const BLOCK: usize = 128;

/// Two-level table: code point block → deduplicated block of class bits.
pub struct Classes {
    index: Vec<u16>,
    blocks: Vec<[u8; BLOCK]>,
    ascii: [u8; 128],
}

fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .expect("built-in class parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => cls
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("{pattern} is not a Unicode class: {other:?}"),
    }
}

impl Classes {
    fn build() -> Classes {
        let mut flat = vec![0u8; 0x110000];
        for (pattern, bit) in [
            (r"\p{L}", LETTER),
            (r"\p{N}", NUMBER),
            (r"\s", SPACE),
            (r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", UPPER),
            (r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", LOWER),
        ] {
            for (a, b) in class_ranges(pattern) {
                for c in a..=b {
                    flat[c as usize] |= bit;
                }
            }
        }
        let mut index = Vec::with_capacity(flat.len() / BLOCK);
        let mut blocks: Vec<[u8; BLOCK]> = Vec::new();
        let mut seen: rustc_hash::FxHashMap<[u8; BLOCK], u16> = Default::default();
        for chunk in flat.chunks_exact(BLOCK) {
            let block: [u8; BLOCK] = chunk.try_into().expect("block size");
            let id = *seen.entry(block).or_insert_with(|| {
                blocks.push(block);
                (blocks.len() - 1) as u16
            });
            index.push(id);
        }
        let mut ascii = [0u8; 128];
        ascii.copy_from_slice(&flat[..128]);
        Classes {
            index,
            blocks,
            ascii,
        }
    }

    #[inline]
    pub fn of(&self, c: u32) -> u8 {
        if c < 128 {
            self.ascii[c as usize]
        } else {
            let block = self.index[(c as usize) / BLOCK] as usize;
            self.blocks[block][(c as usize) % BLOCK]
        }
    }
}

/// The shared table (built once, ~10 ms).
pub fn classes() -> &'static Classes {
    static TABLE: OnceLock<Classes> = OnceLock::new();
    TABLE.get_or_init(Classes::build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_match_std_where_std_has_the_same_property() {
        let t = classes();
        // Below U+3000 both Unicode versions (std's and regex-syntax's) agree.
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let bits = t.of(c as u32);
            assert_eq!(bits & SPACE != 0, c.is_whitespace(), "{c:?}");
            assert_eq!(bits & NUMBER != 0, c.is_numeric(), "{c:?}");
        }
        assert_eq!(t.of('a' as u32), LETTER | LOWER);
        assert_eq!(t.of('A' as u32), LETTER | UPPER);
        assert_eq!(t.of(0x301), UPPER | LOWER); // combining acute: a mark, not a letter
        assert_eq!(t.of('中' as u32), LETTER | UPPER | LOWER);
    }
}
