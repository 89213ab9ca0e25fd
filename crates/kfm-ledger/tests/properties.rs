//! Property tests: for random tree sizes, proofs for random pairs verify,
//! and any single flipped bit in a proof, a root or a leaf makes them fail.

use kfm_ledger::{MerkleTree, verify_consistency, verify_inclusion};
use proptest::prelude::*;

fn tree(size: u64) -> MerkleTree {
    let mut t = MerkleTree::new();
    for i in 0..size {
        t.push(format!("entry {i}").as_bytes());
    }
    t
}

fn flip(bytes: &mut [u8], bit: usize) {
    let i = bit % (bytes.len() * 8);
    bytes[i / 8] ^= 1 << (i % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn inclusion_proofs_verify_and_any_flipped_bit_fails(size in 1u64..300, index_seed: u64, at_seed: u64, bit: usize) {
        let t = tree(size);
        let at = 1 + at_seed % size; // a tree size at which to prove
        let index = index_seed % at;
        let leaf = t.leaf(index).unwrap();
        let root = t.root_at(at).unwrap();
        let proof = t.prove_inclusion(index, at).unwrap();
        prop_assert!(verify_inclusion(index, at, &leaf, &proof, &root).is_ok());

        let mut bad_leaf = leaf;
        flip(&mut bad_leaf, bit);
        prop_assert!(verify_inclusion(index, at, &bad_leaf, &proof, &root).is_err());
        let mut bad_root = root;
        flip(&mut bad_root, bit);
        prop_assert!(verify_inclusion(index, at, &leaf, &proof, &bad_root).is_err());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let which = bit % bad.len();
            flip(&mut bad[which], bit / 7);
            prop_assert!(verify_inclusion(index, at, &leaf, &bad, &root).is_err());
        }
        // The wrong index or size does not verify either (when it differs).
        if at > 1 {
            prop_assert!(verify_inclusion((index + 1) % at, at, &leaf, &proof, &root).is_err());
        }
    }

    #[test]
    fn consistency_proofs_verify_and_any_flipped_bit_fails(size in 2u64..300, a: u64, b: u64, bit: usize) {
        let t = tree(size);
        let new = 2 + b % (size - 1);
        let old = 1 + a % (new - 1); // 1 <= old < new <= size
        let (r1, r2) = (t.root_at(old).unwrap(), t.root_at(new).unwrap());
        let proof = t.prove_consistency(old, new).unwrap();
        prop_assert!(verify_consistency(old, new, &proof, &r1, &r2).is_ok());

        let mut bad1 = r1;
        flip(&mut bad1, bit);
        prop_assert!(verify_consistency(old, new, &proof, &bad1, &r2).is_err());
        let mut bad2 = r2;
        flip(&mut bad2, bit);
        prop_assert!(verify_consistency(old, new, &proof, &r1, &bad2).is_err());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let which = bit % bad.len();
            flip(&mut bad[which], bit / 7);
            prop_assert!(verify_consistency(old, new, &bad, &r1, &r2).is_err());
        }
    }
}
