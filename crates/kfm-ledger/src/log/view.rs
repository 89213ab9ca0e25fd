//! Readers: a checked, read-only view of the ledger.

use kfm_store::Audit;

use super::load::{Loaded, load_all};
use super::shared::Ledger;
use super::{Guards, LedgerError, corrupt};
use crate::merkle::{Hash, MerkleTree, ProofError};
use crate::tiles::{TILE_WIDTH, entries_path, parse_bundle};

/// Anything that can hand back a ledger entry by index: a [`LedgerView`]
/// (a reader) or the [`Ledger`] itself (the writer, for a process such as
/// the API that holds the writer and must read entries back).
pub trait EntrySource: Sync {
    fn entry(
        &self,
        index: u64,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, LedgerError>> + Send;
}

impl EntrySource for LedgerView {
    async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        LedgerView::entry(self, index).await
    }
}

impl EntrySource for Ledger {
    async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        Ledger::entry(self, index).await
    }
}

/// Reads entry `index` from its (full) entry bundle in the store.
pub(super) async fn entry_from_bundle(
    audit: &Audit,
    index: u64,
    width: u64,
) -> Result<Vec<u8>, LedgerError> {
    let n = index / TILE_WIDTH;
    let path = entries_path(n, width);
    let bytes = audit.get(&path).await?;
    let entries = parse_bundle(&bytes).ok_or_else(|| corrupt(&path, "malformed entry bundle"))?;
    entries
        .get((index - n * TILE_WIDTH) as usize)
        .map(|e| e.to_vec())
        .ok_or_else(|| corrupt(&path, format!("has no entry {index}")))
}

/// Read-only view for proofs: loads and checks the ledger (store, journal
/// and guards), then answers proof queries from memory and reads entries
/// on demand.
pub struct LedgerView {
    audit: Audit,
    loaded: Loaded,
}

impl LedgerView {
    /// Opens a view, refusing a log that the guards say shrank or vanished
    /// (see [`Guards`]).
    pub async fn open(
        audit: &Audit,
        verifier_key: &str,
        origin: &str,
        guards: &Guards,
    ) -> Result<Self, LedgerError> {
        Ok(Self {
            audit: audit.clone(),
            loaded: load_all(audit, verifier_key, origin, guards).await?,
        })
    }

    /// The entry at `index`.
    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        let l = &self.loaded;
        let size = l.tree.size();
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size }.into());
        }
        if index >= l.tail_from {
            return Ok(l.tail[(index - l.tail_from) as usize].clone());
        }
        let n = index / TILE_WIDTH;
        let width = (l.stored_size - n * TILE_WIDTH).min(TILE_WIDTH);
        entry_from_bundle(&self.audit, index, width).await
    }

    /// The index of the first entry whose leaf hash is `leaf`.
    pub fn find_leaf(&self, leaf: &Hash) -> Option<u64> {
        let t = &self.loaded.tree;
        (0..t.size()).find(|&i| t.leaf(i).as_ref() == Some(leaf))
    }

    pub fn size(&self) -> u64 {
        self.loaded.tree.size()
    }

    pub fn root(&self) -> Hash {
        self.loaded.tree.root()
    }

    /// The signed checkpoint for the whole tree (empty for an empty ledger).
    pub fn checkpoint(&self) -> &[u8] {
        &self.loaded.checkpoint
    }

    pub fn tree(&self) -> &MerkleTree {
        &self.loaded.tree
    }
}
