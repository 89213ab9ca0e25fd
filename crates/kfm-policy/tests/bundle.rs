//! Bundles: the digest is reproducible, any one-byte edit changes it and
//! makes the runtime refuse, the manifest rules hold, and a signed bundle
//! whose signature fails never loads.

mod common;

use std::collections::BTreeMap;

use common::*;
use kfm_core::{Digest, Environment, EnvironmentPins, config::PolicyPin};
use kfm_policy::bundle::{self, BundleError};
use kfm_policy::{Bundle, Options, ParityError, load_for_environment};
use sha2::Digest as _;

fn pins(d: &Digest) -> EnvironmentPins {
    EnvironmentPins {
        policy: PolicyPin {
            bundle_digest: Some(*d),
        },
    }
}

/// The digest, computed independently of the crate: sha256 over the
/// `sha256sum`-style listing of every file but the signature.
fn independent_digest(dir: &std::path::Path) -> String {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files.remove(".signature.json");
    let mut listing = String::new();
    for (path, bytes) in files {
        listing.push_str(&format!(
            "{}  {path}\n",
            hex::encode(sha2::Sha256::digest(&bytes))
        ));
    }
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(listing.as_bytes()))
    )
}

#[test]
fn digest_matches_an_independent_computation_and_ignores_location() {
    let dir = default_bundle_dir();
    let b = Bundle::load(&dir).unwrap();
    assert_eq!(b.digest().to_string(), independent_digest(&dir));
    let copy = copy_bundle(&dir);
    assert_eq!(Bundle::load(copy.path()).unwrap().digest(), b.digest());
}

#[test]
fn a_one_byte_edit_to_any_file_changes_the_digest_and_the_runtime_refuses() {
    let original = default_bundle_dir();
    let digest = *Bundle::load(&original).unwrap().digest();
    let files = files_of(&original);
    assert!(files.len() >= 5, "{files:?}");
    for rel in files {
        let copy = copy_bundle(&original);
        let path = copy.path().join(&rel);
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip one byte: in a comment or string it still parses, so the
        // refusal must come from the digest, not from a parse error.
        let at = bytes.len() / 2;
        bytes[at] = if bytes[at] == b' ' { b'\t' } else { b' ' };
        std::fs::write(&path, &bytes).unwrap();
        let edited = Bundle::load(copy.path()).map(|b| *b.digest());
        if let Ok(d) = &edited {
            assert_ne!(d, &digest, "editing {rel} left the digest unchanged");
        }
        match load_for_environment(
            copy.path(),
            Environment::Prod,
            &pins(&digest),
            Options::default(),
        ) {
            Err(ParityError::Mismatch { pinned, actual, .. }) => {
                assert_eq!(pinned, digest);
                assert_ne!(actual, digest);
            }
            // A byte that broke the syntax is refused before the pin check:
            // refused either way.
            Err(ParityError::Bundle(_)) => {}
            other => panic!(
                "edited {rel}: runtime did not refuse: {:?}",
                other.map(|_| ())
            ),
        }
    }
    // The untouched bundle loads under its pin.
    load_for_environment(
        &original,
        Environment::Prod,
        &pins(&digest),
        Options::default(),
    )
    .unwrap();
}

#[test]
fn an_unpinned_environment_is_refused() {
    let err = load_for_environment(
        &default_bundle_dir(),
        Environment::Stage,
        &EnvironmentPins::default(),
        Options::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ParityError::NotPinned { .. }), "{err}");
    assert!(err.hint().contains("kfm policy pin --env stage"));
}

#[test]
fn adding_or_removing_a_file_changes_the_digest() {
    let copy = copy_bundle(&default_bundle_dir());
    let d0 = *Bundle::load(copy.path()).unwrap().digest();
    std::fs::write(copy.path().join("tests/extra.rego"), "package kfm.extra\n").unwrap();
    let d1 = *Bundle::load(copy.path()).unwrap().digest();
    assert_ne!(d0, d1);
    std::fs::remove_file(copy.path().join("tests/extra.rego")).unwrap();
    std::fs::rename(
        copy.path().join("tests/audit.yaml"),
        copy.path().join("tests/audit2.yaml"),
    )
    .unwrap();
    let d2 = *Bundle::load(copy.path()).unwrap().digest();
    assert_ne!(d0, d2, "a rename must change the digest");
}

fn refused(dir: &std::path::Path) -> String {
    match Bundle::load(dir).and_then(|b| kfm_policy::DecisionPoint::new(&b, Options::default())) {
        Ok(_) => panic!("bundle at {} was accepted", dir.display()),
        Err(e) => e.to_string(),
    }
}

const OK_REGO: &str =
    "package kfm.authz\n\ndecision := {\"allow\": false, \"obligations\": [], \"reason\": \"x\"}\n";

