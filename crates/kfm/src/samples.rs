//! The bundled samples (data/samples/ in the repository), embedded so that
//! `kfm up` works from the binary alone. Licenses: see data/samples/SOURCES.md.

/// (file name inside datasets/, contents)
pub const SAMPLES: [(&str, &[u8]); 4] = [
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
];

/// The sample spec files, in ingest order.
pub const SAMPLE_SPECS: [&str; 2] = ["ks-counties.yaml", "ks-places.yaml"];
