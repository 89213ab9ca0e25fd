//! The ledger on a real store: durable appends, reopen, verification,
//! tampering, a second writer. (Torn tails, and logs that shrank or
//! vanished: `guards.rs`.)

use std::sync::Arc;

use kfm_ledger::{
    Guards, Ledger, LedgerError, LedgerOptions, LedgerSigner, LedgerView, generate_key,
    verify_inclusion,
};
use kfm_store::Store;

const ORIGIN: &str = "kfm.test/ledger";

fn setup() -> (tempfile::TempDir, Store, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_local(&dir.path().join("store")).unwrap();
    let (skey, vkey) = generate_key(ORIGIN).unwrap();
    (dir, store, skey, vkey)
}

/// The guards a workspace would give: a witness beside the store.
fn guards(store: &Store) -> Guards {
    let root = store
        .url()
        .strip_prefix("file://")
        .map(std::path::PathBuf::from);
    Guards {
        witness: root.map(|r| r.parent().unwrap().join("witness/checkpoint")),
        references: Vec::new(),
    }
}

async fn open(store: &Store, skey: &str) -> Result<Ledger, LedgerError> {
    let mut opts = LedgerOptions::new(ORIGIN);
    opts.guards = guards(store);
    Ledger::open(
        store.audit(),
        LedgerSigner::from_key_text(skey).unwrap(),
        opts,
    )
    .await
}

async fn verify(
    audit: &kfm_store::Audit,
    vkey: &str,
    origin: &str,
    store: &Store,
) -> Result<kfm_ledger::VerifyReport, LedgerError> {
    kfm_ledger::verify(audit, vkey, origin, &guards(store)).await
}

async fn view(store: &Store, vkey: &str) -> Result<LedgerView, LedgerError> {
    LedgerView::open(&store.audit(), vkey, ORIGIN, &guards(store)).await
}

