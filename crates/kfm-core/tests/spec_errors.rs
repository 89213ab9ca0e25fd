//! A table of broken dataset specs, each with the exact error expected.
//! Spec errors are read by people fixing YAML by hand: the file, line,
//! column and the fix must all be in the message.

use kfm_core::DatasetSpec;

const GOOD: &str = include_str!("../../../data/samples/ks-places/dataset.yaml");

/// Applies `(from, to)` to the good spec; panics if `from` is absent so that
/// a drifting sample cannot make a case vacuous.
fn broken(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "sample no longer contains {from:?}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn samples_parse() {
    for (name, text) in [
        ("ks-places", GOOD),
        (
            "ks-counties",
            include_str!("../../../data/samples/ks-counties/dataset.yaml"),
        ),
    ] {
        let spec = DatasetSpec::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.id.as_str(), name);
    }
}

#[test]
fn broken_specs_give_exact_messages() {
    let cases: Vec<(String, &str)> = vec![
        (
            broken("title:", "titel:"),
            "spec.yaml:3:1: unknown field `titel`, expected one of `id`, `title`, `description`, `publisher`, `contact`, `keywords`, `spatial_extent`, `temporal_extent`, `source`, `license`, `sensitivity`, `qa`",
        ),
        (
            broken("id: ks-places", "id: KS_Places"),
            "spec.yaml:2:5: id: invalid dataset id \"KS_Places\": use 2-64 characters of a-z, 0-9 and '-', starting with a letter or digit and not ending with '-'",
        ),
        (
            broken("  spdx: CC-BY-4.0", "  spdx: CC-BY-9.9"),
            "spec.yaml:22:9: license.spdx: unknown SPDX license id \"CC-BY-9.9\": use an id from https://spdx.org/licenses/ (for example CC-BY-4.0), or LicenseRef-<name> for rights without an SPDX id",
        ),
        (
            broken("  policy_label: public", "  policy_label: secret"),
            "spec.yaml:28:17: sensitivity.policy_label: unknown variant `secret`, expected one of `public`, `public_generalized`, `restricted`, `restricted_sensitive_location`, `internal`, `embargoed`, `quarantine`",
        ),
        (
            broken("  format: csv", "  format: shapefile"),
            "spec.yaml:18:11: source.format: unknown variant `shapefile`, expected `csv` or `geojson`",
        ),
        (
            broken("  lat_column: lat\n", ""),
            "spec.yaml:18:3: source.format is csv: set source.lat_column and source.lon_column to the names of the latitude and longitude columns",
        ),
        (
            broken(
                "  attribution: Contains data from GeoNames (geonames.org), licensed CC BY 4.0\n",
                "",
            ),
            "spec.yaml:22:3: license CC-BY-4.0 requires attribution: add license.attribution with the text users must show",
        ),
        (
            broken(
                "  policy_label: public",
                "  policy_label: restricted_sensitive_location",
            ),
            "spec.yaml:28:3: policy_label restricted_sensitive_location requires sensitivity.generalization (method: grid with degrees, or method: h3 with resolution)",
        ),
        (
            broken("  policy_label: public", "  policy_label: embargoed"),
            "spec.yaml:28:3: policy_label embargoed requires sensitivity.embargo_until (a date, YYYY-MM-DD)",
        ),
        (
            broken(
                "  policy_label: public",
                "  policy_label: public\n  embargo_until: 2030-01-01",
            ),
            "spec.yaml:29:3: sensitivity.embargo_until is set but policy_label is public: use policy_label embargoed, or remove the date",
        ),
        (
            broken(
                "  policy_label: public",
                "  policy_label: public_generalized\n  generalization:\n    method: h3\n    degrees: 0.1",
            ),
            "spec.yaml:29:3: generalization method h3 takes resolution, not degrees",
        ),
        (
            broken(
                "  bbox: [-102.06, 36.99, -94.60, 40.01]\nsource",
                "  bbox: [-102.06, 36.99, -94.60]\nsource",
            ),
            "spec.yaml:15:9: spatial_extent.bbox: expected [west, south, east, north] (4 numbers), got 3 numbers",
        ),
        (
            broken("  email: stewards@kfm.example.org", "  email: stewards"),
            "spec.yaml:12:10: contact.email: expected an e-mail address such as data@example.org, got \"stewards\"",
        ),
        (
            broken(
                "  max_null_ratio:\n    name: 0.0",
                "  max_null_ratio:\n    name: 1.5",
            ),
            "spec.yaml:34:3: qa.max_null_ratio.name must be between 0 and 1, got 1.5",
        ),
        (
            broken("  min_features: 200", "  min_features: many"),
            "spec.yaml:30:17: qa.min_features: invalid type: string \"many\", expected u64",
        ),
        (
            broken("license:\n", "licence:\n"),
            "spec.yaml:21:1: unknown field `licence`, expected one of `id`, `title`, `description`, `publisher`, `contact`, `keywords`, `spatial_extent`, `temporal_extent`, `source`, `license`, `sensitivity`, `qa`",
        ),
        (
            "id: x1\n".to_owned(),
            "spec.yaml:1:1: missing field `title`",
        ),
        (
            "id: x1\ntitle: 'unterminated\n".to_owned(),
            "spec.yaml:3:1: found unexpected end of stream, while scanning a quoted scalar",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (text, want)) in cases.iter().enumerate() {
        match DatasetSpec::parse(text, "spec.yaml") {
            Ok(_) => failures.push(format!("case {i}: accepted, expected {want}")),
            Err(e) if e.to_string() != *want => {
                failures.push(format!("case {i}:\n  got  {e}\n  want {want}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
