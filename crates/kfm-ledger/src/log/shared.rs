//! The ledger as every process of one workspace shares it.
//!
//! One process holds the writer lock and appends ([`LocalLedger`]); with a
//! socket configured ([`LedgerOptions::socket`]) it also listens there, and
//! every other process that opens the ledger (a second server, a promotion,
//! a rollback, `kfm ledger append`) becomes its client: its appends travel
//! over the socket and are acknowledged only when the writer's own append
//! returned, i.e. once durable and witnessed. When the writer goes away
//! (stopped, killed), its clients race for the lock: one opens the ledger
//! (recovering what is durable, as any writer does) and listens, the others
//! connect to it. An append whose answer was lost with the old writer is
//! resent marked as a retry and answered with the entry already in the log
//! if it got there, so that it is recorded once.
//!
//! The same socket carries events (for instance "a release pointer moved")
//! from any process to every other one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kfm_store::Audit;
use tokio::sync::{broadcast, mpsc};

use super::client::{Client, Remote, RemoteFut};
use super::published::{Published, Publisher};
use super::wire::{self, Server};
use super::writer::LocalLedger;
use super::{
    Appended, Closed, Guards, Health, InclusionProof, LedgerError, LedgerOptions, LedgerView,
};
use crate::checkpoint::LedgerSigner;
use crate::merkle::Hash;
use crate::tiles::MAX_ENTRY;

/// An event as it travels between processes: opaque bytes (JSON by
/// convention), at most [`wire::MAX_EVENT`].
pub type Event = Arc<Vec<u8>>;

/// The ledger: the writer itself, or a client of the process that is.
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Current>,
    /// One takeover at a time.
    takeover: tokio::sync::Mutex<()>,
    events: broadcast::Sender<Event>,
    audit: Audit,
    verifier_key: String,
    origin: String,
    guards: Guards,
    /// What a takeover needs; `None` without a socket (the writer is this
    /// process or no one).
    share: Option<Share>,
    /// Numbers clients, so that a takeover replaces only the one that went.
    serial: AtomicU64,
    /// Clients whose connection is gone, for the supervisor to replace.
    lost: mpsc::UnboundedSender<u64>,
}

struct Share {
    socket: PathBuf,
    signer: LedgerSigner,
    opts: LedgerOptions,
}

#[derive(Clone)]
enum Current {
    Local(Arc<Local>),
    Remote(Arc<Client>),
    /// A sequencer elsewhere writes the log; this process publishes.
    Published(Arc<Published>),
    Closed,
}

struct Local {
    ledger: Arc<LocalLedger>,
    server: Option<Server>,
    /// The workspace's election lock, held while this process writes.
    _election: Option<std::fs::File>,
}

