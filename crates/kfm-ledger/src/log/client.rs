//! A process's side of a shared ledger when another process of the
//! workspace holds the writer: one connection to the writer's socket, many
//! calls in flight on it, each waiting at most a bounded time (a paused
//! writer keeps its socket and answers nothing), and the writer's events
//! passed on to this process.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::shared::Event;
use super::wire::{self, Frame};
use super::{Health, LedgerError};

/// How long a writer has to answer a new connection's first request.
const HANDSHAKE: Duration = Duration::from_secs(5);

/// How long a takeover may take before a client reports that its appends
/// cannot be made durable.
const TAKEOVER_QUIET: Duration = Duration::from_secs(10);

/// Why a call through the socket failed.
pub(super) enum Remote {
    /// The connection to the writer is gone: the call may or may not have
    /// been carried out (an append is resent as a retry).
    Gone,
    /// The writer answered with an error.
    Ledger(LedgerError),
}

impl Remote {
    pub(super) fn malformed(what: &str) -> Self {
        Remote::Ledger(LedgerError::Writer(format!("malformed {what} answer")))
    }
}

pub(super) type RemoteFut<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Remote>> + Send>>;

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Frame>>>>>;

pub(super) struct Client {
    pub(super) serial: u64,
    /// Longest wait for an answer: a writer that is paused (SIGSTOP, a
    /// frozen VM) keeps its lock and its socket but answers nothing.
    patience: Duration,
    tx: mpsc::Sender<Vec<u8>>,
    /// `None` once the connection is gone: every waiter was answered with
    /// "gone" and new calls fail at once.
    pending: Pending,
    next: AtomicU64,
    size: Arc<AtomicU64>,
    /// When the connection was found gone.
    gone: Arc<Mutex<Option<Instant>>>,
    reader: tokio::task::JoinHandle<()>,
    health: Arc<Mutex<Health>>,
}

impl Client {
    /// Connects; the receiver turns true when the connection is gone.
    pub(super) async fn connect(
        path: &Path,
        events: broadcast::Sender<Event>,
        serial: u64,
        patience: Duration,
    ) -> std::io::Result<(Self, watch::Receiver<bool>)> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        let (mut r, w) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4096);
        tokio::spawn(wire::write_frames(w, rx));
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let gone = Arc::new(Mutex::new(None));
        let (p2, g2) = (pending.clone(), gone.clone());
        let (gone_tx, gone_rx) = watch::channel(false);
        let reader = tokio::spawn(async move {
            while let Ok(Some(f)) = wire::read_frame(&mut r).await {
                if f.kind == wire::EVENT {
                    let _ = events.send(Arc::new(f.payload));
                    continue;
                }
                let waiter = p2
                    .lock()
                    .ok()
                    .and_then(|mut m| m.as_mut().and_then(|m| m.remove(&f.id)));
                if let Some(w) = waiter {
                    let _ = w.send(f);
                }
            }
            if let Ok(mut g) = g2.lock() {
                *g = Some(Instant::now());
            }
            // Dropping the senders answers every waiter with "gone".
            if let Ok(mut m) = p2.lock() {
                m.take();
            }
            let _ = gone_tx.send(true);
        });
        let c = Self {
            serial,
            patience,
            tx,
            pending,
            next: AtomicU64::new(1),
            size: Arc::new(AtomicU64::new(0)),
            gone,
            reader,
            health: Arc::new(Mutex::new(Health::default())),
        };
        // The first answer proves the writer is there (a paused one accepts
        // connections in the kernel but answers nothing) and gives its
        // health.
        match tokio::time::timeout(HANDSHAKE, c.call(wire::HEALTH, &[])).await {
            Ok(Ok(p)) => {
                if let Some(h) = wire::decode_health(&p) {
                    c.size.store(h.committed, Ordering::Relaxed);
                    if let Ok(mut m) = c.health.lock() {
                        *m = h;
                    }
                }
                Ok((c, gone_rx))
            }
            Ok(Err(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the writer closed the connection",
            )),
            Err(_) => {
                c.shutdown();
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the writer did not answer within {} s", HANDSHAKE.as_secs()),
                ))
            }
        }
    }

    pub(super) async fn call(&self, kind: u8, payload: &[u8]) -> Result<Vec<u8>, Remote> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (done, rx) = oneshot::channel();
        {
            let mut m = self.pending.lock().map_err(|_| Remote::Gone)?;
            match m.as_mut() {
                Some(m) => m.insert(id, done),
                None => return Err(Remote::Gone),
            };
        }
        if self.tx.send(wire::encode(kind, id, payload)).await.is_err() {
            return Err(Remote::Gone);
        }
        let f = match tokio::time::timeout(self.patience, rx).await {
            Ok(Ok(f)) => f,
            Ok(Err(_)) => return Err(Remote::Gone),
            Err(_) => {
                if let Ok(mut m) = self.pending.lock()
                    && let Some(m) = m.as_mut()
                {
                    m.remove(&id);
                }
                // Treated as gone: a takeover is attempted, and fails
                // (the paused writer keeps its lock) within the same bound.
                return Err(Remote::Gone);
            }
        };
        match f.kind {
            wire::OK => {
                if (kind == wire::APPEND || kind == wire::APPEND_RETRY)
                    && let Some(a) = wire::decode_appended(&f.payload)
                {
                    self.size.fetch_max(a.size, Ordering::Relaxed);
                }
                Ok(f.payload)
            }
            wire::ERR => {
                let e = wire::decode_error(&f.payload);
                if let LedgerError::Failed(m) = &e
                    && let Ok(mut h) = self.health.lock()
                {
                    // The writer failed for good: this process is unhealthy
                    // too, until a new writer takes over.
                    h.failed = Some(m.clone());
                }
                Err(Remote::Ledger(e))
            }
            other => Err(Remote::Ledger(LedgerError::Writer(format!(
                "unexpected answer kind {other}"
            )))),
        }
    }

    pub(super) fn health(&self) -> Health {
        let mut h = self.health.lock().map(|h| h.clone()).unwrap_or_default();
        h.committed = h.committed.max(self.size.load(Ordering::Relaxed));
        // A takeover takes about as long as opening the ledger; appends wait
        // for it meanwhile. Only one that lasts says so (and then governed
        // answers are withheld until it is over).
        if let Some(at) = self.gone.lock().ok().and_then(|g| *g)
            && at.elapsed() >= TAKEOVER_QUIET
        {
            h.appends_retrying.get_or_insert_with(|| {
                (
                    "the ledger writer went away; taking over".into(),
                    at.elapsed(),
                )
            });
        }
        h
    }

    /// The largest tree size this client has seen the writer report.
    pub(super) fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    pub(super) fn shutdown(&self) {
        self.reader.abort();
        if let Ok(mut m) = self.pending.lock() {
            m.take();
        }
    }
}
