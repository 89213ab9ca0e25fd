//! The catalog and evidence routes: STAC and PROV per collection, the DCAT
//! catalog, and the evidence resolver for one feature of one version. Each
//! lists only what this caller may read, and links through the API, never
//! to the store.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{
    GEOJSON, JSON, bad_request, base, check_id, grant_on, json_answer, not_ready, note,
    with_governance, with_note,
};
use crate::audit::AuditNote;
use crate::auth::Principal;
use crate::layers::Decided;
use crate::{AppState, error, not_found};

#[utoipa::path(get, path = "/collections/{collection_id}/stac", tag = "Catalog",
    params(("collection_id" = String, Path, description = "Dataset id")),
    responses((status = 200, description = "STAC 1.1 Collection, assets limited to what this caller may read"),
        (status = 404, description = "Not found or not available")))]
pub(crate) async fn stac(
    State(st): State<Arc<AppState>>,
    Decided {
        rel,
        grant: g,
        view,
    }: Decided,
    Path(id): Path<String>,
) -> Response {
    let b = base(&st);
    let mut doc = rel.stac.clone();
    // Only the layer this caller is served, through the API (no store URL).
    let want = if view.generalized {
        "generalized"
    } else {
        "data"
    };
    if let Some(assets) = doc["assets"].as_object_mut() {
        assets.retain(|_, a| {
            a["roles"]
                .as_array()
                .is_some_and(|r| r.first() == Some(&json!(want)))
                && a["type"] == json!(GEOJSON)
        });
        for a in assets.values_mut() {
            a["href"] = json!(format!("{b}/collections/{id}/export?format=geojson"));
        }
    }
    if let Some(e) = view.extent {
        doc["extent"]["spatial"]["bbox"] = json!([e]);
    }
    if let Some(links) = doc["links"].as_array_mut() {
        links.retain(|l| l["rel"] != "describedby" && l["rel"] != "via");
        links.push(
            json!({"rel": "self", "type": JSON, "href": format!("{b}/collections/{id}/stac")}),
        );
        links.push(
            json!({"rel": "root", "type": JSON, "href": format!("{b}/collections/{id}/stac")}),
        );
        links.push(json!({"rel": "via", "type": JSON, "title": "PROV-JSON provenance", "href": format!("{b}/collections/{id}/prov")}));
        links.push(
            json!({"rel": "items", "type": GEOJSON, "href": format!("{b}/collections/{id}/items")}),
        );
    }
    let doc = with_governance(doc, &rel, &g, &view);
    json_answer(StatusCode::OK, JSON, &doc, g.note)
}

#[utoipa::path(get, path = "/collections/{collection_id}/prov", tag = "Catalog",
    params(("collection_id" = String, Path, description = "Dataset id")),
    responses((status = 200, description = "PROV-JSON of the published version"),
        (status = 404, description = "Not found or not available")))]
pub(crate) async fn prov(Decided { rel, grant: g, .. }: Decided) -> Response {
    json_answer(StatusCode::OK, JSON, &rel.prov, g.note)
}

#[utoipa::path(get, path = "/catalog", tag = "Catalog",
    responses((status = 200, description = "DCAT 3 catalog (JSON-LD) of the datasets this caller may read")))]
pub(crate) async fn catalog(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Response {
    if !st.ready() {
        return with_note(not_ready(), note("read"));
    }
    let b = base(&st).to_owned();
    let mut datasets = Vec::new();
    let mut durable = false;
    for rel in st.releases.all() {
        let Ok((rel, g, view)) = grant_on(&st, &who, rel, "read") else {
            continue;
        };
        durable |= g.note.durable;
        let mut d = rel.dcat["@graph"][0].clone();
        let id = &rel.dataset;
        let license = d["dct:license"].clone();
        d["dcat:distribution"] = json!([
            {"@type": "dcat:Distribution", "dcat:accessURL": {"@id": format!("{b}/collections/{id}/items")}, "dcat:mediaType": GEOJSON, "dct:license": license},
            {"@type": "dcat:Distribution", "dcat:downloadURL": {"@id": format!("{b}/collections/{id}/export?format=geojson")}, "dcat:mediaType": GEOJSON, "dct:license": license},
            {"@type": "dcat:Distribution", "dcat:downloadURL": {"@id": format!("{b}/collections/{id}/export?format=csv")}, "dcat:mediaType": "text/csv", "dct:license": license}
        ]);
        d["rdfs:seeAlso"] = json!([{"@id": format!("{b}/collections/{id}/stac")}, {"@id": format!("{b}/collections/{id}/prov")}]);
        match view.extent {
            Some(e) => {
                d["dct:spatial"]["dcat:bbox"]["@value"] = json!(format!(
                    "POLYGON(({w} {s}, {e2} {s}, {e2} {n}, {w} {n}, {w} {s}))",
                    w = e[0],
                    s = e[1],
                    e2 = e[2],
                    n = e[3]
                ));
            }
            None => {
                if let Some(m) = d.as_object_mut() {
                    m.remove("dct:spatial");
                }
            }
        }
        d["kfm:generalized"] = json!(view.generalized);
        datasets.push(d);
    }
    let context = st
        .releases
        .all()
        .first()
        .map(|r| r.dcat["@context"].clone())
        .unwrap_or_else(
            || json!({"dcat": "http://www.w3.org/ns/dcat#", "dct": "http://purl.org/dc/terms/"}),
        );
    let doc = json!({
        "@context": context,
        "@id": format!("{b}/catalog"),
        "@type": "dcat:Catalog",
        "dct:title": "KFM catalog",
        "dcat:dataset": datasets,
    });
    json_answer(
        StatusCode::OK,
        "application/ld+json",
        &doc,
        AuditNote {
            action: "read",
            durable,
            ..AuditNote::default()
        },
    )
}

#[utoipa::path(get, path = "/evidence/{version_id}/{feature_id}", tag = "Evidence",
    params(("version_id" = String, Path, description = "Dataset version id, `<dataset>@v<N>`"),
        ("feature_id" = String, Path, description = "Feature id")),
    responses((status = 200, description = "The feature as this caller may see it, with its provenance chain and digests"),
        (status = 404, description = "Not found or not available")))]
