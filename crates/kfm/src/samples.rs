//! The bundled samples (data/samples/ in the repository), embedded so that
//! `kfm up` works from the binary alone. Licenses: see data/samples/SOURCES.md.

/// (file name inside datasets/, contents)
pub const SAMPLES: [(&str, &[u8]); 8] = [
    (
        "ks-counties.yaml",
        include_bytes!("../../../data/samples/ks-counties/dataset.yaml"),
    ),
    (
        "ks-counties.geojson",
        include_bytes!("../../../data/samples/ks-counties/ks-counties.geojson"),
    ),
    (
        "ks-places.yaml",
        include_bytes!("../../../data/samples/ks-places/dataset.yaml"),
    ),
    (
        "ks-places.csv",
        include_bytes!("../../../data/samples/ks-places/ks-places.csv"),
    ),
    (
        "ks-sites-synthetic.yaml",
        include_bytes!("../../../data/samples/ks-sites-synthetic/dataset.yaml"),
    ),
    (
        "ks-sites-synthetic.csv",
        include_bytes!("../../../data/samples/ks-sites-synthetic/ks-sites-synthetic.csv"),
    ),
    (
        "ks-markers-unlicensed.yaml",
        include_bytes!("../../../data/samples/ks-markers-unlicensed/dataset.yaml"),
    ),
    (
        "ks-markers-unlicensed.csv",
        include_bytes!("../../../data/samples/ks-markers-unlicensed/ks-markers-unlicensed.csv"),
    ),
];

/// The sample spec files, in ingest order.
pub const SAMPLE_SPECS: [&str; 4] = [
    "ks-counties.yaml",
    "ks-places.yaml",
    "ks-sites-synthetic.yaml",
    "ks-markers-unlicensed.yaml",
];

/// The one sample that must end in quarantine (its license is unknown).
pub const EXPECTED_QUARANTINE: &str = "ks-markers-unlicensed";
