//! What vouches for the ledger from outside the audit zone: objects beyond
//! the checkpoint must be justified by the journal, the log may never be
//! smaller than (or inconsistent with) the witnessed checkpoint or what a
//! reference names, and a refusal changes nothing.
//!
//! A writer killed mid-flight is a real process: this test binary runs
//! itself as a child (`child_writer`), which appends and is then SIGKILLed.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kfm_ledger::{
    Guards, Ledger, LedgerError, LedgerOptions, LedgerSigner, LedgerView, Reference, generate_key,
    tiles::push_entry, verify,
};
use kfm_store::Store;

const ORIGIN: &str = "kfm.test/guards";

fn entry(i: u64) -> Vec<u8> {
    format!(
        "{{\"entry\":{i},\"pad\":\"{}\"}}",
        "x".repeat((i % 7) as usize)
    )
    .into_bytes()
}

struct Ws {
    dir: tempfile::TempDir,
    store: Store,
    skey: String,
    vkey: String,
}

impl Ws {
    fn new() -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let store = Store::open_local(&dir.path().join("store")).unwrap();
        let (skey, vkey) = generate_key(ORIGIN).unwrap();
        Self {
            dir,
            store,
            skey,
            vkey,
        }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn audit_file(&self, rel: &str) -> PathBuf {
        self.root().join("audit").join(rel)
    }
    fn journal(&self) -> PathBuf {
        self.root().join(".kfm-journal/audit.journal")
    }
    fn guards(&self) -> Guards {
        Guards {
            witness: Some(self.dir.path().join("witness/checkpoint")),
            references: Vec::new(),
        }
    }
    fn opts(&self) -> LedgerOptions {
        let mut o = LedgerOptions::new(ORIGIN);
        o.guards = self.guards();
        o
    }
    async fn open(&self) -> Result<Ledger, LedgerError> {
        Ledger::open(
            self.store.audit(),
            LedgerSigner::from_key_text(&self.skey).unwrap(),
            self.opts(),
        )
        .await
    }
    async fn verify(&self) -> Result<kfm_ledger::VerifyReport, LedgerError> {
        verify(&self.store.audit(), &self.vkey, ORIGIN, &self.guards()).await
    }
    async fn append(&self, from: u64, n: u64) {
        let l = self.open().await.unwrap();
        for i in from..from + n {
            assert_eq!(l.append(entry(i)).await.unwrap().index, i);
        }
        l.close().await;
    }
    /// Every file under the store and the witness, with its bytes.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        kfm_store::testing::snapshot(self.dir.path())
    }

    /// A writer that appends `n` entries from `from` one batch at a time,
    /// never writes tiles, and is killed with SIGKILL once all are
    /// acknowledged: its entries are only in the journal.
    fn crash_writer(&self, from: u64, n: u64) {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--ignored", "--nocapture"])
            .env("KFM_TEST_CHILD_DIR", self.dir.path())
            .env("KFM_TEST_CHILD_KEY", &self.skey)
            .env("KFM_TEST_CHILD_FROM", from.to_string())
            .env("KFM_TEST_CHILD_N", n.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut acked = false;
        for line in std::io::BufReader::new(out).lines() {
            if line.unwrap().starts_with("acked") {
                acked = true;
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(acked, "the child writer never acknowledged its entries");
    }
}

/// The child half of [`Ws::crash_writer`] (does nothing when run alone).
#[test]
#[ignore = "run by crash_writer as a child process"]
fn child_writer() {
    let Ok(dir) = std::env::var("KFM_TEST_CHILD_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let key = std::env::var("KFM_TEST_CHILD_KEY").unwrap();
    let from: u64 = std::env::var("KFM_TEST_CHILD_FROM")
        .unwrap()
        .parse()
        .unwrap();
    let n: u64 = std::env::var("KFM_TEST_CHILD_N").unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open_local(&dir.join("store")).unwrap();
        let mut opts = LedgerOptions::new(ORIGIN);
        opts.guards.witness = Some(dir.join("witness/checkpoint"));
        opts.tile_every = Duration::from_secs(3600);
        let l = Ledger::open(
            store.audit(),
            LedgerSigner::from_key_text(&key).unwrap(),
            opts,
        )
        .await
        .unwrap();
        for i in from..from + n {
            assert_eq!(l.append(entry(i)).await.unwrap().index, i);
        }
        println!("acked {}", from + n);
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
}

fn bundle(from: u64, to: u64) -> Vec<u8> {
    let mut b = Vec::new();
    for i in from..to {
        push_entry(&mut b, &entry(i));
    }
    b
}

fn refused(r: Result<impl std::fmt::Debug, LedgerError>, needle: &str) -> String {
    match r {
        Err(e @ LedgerError::Refused(_)) => {
            let m = e.to_string();
            assert!(m.contains(needle), "{needle:?} not in: {m}");
            assert!(m.contains("Nothing was changed"), "{m}");
            m
        }
        other => panic!("expected a refusal naming {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_tile_round_a_crash_cut_short_is_completed_from_the_journal() {
    let ws = Ws::new();
    ws.append(0, 10).await;
    ws.crash_writer(10, 290);
    // The round that was writing when the crash came: one bundle whole,
    // one cut short.
    let full = ws.audit_file("tile/entries/000");
    std::fs::write(&full, bundle(0, 256)).unwrap();
    let part = bundle(256, 300);
    let short = ws.audit_file("tile/entries/001.p/44");
    std::fs::create_dir_all(short.parent().unwrap()).unwrap();
    std::fs::write(&short, &part[..part.len() / 2]).unwrap();
    // A reader accepts them (the journal vouches for them), changing nothing.
    assert_eq!(ws.verify().await.unwrap().size, 300);
    assert_eq!(std::fs::read(&short).unwrap().len(), part.len() / 2);
    // The writer completes them.
    let l = ws.open().await.unwrap();
    assert_eq!(l.size(), 300);
    l.append(entry(300)).await.unwrap();
    l.close().await;
    assert_eq!(std::fs::read(&short).unwrap(), part);
    let report = ws.verify().await.unwrap();
    assert_eq!(report.size, 301);
    let view = LedgerView::open(&ws.store.audit(), &ws.vkey, ORIGIN, &ws.guards())
        .await
        .unwrap();
    for i in [0, 9, 10, 255, 256, 299, 300] {
        assert_eq!(view.entry(i).await.unwrap(), entry(i), "entry {i}");
    }
}

#[tokio::test]
async fn objects_beyond_the_checkpoint_that_nothing_vouches_for_are_refused_and_kept() {
    let ws = Ws::new();
    ws.append(0, 10).await;
    // A bundle for entries 10 and 11, with no journal record behind it.
    let stray = ws.audit_file("tile/entries/000.p/12");
    std::fs::write(&stray, bundle(0, 12)).unwrap();
    let before = ws.snapshot();
    refused(ws.verify().await, "tile/entries/000.p/12");
    refused(ws.open().await.map(|_| ()), "tile/entries/000.p/12");
    assert_eq!(ws.snapshot(), before, "a refusal changes nothing");
    std::fs::remove_file(&stray).unwrap();
    ws.append(10, 2).await;
    assert_eq!(ws.verify().await.unwrap().size, 12);
}

#[tokio::test]
async fn a_tile_beyond_the_checkpoint_that_differs_from_the_journal_is_refused() {
    let ws = Ws::new();
    ws.append(0, 10).await;
    ws.crash_writer(10, 5);
    let bad = ws.audit_file("tile/entries/000.p/15");
    let mut b = bundle(0, 15);
    b[40] ^= 1;
    std::fs::write(&bad, &b).unwrap();
    let before = ws.snapshot();
    for e in [
        ws.verify().await.map(|_| ()).unwrap_err(),
        ws.open().await.map(|_| ()).unwrap_err(),
    ] {
        assert!(
            matches!(&e, LedgerError::Corrupt { place, .. } if place == "tile/entries/000.p/15"),
            "{e}"
        );
    }
    assert_eq!(ws.snapshot(), before);
}

#[tokio::test]
async fn a_log_smaller_than_or_inconsistent_with_the_witness_is_refused() {
    let ws = Ws::new();
    ws.append(0, 50).await;
    let old = tempfile::tempdir().unwrap();
    copy_dir(&ws.root(), old.path());
    ws.append(50, 50).await;
    assert_eq!(ws.verify().await.unwrap().witnessed, Some(100));

    // The store restored from the older copy.
    std::fs::remove_dir_all(ws.root()).unwrap();
    copy_dir(old.path(), &ws.root());
    let before = ws.snapshot();
    let m = refused(ws.verify().await, "covers 100");
    assert!(m.contains("entries 50..100"), "{m}");
    refused(ws.open().await.map(|_| ()), "covers 100");
    assert_eq!(ws.snapshot(), before);

    // The audit zone and journal gone.
    std::fs::remove_dir_all(ws.root().join("audit")).unwrap();
    std::fs::remove_dir_all(ws.root().join(".kfm-journal")).unwrap();
    let m = refused(ws.verify().await, "covers 100");
    assert!(m.contains("no checkpoint object"), "{m}");
    assert!(m.contains("journal is missing"), "{m}");
    refused(ws.open().await.map(|_| ()), "covers 100");

    // A different history of the same length, signed with the same key:
    // rewritten.
    let mut other = Ws::new();
    other.skey = ws.skey.clone();
    other.vkey = ws.vkey.clone();
    let fake = other.open().await.unwrap();
    for i in 0..100 {
        fake.append(format!("forged {i}").into_bytes())
            .await
            .unwrap();
    }
    fake.close().await;
    std::fs::remove_dir_all(ws.root()).unwrap();
    copy_dir(&other.root(), &ws.root());
    refused(ws.verify().await, "its history was rewritten");
    refused(ws.open().await.map(|_| ()), "its history was rewritten");
}

#[tokio::test]
async fn journal_damage_that_loses_acknowledged_entries_is_refused_naming_it() {
    let ws = Ws::new();
    ws.append(0, 20).await;
    ws.crash_writer(20, 30); // 30 records, one per block, at 0, 4096, …
    let journal = std::fs::read(ws.journal()).unwrap();
    let at = |k: usize| k * 4096;

    // One byte flipped in the last record: acknowledged (witnessed), so
    // its loss is a refusal naming its bytes, not a torn write.
    let mut last = journal.clone();
    last[at(29) + 50] ^= 1;
    std::fs::write(ws.journal(), &last).unwrap();
    let m = refused(ws.verify().await, "covers 50");
    assert!(m.contains(&format!("bytes at {}", at(29))), "{m}");
    assert!(m.contains("entries 49..50"), "{m}");
    refused(ws.open().await.map(|_| ()), "covers 50");
    assert_eq!(std::fs::read(ws.journal()).unwrap(), last, "left as it was");

    // One byte flipped in any earlier record: damage before an intact one.
    for k in [0usize, 7, 28] {
        let mut bad = journal.clone();
        bad[at(k) + 40] ^= 1;
        std::fs::write(ws.journal(), &bad).unwrap();
        let e = ws.verify().await.unwrap_err().to_string();
        assert!(e.contains(&format!("bytes {}..", at(k))), "record {k}: {e}");
        let lost = 20 + k as u64;
        assert!(e.contains(&format!("entries {lost}..{}", lost + 1)), "{e}");
        assert!(ws.open().await.is_err());
    }

    // The same bytes while a writer's write is in flight: a reader that
    // finds them reads again, and sees the write completed, not damage.
    let mut bad = journal.clone();
    bad[at(7) + 40] ^= 1;
    std::fs::write(ws.journal(), &bad).unwrap();
    let (path, good) = (ws.journal(), journal.clone());
    let repair = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(path, good).unwrap();
    });
    let report = ws.verify().await;
    repair.join().unwrap();
    assert_eq!(report.unwrap().size, 50, "a write completed while read");

    // Zeroed, truncated, deleted: refused, naming what is missing.
    std::fs::write(ws.journal(), vec![0u8; journal.len()]).unwrap();
    let m = refused(ws.verify().await, "covers 50");
    assert!(m.contains("holds no record beyond entry 20"), "{m}");
    std::fs::write(ws.journal(), &journal[..at(10) + 30]).unwrap();
    let m = refused(ws.verify().await, "entries 30..50");
    assert!(m.contains(".kfm-journal/audit.journal"), "{m}");
    std::fs::remove_file(ws.journal()).unwrap();
    refused(ws.verify().await, "journal is missing");
    refused(ws.open().await.map(|_| ()), "journal is missing");

    // Put back: every acknowledged entry is there.
    std::fs::write(ws.journal(), &journal).unwrap();
    let l = ws.open().await.unwrap();
    assert_eq!(l.size(), 50);
    l.close().await;
    assert_eq!(ws.verify().await.unwrap().size, 50);
}

#[tokio::test]
async fn a_reference_beyond_the_log_is_refused() {
    let ws = Ws::new();
    ws.append(0, 5).await;
    let mut g = ws.guards();
    g.references.push(Reference {
        what: "published/ks-places.json".into(),
        index: 7,
    });
    let e = verify(&ws.store.audit(), &ws.vkey, ORIGIN, &g).await;
    refused(e, "published/ks-places.json names ledger entry 7");
    g.references[0].index = 4;
    verify(&ws.store.audit(), &ws.vkey, ORIGIN, &g)
        .await
        .unwrap();
}

/// On S3 a batch writes its objects before its checkpoint: the objects of
/// one batch whose checkpoint never landed are discarded (never
/// acknowledged); more than one batch's worth is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_only_one_unacknowledged_batch_is_discarded() {
    let Some(settings) = kfm_store::testing::s3_settings(&format!("guards-{}", std::process::id()))
    else {
        return;
    };
    let store = Store::open_s3(settings).unwrap();
    let (skey, vkey) = generate_key(ORIGIN).unwrap();
    let mut opts = LedgerOptions::new(ORIGIN);
    opts.batch_max = 16;
    let open = || {
        Ledger::open(
            store.audit(),
            LedgerSigner::from_key_text(&skey).unwrap(),
            opts.clone(),
        )
    };
    let l = open().await.unwrap();
    for i in 0..10 {
        l.append(entry(i)).await.unwrap();
    }
    l.close().await;
    let audit = store.audit();
    audit
        .create("tile/entries/000.p/13", bytes::Bytes::from(bundle(0, 13)))
        .await
        .unwrap();
    let l = open().await.unwrap();
    assert_eq!(l.size(), 10);
    l.append(entry(10)).await.unwrap();
    l.close().await;
    // Beyond one batch: refused, kept.
    audit
        .create("tile/entries/000.p/40", bytes::Bytes::from(bundle(0, 40)))
        .await
        .unwrap();
    refused(open().await.map(|_| ()), "tile/entries/000.p/40");
    assert!(audit.head("tile/entries/000.p/40").await.unwrap().is_some());
    let _ = vkey;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let t = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}