impl Ledger {
    /// Opens the ledger. Without a socket in `opts` this process must be
    /// the writer ([`LedgerError::Locked`] if another holds the lock). With
    /// one, it becomes the writer if none runs, else a client of the one
    /// that does.
    pub async fn open(
        audit: Audit,
        signer: LedgerSigner,
        opts: LedgerOptions,
    ) -> Result<Self, LedgerError> {
        let (events, _) = broadcast::channel(256);
        let (lost, mut lost_rx) = mpsc::unbounded_channel();
        let verifier_key = signer.verifier_key().to_owned();
        let origin = opts.origin.clone();
        let guards = opts.guards.clone();
        let (current, share) = match opts.socket.clone() {
            None => {
                let ledger = LocalLedger::open(audit.clone(), signer, opts).await?;
                let local = Local {
                    ledger: Arc::new(ledger),
                    server: None,
                    _election: None,
                };
                (Current::Local(Arc::new(local)), None)
            }
            Some(socket) => (
                Current::Closed,
                Some(Share {
                    socket,
                    signer,
                    opts,
                }),
            ),
        };
        let inner = Arc::new(Inner {
            current: RwLock::new(current),
            takeover: tokio::sync::Mutex::new(()),
            events,
            audit,
            verifier_key,
            origin,
            guards,
            share,
            serial: AtomicU64::new(0),
            lost,
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(serial) = lost_rx.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = inner.recover(serial).await {
                    tracing::error!(error = %e, "no ledger writer could be reached or become");
                }
            }
        });
        if let Some(share) = &inner.share {
            let first = reach(&inner, share).await?;
            if let Ok(mut c) = inner.current.write() {
                *c = first;
            }
        }
        Ok(Self { inner })
    }

    /// Opens the ledger of a platform whose log a sequencer writes: every
    /// entry goes through `publisher` (an event stream), reads come from
    /// the store. No lock, no socket: any number of processes may do so.
    pub fn open_published(
        audit: Audit,
        verifier_key: String,
        opts: LedgerOptions,
        publisher: Arc<dyn Publisher>,
    ) -> Self {
        let (events, _) = broadcast::channel(256);
        let (lost, _) = mpsc::unbounded_channel();
        publisher.subscribe(events.clone());
        let published = Published::new(
            publisher,
            audit.clone(),
            verifier_key.clone(),
            opts.origin.clone(),
            opts.guards.clone(),
            opts.reach_writer,
        );
        let inner = Arc::new(Inner {
            current: RwLock::new(Current::Published(Arc::new(published))),
            takeover: tokio::sync::Mutex::new(()),
            events,
            audit,
            verifier_key,
            origin: opts.origin,
            guards: opts.guards,
            share: None,
            serial: AtomicU64::new(0),
            lost,
        });
        Self { inner }
    }

    fn current(&self) -> Current {
        self.inner.current()
    }

    fn published(&self) -> Option<Arc<Published>> {
        match self.current() {
            Current::Published(p) => Some(p),
            _ => None,
        }
    }

    /// Whether a sequencer elsewhere writes the log (this process
    /// publishes its entries to an event stream).
    pub fn is_published(&self) -> bool {
        matches!(self.current(), Current::Published(_))
    }

    /// Whether this process is the ledger's writer right now.
    pub fn is_writer(&self) -> bool {
        matches!(self.current(), Current::Local(_))
    }
}

impl Inner {
    fn current(&self) -> Current {
        self.current
            .read()
            .map(|c| c.clone())
            .unwrap_or(Current::Closed)
    }

    /// Replaces a client whose writer went away: becomes the writer or
    /// connects to the new one. Several callers may notice at once; the
    /// first replaces it, the others find it replaced.
    async fn recover(self: &Arc<Self>, gone: u64) -> Result<(), LedgerError> {
        let _one = self.takeover.lock().await;
        if !matches!(self.current(), Current::Remote(c) if c.serial == gone) {
            return Ok(());
        }
        let Some(share) = &self.share else {
            return Err(LedgerError::Unreachable("no socket configured".into()));
        };
        tracing::warn!("the ledger writer went away; taking over or reconnecting");
        let next = reach(self, share).await?;
        if let Ok(mut c) = self.current.write() {
            // Closed meanwhile: the new connection or writer is dropped.
            if matches!(*c, Current::Remote(ref r) if r.serial == gone) {
                *c = next;
            }
        }
        Ok(())
    }

    /// Runs `op` against the writer, recovering from a writer that went away
    /// (at most a few times, each bounded by [`LedgerOptions::reach_writer`]).
    async fn with_writer<T, L, R>(self: &Arc<Self>, local: L, remote: R) -> Result<T, LedgerError>
    where
        L: AsyncFnOnceLocal<T>,
        R: Fn(Arc<Client>, bool) -> RemoteFut<T>,
    {
        let mut local = Some(local);
        let mut retry = false;
        for _ in 0..5 {
            match self.current() {
                Current::Local(l) => {
                    return match local.take() {
                        Some(f) => f.call(l.ledger.clone(), retry).await,
                        None => Err(LedgerError::Failed("internal: local call reused".into())),
                    };
                }
                Current::Remote(c) => match remote(c.clone(), retry).await {
                    Err(Remote::Gone) => {
                        retry = true;
                        self.recover(c.serial).await?;
                    }
                    Err(Remote::Ledger(e)) => return Err(e),
                    Ok(v) => return Ok(v),
                },
                Current::Published(_) | Current::Closed => {
                    return Err(LedgerError::Failed("closed".into()));
                }
            }
        }
        Err(LedgerError::Unreachable(
            "the ledger writer kept going away".into(),
        ))
    }
}

