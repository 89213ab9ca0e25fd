//! The ledger's durability primitives on real backends.
//!
//! The audit journal's two ways of writing (direct synchronous writes of
//! whole blocks, or `pwrite` + `fdatasync`) put the same bytes at the same
//! places: every write starts at a block boundary, holds its bytes and a
//! zero length, and never touches a byte of an earlier write. A round's
//! bulk create is write-once on a directory and on a real S3 server.

use bytes::Bytes;
use kfm_ledger::durable::{self, FreshJournal, JOURNAL_BLOCK, Journal};
use kfm_store::{Store, StoreError};

fn journal(dir: &std::path::Path, direct: bool) -> (Store, Journal) {
    let store = Store::open_local(dir).unwrap();
    let mut j = durable::open_journal(&store.audit())
        .unwrap()
        .expect("a directory store has a journal");
    if !direct {
        j.disable_direct();
    }
    (store, j)
}

/// The journal file's first 512 KiB (the records here stay well inside).
fn file(j: &Journal) -> Vec<u8> {
    use std::io::Read;
    let mut head = vec![0; 512 << 10];
    std::fs::File::open(j.path())
        .and_then(|mut f| f.read_exact(&mut head))
        .unwrap();
    head
}

/// Records of awkward lengths: inside one block, exactly a block, across
/// several, and ending one byte either side of a block boundary.
fn record(i: usize) -> Vec<u8> {
    const LENGTHS: [usize; 12] = [1, 4095, 4096, 4097, 17, 9000, 3, 4092, 4, 8191, 12_289, 60];
    let len = LENGTHS[i % LENGTHS.len()];
    (0..len)
        .map(|k| (1 + (i * 31 + k * 7) % 255) as u8)
        .collect()
}

/// Where the write after one of `len` bytes at `at` starts.
fn next(at: u64, len: usize) -> u64 {
    (at + len as u64 + 4).next_multiple_of(JOURNAL_BLOCK)
}

#[test]
fn direct_and_buffered_appends_put_the_same_bytes_at_block_boundaries() {
    // A real disk where there is one (tmpfs refuses direct writes).
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (_sa, mut a) = journal(&tmp.path().join("a"), true);
    let (_sb, mut b) = journal(&tmp.path().join("b"), false);
    assert!(!b.is_direct());
    if !a.is_direct() {
        eprintln!("note: this file system refuses direct writes; both journals are buffered");
    }

    let mut at = 0u64;
    let mut writes = Vec::new();
    for i in 0..40 {
        let r = record(i);
        assert_eq!(a.len(), at);
        a.append_durable(&r).unwrap();
        b.append_durable(&r).unwrap();
        writes.push((at, r.clone()));
        at = next(at, r.len());
        assert_eq!(a.len(), at, "record {i}");
        assert_eq!(b.len(), at, "record {i}");
        let (fa, fb) = (file(&a), file(&b));
        // Every earlier write is intact, followed by its zero length.
        for (w, (o, bytes)) in writes.iter().enumerate() {
            let o = *o as usize;
            assert_eq!(&fa[o..o + bytes.len()], &bytes[..], "write {w} after {i}");
            assert_eq!(&fa[o + bytes.len()..o + bytes.len() + 4], &[0; 4]);
        }
        // Both files started as zeros: nothing else differs either.
        assert!(fa == fb, "record {i}: the two journals differ");
    }

    // Restarted over the old records: a zero length at the start (readers
    // of the idle journal stop at once), then new writes from offset 0.
    a.restart().unwrap();
    b.restart().unwrap();
    assert_eq!(&file(&a)[..4], &[0; 4]);
    assert_eq!(&file(&b)[..4], &[0; 4]);
    let mut at = 0u64;
    for i in 0..7 {
        let r = record(i + 3);
        a.append_durable(&r).unwrap();
        b.append_durable(&r).unwrap();
        let (fa, fb) = (file(&a), file(&b));
        let o = at as usize;
        let end = o + r.len();
        assert_eq!(&fa[o..end], &r[..], "after restart, record {i}");
        assert_eq!(
            &fa[o..end + 4],
            &fb[o..end + 4],
            "after restart, record {i}"
        );
        assert_eq!(&fa[end..end + 4], &[0; 4], "the end mark");
        at = next(at, r.len());
    }

    // Rotated into a spare: the new file is written the same way.
    let direct = a.is_direct();
    let spare = FreshJournal::prepare(a.path(), a.allocated(), false).unwrap();
    a.rotate(spare).unwrap();
    assert_eq!(a.is_direct(), direct);
    assert_eq!(a.len(), 0);
    a.append_durable(&record(5)).unwrap();
    a.append_durable(&record(2)).unwrap();
    let f = file(&a);
    let (r5, r2) = (record(5), record(2));
    assert_eq!(&f[..r5.len()], &r5[..]);
    let o = next(0, r5.len()) as usize;
    assert_eq!(&f[o..o + r2.len()], &r2[..]);
    assert_eq!(&f[o + r2.len()..o + r2.len() + 4], &[0; 4]);
}

