//! Backends for the store test suite: every test runs against a local
//! directory and, when one is configured, a real S3-compatible server.
//!
//! The S3 server is started by `scripts/test` (s3s-fs on 127.0.0.1) and
//! described by `KFM_TEST_S3_ENDPOINT`, `KFM_TEST_S3_BUCKET`,
//! `KFM_TEST_S3_ACCESS_KEY` and `KFM_TEST_S3_SECRET_KEY`. Without it the S3
//! half is skipped with a message, unless `KFM_REQUIRE_SERVICES=1`, which
//! turns the skip into a failure (CI sets it).

#![allow(dead_code)]

use kfm_store::Store;

pub struct TestStore {
    pub name: &'static str,
    pub store: Store,
    _dir: Option<tempfile::TempDir>,
}

pub fn local() -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_local(&dir.path().join("store")).expect("open local store");
    TestStore {
        name: "local",
        store,
        _dir: Some(dir),
    }
}

/// The S3 test store, in a fresh prefix of the test bucket, or `None` (with
/// a message) when no server is configured.
pub fn s3() -> Option<TestStore> {
    let settings = kfm_store::testing::s3_settings(&format!("t-{}", uuid::Uuid::new_v4()))?;
    let store = Store::open_s3(settings).expect("open S3 store");
    Some(TestStore {
        name: "s3",
        store,
        _dir: None,
    })
}

/// Every backend available to this run.
pub fn backends() -> Vec<TestStore> {
    let mut v = vec![local()];
    v.extend(s3());
    v
}