impl Ledger {
    /// Appends one entry; returns once it is durable, with its index, leaf
    /// hash and the signed checkpoint that covers it.
    pub async fn append(&self, entry: Vec<u8>) -> Result<Appended, LedgerError> {
        if entry.len() > MAX_ENTRY {
            return Err(LedgerError::EntryTooLarge { len: entry.len() });
        }
        match self.current() {
            // The hot path: no copy of the entry.
            Current::Local(l) => return l.ledger.append(entry).await,
            Current::Published(p) => return p.append(entry).await,
            _ => {}
        }
        let entry = Arc::new(entry);
        let e2 = entry.clone();
        self.inner
            .with_writer(AppendLocal(entry), move |c, retry| {
                let e = e2.clone();
                Box::pin(async move {
                    let kind = if retry {
                        wire::APPEND_RETRY
                    } else {
                        wire::APPEND
                    };
                    let p = c.call(kind, &e).await?;
                    wire::decode_appended(&p).ok_or_else(|| Remote::malformed("append"))
                })
            })
            .await
    }

    /// Records one entry and returns its audit reference (leaf hash) once
    /// it is durable, without waiting to learn its index: where a
    /// sequencer writes the log, that is when the event stream
    /// acknowledged it; elsewhere, the same as [`Ledger::append`].
    pub async fn record(&self, entry: Vec<u8>) -> Result<Hash, LedgerError> {
        if entry.len() > MAX_ENTRY {
            return Err(LedgerError::EntryTooLarge { len: entry.len() });
        }
        match self.published() {
            Some(p) => p.record(entry).await,
            None => self.append(entry).await.map(|a| a.leaf_hash),
        }
    }