/// Every file of the ledger, relative to the store root.
fn ledger_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out)
            } else {
                out.push(p)
            }
        }
    }
    let mut v = Vec::new();
    walk(&root.join("audit"), &mut v);
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_durable_provable_and_survive_reopen() {
    let (_d, store, skey, vkey) = setup();
    let ledger = Arc::new(open(&store, &skey).await.unwrap());
    let mut tasks = Vec::new();
    for t in 0..16 {
        let l = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..40 {
                let entry = format!("{{\"task\":{t},\"i\":{i}}}").into_bytes();
                let a = l.append(entry.clone()).await.unwrap();
                out.push((entry, a));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(ledger.size(), 640);
    let mut indexes: Vec<u64> = all.iter().map(|(_, a)| a.index).collect();
    indexes.sort();
    assert_eq!(
        indexes,
        (0..640).collect::<Vec<_>>(),
        "every index exactly once"
    );
    // Each acknowledgement's checkpoint proves its entry.
    let mut roots = Vec::new();
    for (entry, a) in all.iter().step_by(37) {
        let cp = kfm_ledger::verify_checkpoint(&a.checkpoint, &vkey, Some(ORIGIN)).unwrap();
        assert_eq!(cp.size, a.size);
        let p = ledger.prove(a.index).await.unwrap();
        let signed = kfm_ledger::verify_checkpoint(&p.checkpoint, &vkey, Some(ORIGIN)).unwrap();
        assert_eq!(signed.size, p.size);
        verify_inclusion(
            a.index,
            p.size,
            &kfm_ledger::leaf_hash(entry),
            &p.proof,
            &signed.root,
        )
        .unwrap();
        roots.push((p.size, signed.root));
    }
    match Arc::try_unwrap(ledger) {
        Ok(l) => {
            l.close().await;
        }
        Err(_) => panic!("ledger still shared"),
    }
    // A reader sees the same history the writer signed along the way.
    let view = view(&store, &vkey).await.unwrap();
    for (size, root) in roots {
        assert_eq!(view.tree().root_at(size).unwrap(), root);
    }

    // Reopen: same size, appends continue, and the whole thing verifies.
    let ledger = open(&store, &skey).await.unwrap();
    assert_eq!(ledger.size(), 640);
    assert_eq!(
        ledger.append(b"after reopen".to_vec()).await.unwrap().index,
        640
    );
    ledger.close().await;
    let report = verify(&store.audit(), &vkey, ORIGIN, &store).await.unwrap();
    assert_eq!(report.size, 641);
    assert_eq!(report.bundles, 3);
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let (_d, store, skey, _) = setup();
    let first = open(&store, &skey).await.unwrap();
    first.append(b"one".to_vec()).await.unwrap();
    assert!(matches!(
        open(&store, &skey).await,
        Err(LedgerError::Locked)
    ));
    first.close().await;
    // Once the first is gone, a writer may open.
    let again = open(&store, &skey).await.unwrap();
    assert_eq!(again.size(), 1);
}

#[tokio::test]
async fn entries_over_64_kib_are_refused() {
    let (_d, store, skey, _) = setup();
    let l = open(&store, &skey).await.unwrap();
    let e = l.append(vec![0u8; 65536]).await.unwrap_err();
    assert!(
        matches!(e, LedgerError::EntryTooLarge { len: 65536 }),
        "{e}"
    );
    assert!(e.to_string().contains("by digest"));
    l.append(vec![0u8; 65535]).await.unwrap();
    assert_eq!(l.size(), 1);
}

#[tokio::test]
async fn flipping_any_byte_of_any_ledger_file_fails_verification_naming_it() {
    let (d, store, skey, vkey) = setup();
    // Two writers one after the other: the first leaves partial tiles of
    // 100 entries that the second's tiles supersede (and keep).
    for (from, to) in [(0, 100), (100, 300)] {
        let l = open(&store, &skey).await.unwrap();
        for i in from..to {
            l.append(format!("entry number {i}").into_bytes())
                .await
                .unwrap();
        }
        l.close().await;
    }
    let root = std::fs::canonicalize(d.path().join("store")).unwrap();
    verify(&store.audit(), &vkey, ORIGIN, &store).await.unwrap();

    // Every file: the ones the checkpoint covers, and the superseded
    // partial tiles, which must be prefixes of what replaced them.
    let live = ledger_files(&root);
    let names: Vec<String> = live
        .iter()
        .map(|p| {
            p.strip_prefix(root.join("audit"))
                .unwrap()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    for must in [
        "checkpoint",
        "tile/entries/000",
        "tile/entries/001.p/44",
        "tile/0/000",
        "tile/0/001.p/44",
        "tile/1/000.p/1",
        "tile/entries/000.p/100",
        "tile/0/000.p/100",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} not in {names:?}");
    }
    for path in &live {
        let original = std::fs::read(path).unwrap();
        let name = path
            .strip_prefix(root.join("audit"))
            .unwrap()
            .to_string_lossy()
            .to_string();
        for offset in [
            0,
            original.len() / 3,
            original.len() / 2,
            original.len() - 1,
        ] {
            let mut bad = original.clone();
            bad[offset] ^= 0x20;
            std::fs::write(path, &bad).unwrap();
            let err = verify(&store.audit(), &vkey, ORIGIN, &store)
                .await
                .expect_err(&format!("{name}@{offset} accepted"));
            let msg = err.to_string();
            let names_it = msg.contains(&name)
                || (name == "checkpoint" && msg.starts_with("checkpoint"))
                || (name.starts_with("tile/0/") && msg.contains("tile/entries/"));
            assert!(
                names_it,
                "flip in {name}@{offset}: message does not name it: {msg}"
            );
        }
        std::fs::write(path, &original).unwrap();
    }
    verify(&store.audit(), &vkey, ORIGIN, &store).await.unwrap();
}

/// The same ledger in an S3 bucket (s3s-fs, started by scripts/test): tiles
/// and checkpoint are written before each answer, reopen and verify work,
/// and without an OS lock the checkpoint's compare-and-swap alone stops a
/// second writer from forking history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_works_on_s3_and_a_stale_writer_cannot_fork_it() {
    let Some(settings) = kfm_store::testing::s3_settings(&format!("ledger-{}", std::process::id()))
    else {
        return;
    };
    let store = Store::open_s3(settings).unwrap();
    let (skey, vkey) = generate_key(ORIGIN).unwrap();

    let first = Arc::new(open(&store, &skey).await.unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let l = first.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    l.append(format!("s3 {t} {i}").into_bytes()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(first.size(), 320);
    assert_eq!(
        verify(&store.audit(), &vkey, ORIGIN, &store)
            .await
            .unwrap()
            .size,
        320
    );

    // A second writer opens (S3 has no lock service)…
    let second = open(&store, &skey).await.unwrap();
    // …the first moves the checkpoint on…
    first.append(b"first again".to_vec()).await.unwrap();
    // …so the second's first append loses the compare-and-swap: no fork.
    let r = second.append(b"fork attempt".to_vec()).await;
    assert!(matches!(r, Err(LedgerError::Superseded)), "{r:?}");
    let report = verify(&store.audit(), &vkey, ORIGIN, &store).await.unwrap();
    assert_eq!(report.size, 321);
    let view = view(&store, &vkey).await.unwrap();
    assert_eq!(view.entry(320).await.unwrap(), b"first again");
}

/// A long-running writer keeps only what its tiles do not hold: proofs and
/// lookups of pruned entries read the leaf tile back, checked against the
/// subtree root the writer kept; an altered tile is refused, never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_entries_are_still_found_and_proved_and_tampered_tiles_refused() {
    let (d, store, skey, vkey) = setup();
    let ledger = open(&store, &skey).await.unwrap();
    let mut entries = Vec::new();
    for i in 0..700u32 {
        let e = format!("{{\"n\":{i}}}").into_bytes();
        ledger.append(e.clone()).await.unwrap();
        entries.push(e);
    }
    ledger.close().await;
    // Reopening prunes what the tiles hold (the first two full tiles).
    let ledger = open(&store, &skey).await.unwrap();
    for i in [0u64, 5, 255, 256, 511, 512, 699] {
        let leaf = kfm_ledger::leaf_hash(&entries[i as usize]);
        assert_eq!(ledger.find_leaf(&leaf).await, Some(i), "entry {i}");
        let p = ledger.prove(i).await.unwrap();
        let signed = kfm_ledger::verify_checkpoint(&p.checkpoint, &vkey, Some(ORIGIN)).unwrap();
        verify_inclusion(i, p.size, &leaf, &p.proof, &signed.root).unwrap();
    }
    assert_eq!(
        ledger
            .find_leaf(&kfm_ledger::leaf_hash(b"never appended"))
            .await,
        None
    );
    // Alter one leaf hash in the first level-0 tile.
    let tile = d.path().join("store/audit/tile/0/000");
    let mut bytes = std::fs::read(&tile).unwrap();
    bytes[5 * 32] ^= 1;
    std::fs::write(&tile, bytes).unwrap();
    let e = ledger.prove(5).await.unwrap_err().to_string();
    assert!(e.contains("does not hash to the subtree root"), "{e}");
    // Entries of the tile not pruned are unaffected.
    ledger.prove(600).await.unwrap();
    ledger.close().await;
}

/// The journal's two files take turns and are reused: across many tile
/// rounds (each retiring or restarting a file, so new records land over
/// stale ones), every acknowledged entry stays readable by a reader while
/// writing, and after a reopen, and appends after the reopen (into a file
/// full of stale records) are kept too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_journal_files_lose_nothing_across_rotations_and_reopens() {
    let (d, store, skey, vkey) = setup();
    let mut want: Vec<Vec<u8>> = Vec::new();
    for session in 0..3 {
        let ledger = Arc::new(open(&store, &skey).await.unwrap());
        for wave in 0..5 {
            let mut tasks = Vec::new();
            for t in 0..8 {
                let l = ledger.clone();
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    for i in 0..40 {
                        let e = format!("{{\"s\":{session},\"w\":{wave},\"t\":{t},\"i\":{i}}}")
                            .into_bytes();
                        let a = l.append(e.clone()).await.unwrap();
                        out.push((a.index, e));
                    }
                    out
                }));
            }
            let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
            for t in tasks {
                acked.extend(t.await.unwrap());
            }
            acked.sort();
            for (i, e) in acked {
                assert_eq!(i, want.len() as u64, "indexes are dense");
                want.push(e);
            }
            // A reader sees every acknowledged entry, whatever the tile
            // writer and the journal are doing.
            let view = view(&store, &vkey).await.unwrap();
            assert!(view.size() >= want.len() as u64);
            // Long enough for a tile round (and a rotation) between waves.
            tokio::time::sleep(std::time::Duration::from_millis(260)).await;
        }
        match Arc::try_unwrap(ledger) {
            Ok(l) => {
                l.close().await;
            }
            Err(_) => panic!("ledger still shared"),
        }
        let names: Vec<String> = std::fs::read_dir(d.path().join("store/.kfm-journal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"audit.journal".to_owned()), "{names:?}");
        assert!(
            names.len() <= 3,
            "the journal is bounded to its files: {names:?}"
        );
        let report = verify(&store.audit(), &vkey, ORIGIN, &store).await.unwrap();
        assert_eq!(report.size, want.len() as u64);
    }
    let view = view(&store, &vkey).await.unwrap();
    for (i, e) in want.iter().enumerate() {
        assert_eq!(&view.entry(i as u64).await.unwrap(), e, "entry {i}");
    }
}

/// Readers open the ledger while a writer appends megabyte records as fast
/// as it can: a reader's read overlapping a write in flight can find a
/// record half written with an intact record after it. That is a write
/// in progress, not damage: every view opens, and none is smaller than
/// one opened before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_opening_during_large_appends_never_see_damage() {
    let (_d, store, skey, vkey) = setup();
    let ledger = Arc::new(open(&store, &skey).await.unwrap());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..64u32 {
        let l = ledger.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..40u32 {
                // ~16 KiB entries: 64 appenders in flight fill a batch.
                let mut e = format!("{{\"t\":{t},\"i\":{i},\"pad\":\"").into_bytes();
                e.resize(16 * 1024, b'x');
                e.extend_from_slice(b"\"}");
                l.append(e).await.unwrap();
            }
        }));
    }
    let reader = {
        let (store, vkey, done) = (store.clone(), vkey.clone(), done.clone());
        tokio::spawn(async move {
            let (mut opened, mut last) = (0u32, 0u64);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let v = view(&store, &vkey)
                    .await
                    .unwrap_or_else(|e| panic!("a view opened during appends: {e}"));
                assert!(v.size() >= last, "a view went back: {} < {last}", v.size());
                last = v.size();
                opened += 1;
            }
            opened
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = reader.await.unwrap();
    assert!(opened > 0, "the reader ran");
    eprintln!("{opened} views opened during appends");
    let v = view(&store, &vkey).await.unwrap();
    assert_eq!(v.size(), 64 * 40);
}
