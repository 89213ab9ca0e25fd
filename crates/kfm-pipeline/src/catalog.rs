//! Gate D: the catalog triplet — DCAT 3 (JSON-LD), STAC 1.1 (a Collection
//! with assets) and PROV-JSON — built from one description of the release,
//! cross-linked, and checked.
//!
//! Links between documents and to artifacts are relative hrefs resolved
//! against the document's own key, so the same catalog works in a directory
//! and in a bucket. Every artifact appears three times — DCAT distribution,
//! STAC asset, PROV entity — with the same digest, and [`check_links`]
//! proves the three agree before anything is written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use kfm_core::{DatasetSpec, Digest};
use serde_json::{Value, json};

/// A file the release publishes (processed zone) or records (catalog zone).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Full store key, zone included: `processed/<ds>/v<N>/features.geojson`.
    pub path: String,
    pub media_type: String,
    pub size: u64,
    pub digest: Digest,
    /// `data` (precise), `generalized` (the public derivative), `index`
    /// (FlatGeobuf) or a catalog role.
    pub role: String,
    /// The policy label the API applies to this artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_label: Option<String>,
}

/// What the triplet describes.
pub struct CatalogInput<'a> {
    pub spec: &'a DatasetSpec,
    pub version: u64,
    pub run_id: &'a str,
    pub actor: &'a str,
    pub tool: &'a str,
    /// The raw acquisition: key (zone included), digest and size.
    pub acquisition: (&'a str, Digest, u64),
    pub artifacts: &'a [Artifact],
    pub bbox: Option<[f64; 4]>,
    pub started_at: &'a str,
    pub finished_at: &'a str,
    /// The generalisation step, if the dataset has one: its description.
    pub generalization: Option<&'a str>,
}

/// The three documents, serialised.
pub struct Triplet {
    pub dcat: Vec<u8>,
    pub stac: Vec<u8>,
    pub prov: Vec<u8>,
}

pub fn dcat_key(ds: &str, v: u64) -> String {
    format!("catalog/{ds}/v{v}/dcat.jsonld")
}
pub fn stac_key(ds: &str, v: u64) -> String {
    format!("catalog/{ds}/v{v}/stac/collection.json")
}
pub fn prov_key(ds: &str, v: u64) -> String {
    format!("catalog/{ds}/v{v}/prov.json")
}

/// The href that reaches `to` from the document stored at `from`.
pub fn relative_href(from: &str, to: &str) -> String {
    let depth = from.matches('/').count();
    format!("{}{to}", "../".repeat(depth))
}

