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

use std::collections::HashMap;

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

/// Tree level of the hashes C2SP tiles of height 8 store above the leaves:
/// the root of every complete 256-leaf subtree.
const TILE_LEVEL: u8 = 8;
const TILE_LEAVES: u64 = 1 << TILE_LEVEL;

/// A Merkle tree held in memory as its stored hashes (every leaf and every
/// completed subtree, in the tlog layout that C2SP tiles are cut from).
/// Appends cost O(1) amortised; roots and proofs for any earlier size can be
/// computed from it.
///
/// A long-running writer [`prune`](MerkleTree::prune)s what its tiles
/// already hold: below the pruned size only the roots of 256-leaf subtrees
/// (and higher) stay, plus four bytes of each leaf hash to find it again, so
/// memory grows by about 4.3 bytes per entry instead of 64. A proof that
/// needs a pruned hash names it ([`MerkleTree::missing_for_inclusion`]); the
/// caller reads that leaf tile and passes the hashes in, checked against the
/// subtree root kept here ([`MerkleTree::hashes_from_leaf_tile`]).
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    /// Stored hashes from stored index `base` on.
    stored: Vec<tlog::Hash>,
    base: u64,
    /// Stored hashes below `base` at level 8 and above, by stored index.
    upper: HashMap<u64, tlog::Hash>,
    /// The first four bytes of every leaf hash.
    prefixes: Vec<u32>,
    size: u64,
    /// Leaves below this index keep only their prefix in memory.
    pruned: u64,
}

impl MerkleTree {
    fn get(&self, i: u64) -> Option<tlog::Hash> {
        if i >= self.base {
            usize::try_from(i - self.base)
                .ok()
                .and_then(|j| self.stored.get(j))
                .copied()
        } else {
            self.upper.get(&i).copied()
        }
    }
}

impl tlog::HashReader for MerkleTree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog::Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|&i| self.get(i).ok_or(tlog::Error::IndexesNotInTree))
            .collect()
    }
}

/// The tree, with hashes read back from tiles for what it pruned.
struct WithExtra<'a> {
    tree: &'a MerkleTree,
    extra: &'a HashMap<u64, Hash>,
}

impl tlog::HashReader for WithExtra<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog::Hash>, tlog::Error> {
        indexes
            .iter()
            .map(|&i| {
                self.tree
                    .get(i)
                    .or_else(|| self.extra.get(&i).map(|h| tlog::Hash(*h)))
                    .ok_or(tlog::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Records which hashes a computation reads that the tree does not hold.
struct Recording<'a> {
    tree: &'a MerkleTree,
    missing: std::cell::RefCell<Vec<u64>>,
}

impl tlog::HashReader for Recording<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog::Hash>, tlog::Error> {
        Ok(indexes
            .iter()
            .map(|&i| {
                self.tree.get(i).unwrap_or_else(|| {
                    self.missing.borrow_mut().push(i);
                    tlog::Hash([0; 32])
                })
            })
            .collect())
    }
}

/// The first four bytes of a hash, as [`MerkleTree::candidates`] keys it.
pub fn prefix(h: &Hash) -> u32 {
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
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
        // Reads only hashes already held (the right edge is never pruned),
        // so it cannot fail.
        let new =
            tlog::stored_hashes_for_record_hash(index, tlog::Hash(leaf), self).unwrap_or_default();
        self.stored.extend(new);
        self.prefixes.push(prefix(&leaf));
        self.size += 1;
        index
    }

    /// The leaf hash at `index`, if it is held in memory (not pruned).
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        (index < self.size && index >= self.pruned)
            .then(|| self.get(tlog::stored_hash_index(0, index)).map(|h| h.0))
            .flatten()
    }

    /// Leaves below this index are pruned: their hashes are in the tiles.
    pub fn pruned(&self) -> u64 {
        self.pruned
    }

    /// The first four bytes of every leaf hash, in order (for a caller that
    /// keeps its own index of them, such as the sequencer).
    pub fn prefixes(&self) -> &[u32] {
        &self.prefixes
    }

