//! The ledger shared by the processes of a workspace: clients append
//! through the writer's socket, a retried append is recorded once, hostile
//! frames close only their own connection, and a client takes over when
//! the writer closes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use kfm_ledger::{Guards, Ledger, LedgerOptions, LedgerSigner, generate_key, leaf_hash};
use kfm_store::Store;

const ORIGIN: &str = "kfm.test/shared";

struct Env {
    dir: tempfile::TempDir,
    store: Store,
    skey: String,
    vkey: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(&dir.path().join("store")).unwrap();
    let (skey, vkey) = generate_key(ORIGIN).unwrap();
    Env {
        dir,
        store,
        skey,
        vkey,
    }
}

impl Env {
    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("run/ledger.sock")
    }

    fn opts(&self) -> LedgerOptions {
        let mut o = LedgerOptions::new(ORIGIN);
        o.guards = Guards {
            witness: Some(self.dir.path().join("witness/checkpoint")),
            references: Vec::new(),
        };
        o.socket = Some(self.socket());
        o.reach_writer = Duration::from_secs(20);
        o
    }

    async fn open(&self) -> Ledger {
        Ledger::open(
            self.store.audit(),
            LedgerSigner::from_key_text(&self.skey).unwrap(),
            self.opts(),
        )
        .await
        .unwrap()
    }

    async fn entries(&self) -> Vec<Vec<u8>> {
        let v = kfm_ledger::LedgerView::open(
            &self.store.audit(),
            &self.vkey,
            ORIGIN,
            &self.opts().guards,
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        for i in 0..v.size() {
            out.push(v.entry(i).await.unwrap());
        }
        out
    }
}

/// One raw frame: `[u32 length][u8 kind][u64 id][payload]`.
fn frame(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = ((9 + payload.len()) as u32).to_le_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Reads one answer frame: (kind, id, payload).
fn answer(s: &mut UnixStream) -> std::io::Result<(u8, u64, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut buf)?;
    let id = u64::from_le_bytes(buf[1..9].try_into().unwrap());
    Ok((buf[0], id, buf[9..].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_appends_through_the_writer_and_a_retried_append_is_recorded_once() {
    let e = env();
    let writer = e.open().await;
    assert!(writer.is_writer());
    let client = e.open().await;
    assert!(
        !client.is_writer(),
        "the second opener must become a client"
    );

    let a = writer.append(b"from the writer".to_vec()).await.unwrap();
    let b = client.append(b"from the client".to_vec()).await.unwrap();
    assert_eq!((a.index, b.index), (0, 1));
    assert_eq!(b.leaf_hash, leaf_hash(b"from the client"));
    // The client reads and proves through the writer.
    assert_eq!(client.entry(0).await.unwrap(), b"from the writer");
    assert_eq!(client.find_leaf(&a.leaf_hash).await, Some(0));
    let p = client.prove(1).await.unwrap();
    assert_eq!(p.size, 2);

    // The same append sent again as a retry (its sender lost the answer):
    // answered with the entry already there, nothing appended.
    let sock = e.socket();
    let raw = tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&frame(2, 7, b"from the client")).unwrap();
        answer(&mut s).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(raw.0, 128, "OK");
    assert_eq!(raw.1, 7, "the answer repeats the request's id");
    assert_eq!(u64::from_le_bytes(raw.2[..8].try_into().unwrap()), 1);
    assert_eq!(
        e.entries().await.len(),
        2,
        "a retried append is recorded once"
    );

    // Events reach every process sharing the ledger.
    let mut on_writer = writer.events();
    client
        .announce(b"{\"type\":\"test\"}".to_vec())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), on_writer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"{\"type\":\"test\"}");

    let c = client.close().await;
    assert!(!c.writer);
    let w = writer.close().await;
    assert!(w.writer);
    assert_eq!(w.size, 2);
    kfm_ledger::verify(&e.store.audit(), &e.vkey, ORIGIN, &e.opts().guards)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_only_their_own_connection() {
    let e = env();
    let writer = e.open().await;
    let client = e.open().await;
    let sock = e.socket();
    tokio::task::spawn_blocking(move || {
        // Unknown kind: an error answer, the connection stays.
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&frame(99, 1, b"")).unwrap();
        let (kind, id, p) = answer(&mut s).unwrap();
        assert_eq!((kind, id), (129, 1));
        assert!(String::from_utf8_lossy(&p).contains("unknown request kind"));
        // A malformed request: an error answer.
        s.write_all(&frame(3, 2, b"abc")).unwrap();
        assert_eq!(answer(&mut s).unwrap().0, 129);
        // A length the writer never accepts: the connection is closed.
        s.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
        // A length too short to hold a header: closed as well.
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // (One write: the writer closes on reading the length, and a
        // second write could then meet a closed socket.)
        s.write_all(&[&3u32.to_le_bytes()[..], b"abc"].concat())
            .unwrap();
        assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
        // A client that connects and goes away mid-frame.
        let mut s = UnixStream::connect(&sock).unwrap();
        s.write_all(&frame(1, 3, b"half")[..7]).unwrap();
    })
    .await
    .unwrap();
    // Nothing of that reached the ledger, and the writer still serves.
    let a = client
        .append(b"after the hostile frames".to_vec())
        .await
        .unwrap();
    assert_eq!(a.index, 0);
    assert_eq!(
        e.entries().await,
        vec![b"after the hostile frames".to_vec()]
    );
    client.close().await;
    writer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_takes_over_when_the_writer_closes() {
    let e = env();
    let writer = e.open().await;
    let client = e.open().await;
    client.append(b"one".to_vec()).await.unwrap();
    let closed = writer.close().await;
    assert_eq!(closed.size, 1);
    // The client notices at once (not at its next call) and takes over.
    let mut became = false;
    for _ in 0..400 {
        if client.is_writer() {
            became = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(became, "the client never took over as the writer");
    let a = client.append(b"two".to_vec()).await.unwrap();
    assert_eq!(a.index, 1);
    // And a newcomer becomes its client.
    let newcomer = e.open().await;
    assert!(!newcomer.is_writer());
    assert_eq!(newcomer.append(b"three".to_vec()).await.unwrap().index, 2);
    newcomer.close().await;
    client.close().await;
    assert_eq!(
        e.entries().await,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
}
