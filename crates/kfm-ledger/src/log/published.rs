//! The ledger when a sequencer elsewhere writes it: this process publishes
//! its entries (to an event stream, through a [`Publisher`]) and reads the
//! log from the store.
//!
//! An entry is durable when the publisher says so (the stream acknowledged
//! it); its audit reference, the leaf hash, is known before it is sent.
//! Its index and proof exist only once the sequencer has integrated it, so
//! [`crate::Ledger::append`] (for callers that must name the index, such as
//! a release pointer) waits for that, bounded, while
//! [`crate::Ledger::record`] (access records) returns at the acknowledgement.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kfm_store::Audit;
use tokio::sync::broadcast;

use super::shared::Event;
use super::{Appended, Guards, InclusionProof, LedgerError, LedgerView};
use crate::merkle::Hash;

/// A boxed future, as a [`Publisher`] returns (the trait is used as an
/// object).
pub type PublishFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Where entries go when this process does not write the log itself.
pub trait Publisher: Send + Sync + 'static {
    /// Sends one entry whose leaf hash is `leaf` (its identity: sending
    /// the same entry again must not make a second one). Resolves once the
    /// entry is durable where it was sent.
    fn publish(&self, entry: Vec<u8>, leaf: Hash) -> PublishFuture<Result<(), LedgerError>>;
    /// Sends an advisory event (a release pointer moved) to every process.
    fn announce(&self, event: Vec<u8>) -> PublishFuture<Result<(), LedgerError>>;
    /// Starts delivering the events other processes announce into `to`.
    fn subscribe(&self, to: broadcast::Sender<Event>);
    /// Why publishing cannot work right now, if it cannot.
    fn failure(&self) -> Option<String>;
    /// Waits (bounded by the publisher) for every publish still in flight.
    fn drain(&self) -> PublishFuture<()>;
}

/// How often a caller waiting for its entry to be sequenced looks again.
const POLL: Duration = Duration::from_millis(20);

/// How old a cached view of the log may be when read.
const VIEW_FRESH: Duration = Duration::from_millis(100);

pub(super) struct Published {
    pub publisher: Arc<dyn Publisher>,
    audit: Audit,
    verifier_key: String,
    origin: String,
    guards: Guards,
    /// How long [`Published::append`] waits for the sequencer.
    wait: Duration,
    view: tokio::sync::Mutex<Option<(Instant, Arc<LedgerView>)>>,
    size: Mutex<u64>,
}

impl Published {
    pub fn new(
        publisher: Arc<dyn Publisher>,
        audit: Audit,
        verifier_key: String,
        origin: String,
        guards: Guards,
        wait: Duration,
    ) -> Self {
        Self {
            publisher,
            audit,
            verifier_key,
            origin,
            guards,
            wait,
            view: tokio::sync::Mutex::new(None),
            size: Mutex::new(0),
        }
    }

    /// A view of the log no older than `fresh`.
    async fn view(&self, fresh: Duration) -> Result<Arc<LedgerView>, LedgerError> {
        let mut v = self.view.lock().await;
        if let Some((at, view)) = v.as_ref()
            && at.elapsed() < fresh
        {
            return Ok(view.clone());
        }
        let view = Arc::new(
            LedgerView::open(&self.audit, &self.verifier_key, &self.origin, &self.guards).await?,
        );
        if let Ok(mut s) = self.size.lock() {
            *s = view.size();
        }
        *v = Some((Instant::now(), view.clone()));
        Ok(view)
    }

    pub async fn record(&self, entry: Vec<u8>) -> Result<Hash, LedgerError> {
        let leaf = crate::merkle::leaf_hash(&entry);
        self.publisher.publish(entry, leaf).await?;
        Ok(leaf)
    }

    pub async fn append(&self, entry: Vec<u8>) -> Result<Appended, LedgerError> {
        let leaf = self.record(entry).await?;
        let deadline = Instant::now() + self.wait;
        loop {
            let view = self.view(Duration::ZERO).await?;
            if let Some(index) = view.find_leaf(&leaf) {
                return Ok(Appended {
                    index,
                    leaf_hash: leaf,
                    size: view.size(),
                    checkpoint: Arc::new(view.checkpoint().to_vec()),
                });
            }
            if Instant::now() >= deadline {
                return Err(LedgerError::Unreachable(format!(
                    "the entry is durable in the event stream, but no sequencer integrated it into the log within {} s (is `kfm ledger sequencer` running?)",
                    self.wait.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        let v = self.view(VIEW_FRESH).await?;
        if index >= v.size() {
            return self.view(Duration::ZERO).await?.entry(index).await;
        }
        v.entry(index).await
    }

    pub async fn prove(&self, index: u64) -> Result<InclusionProof, LedgerError> {
        let v = self.view(VIEW_FRESH).await?;
        let size = v.size();
        let proof = v.tree().prove_inclusion(index, size)?;
        Ok(InclusionProof {
            index,
            size,
            proof,
            checkpoint: Arc::new(v.checkpoint().to_vec()),
        })
    }

    pub async fn find_leaf(&self, leaf: &Hash) -> Option<u64> {
        let v = self.view(VIEW_FRESH).await.ok()?;
        if let Some(i) = v.find_leaf(leaf) {
            return Some(i);
        }
        self.view(Duration::ZERO).await.ok()?.find_leaf(leaf)
    }

    pub fn size(&self) -> u64 {
        self.size.lock().map(|s| *s).unwrap_or(0)
    }
}
