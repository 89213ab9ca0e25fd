//! Test support (feature `testing`, for this workspace's own tests): the
//! S3-compatible server that `scripts/test` starts on 127.0.0.1.

use crate::S3Settings;

/// Settings for the test S3 server, in a fresh `prefix` of its bucket, or
/// `None` (after saying so on stderr) when no server is configured.
///
/// The server is described by `KFM_TEST_S3_ENDPOINT`, `KFM_TEST_S3_BUCKET`,
/// `KFM_TEST_S3_ACCESS_KEY` and `KFM_TEST_S3_SECRET_KEY`. With
/// `KFM_REQUIRE_SERVICES=1` (CI) a missing server is a failure, not a skip.
pub fn s3_settings(prefix: &str) -> Option<S3Settings> {
    let Ok(endpoint) = std::env::var("KFM_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("KFM_REQUIRE_SERVICES").map_or(true, |v| v != "1"),
            "KFM_REQUIRE_SERVICES=1 but KFM_TEST_S3_ENDPOINT is not set: run the tests through scripts/test, which starts s3s-fs"
        );
        eprintln!(
            "SKIP (S3 backend): KFM_TEST_S3_ENDPOINT is not set; run scripts/test to start a local S3 server"
        );
        return None;
    };
    let var = |k: &str| std::env::var(k).ok();
    Some(S3Settings {
        bucket: var("KFM_TEST_S3_BUCKET").unwrap_or_else(|| "kfm-test".into()),
        prefix: prefix.to_owned(),
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        access_key_id: var("KFM_TEST_S3_ACCESS_KEY"),
        secret_access_key: var("KFM_TEST_S3_SECRET_KEY"),
        session_token: None,
        allow_http: true,
    })
}

/// Every file below `dir` but the lock files (`.kfm-locks`), with its
/// bytes, sorted by path: what a test compares to show that a refused
/// command changed nothing.
pub fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    fn walk(d: &std::path::Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if !p.to_string_lossy().contains(".kfm-locks") {
                let bytes = std::fs::read(&p)
                    .unwrap_or_else(|e| panic!("snapshot: reading {}: {e}", p.display()));
                out.push((p, bytes));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, &mut v);
    v.sort();
    v
}
