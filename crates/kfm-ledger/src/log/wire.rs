//! The writer's socket: how the other processes of a workspace append
//! through the one process that holds the ledger's writer lock.
//!
//! A frame is `[u32 length][u8 kind][u64 id][payload]`, little-endian, the
//! length counting kind, id and payload. Requests carry an id chosen by the
//! client; each answer repeats it, so one connection carries many requests
//! at once (a server's access records and a promotion's receipt do not wait
//! for each other). Events (id 0) flow from the writer to every connection.
//!
//! The socket lives in the workspace, in a directory only its owner can
//! enter: whoever can connect can append, exactly as whoever can open the
//! store's files can.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, mpsc, watch};

use super::writer::LocalLedger;
use super::{Appended, Health, InclusionProof, LedgerError};
use crate::merkle::Hash;
use crate::tiles::MAX_ENTRY;

pub(super) const APPEND: u8 = 1;
/// An append the client sent before and never saw answered: the writer
/// answers with the entry already in the log when its leaf is there.
pub(super) const APPEND_RETRY: u8 = 2;
pub(super) const ENTRY: u8 = 3;
pub(super) const PROVE: u8 = 4;
pub(super) const FIND_LEAF: u8 = 5;
pub(super) const HEALTH: u8 = 6;
pub(super) const ANNOUNCE: u8 = 7;

pub(super) const OK: u8 = 128;
pub(super) const ERR: u8 = 129;
pub(super) const EVENT: u8 = 130;

/// Error codes inside an `ERR` payload (first byte).
const E_SUPERSEDED: u8 = 1;
const E_TOO_LARGE: u8 = 2;
const E_FAILED: u8 = 3;
const E_OTHER: u8 = 4;

/// Largest frame either side accepts: an entry and its header. Anything
/// larger is a protocol error and closes the connection.
pub(super) const MAX_FRAME: usize = MAX_ENTRY + 64 * 1024;

/// Largest event announced through the writer.
pub const MAX_EVENT: usize = 16 * 1024;

/// One frame, decoded.
pub(super) struct Frame {
    pub kind: u8,
    pub id: u64,
    pub payload: Vec<u8>,
}