    /// The durable entry at `index`.
    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        if let Some(p) = self.published() {
            return p.entry(index).await;
        }
        self.inner
            .with_writer(EntryLocal(index), move |c, _| {
                Box::pin(async move { c.call(wire::ENTRY, &index.to_le_bytes()).await })
            })
            .await
    }

    /// Inclusion proof for `index` against the latest durable checkpoint.
    pub async fn prove(&self, index: u64) -> Result<InclusionProof, LedgerError> {
        if let Some(p) = self.published() {
            return p.prove(index).await;
        }
        self.inner
            .with_writer(ProveLocal(index), move |c, _| {
                Box::pin(async move {
                    let p = c.call(wire::PROVE, &index.to_le_bytes()).await?;
                    wire::decode_proof(&p).ok_or_else(|| Remote::malformed("proof"))
                })
            })
            .await
    }

    /// The index of the first durable entry whose leaf hash is `leaf`.
    pub async fn find_leaf(&self, leaf: &Hash) -> Option<u64> {
        if let Some(p) = self.published() {
            return p.find_leaf(leaf).await;
        }
        let leaf = *leaf;
        self.inner
            .with_writer(FindLocal(leaf), move |c, _| {
                Box::pin(async move {
                    let p = c.call(wire::FIND_LEAF, &leaf).await?;
                    match p.first() {
                        Some(1) => Ok(Some(
                            p.get(1..9)
                                .and_then(|b| b.try_into().ok())
                                .map(u64::from_le_bytes)
                                .ok_or_else(|| Remote::malformed("leaf index"))?,
                        )),
                        Some(0) => Ok(None),
                        _ => Err(Remote::malformed("leaf answer")),
                    }
                })
            })
            .await
            .ok()
            .flatten()
    }

    /// Sends `event` to every process sharing this ledger (this one
    /// included), through the writer. Advisory: a process that misses one
    /// (it was starting, or a writer was changing hands) catches up at its
    /// next periodic check.
    pub async fn announce(&self, event: Vec<u8>) -> Result<(), LedgerError> {
        if event.len() > wire::MAX_EVENT {
            return Err(LedgerError::Writer(format!(
                "an event is at most {} bytes",
                wire::MAX_EVENT
            )));
        }
        match self.current() {
            Current::Local(_) | Current::Closed => {
                let _ = self.inner.events.send(Arc::new(event));
                Ok(())
            }
            // The publisher delivers it to every process, this one too.
            Current::Published(p) => p.publisher.announce(event).await,
            Current::Remote(c) => match c.call(wire::ANNOUNCE, &event).await {
                Ok(_) => Ok(()),
                Err(Remote::Ledger(e)) => Err(e),
                Err(Remote::Gone) => {
                    // The new writer has no record of it: deliver it here
                    // at least (other processes catch up by their check).
                    let _ = self.inner.events.send(Arc::new(event));
                    Ok(())
                }
            },
        }
    }

    /// Events announced by any process sharing this ledger.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// A read-only view of everything acknowledged so far, checked like any
    /// reader's (for callers that must read entries back while writing,
    /// such as verifying the release pointer a promotion builds on).
    pub async fn view(&self) -> Result<LedgerView, LedgerError> {
        let i = &self.inner;
        LedgerView::open(&i.audit, &i.verifier_key, &i.origin, &i.guards).await
    }

    /// Whether the writer has failed for good (every later append is
    /// refused).
    pub fn failure(&self) -> Option<String> {
        self.health().failed
    }

    /// How the writer is doing. A client reports the last health its writer
    /// sent (refreshed with every answer) and whether it can reach one.
    pub fn health(&self) -> Health {
        match self.current() {
            Current::Local(l) => l.ledger.health(),
            Current::Remote(c) => c.health(),
            Current::Published(p) => Health {
                committed: p.size(),
                in_tiles: p.size(),
                failed: p.publisher.failure(),
                ..Health::default()
            },
            Current::Closed => Health {
                failed: Some("the ledger is closed".into()),
                ..Health::default()
            },
        }
    }

    /// Batches committed since this writer opened (zero in a client).
    pub fn batches(&self) -> u64 {
        match self.current() {
            Current::Local(l) => l.ledger.batches(),
            _ => 0,
        }
    }

    /// Journal syncs since this writer opened (zero in a client and on S3).
    pub fn syncs(&self) -> u64 {
        match self.current() {
            Current::Local(l) => l.ledger.syncs(),
            _ => 0,
        }
    }

    /// Size of the tree covered by the latest durable checkpoint (in a
    /// client, the latest it has seen).
    pub fn size(&self) -> u64 {
        match self.current() {
            Current::Local(l) => l.ledger.size(),
            Current::Remote(c) => c.size(),
            Current::Published(p) => p.size(),
            Current::Closed => 0,
        }
    }

    /// Stops accepting appends and waits for every pending one. A writer
    /// first stops its socket (answering what its clients sent, so that
    /// they can hand over to a new writer), then closes as
    /// [`LocalLedger::close`] does and releases the lock.
    pub async fn close(self) -> Closed {
        let cur = match self.inner.current.write() {
            Ok(mut c) => std::mem::replace(&mut *c, Current::Closed),
            Err(_) => Current::Closed,
        };
        match cur {
            Current::Local(l) => {
                let mut l = match Arc::try_unwrap(l) {
                    Ok(l) => l,
                    Err(_) => {
                        return Closed {
                            size: self.size(),
                            in_tiles: 0,
                            failed: Some("the ledger was still in use".into()),
                            writer: true,
                        };
                    }
                };
                if let Some(s) = l.server.take() {
                    s.stop().await;
                }
                let mut ledger = l.ledger;
                // Calls that read the lock before it was replaced finish
                // within their own bounds.
                for _ in 0..200 {
                    match Arc::try_unwrap(ledger) {
                        Ok(w) => return w.close().await,
                        Err(again) => {
                            ledger = again;
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                    }
                }
                Closed {
                    size: ledger.size(),
                    in_tiles: ledger.health().in_tiles,
                    failed: Some("the ledger was still in use after 5 s".into()),
                    writer: true,
                }
            }
            Current::Remote(c) => {
                let h = c.health();
                c.shutdown();
                Closed {
                    size: h.committed,
                    in_tiles: h.in_tiles,
                    failed: h.failed,
                    writer: false,
                }
            }
            Current::Published(p) => {
                // Invariant: a process that publishes stops only once what
                // it sent is acknowledged (or the publisher's bound ends).
                p.publisher.drain().await;
                Closed {
                    size: p.size(),
                    in_tiles: p.size(),
                    failed: p.publisher.failure(),
                    writer: false,
                }
            }
            Current::Closed => Closed {
                size: 0,
                in_tiles: 0,
                failed: None,
                writer: false,
            },
        }
    }
}

// ---- calls against the local writer --------------------------------------

