//! Helpers shared by the kfm-policy integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kfm_policy::{Bundle, DecisionPoint, Options};

/// The repository's default bundle.
pub fn default_bundle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy")
}

/// A private copy of a bundle directory, to edit.
pub fn copy_bundle(from: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(from, tmp.path());
    tmp
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Every file of a bundle directory, relative, sorted.
pub fn files_of(dir: &Path) -> Vec<String> {
    let b = Bundle::load(dir).unwrap();
    b.files().keys().cloned().collect()
}

pub fn point(dir: &Path) -> DecisionPoint {
    DecisionPoint::new(&Bundle::load(dir).unwrap(), Options::default()).unwrap()
}

/// A minimal bundle: one module and a manifest.
pub fn tiny_bundle(rego: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join(".manifest"),
        r#"{"revision": "t1", "roots": ["kfm"]}"#,
    )
    .unwrap();
    std::fs::create_dir_all(tmp.path().join("kfm")).unwrap();
    std::fs::write(tmp.path().join("kfm/authz.rego"), rego).unwrap();
    tmp
}