pub(super) fn encode(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(13 + payload.len());
    f.extend_from_slice(&((9 + payload.len()) as u32).to_le_bytes());
    f.push(kind);
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub(super) async fn read_frame(r: &mut OwnedReadHalf) -> std::io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(9..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (a frame is 9 to {MAX_FRAME} bytes)"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    let kind = buf[0];
    let mut id = [0u8; 8];
    id.copy_from_slice(&buf[1..9]);
    buf.drain(..9);
    Ok(Some(Frame {
        kind,
        id: u64::from_le_bytes(id),
        payload: buf,
    }))
}

/// Writes frames from `rx` as they come, flushing whenever the queue is
/// empty (many answers share one write when the writer is busy).
pub(super) async fn write_frames(w: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    while let Some(f) = rx.recv().await {
        if w.write_all(&f).await.is_err() {
            return;
        }
        while let Ok(f) = rx.try_recv() {
            if w.write_all(&f).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.flush().await;
    let _ = w.into_inner().shutdown().await;
}

fn u64_at(p: &[u8], at: usize) -> Option<u64> {
    p.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

fn hash_at(p: &[u8], at: usize) -> Option<Hash> {
    p.get(at..at + 32).and_then(|b| b.try_into().ok())
}

pub(super) fn encode_appended(a: &Appended) -> Vec<u8> {
    let mut p = Vec::with_capacity(48 + a.checkpoint.len());
    p.extend_from_slice(&a.index.to_le_bytes());
    p.extend_from_slice(&a.size.to_le_bytes());
    p.extend_from_slice(&a.leaf_hash);
    p.extend_from_slice(&a.checkpoint);
    p
}

pub(super) fn decode_appended(p: &[u8]) -> Option<Appended> {
    Some(Appended {
        index: u64_at(p, 0)?,
        size: u64_at(p, 8)?,
        leaf_hash: hash_at(p, 16)?,
        checkpoint: Arc::new(p.get(48..)?.to_vec()),
    })
}

pub(super) fn encode_proof(pr: &InclusionProof) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&pr.index.to_le_bytes());
    p.extend_from_slice(&pr.size.to_le_bytes());
    p.extend_from_slice(&(pr.proof.len() as u64).to_le_bytes());
    for h in &pr.proof {
        p.extend_from_slice(h);
    }
    p.extend_from_slice(&pr.checkpoint);
    p
}

pub(super) fn decode_proof(p: &[u8]) -> Option<InclusionProof> {
    let n = usize::try_from(u64_at(p, 16)?).ok()?;
    if n > 64 {
        return None;
    }
    let proof = (0..n)
        .map(|i| hash_at(p, 24 + 32 * i))
        .collect::<Option<Vec<_>>>()?;
    Some(InclusionProof {
        index: u64_at(p, 0)?,
        size: u64_at(p, 8)?,
        proof,
        checkpoint: Arc::new(p.get(24 + 32 * n..)?.to_vec()),
    })
}

fn put_trouble(p: &mut Vec<u8>, t: &Option<(String, Duration)>) {
    match t {
        None => p.push(0),
        Some((msg, d)) => {
            p.push(1);
            p.extend_from_slice(&(d.as_millis() as u64).to_le_bytes());
            p.extend_from_slice(&(msg.len() as u64).to_le_bytes());
            p.extend_from_slice(msg.as_bytes());
        }
    }
}

fn get_trouble(p: &[u8], at: &mut usize) -> Option<Option<(String, Duration)>> {
    let flag = *p.get(*at)?;
    *at += 1;
    if flag == 0 {
        return Some(None);
    }
    let ms = u64_at(p, *at)?;
    let len = usize::try_from(u64_at(p, *at + 8)?).ok()?;
    let msg = String::from_utf8_lossy(p.get(*at + 16..*at + 16 + len)?).into_owned();
    *at += 16 + len;
    Some(Some((msg, Duration::from_millis(ms))))
}

pub(super) fn encode_health(h: &Health) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&h.committed.to_le_bytes());
    p.extend_from_slice(&h.in_tiles.to_le_bytes());
    put_trouble(&mut p, &h.failed.clone().map(|f| (f, Duration::ZERO)));
    put_trouble(&mut p, &h.appends_retrying);
    put_trouble(&mut p, &h.tiles_retrying);
    p
}

pub(super) fn decode_health(p: &[u8]) -> Option<Health> {
    let mut at = 16;
    let failed = get_trouble(p, &mut at)?.map(|(f, _)| f);
    let appends_retrying = get_trouble(p, &mut at)?;
    let tiles_retrying = get_trouble(p, &mut at)?;
    Some(Health {
        committed: u64_at(p, 0)?,
        in_tiles: u64_at(p, 8)?,
        failed,
        appends_retrying,
        tiles_retrying,
    })
}

pub(super) fn encode_error(e: &LedgerError) -> Vec<u8> {
    let (code, text) = match e {
        LedgerError::Superseded => (E_SUPERSEDED, String::new()),
        LedgerError::EntryTooLarge { len } => (E_TOO_LARGE, len.to_string()),
        LedgerError::Failed(m) => (E_FAILED, m.clone()),
        other => (E_OTHER, other.to_string()),
    };
    let mut p = vec![code];
    p.extend_from_slice(text.as_bytes());
    p
}

pub(super) fn decode_error(p: &[u8]) -> LedgerError {
    let text = String::from_utf8_lossy(p.get(1..).unwrap_or(&[])).into_owned();
    match p.first().copied() {
        Some(E_SUPERSEDED) => LedgerError::Superseded,
        Some(E_TOO_LARGE) => LedgerError::EntryTooLarge {
            len: text.parse().unwrap_or(MAX_ENTRY + 1),
        },
        Some(E_FAILED) => LedgerError::Failed(text),
        _ => LedgerError::Writer(text),
    }
}

