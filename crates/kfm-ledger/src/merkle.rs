//! RFC 9162 Merkle tree hashing, inclusion and consistency proofs.
//!
//! Hashing: a leaf is `SHA-256(0x00 || entry)`, an interior node
//! `SHA-256(0x01 || left || right)`, the empty tree `SHA-256("")`.
//!
//! The proof arithmetic is the Go reference's (`golang.org/x/mod/sumdb/tlog`),
//! as ported by the `tlog_tiles` crate, which also defines the stored-hash
//! layout that C2SP tiles are cut from. This module adds what an auditor
//! needs around it: inputs checked before any arithmetic (so hostile input
//! gets an error, never a panic), byte-slice inputs as they come off the
//! wire, and errors that say which check failed.

use tlog_tiles::tlog;

/// A SHA-256 hash of a leaf, a node or a tree.
pub type Hash = [u8; 32];

/// The hash of an entry as a leaf: `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    tlog::record_hash(entry).0
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    tlog::node_hash(tlog::Hash(*left), tlog::Hash(*right)).0
}

/// The root of the empty tree: `SHA-256("")`.
pub const EMPTY_ROOT: Hash = tlog::EMPTY_HASH.0;

/// Why a proof does not verify, or cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old size {old} is larger than new size {new}")]
    SizesOutOfOrder { old: u64, new: u64 },
    #[error(
        "a consistency proof from the empty tree proves nothing; use an old size of at least 1"
    )]
    EmptyOldTree,
    #[error("{what} must be 32 bytes, got {len}")]
    BadLength { what: &'static str, len: usize },
    #[error("equal sizes need an empty proof (got {len} hashes)")]
    ProofNotEmpty { len: usize },
    #[error("the roots of two trees of equal size differ")]
    RootsDiffer,
    #[error("the proof does not lead to the given root")]
    Mismatch,
    #[error("the tree does not hold the hashes needed: {0}")]
    Unavailable(String),
}

fn hash32(what: &'static str, b: &[u8]) -> Result<tlog::Hash, ProofError> {
    <[u8; 32]>::try_from(b)
        .map(tlog::Hash)
        .map_err(|_| ProofError::BadLength { what, len: b.len() })
}

fn proof32(proof: &[impl AsRef<[u8]>]) -> Result<Vec<tlog::Hash>, ProofError> {
    proof
        .iter()
        .map(|h| hash32("each proof hash", h.as_ref()))
        .collect()
}

/// Verifies that the leaf with hash `leaf` sits at `index` in the tree of
/// `size` leaves whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[impl AsRef<[u8]>],
    root: &[u8],
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let leaf = hash32("the leaf hash", leaf)?;
    let root = hash32("the root", root)?;
    let proof = proof32(proof)?;
    tlog::check_record(&proof, size, root, index, leaf).map_err(|_| ProofError::Mismatch)
}

/// Verifies that the tree of `size2` leaves with root `root2` extends the
/// tree of `size1` leaves with root `root1` (RFC 9162 §2.1.4.2): history
/// up to `size1` was not rewritten.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[impl AsRef<[u8]>],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizesOutOfOrder {
            old: size1,
            new: size2,
        });
    }
    if size1 == 0 {
        // Every tree extends the empty one: such a "proof" proves nothing and
        // is refused, so that a caller cannot mistake it for a check.
        return Err(ProofError::EmptyOldTree);
    }
    if size1 == size2 {
        // Nothing to prove but equality; roots are compared as given.
        if !proof.is_empty() {
            return Err(ProofError::ProofNotEmpty { len: proof.len() });
        }
        return if root1 == root2 {
            Ok(())
        } else {
            Err(ProofError::RootsDiffer)
        };
    }
    let r1 = hash32("the old root", root1)?;
    let r2 = hash32("the new root", root2)?;
    let proof = proof32(proof)?;
    tlog::check_tree(&proof, size2, r2, size1, r1).map_err(|_| ProofError::Mismatch)
}

/// A Merkle tree held in memory as its stored hashes (every leaf and every
/// completed subtree, in the tlog layout that C2SP tiles are cut from).
/// Appends cost O(1) amortised; roots and proofs for any earlier size can be
/// computed from it.
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    stored: Vec<tlog::Hash>,
    size: u64,
}

impl tlog::HashReader for MerkleTree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog::Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.stored.get(i))
                    .copied()
                    .ok_or(tlog::Error::IndexesNotInTree)
            })
            .collect()
    }
}

impl MerkleTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends an entry; returns its index and leaf hash.
    pub fn push(&mut self, entry: &[u8]) -> (u64, Hash) {
        let h = leaf_hash(entry);
        (self.push_leaf_hash(h), h)
    }

    /// Appends a leaf by its hash; returns its index.
    pub fn push_leaf_hash(&mut self, leaf: Hash) -> u64 {
        let index = self.size;
        // Reads only hashes already stored, so it cannot fail.
        let new =
            tlog::stored_hashes_for_record_hash(index, tlog::Hash(leaf), self).unwrap_or_default();
        self.stored.extend(new);
        self.size += 1;
        index
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let i = usize::try_from(tlog::stored_hash_index(0, index)).ok()?;
        (index < self.size)
            .then(|| self.stored.get(i).map(|h| h.0))
            .flatten()
    }

    /// The root of the tree's first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        if size > self.size {
            return Err(ProofError::IndexOutOfRange {
                index: size,
                size: self.size,
            });
        }
        tlog::tree_hash(size, self)
            .map(|h| h.0)
            .map_err(|e| ProofError::Unavailable(e.to_string()))
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.size).unwrap_or(EMPTY_ROOT)
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if index >= size || size > self.size {
            return Err(ProofError::IndexOutOfRange {
                index,
                size: size.min(self.size),
            });
        }
        tlog::prove_record(size, index, self)
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(|e| ProofError::Unavailable(e.to_string()))
    }

    /// The consistency proof from the first `old` leaves to the first `new`.
    pub fn prove_consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        if old > new {
            return Err(ProofError::SizesOutOfOrder { old, new });
        }
        if new > self.size {
            return Err(ProofError::IndexOutOfRange {
                index: new,
                size: self.size,
            });
        }
        if old == 0 {
            return Err(ProofError::EmptyOldTree);
        }
        tlog::prove_tree(new, old, self)
            .map(|p| p.into_iter().map(|h| h.0).collect())
            .map_err(|e| ProofError::Unavailable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight RFC 6962 test leaves and their known root.
    #[test]
    fn rfc6962_test_tree_has_the_known_root() {
        let leaves: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        let mut t = MerkleTree::new();
        assert_eq!(t.root(), EMPTY_ROOT);
        for l in leaves {
            t.push(l);
        }
        let hex: String = t.root().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
    }
}
