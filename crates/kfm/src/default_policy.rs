//! The default policy bundle (policy/ in the repository), embedded so that
//! `kfm init` installs it from the binary alone. `tests/policy_cli.rs`
//! checks that this list and the directory have the same digest.

/// (path inside the bundle, contents)
pub const FILES: [(&str, &[u8]); 11] = [
    (".manifest", include_bytes!("../../../policy/.manifest")),
    (
        "kfm/authz.rego",
        include_bytes!("../../../policy/kfm/authz.rego"),
    ),
    (
        "kfm/data.json",
        include_bytes!("../../../policy/kfm/data.json"),
    ),
    (
        "kfm/data.yaml",
        include_bytes!("../../../policy/kfm/data.yaml"),
    ),
    (
        "tests/audit.yaml",
        include_bytes!("../../../policy/tests/audit.yaml"),
    ),
    (
        "tests/authz_test.rego",
        include_bytes!("../../../policy/tests/authz_test.rego"),
    ),
    (
        "tests/exports.yaml",
        include_bytes!("../../../policy/tests/exports.yaml"),
    ),
    (
        "tests/malformed.yaml",
        include_bytes!("../../../policy/tests/malformed.yaml"),
    ),
    (
        "tests/reads.yaml",
        include_bytes!("../../../policy/tests/reads.yaml"),
    ),
    (
        "tests/steward.yaml",
        include_bytes!("../../../policy/tests/steward.yaml"),
    ),
    (
        "tests/waivers.yaml",
        include_bytes!("../../../policy/tests/waivers.yaml"),
    ),
];