    /// Indexes of the leaves whose hash may be `leaf` (same first four
    /// bytes): the caller confirms each against the full hash.
    pub fn candidates<'a>(&'a self, leaf: &Hash) -> impl Iterator<Item = u64> + 'a {
        let p = prefix(leaf);
        self.prefixes
            .iter()
            .enumerate()
            .filter(move |(_, x)| **x == p)
            .map(|(i, _)| i as u64)
    }

    /// Drops the hashes of complete 256-leaf tiles below `leaves`, keeping
    /// the subtree roots (level 8 and up) that appends, roots and proofs
    /// need. Only for leaves whose tiles are durable in the store.
    pub fn prune(&mut self, leaves: u64) {
        let t = (leaves.min(self.size) / TILE_LEAVES) * TILE_LEAVES;
        if t <= self.pruned {
            return;
        }
        let new_base = tlog::stored_hash_count(t);
        for i in self.base..new_base {
            let (level, _) = tlog::split_stored_hash_index(i);
            if level >= TILE_LEVEL
                && let Some(h) = self.get(i)
            {
                self.upper.insert(i, h);
            }
        }
        let drop = usize::try_from(new_base - self.base).unwrap_or(self.stored.len());
        self.stored.drain(..drop.min(self.stored.len()));
        // After a load the vector held every hash: give that memory back.
        if self.stored.capacity() > 4 * self.stored.len() + 4096 {
            self.stored.shrink_to_fit();
        }
        self.base = new_base;
        self.pruned = t;
    }

    /// Stored-hash indexes that an inclusion proof of `index` in the first
    /// `size` leaves needs and this tree has pruned.
    pub fn missing_for_inclusion(&self, index: u64, size: u64) -> Vec<u64> {
        let r = Recording {
            tree: self,
            missing: std::cell::RefCell::new(Vec::new()),
        };
        if index < size && size <= self.size {
            let _ = tlog::prove_record(size, index, &r);
        }
        let mut m = r.missing.into_inner();
        m.sort_unstable();
        m.dedup();
        m
    }

    /// The leaf tile (256 leaves) that holds stored hash `index` (below level 8).
    pub fn leaf_tile_of(index: u64) -> u64 {
        let (level, n) = tlog::split_stored_hash_index(index);
        (n << level) / TILE_LEAVES
    }

    /// Checks the 256 leaf hashes of tile `tile` against the subtree root
    /// this tree kept, then computes every stored hash in `wanted` that lies
    /// in it. A tile that does not hash to the kept root is refused.
    pub fn hashes_from_leaf_tile(
        &self,
        tile: u64,
        leaves: &[Hash],
        wanted: &[u64],
    ) -> Result<Vec<(u64, Hash)>, ProofError> {
        if leaves.len() as u64 != TILE_LEAVES {
            return Err(ProofError::Unavailable(format!(
                "leaf tile {tile} holds {} hashes, not {TILE_LEAVES}",
                leaves.len()
            )));
        }
        let root = subtree(leaves);
        let kept = self
            .get(tlog::stored_hash_index(TILE_LEVEL, tile))
            .map(|h| h.0);
        if kept != Some(root) {
            return Err(ProofError::Unavailable(format!(
                "leaf tile {tile} does not hash to the subtree root the writer holds (altered?)"
            )));
        }
        let mut out = Vec::new();
        for &i in wanted {
            let (level, n) = tlog::split_stored_hash_index(i);
            let first = n << level;
            if level >= TILE_LEVEL || first / TILE_LEAVES != tile {
                continue;
            }
            let off = (first % TILE_LEAVES) as usize;
            out.push((i, subtree(&leaves[off..off + (1usize << level)])));
        }
        Ok(out)
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
        self.prove_inclusion_with(index, size, &HashMap::new())
    }

    /// [`MerkleTree::prove_inclusion`], with pruned hashes supplied.
    pub fn prove_inclusion_with(
        &self,
        index: u64,
        size: u64,
        extra: &HashMap<u64, Hash>,
    ) -> Result<Vec<Hash>, ProofError> {
        if index >= size || size > self.size {
            return Err(ProofError::IndexOutOfRange {
                index,
                size: size.min(self.size),
            });
        }
        tlog::prove_record(size, index, &WithExtra { tree: self, extra })
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

/// The RFC 9162 root of a power-of-two run of leaf hashes.
fn subtree(leaves: &[Hash]) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let (l, r) = leaves.split_at(leaves.len() / 2);
    node_hash(&subtree(l), &subtree(r))
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

    /// A pruned tree gives the same roots, and (with its tiles read back)
    /// the same proofs as one that kept everything; an altered tile is
    /// refused.
    #[test]
    fn pruning_keeps_roots_and_proofs() {
        let mut full = MerkleTree::new();
        let mut pruned = MerkleTree::new();
        let mut leaves = Vec::new();
        for i in 0..(256 * 9 + 37u64) {
            let (_, h) = full.push(&i.to_be_bytes());
            pruned.push(&i.to_be_bytes());
            leaves.push(h);
            if i % 300 == 299 {
                pruned.prune(i + 1 - 40);
                assert_eq!(pruned.root(), full.root(), "root after pruning at {i}");
            }
        }
        pruned.prune(256 * 8 + 100);
        let p = pruned.pruned();
        assert_eq!(p, 256 * 8);
        assert_eq!(pruned.root(), full.root());
        assert!(pruned.leaf(5).is_none() && pruned.leaf(p).is_some());
        assert!(
            pruned.stored.len() < 3 * 256 * 2 + 64,
            "{}",
            pruned.stored.len()
        );
        let size = full.size();
        for index in [0, 1, 255, 256, 1000, p - 1, p, size - 1] {
            let want = full.prove_inclusion(index, size).unwrap();
            let missing = pruned.missing_for_inclusion(index, size);
            assert_eq!(missing.is_empty(), index >= p, "index {index}");
            let mut extra = HashMap::new();
            let mut tiles: Vec<u64> = missing
                .iter()
                .map(|&m| MerkleTree::leaf_tile_of(m))
                .collect();
            tiles.dedup();
            for t in tiles {
                let tl = &leaves[(t * 256) as usize..((t + 1) * 256) as usize];
                extra.extend(pruned.hashes_from_leaf_tile(t, tl, &missing).unwrap());
            }
            assert_eq!(
                pruned.prove_inclusion_with(index, size, &extra).unwrap(),
                want,
                "index {index}"
            );
            // Without the tile's hashes the proof is unavailable, not wrong.
            if !missing.is_empty() {
                assert!(pruned.prove_inclusion(index, size).is_err());
            }
        }
        let candidates: Vec<u64> = pruned.candidates(&leaves[1000]).collect();
        assert!(candidates.contains(&1000));
        let mut bad = leaves[0..256].to_vec();
        bad[17][0] ^= 1;
        assert!(pruned.hashes_from_leaf_tile(0, &bad, &[]).is_err());
    }
}