pub(crate) async fn evidence(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path((vid, fid)): Path<(String, String)>,
) -> Response {
    if !st.ready() {
        return with_note(not_ready(), note("read"));
    }
    let Some((ds, v)) = vid.split_once("@v") else {
        return bad_request("version id must be <dataset>@v<N>");
    };
    if let Err(r) = check_id("dataset id", ds).and_then(|()| check_id("feature id", &fid)) {
        return r;
    }
    let Ok(v) = v.parse::<u64>() else {
        return bad_request("version id must be <dataset>@v<N>");
    };
    let Some(rel) = st.releases.version(st.audit.ledger(), ds, v).await else {
        return not_found(note("read"));
    };
    let (rel, g, view) = match grant_on(&st, &who, rel, "read") {
        Ok(x) => x,
        Err(r) => return r,
    };
    let feature = match view.feature(&fid).await {
        Ok(Some(f)) => f,
        Ok(None) => return not_found(g.note),
        Err(e) => return with_note(super::read_error(&e), g.note),
    };
    // The artifact this caller's view is read from.
    let has_generalized = rel
        .manifest
        .artifacts
        .iter()
        .any(|a| a.role == "generalized");
    let role = if view.generalized && has_generalized {
        "generalized"
    } else {
        "data"
    };
    let layer = rel.manifest.artifacts.iter().find(|a| a.role == role);
    // Invariant: evidence is the release's provenance or nothing. Gate D
    // admits no release whose PROV lacks entities and activities; one that
    // lacks them here is answered as an error, never as "no acquisitions".
    let (Some(entities), Some(activities)) = (
        rel.prov["entity"].as_object(),
        rel.prov["activity"].as_object(),
    ) else {
        tracing::error!(version = %rel.version_id, "the release's PROV has no entity or activity map");
        return with_note(
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ProvenanceUnavailable",
                "this release's provenance document is incomplete; run `kfm catalog validate`",
            ),
            g.note,
        );
    };
    let acquisitions: Vec<Value> = entities
        .iter()
        .filter(|(_, e)| e["prov:type"] == "kfm:Acquisition")
        .map(|(k, e)| json!({"id": k, "digest": e["kfm:digest"], "size": e["kfm:size"]}))
        .collect();
    let activities: Vec<Value> = activities
        .iter()
        .map(|(k, a)| json!({"id": k, "type": a["prov:type"], "label": a["prov:label"], "ended": a["prov:endTime"]}))
        .collect();
    let m = &rel.manifest;
    let now = st.releases.get(&rel.dataset);
    let current = now
        .as_ref()
        .is_some_and(|c| c.manifest_digest == rel.manifest_digest);
    let doc = json!({
        "dataset_version_id": rel.version_id,
        "feature": feature,
        "current_release": current,
        // A superseded version, answered only where the policy allows it
        // (the decision's input says `release: withdrawn`), and marked.
        "release": if current { "current" } else { "withdrawn" },
        "superseded_by": if current { None } else { now.map(|c| c.version_id.clone()) },
        "decision": {"reason": g.reason, "obligations": g.obligations},
        "provenance": {
            "manifest": {"path": format!("catalog/{}/v{}/release.dsse.json", m.dataset, m.version), "digest": rel.manifest_digest},
            "pointer_ledger_index": rel.pointer_ledger_index,
            "receipt": {"digest": m.receipt.digest, "ledger_index": m.receipt.ledger_index},
            "run_id": m.run_id,
            "artifact": layer.map(|l| json!({"path": l.path, "digest": l.digest.to_string()})),
            "catalog": m.catalog.iter().map(|c| json!({"path": c.path, "digest": c.digest.to_string()})).collect::<Vec<_>>(),
            "policy_at_release": {"digest": m.policy.digest, "revision": m.policy.revision},
            "acquisitions": acquisitions,
            "activities": activities,
        },
        "verify": "kfm ledger prove <ledger_index> proves the receipt and manifest are in the ledger; `kfm catalog validate` re-checks every digest",
    });
    let doc = with_governance(doc, &rel, &g, &view);
    json_answer(StatusCode::OK, JSON, &doc, g.note)
}