/// A call made on the writer when this process is it. (A trait, not a
/// closure, so that each call keeps its own argument without boxing on the
/// hot path.)
trait AsyncFnOnceLocal<T> {
    fn call(
        self,
        l: Arc<LocalLedger>,
        retry: bool,
    ) -> impl std::future::Future<Output = Result<T, LedgerError>> + Send;
}

struct AppendLocal(Arc<Vec<u8>>);
impl AsyncFnOnceLocal<Appended> for AppendLocal {
    async fn call(self, l: Arc<LocalLedger>, retry: bool) -> Result<Appended, LedgerError> {
        let entry = Arc::try_unwrap(self.0).unwrap_or_else(|a| (*a).clone());
        l.append_once(entry, retry).await
    }
}

struct EntryLocal(u64);
impl AsyncFnOnceLocal<Vec<u8>> for EntryLocal {
    async fn call(self, l: Arc<LocalLedger>, _: bool) -> Result<Vec<u8>, LedgerError> {
        l.entry(self.0).await
    }
}

struct ProveLocal(u64);
impl AsyncFnOnceLocal<InclusionProof> for ProveLocal {
    async fn call(self, l: Arc<LocalLedger>, _: bool) -> Result<InclusionProof, LedgerError> {
        l.prove(self.0).await
    }
}

struct FindLocal(Hash);
impl AsyncFnOnceLocal<Option<u64>> for FindLocal {
    async fn call(self, l: Arc<LocalLedger>, _: bool) -> Result<Option<u64>, LedgerError> {
        Ok(l.find_leaf(&self.0).await)
    }
}

// ---- becoming the writer, or reaching it ----------------------------------

/// Becomes the writer (and listens), or connects to the one that is,
/// trying for up to [`LedgerOptions::reach_writer`].
async fn reach(inner: &Arc<Inner>, share: &Share) -> Result<Current, LedgerError> {
    let (audit, events) = (&inner.audit, &inner.events);
    let deadline = Instant::now() + share.opts.reach_writer;
    let mut wait = Duration::from_millis(5);
    loop {
        // Invariant: one writer per workspace, elected by a lock beside the
        // socket (so that processes on one machine share an S3 store's
        // ledger too, where the store itself has no lock), then by the
        // store's own writer lock and, on S3, the checkpoint's CAS.
        if let Some(election) = elect(&share.socket)? {
            match LocalLedger::open(audit.clone(), share.signer.try_clone()?, share.opts.clone())
                .await
            {
                Ok(ledger) => {
                    let ledger = Arc::new(ledger);
                    let server = Server::start(&share.socket, ledger.clone(), events.clone())?;
                    return Ok(Current::Local(Arc::new(Local {
                        ledger,
                        server: Some(server),
                        _election: election,
                    })));
                }
                Err(LedgerError::Locked) => {}
                Err(e) => return Err(e),
            }
        }
        let serial = inner.serial.fetch_add(1, Ordering::Relaxed) + 1;
        match Client::connect(
            &share.socket,
            events.clone(),
            serial,
            share.opts.reach_writer,
        )
        .await
        {
            Ok((c, mut gone)) => {
                // A client that loses its writer takes over at once, not
                // at its next call: an idle server must not be left
                // without a writer.
                let lost = inner.lost.clone();
                tokio::spawn(async move {
                    let _ = gone.wait_for(|g| *g).await;
                    let _ = lost.send(serial);
                });
                return Ok(Current::Remote(Arc::new(c)));
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(LedgerError::Unreachable(format!(
                    "another process holds the writer lock but does not answer on {}: {e}",
                    share.socket.display()
                )));
            }
            // The writer is still opening the ledger, or just went away.
            Err(_) => {}
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(200));
    }
}

/// Takes the election lock beside `socket` (`ledger.lock`) if no other
/// process holds it. The lock is the kernel's: it goes with the process
/// that held it, however that process ends.
fn elect(socket: &Path) -> Result<Option<Option<std::fs::File>>, LedgerError> {
    let io = |e: std::io::Error| {
        LedgerError::Unreachable(format!(
            "cannot take the writer election lock beside {}: {e}",
            socket.display()
        ))
    };
    let Some(dir) = socket.parent() else {
        return Ok(Some(None));
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("ledger.lock"))
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(Some(f))),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}
