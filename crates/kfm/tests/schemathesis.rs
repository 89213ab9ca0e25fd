//! schemathesis (PyPI), someone else's property-based API tester, against a
//! running `kfm serve` and its OpenAPI 3.0 document: no answer with a
//! status or content type the document does not describe, and no 5xx, for
//! the tens of thousands of requests it generates from the document. Skipped
//! with a message without `st`, unless KFM_REQUIRE_SERVICES=1
//! (`scripts/test` installs it).

mod common;

use std::process::Command;

use common::{Server, samples_promoted};

#[test]
fn schemathesis_finds_no_undocumented_answer_and_no_server_error() {
    if Command::new("st").arg("--version").output().is_err() {
        assert!(
            std::env::var("KFM_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "KFM_REQUIRE_SERVICES=1 but schemathesis (st) is not installed"
        );
        eprintln!("SKIPPED: schemathesis (st) is not installed (pip install schemathesis)");
        return;
    }
    let (_d, ws) = samples_promoted();
    let server = Server::start(&ws, &[]).unwrap();
    // schemathesis keeps a cache of what it found in its working
    // directory: a scratch one, not the source tree.
    let scratch = tempfile::tempdir().unwrap();
    let o = Command::new("st")
        .current_dir(scratch.path())
        .arg("run")
        .arg(format!("http://{}/openapi-3.0.json", server.addr))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance",
            "--phases",
            "coverage,fuzzing",
            "--max-examples",
            "15",
            "--workers",
            "2",
            "--max-time",
            "90",
            "--seed",
            "20261207",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let summary: String = out
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{summary}");
    assert!(
        o.status.success(),
        "schemathesis found answers the document does not describe:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (code, log) = server.stop();
    assert_eq!(code, 0, "{log}");
}