#[test]
fn manifest_rules_are_enforced() {
    let t = tiny_bundle(OK_REGO);
    Bundle::load(t.path()).unwrap();

    std::fs::remove_file(t.path().join(".manifest")).unwrap();
    assert!(refused(t.path()).contains(".manifest"), "missing manifest");

    for (manifest, expect) in [
        (
            r#"{"revision": "1", "roots": ["kfm", "kfm/authz"]}"#,
            "overlap",
        ),
        (r#"{"revision": "1", "roots": []}"#, "roots"),
        (r#"{"revision": "", "roots": ["kfm"]}"#, "revision"),
        (
            r#"{"revision": "1", "roots": ["kfm"], "extra": 1}"#,
            "unknown field",
        ),
        (
            r#"{"revision": "1", "roots": ["other"]}"#,
            "outside the manifest roots",
        ),
        ("not json", "bad manifest"),
    ] {
        std::fs::write(t.path().join(".manifest"), manifest).unwrap();
        let e = refused(t.path());
        assert!(e.contains(expect), "{manifest}: {e}");
    }
}

#[test]
fn data_must_sit_under_a_root_and_never_conflict() {
    let t = tiny_bundle(OK_REGO);
    std::fs::write(t.path().join("kfm/data.json"), r#"{"labels": ["public"]}"#).unwrap();
    Bundle::load(t.path()).unwrap();

    std::fs::write(t.path().join("kfm/data.yaml"), "labels: [internal]\n").unwrap();
    let e = refused(t.path());
    assert!(e.contains("kfm/labels") && e.contains("already set"), "{e}");
    std::fs::remove_file(t.path().join("kfm/data.yaml")).unwrap();

    std::fs::write(t.path().join("data.json"), r#"{"elsewhere": 1}"#).unwrap();
    let e = refused(t.path());
    assert!(
        e.contains("`elsewhere` is outside the manifest roots"),
        "{e}"
    );
    std::fs::write(t.path().join("data.json"), "[1, 2]").unwrap();
    assert!(refused(t.path()).contains("one object"));
    std::fs::write(t.path().join("data.json"), "{").unwrap();
    assert!(refused(t.path()).contains("data.json"));
}

#[test]
fn rego_errors_name_the_file_and_an_undefined_entry_point_is_refused() {
    let t = tiny_bundle("package kfm.authz\n\ndecision := {\n");
    let e = refused(t.path());
    assert!(e.contains("authz.rego"), "{e}");
    let t = tiny_bundle("package kfm.authz\n\nsomething_else := 1\n");
    let e = refused(t.path());
    assert!(e.contains("entry point"), "{e}");
}

#[cfg(unix)]
#[test]
fn symlinks_are_refused() {
    let t = tiny_bundle(OK_REGO);
    std::os::unix::fs::symlink("/etc/hostname", t.path().join("kfm/link.rego")).unwrap();
    assert!(refused(t.path()).contains("symbolic link"));
}

#[test]
fn a_signed_bundle_loads_and_any_tampering_is_refused_in_every_mode() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let copy = copy_bundle(&default_bundle_dir());
    let digest = bundle::sign(copy.path(), &key).unwrap();
    let b = Bundle::load(copy.path()).unwrap();
    assert_eq!(b.digest(), &digest);
    assert!(b.signer().is_some());
    // Signing adds only the signature file, which is outside the digest.
    assert_eq!(
        &digest,
        Bundle::load(&default_bundle_dir()).unwrap().digest()
    );

    for rel in files_of(copy.path()) {
        let t = copy_bundle(copy.path());
        let path = t.path().join(&rel);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.push(b'\n');
        std::fs::write(&path, bytes).unwrap();
        // Loading (runtime), the test runner (CI) and pinning all start
        // from Bundle::load: it refuses, naming the signature file.
        match Bundle::load(t.path()) {
            Err(BundleError::Signature { path, .. }) => {
                assert!(path.ends_with(".signature.json"))
            }
            other => panic!("tampered {rel} still loads: {:?}", other.map(|_| ())),
        }
    }

    // A signature by another key over the same digest, spliced in with the
    // first key's public key: refused.
    let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let t = copy_bundle(copy.path());
    bundle::sign(t.path(), &other).unwrap();
    let forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join(".signature.json")).unwrap()).unwrap();
    let mut original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.path().join(".signature.json")).unwrap())
            .unwrap();
    original["signature"] = forged["signature"].clone();
    std::fs::write(t.path().join(".signature.json"), original.to_string()).unwrap();
    assert!(matches!(
        Bundle::load(t.path()),
        Err(BundleError::Signature { .. })
    ));

    std::fs::write(t.path().join(".signature.json"), "{}").unwrap();
    assert!(matches!(
        Bundle::load(t.path()),
        Err(BundleError::Signature { .. })
    ));
}
