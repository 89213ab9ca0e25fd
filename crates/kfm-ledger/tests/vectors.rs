//! Every RFC 6962/9162 vector from transparency-dev/merkle (tests/vectors),
//! must-fail cases included.

use std::path::{Path, PathBuf};

use base64::Engine;
use kfm_ledger::{verify_consistency, verify_inclusion};

fn b64(v: &serde_json::Value) -> Vec<u8> {
    match v.as_str() {
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("vector base64"),
        None => Vec::new(), // null root or leaf: an empty byte string
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn run(kind: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(kind);
    let all = files(&dir);
    assert!(!all.is_empty(), "no vectors under {}", dir.display());
    let mut failures = Vec::new();
    for f in &all {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        let want_err = v["wantErr"].as_bool().unwrap_or(false);
        let proof: Vec<Vec<u8>> = v["proof"]
            .as_array()
            .map(|a| a.iter().map(b64).collect())
            .unwrap_or_default();
        let got = if kind == "inclusion" {
            verify_inclusion(
                v["leafIdx"].as_u64().unwrap(),
                v["treeSize"].as_u64().unwrap(),
                &b64(&v["leafHash"]),
                &proof,
                &b64(&v["root"]),
            )
        } else {
            verify_consistency(
                v["size1"].as_u64().unwrap(),
                v["size2"].as_u64().unwrap(),
                &proof,
                &b64(&v["root1"]),
                &b64(&v["root2"]),
            )
        };
        if got.is_err() != want_err {
            failures.push(format!("{}: want_err={want_err}, got {got:?}", f.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    all.len()
}

#[test]
fn inclusion_vectors() {
    assert!(run("inclusion") > 50);
}

#[test]
fn consistency_vectors() {
    assert!(run("consistency") > 50);
}