/// Answers one request of a connection, against the local writer.
async fn answer(
    ledger: &LocalLedger,
    events: &broadcast::Sender<Arc<Vec<u8>>>,
    f: Frame,
) -> Vec<u8> {
    let bad = |what: &str| {
        encode(
            ERR,
            f.id,
            &encode_error(&LedgerError::Writer(format!("malformed request: {what}"))),
        )
    };
    let result: Result<Vec<u8>, LedgerError> = match f.kind {
        APPEND | APPEND_RETRY => {
            let retry = f.kind == APPEND_RETRY;
            ledger
                .append_once(f.payload, retry)
                .await
                .map(|a| encode_appended(&a))
        }
        ENTRY => match u64_at(&f.payload, 0) {
            Some(i) => ledger.entry(i).await,
            None => return bad("entry index"),
        },
        PROVE => match u64_at(&f.payload, 0) {
            Some(i) => ledger.prove(i).await.map(|p| encode_proof(&p)),
            None => return bad("proof index"),
        },
        FIND_LEAF => match hash_at(&f.payload, 0) {
            Some(h) => Ok(match ledger.find_leaf(&h).await {
                Some(i) => {
                    let mut p = vec![1];
                    p.extend_from_slice(&i.to_le_bytes());
                    p
                }
                None => vec![0],
            }),
            None => return bad("leaf hash"),
        },
        HEALTH => Ok(encode_health(&ledger.health())),
        ANNOUNCE if f.payload.len() <= MAX_EVENT => {
            // Nobody listening is not an error: the event is advisory.
            let _ = events.send(Arc::new(f.payload));
            Ok(Vec::new())
        }
        ANNOUNCE => return bad("event too large"),
        other => return bad(&format!("unknown request kind {other}")),
    };
    match result {
        Ok(p) => encode(OK, f.id, &p),
        Err(e) => encode(ERR, f.id, &encode_error(&e)),
    }
}

/// Serves one client connection until it closes or `stop` fires. On stop it
/// reads nothing more, answers every request it has read, then closes: a
/// request it never read is retried by the client on the next writer.
pub(super) async fn serve_connection(
    stream: tokio::net::UnixStream,
    ledger: Arc<LocalLedger>,
    events: broadcast::Sender<Arc<Vec<u8>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (mut r, w) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4096);
    let writer = tokio::spawn(write_frames(w, rx));
    let mut sub = events.subscribe();
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            ev = sub.recv() => match ev {
                Ok(ev) => {
                    if tx.send(encode(EVENT, 0, &ev)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            f = read_frame(&mut r) => match f {
                Ok(Some(f)) => {
                    let (l, e, t) = (ledger.clone(), events.clone(), tx.clone());
                    inflight.spawn(async move {
                        let out = answer(&l, &e, f).await;
                        let _ = t.send(out).await;
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "closing a ledger client connection after a protocol error");
                    break;
                }
            },
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
        }
    }
    while inflight.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
}

// ---- the writer's side: the socket server ---------------------------------

pub(super) struct Server {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Server {
    /// Listens on `path`. The caller holds the writer lock, so a socket file
    /// found there was left by a writer that died: it is replaced.
    pub(super) fn start(
        path: &Path,
        ledger: Arc<LocalLedger>,
        events: broadcast::Sender<Arc<Vec<u8>>>,
    ) -> Result<Self, LedgerError> {
        let io = |e: std::io::Error| {
            LedgerError::Unreachable(format!("cannot listen on {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io)?;
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!("replacing the socket of a ledger writer that went away"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(accept(listener, ledger, events, rx));
        Ok(Self {
            stop,
            task,
            path: path.to_owned(),
        })
    }

    /// Stops listening (the socket file goes first, while this process
    /// still holds the lock), then lets every connection answer what it
    /// read.
    pub(super) async fn stop(self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

async fn accept(
    listener: tokio::net::UnixListener,
    ledger: Arc<LocalLedger>,
    events: broadcast::Sender<Arc<Vec<u8>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => match a {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(
                        stream,
                        ledger.clone(),
                        events.clone(),
                        stop.clone(),
                    ));
                }
                Err(e) => {
                    // Out of descriptors, say: keep serving the connections
                    // there are, try again shortly.
                    tracing::warn!(error = %e, "ledger socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}