/// A store on each backend this run has: a directory, and the S3 server
/// `scripts/test` starts (skipped with a message when it is not configured,
/// a failure under `KFM_REQUIRE_SERVICES=1`).
struct Backend {
    name: &'static str,
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let mut v = vec![Backend {
        name: "local",
        store: Store::open_local(&dir.path().join("store")).unwrap(),
        _dir: Some(dir),
    }];
    let prefix = format!("t-{}", uuid::Uuid::new_v4());
    if let Some(settings) = kfm_store::testing::s3_settings(&prefix) {
        v.push(Backend {
            name: "s3",
            store: Store::open_s3(settings).unwrap(),
            _dir: None,
        });
    }
    v
}

/// A ledger round's bulk create: everything lands, a retry with the same
/// bytes is accepted, different bytes at an existing key are refused (and
/// leave the stored object alone), and a hostile key writes nothing.
#[tokio::test]
async fn bulk_creates_are_write_once_and_retries_are_idempotent() {
    for b in backends() {
        let audit = b.store.audit();
        let round = vec![
            ("tile/0/000".to_owned(), Bytes::from_static(b"hashes-0")),
            (
                "tile/entries/x001/002.p/7".to_owned(),
                Bytes::from_static(b"bundle"),
            ),
        ];
        durable::create_all_durable(&audit, round.clone())
            .await
            .unwrap();
        // The same round again (a writer retrying after a crash): accepted.
        durable::create_all_durable(&audit, round.clone())
            .await
            .unwrap();
        for (k, v) in &round {
            assert_eq!(&audit.get(k).await.unwrap(), v, "[{}] {k}", b.name);
        }
        // Different bytes at a key that exists: refused, stored bytes kept.
        let e = durable::create_all_durable(
            &audit,
            vec![("tile/0/000".to_owned(), Bytes::from_static(b"forged"))],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, StoreError::AlreadyExists { key, .. } if key == "tile/0/000"),
            "[{}] {e}",
            b.name
        );
        assert_eq!(
            audit.get("tile/0/000").await.unwrap(),
            Bytes::from_static(b"hashes-0"),
            "[{}]",
            b.name
        );
        // Keys that could leave the zone never reach the disk.
        for bad in ["../raw/x", "tile/../../x", "/abs", "tile//0"] {
            let e = durable::create_all_durable(
                &audit,
                vec![(bad.to_owned(), Bytes::from_static(b"x"))],
            )
            .await
            .unwrap_err();
            assert!(
                matches!(e, StoreError::InvalidKey { .. }),
                "[{}] {bad}: {e}",
                b.name
            );
        }
        assert!(
            b.store.raw().list("").await.unwrap().is_empty(),
            "[{}]",
            b.name
        );
    }
}