/// Resolves `href` against the document stored at `from` (RFC 3986 path
/// arithmetic on store keys). `None` if it escapes the store or is absolute.
pub fn resolve_href(from: &str, href: &str) -> Option<String> {
    if href.contains("://") || href.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = from.split('/').collect();
    parts.pop();
    for seg in href.split('/') {
        match seg {
            "." | "" => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

fn bbox_or_world(b: Option<[f64; 4]>) -> [f64; 4] {
    b.unwrap_or([-180.0, -90.0, 180.0, 90.0])
}

/// Builds the triplet. Fails (cannot evaluate) only when the data gives no
/// spatial extent to describe.
pub fn build(input: &CatalogInput<'_>) -> Result<Triplet, String> {
    let spec = input.spec;
    let ds = spec.id.as_str();
    let v = input.version;
    let Some(bbox) = input.bbox else {
        return Err(
            "no feature has a geometry, so the catalog has no spatial extent to describe".into(),
        );
    };
    let dk = dcat_key(ds, v);
    let sk = stac_key(ds, v);
    let pk = prov_key(ds, v);
    let version_id = format!("{ds}@v{v}");
    let license = spec.license.spdx.as_str();
    let license_iri = if license.starts_with("LicenseRef-") {
        format!("urn:kfm:license:{license}")
    } else {
        format!("http://spdx.org/licenses/{license}")
    };

    // DCAT 3, JSON-LD.
    let distributions: Vec<Value> = input
        .artifacts
        .iter()
        .map(|a| {
            json!({
                "@id": format!("urn:kfm:artifact:{}", a.path),
                "@type": "dcat:Distribution",
                "dcat:downloadURL": {"@id": relative_href(&dk, &a.path)},
                "dcat:mediaType": a.media_type,
                "dcat:byteSize": {"@value": a.size.to_string(), "@type": "xsd:nonNegativeInteger"},
                "dct:license": {"@id": license_iri},
                "spdx:checksum": {
                    "@type": "spdx:Checksum",
                    "spdx:algorithm": {"@id": "spdx:checksumAlgorithm_sha256"},
                    "spdx:checksumValue": {"@value": a.digest.hex(), "@type": "xsd:hexBinary"}
                },
                "kfm:role": a.role,
                "kfm:policyLabel": a.policy_label,
            })
        })
        .collect();
    let mut dataset = json!({
        "@id": format!("urn:kfm:dataset:{version_id}"),
        "@type": "dcat:Dataset",
        "dct:identifier": version_id,
        "dct:title": spec.title.as_str(),
        "dct:description": spec.description.as_str(),
        "dct:publisher": {
            "@type": "foaf:Agent",
            "foaf:name": spec.publisher.name.as_str(),
        },
        "dct:license": {"@id": license_iri},
        "dct:rightsHolder": {"@type": "foaf:Agent", "foaf:name": spec.license.rights_holder.as_str()},
        "dcat:contactPoint": {
            "@type": "vcard:Kind",
            "vcard:fn": spec.contact.name.as_str(),
            "vcard:hasEmail": {"@id": format!("mailto:{}", spec.contact.email.as_str())},
        },
        "dcat:keyword": spec.keywords.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "dcat:version": format!("v{v}"),
        "dct:spatial": {
            "@type": "dct:Location",
            "dcat:bbox": {
                "@value": format!("POLYGON(({w} {s}, {e} {s}, {e} {n}, {w} {n}, {w} {s}))", w = bbox[0], s = bbox[1], e = bbox[2], n = bbox[3]),
                "@type": "http://www.opengis.net/ont/geosparql#wktLiteral"
            }
        },
        "dcat:distribution": distributions,
        "rdfs:seeAlso": [
            {"@id": relative_href(&dk, &sk)},
            {"@id": relative_href(&dk, &pk)}
        ],
        "kfm:policyLabel": spec.sensitivity.policy_label.as_str(),
    });
    if let Some(url) = &spec.publisher.url {
        dataset["dct:publisher"]["foaf:homepage"] = json!({"@id": url.as_str()});
    }
    if let Some(a) = &spec.license.attribution {
        dataset["kfm:attribution"] = json!(a.as_str());
    }
    if let Some(t) = &spec.temporal_extent {
        let mut period = json!({"@type": "dct:PeriodOfTime", "dcat:startDate": {"@value": t.start.to_string(), "@type": "xsd:date"}});
        if let Some(end) = t.end {
            period["dcat:endDate"] = json!({"@value": end.to_string(), "@type": "xsd:date"});
        }
        dataset["dct:temporal"] = period;
    }
    let dcat = json!({
        "@context": {
            "dcat": "http://www.w3.org/ns/dcat#",
            "dct": "http://purl.org/dc/terms/",
            "foaf": "http://xmlns.com/foaf/0.1/",
            "vcard": "http://www.w3.org/2006/vcard/ns#",
            "spdx": "http://spdx.org/rdf/terms#",
            "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
            "xsd": "http://www.w3.org/2001/XMLSchema#",
            "kfm": "urn:kfm:terms#"
        },
        "@graph": [dataset]
    });

    // STAC 1.1 Collection with one asset per artifact.
    let mut assets = serde_json::Map::new();
    for a in input.artifacts {
        let name = a
            .path
            .rsplit('/')
            .next()
            .unwrap_or(&a.path)
            .replace('.', "-");
        let mut roles = vec![a.role.clone()];
        if a.role != "data" {
            roles.push("data".into());
        }
        assets.insert(
            name,
            json!({
                "href": relative_href(&sk, &a.path),
                "type": a.media_type,
                "roles": roles,
                "kfm:digest": a.digest.to_string(),
                "kfm:size": a.size,
                "kfm:policy_label": a.policy_label,
            }),
        );
    }
    let mut providers =
        vec![json!({"name": spec.publisher.name.as_str(), "roles": ["producer", "licensor"]})];
    if let Some(url) = &spec.publisher.url {
        providers[0]["url"] = json!(url.as_str());
    }
    providers.push(json!({"name": "KFM", "roles": ["processor", "host"]}));
    let temporal = match &spec.temporal_extent {
        Some(t) => json!([[
            format!("{}T00:00:00Z", t.start),
            t.end.map(|e| format!("{e}T23:59:59Z"))
        ]]),
        None => json!([[null, null]]),
    };
    let stac = json!({
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": ds,
        "title": spec.title.as_str(),
        "description": spec.description.as_str(),
        "keywords": spec.keywords.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "license": license,
        "providers": providers,
        "version": format!("v{v}"),
        "extent": {
            "spatial": {"bbox": [bbox_or_world(Some(bbox))]},
            "temporal": {"interval": temporal}
        },
        "links": [
            // No `self` link: STAC wants it absolute, and this catalog is
            // relative so that it reads the same in a directory or a bucket.
            {"rel": "describedby", "href": relative_href(&sk, &dk), "type": "application/ld+json", "title": "DCAT record"},
            {"rel": "via", "href": relative_href(&sk, &pk), "type": "application/json", "title": "PROV-JSON provenance"}
        ],
        "assets": assets,
        "kfm:policy_label": spec.sensitivity.policy_label.as_str(),
        "kfm:attribution": spec.license.attribution.as_ref().map(|a| a.as_str()),
    });

    // PROV-JSON.
    let run = format!("kfm:run/{}", input.run_id);
    let agent = format!("kfm:agent/{}", sanitize(input.actor));
    let tool = format!("kfm:tool/{}", sanitize(input.tool));
    let (raw_key, raw_digest, raw_size) = input.acquisition;
    let raw_id = format!("kfm:{raw_key}");
    let mut entities = serde_json::Map::new();
    entities.insert(
        raw_id.clone(),
        json!({"prov:type": "kfm:Acquisition", "prov:location": relative_href(&pk, raw_key), "kfm:digest": raw_digest.to_string(), "kfm:size": raw_size}),
    );
    let mut generated = serde_json::Map::new();
    let mut derived = serde_json::Map::new();
    let mut used = serde_json::Map::new();
    used.insert(
        "_:u0".into(),
        json!({"prov:activity": run, "prov:entity": raw_id}),
    );
    let mut activities = serde_json::Map::new();
    activities.insert(
        run.clone(),
        json!({"prov:startTime": input.started_at, "prov:endTime": input.finished_at, "prov:type": "kfm:Promotion", "prov:label": format!("promotion of {version_id}")}),
    );
    let general = format!("{run}/generalize");
    if let Some(desc) = input.generalization {
        activities.insert(
            general.clone(),
            json!({"prov:startTime": input.started_at, "prov:endTime": input.finished_at, "prov:type": "kfm:Generalization", "prov:label": desc}),
        );
    }
    let precise = input.artifacts.iter().find(|a| a.role == "data");
    for (i, a) in input.artifacts.iter().enumerate() {
        let id = format!("kfm:{}", a.path);
        entities.insert(
            id.clone(),
            json!({"prov:type": "kfm:Artifact", "prov:location": relative_href(&pk, &a.path), "kfm:digest": a.digest.to_string(), "kfm:size": a.size, "kfm:role": a.role}),
        );
        let by = if a.role == "generalized" && input.generalization.is_some() {
            if let Some(p) = precise {
                used.insert(
                    format!("_:u{}", i + 1),
                    json!({"prov:activity": general, "prov:entity": format!("kfm:{}", p.path)}),
                );
            }
            &general
        } else {
            &run
        };
        generated.insert(
            format!("_:g{i}"),
            json!({"prov:entity": id, "prov:activity": by}),
        );
        derived.insert(
            format!("_:d{i}"),
            json!({"prov:generatedEntity": id, "prov:usedEntity": raw_id}),
        );
    }
    let mut associated = serde_json::Map::new();
    associated.insert(
        "_:a0".into(),
        json!({"prov:activity": run, "prov:agent": agent}),
    );
    associated.insert(
        "_:a1".into(),
        json!({"prov:activity": run, "prov:agent": tool}),
    );
    if input.generalization.is_some() {
        associated.insert(
            "_:a2".into(),
            json!({"prov:activity": general, "prov:agent": tool}),
        );
    }
    let prov = json!({
        "prefix": {"kfm": "urn:kfm:"},
        "entity": entities,
        "activity": activities,
        "agent": {
            agent.clone(): {"prov:type": "prov:Person", "prov:label": input.actor},
            tool.clone(): {"prov:type": "prov:SoftwareAgent", "prov:label": input.tool}
        },
        "used": used,
        "wasGeneratedBy": generated,
        "wasDerivedFrom": derived,
        "wasAssociatedWith": associated,
    });

    // `{:#}` is serde_json's pretty form of a `Value` (infallible).
    let ser = |v: &Value| format!("{v:#}\n").into_bytes();
    Ok(Triplet {
        dcat: ser(&dcat),
        stac: ser(&stac),
        prov: ser(&prov),
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Checks the triplet: each document parses, the STAC collection is valid
/// against the STAC 1.1 schemas, DCAT has its required fields, and every
/// artifact is reached from all three documents at the same key with the
/// same digest. Returns every problem found.
pub fn check(ds: &str, v: u64, t: &Triplet, artifacts: &[Artifact]) -> Vec<String> {
    let mut problems = Vec::new();
    let parse = |name: &str, b: &[u8], problems: &mut Vec<String>| -> Option<Value> {
        serde_json::from_slice(b)
            .map_err(|e| problems.push(format!("{name} is not JSON: {e}")))
            .ok()
    };
    let (Some(dcat), Some(stac), Some(prov)) = (
        parse("dcat.jsonld", &t.dcat, &mut problems),
        parse("stac/collection.json", &t.stac, &mut problems),
        parse("prov.json", &t.prov, &mut problems),
    ) else {
        return problems;
    };
    problems.extend(validate_stac_collection(&stac));

    let (dk, sk, pk) = (dcat_key(ds, v), stac_key(ds, v), prov_key(ds, v));
    let want: BTreeMap<&str, String> = artifacts
        .iter()
        .map(|a| (a.path.as_str(), a.digest.hex()))
        .collect();

    // DCAT.
    let dataset = &dcat["@graph"][0];
    for field in [
        "dct:title",
        "dct:description",
        "dct:publisher",
        "dct:license",
    ] {
        if dataset.get(field).is_none_or(Value::is_null) {
            problems.push(format!("dcat.jsonld: the dataset has no {field}"));
        }
    }
    if let Some(url) = dataset["dct:publisher"]["foaf:homepage"]["@id"].as_str()
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        problems.push(format!(
            "dcat.jsonld: the publisher's homepage {url:?} is not an absolute http(s) IRI (fix publisher.url in the spec)"
        ));
    }
    let mut dcat_seen = BTreeMap::new();
    for d in dataset["dcat:distribution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let href = d["dcat:downloadURL"]["@id"].as_str().unwrap_or_default();
        let digest = d["spdx:checksum"]["spdx:checksumValue"]["@value"]
            .as_str()
            .unwrap_or_default();
        match resolve_href(&dk, href) {
            Some(k) => {
                dcat_seen.insert(k, digest.to_owned());
            }
            None => problems.push(format!(
                "dcat.jsonld: distribution downloadURL {href:?} does not resolve inside the store"
            )),
        }
    }
    let see_also: BTreeSet<String> = dataset["rdfs:seeAlso"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["@id"].as_str().and_then(|h| resolve_href(&dk, h)))
        .collect();
    for (doc, key) in [("stac/collection.json", &sk), ("prov.json", &pk)] {
        if !see_also.contains(key.as_str()) {
            problems.push(format!("dcat.jsonld does not link to {doc}"));
        }
    }

    // STAC.
    let mut stac_seen = BTreeMap::new();
    for (name, a) in stac["assets"].as_object().into_iter().flatten() {
        let href = a["href"].as_str().unwrap_or_default();
        let digest = a["kfm:digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .unwrap_or_default();
        match resolve_href(&sk, href) {
            Some(k) => {
                stac_seen.insert(k, digest.to_owned());
            }
            None => problems.push(format!(
                "stac/collection.json: asset {name} href {href:?} does not resolve inside the store"
            )),
        }
    }
    let links: BTreeMap<String, String> = stac["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let href = l["href"].as_str()?;
            Some((l["rel"].as_str()?.to_owned(), resolve_href(&sk, href)?))
        })
        .collect();
    if links.get("describedby") != Some(&dk) {
        problems.push("stac/collection.json: no describedby link to dcat.jsonld".into());
    }
    if links.get("via") != Some(&pk) {
        problems.push("stac/collection.json: no via link to prov.json".into());
    }

    // PROV.
    let mut prov_seen = BTreeMap::new();
    for (id, e) in prov["entity"].as_object().into_iter().flatten() {
        if e["prov:type"] != "kfm:Artifact" {
            continue;
        }
        let href = e["prov:location"].as_str().unwrap_or_default();
        let digest = e["kfm:digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .unwrap_or_default();
        match resolve_href(&pk, href) {
            Some(k) if format!("kfm:{k}") == *id => {
                prov_seen.insert(k, digest.to_owned());
            }
            _ => problems.push(format!(
                "prov.json: entity {id} location {href:?} does not resolve to its own key"
            )),
        }
        let generated = prov["wasGeneratedBy"]
            .as_object()
            .into_iter()
            .flatten()
            .any(|(_, g)| g["prov:entity"] == *id);
        if !generated {
            problems.push(format!("prov.json: no activity generated {id}"));
        }
    }

    for (doc, seen) in [
        ("dcat.jsonld", &dcat_seen),
        ("stac/collection.json", &stac_seen),
        ("prov.json", &prov_seen),
    ] {
        for (path, digest) in &want {
            match seen.get(*path) {
                None => problems.push(format!("{doc} does not reference {path}")),
                Some(d) if d != digest => problems.push(format!(
                    "{doc} gives {path} the digest {d}, the artifact's is {digest}"
                )),
                Some(_) => {}
            }
        }
        for path in seen.keys() {
            if !want.contains_key(path.as_str()) {
                problems.push(format!(
                    "{doc} references {path}, which is not an artifact of this release"
                ));
            }
        }
    }
    problems
}

const SCHEMAS: &[(&str, &str)] = &[
    (
        "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json",
        include_str!("../schemas/stac-1.1.0/collection.json"),
    ),
    (
        "https://schemas.stacspec.org/v1.1.0/catalog-spec/json-schema/catalog.json",
        include_str!("../schemas/stac-1.1.0/catalog.json"),
    ),
    (
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
        include_str!("../schemas/stac-1.1.0/item.json"),
    ),
    (
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/common.json",
        include_str!("../schemas/stac-1.1.0/common.json"),
    ),
    (
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/bands.json",
        include_str!("../schemas/stac-1.1.0/bands.json"),
    ),
    (
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/basics.json",
        include_str!("../schemas/stac-1.1.0/basics.json"),
    ),
    (
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/data-values.json",
        include_str!("../schemas/stac-1.1.0/data-values.json"),
    ),
    (
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/datetime.json",
        include_str!("../schemas/stac-1.1.0/datetime.json"),
    ),
    (
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/instrument.json",
        include_str!("../schemas/stac-1.1.0/instrument.json"),
    ),
    (
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/licensing.json",
        include_str!("../schemas/stac-1.1.0/licensing.json"),
    ),
    (
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/provider.json",
        include_str!("../schemas/stac-1.1.0/provider.json"),
    ),
    (
        "https://geojson.org/schema/Feature.json",
        include_str!("../schemas/geojson/Feature.json"),
    ),
    (
        "https://geojson.org/schema/Geometry.json",
        include_str!("../schemas/geojson/Geometry.json"),
    ),
    (
        "http://json-schema.org/draft-07/schema",
        include_str!("../schemas/json-schema/draft-07.json"),
    ),
];

fn collection_validator() -> Result<&'static jsonschema::Validator, &'static str> {
    static V: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    V.get_or_init(|| {
        let mut opts = jsonschema::options().with_draft(jsonschema::Draft::Draft7);
        let mut root = None;
        for (uri, text) in SCHEMAS {
            let value: Value = serde_json::from_str(text).map_err(|e| format!("{uri}: {e}"))?;
            if root.is_none() {
                root = Some(value.clone());
            }
            opts = opts.with_resource(*uri, jsonschema::Resource::from_contents(value));
        }
        let root = root.ok_or("no STAC schema")?;
        opts.build(&root).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(String::as_str)
}

/// Validates a STAC Collection against the bundled STAC 1.1.0 schemas.
pub fn validate_stac_collection(stac: &Value) -> Vec<String> {
    match collection_validator() {
        Err(e) => vec![format!("the STAC schemas cannot be loaded: {e}")],
        Ok(v) => v
            .iter_errors(stac)
            .take(20)
            .map(|e| format!("stac/collection.json{}: {e}", e.instance_path()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hrefs_round_trip() {
        let from = "catalog/ds/v1/stac/collection.json";
        let to = "processed/ds/v1/features.geojson";
        let h = relative_href(from, to);
        assert_eq!(h, "../../../../processed/ds/v1/features.geojson");
        assert_eq!(resolve_href(from, &h).as_deref(), Some(to));
        assert_eq!(resolve_href(from, "../../../../../etc/passwd"), None);
        assert_eq!(resolve_href(from, "https://x/y"), None);
        assert_eq!(
            resolve_href(from, "../dcat.jsonld").as_deref(),
            Some("catalog/ds/v1/dcat.jsonld")
        );
    }

    #[test]
    fn schema_rejects_an_invalid_collection() {
        let bad = json!({"type": "Collection", "stac_version": "1.1.0", "id": "x"});
        assert!(!validate_stac_collection(&bad).is_empty());
    }
}
