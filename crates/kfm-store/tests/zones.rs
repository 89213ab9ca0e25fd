//! The zone rules, tried against every backend: write-once zones refuse a
//! second put, pointers move only by compare-and-swap, raw ingest is
//! content-addressed and never shows a partial object.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use kfm_core::{DatasetId, Digest};
use kfm_store::{CreateOutcome, StoreError};

fn ds(s: &str) -> DatasetId {
    s.parse().unwrap()
}

fn no_progress() -> kfm_store::IngestProgress {
    Arc::new(|_| {})
}

#[tokio::test]
async fn write_once_zones_refuse_a_second_put_of_different_bytes() {
    for b in common::backends() {
        let s = &b.store;
        let key = "ks/0123/source.csv";
        let first = Bytes::from_static(b"name,lat,lon\nA,38.9,-97.2\n");
        let second = Bytes::from_static(b"name,lat,lon\nB,1,2\n");

        s.raw().create(key, first.clone()).await.unwrap();
        let err = s.raw().create(key, second.clone()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::AlreadyExists { .. }),
            "[{}] {err}",
            b.name
        );
        assert!(
            err.to_string().contains("raw zone is write-once"),
            "[{}] {err}",
            b.name
        );
        // Even identical bytes are not re-written by `create`.
        assert!(matches!(
            s.raw().create(key, first.clone()).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(
            s.raw().get(key).await.unwrap(),
            first,
            "[{}] stored bytes changed",
            b.name
        );

        // The idempotent form accepts identical bytes and still refuses others.
        assert_eq!(
            s.raw().create_or_verify(key, first.clone()).await.unwrap(),
            CreateOutcome::AlreadyIdentical
        );
        assert!(matches!(
            s.raw().create_or_verify(key, second).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(s.raw().get(key).await.unwrap(), first);

        // The same rule in every write-once zone.
        let v1 = Bytes::from_static(b"{\"v\":1}");
        let v2 = Bytes::from_static(b"{\"v\":2}");
        s.processed()
            .create("ks/v1/a.json", v1.clone())
            .await
            .unwrap();
        s.catalog()
            .create("ks/v1/a.json", v1.clone())
            .await
            .unwrap();
        s.quarantine()
            .create("ks/run-1/report.json", v1.clone())
            .await
            .unwrap();
        assert!(
            s.processed()
                .create("ks/v1/a.json", v2.clone())
                .await
                .is_err()
        );
        assert!(
            s.catalog()
                .create("ks/v1/a.json", v2.clone())
                .await
                .is_err()
        );
        assert!(
            s.quarantine()
                .create("ks/run-1/report.json", v2)
                .await
                .is_err()
        );
        assert_eq!(s.processed().get("ks/v1/a.json").await.unwrap(), v1);
        assert_eq!(s.catalog().get("ks/v1/a.json").await.unwrap(), v1);
    }
}

#[tokio::test]
async fn keys_that_could_escape_a_zone_are_refused() {
    for b in common::backends() {
        for bad in ["../raw/x", "a/../../x", "/abs", "a//b", "a/./b", "a\\b"] {
            let e = b
                .store
                .processed()
                .create(bad, Bytes::from_static(b"x"))
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
        assert!(
            b.store.processed().list("").await.unwrap().is_empty(),
            "[{}]",
            b.name
        );
    }
}

#[tokio::test]
async fn work_is_rewritable() {
    for b in common::backends() {
        let w = b.store.work();
        w.put("ks/run/x", Bytes::from_static(b"1")).await.unwrap();
        w.put("ks/run/x", Bytes::from_static(b"2")).await.unwrap();
        assert_eq!(w.get("ks/run/x").await.unwrap(), Bytes::from_static(b"2"));
        w.delete("ks/run/x").await.unwrap();
        assert!(w.get_opt("ks/run/x").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn release_pointers_move_only_by_compare_and_swap() {
    for b in common::backends() {
        let p = b.store.published();
        let v1 = p
            .compare_and_swap("ks.json", None, Bytes::from_static(b"{\"v\":1}"))
            .await
            .unwrap();
        // Creating again when it exists: conflict.
        let e = p
            .compare_and_swap("ks.json", None, Bytes::from_static(b"{\"v\":9}"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict { .. }), "[{}] {e}", b.name);

        let read = p.read("ks.json").await.unwrap().unwrap();
        assert_eq!(read.version, v1, "[{}]", b.name);
        let v2 = p
            .compare_and_swap(
                "ks.json",
                Some(&read.version),
                Bytes::from_static(b"{\"v\":2}"),
            )
            .await
            .unwrap();
        assert_ne!(v1, v2);

        // A writer still holding the old version loses and changes nothing.
        let e = p
            .compare_and_swap("ks.json", Some(&v1), Bytes::from_static(b"{\"v\":3}"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict { .. }), "[{}] {e}", b.name);
        assert_eq!(
            p.read("ks.json").await.unwrap().unwrap().bytes,
            Bytes::from_static(b"{\"v\":2}")
        );
    }
}

#[tokio::test]
async fn ingest_is_content_addressed_and_idempotent() {
    for b in common::backends() {
        let raw = b.store.raw();
        // Larger than one multipart part, so several parts are exercised.
        let data: Vec<u8> = (0..(9 << 20) + 12345u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let want = Digest::of(&data);

        let first = raw
            .ingest_stream(
                &ds("big"),
                "source.csv",
                std::io::Cursor::new(data.clone()),
                "test data",
                no_progress(),
            )
            .await
            .unwrap();
        assert!(first.created, "[{}]", b.name);
        assert_eq!(first.digest, want);
        assert_eq!(first.size, data.len() as u64);
        assert_eq!(first.key, format!("big/{}/source.csv", want.hex()));
        assert_eq!(
            Digest::of(&raw.get(&first.key).await.unwrap()),
            want,
            "[{}] stored bytes differ",
            b.name
        );

        let again = raw
            .ingest_stream(
                &ds("big"),
                "source.csv",
                std::io::Cursor::new(data.clone()),
                "test data",
                no_progress(),
            )
            .await
            .unwrap();
        assert!(
            !again.created,
            "[{}] identical bytes must be a no-op",
            b.name
        );
        assert_eq!(again.key, first.key);

        let mut other = data;
        other[0] ^= 1;
        let third = raw
            .ingest_stream(
                &ds("big"),
                "source.csv",
                std::io::Cursor::new(other),
                "test data",
                no_progress(),
            )
            .await
            .unwrap();
        assert!(third.created);
        assert_ne!(third.key, first.key);

        // Staging objects are cleaned up: work/ holds nothing afterwards.
        assert!(
            b.store.work().list("big").await.unwrap().is_empty(),
            "[{}] staging left behind",
            b.name
        );
        assert_eq!(raw.list("big").await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn a_failing_or_empty_source_leaves_nothing_under_raw() {
    struct Broken(usize);
    impl std::io::Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(b'x');
            self.0 -= n;
            Ok(n)
        }
    }
    for b in common::backends() {
        let raw = b.store.raw();
        let e = raw
            .ingest_stream(
                &ds("br"),
                "source.csv",
                Broken(3 << 20),
                "broken.csv",
                no_progress(),
            )
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("disk on fire") && e.to_string().contains("broken.csv"),
            "[{}] {e}",
            b.name
        );
        let e = raw
            .ingest_stream(
                &ds("br"),
                "source.csv",
                std::io::empty(),
                "empty.csv",
                no_progress(),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("empty"), "[{}] {e}", b.name);
        assert!(
            raw.list("").await.unwrap().is_empty(),
            "[{}] something appeared under raw/",
            b.name
        );
    }
}

/// Many writers race to create the same raw key with different bytes:
/// exactly one wins, every other gets `AlreadyExists`, and the stored bytes
/// are the winner's.
///
/// Runs on the local backend, where the create is a hard link (atomic in
/// the kernel). On S3 the same guarantee is the server's (`If-None-Match`
/// is atomic on AWS S3 and MinIO); the s3s-fs test server checks then
/// writes, so racing it would test s3s-fs, not KFM.
#[test]
fn concurrent_writers_race_for_one_raw_key_and_exactly_one_wins() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..25 {
        let b = common::local();
        let key = format!("ks/{round}/source.csv");
        let writers = 8;
        let barrier = Arc::new(tokio::sync::Barrier::new(writers));
        let results = rt.block_on(async {
            let mut tasks = Vec::new();
            for w in 0..writers {
                let raw = b.store.raw();
                let key = key.clone();
                let barrier = barrier.clone();
                tasks.push(tokio::spawn(async move {
                    let bytes = Bytes::from(format!("writer {w} ").repeat(1000 + w));
                    barrier.wait().await;
                    (Digest::of(&bytes), raw.create(&key, bytes).await)
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        for (_, r) in results.iter().filter(|(_, r)| r.is_err()) {
            let e = r.as_ref().unwrap_err();
            assert!(
                matches!(e, StoreError::AlreadyExists { .. }),
                "round {round}: {e}"
            );
        }
        let stored = rt.block_on(b.store.raw().get(&key)).unwrap();
        assert_eq!(
            Digest::of(&stored),
            winners[0].0,
            "round {round}: stored bytes are not the winner's"
        );
    }
}

/// Racing compare-and-swaps from the same version: exactly one moves the
/// pointer.
#[test]
fn concurrent_pointer_swaps_from_one_version_have_one_winner() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..25 {
        let b = common::local();
        let p = b.store.published();
        let base = rt
            .block_on(p.compare_and_swap("ks.json", None, Bytes::from_static(b"base")))
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(8));
        let results: Vec<_> = rt.block_on(async {
            let tasks: Vec<_> = (0..8)
                .map(|w| {
                    let p = p.clone();
                    let base = base.clone();
                    let barrier = barrier.clone();
                    tokio::spawn(async move {
                        barrier.wait().await;
                        p.compare_and_swap("ks.json", Some(&base), Bytes::from(format!("w{w}")))
                            .await
                            .map(|_| w)
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}");
        let now = rt.block_on(p.read("ks.json")).unwrap().unwrap();
        assert_eq!(now.bytes, Bytes::from(format!("w{}", winners[0])));
    }
}
