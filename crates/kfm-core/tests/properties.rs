//! Property tests: the validators accept only what is safe to splice into
//! store keys and URLs, and the parsers never panic on hostile input.

use kfm_core::{DatasetId, DatasetSpec, Digest};
use proptest::prelude::*;

proptest! {
    #[test]
    fn any_accepted_dataset_id_is_a_safe_path_segment(s in "\\PC{0,80}") {
        if let Ok(id) = s.parse::<DatasetId>() {
            let id = id.as_str();
            prop_assert!(!id.contains('/') && !id.contains('\\') && id != "." && id != "..");
            prop_assert!(id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        }
    }

    #[test]
    fn digests_round_trip_and_any_flipped_bit_changes_them(bytes in proptest::collection::vec(any::<u8>(), 0..512), bit in 0usize..4096) {
        let d = Digest::of(&bytes);
        prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        if !bytes.is_empty() {
            let mut flipped = bytes.clone();
            let i = bit % (bytes.len() * 8);
            flipped[i / 8] ^= 1 << (i % 8);
            prop_assert_ne!(Digest::of(&flipped), d);
        }
    }

    #[test]
    fn spec_parsing_never_panics_and_errors_are_located(text in "\\PC{0,400}") {
        if let Err(e) = DatasetSpec::parse(&text, "fuzz.yaml") {
            prop_assert!(e.line >= 1 && e.column >= 1);
            prop_assert!(e.to_string().starts_with("fuzz.yaml:"));
        }
    }
}
