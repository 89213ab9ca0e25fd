//! `GET /search?q=`: across every collection this caller may read, the
//! collections whose metadata holds the words, and the first features of
//! each whose properties do.
//!
//! Governed like every route: each collection is decided on its own, and
//! one the caller may not read is skipped without a trace (no entry, no
//! count, no difference in the answer's shape). Features come through the
//! caller's view, so they are generalised and redacted as the policy says,
//! and a redacted property is never searched (it could be probed).

use std::sync::Arc;

use axum::extract::{Extension, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use kfm_query::{Filter, Search, SortKeys};
use serde_json::{Value, json};

use super::{
    GEOJSON, JSON, Query, bad_request, base, governance, grant_on, not_ready, note, with_note,
};
use crate::audit::AuditNote;
use crate::auth::Principal;
use crate::view::ItemQuery;
use crate::{AppState, bytes_response};

#[utoipa::path(get, path = "/search", tag = "Search",
    params(("q" = String, Query, description = "Words to find; commas separate alternatives (any may match), the words of one must all appear"),
        ("limit" = Option<u64>, Query, description = "Features per collection, 0-100, default 10")),
    responses((status = 200, description = "The collections this caller may read whose metadata holds the words, and the first matching features of each, as this caller may see them"),
        (status = 400, description = "No q, or a malformed parameter"),
        (status = 503, description = "Not ready")))]
pub(crate) async fn search(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> Response {
    let q = match Query::parse(q.as_deref(), &["q", "limit"]) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let Some(text) = q.get("q") else {
        return bad_request("q is required: /search?q=wichita");
    };
    let search = match Search::parse(text) {
        Ok(s) => s,
        Err(e) => return bad_request(&e.to_string()),
    };
    let limit = match q.u64_in("limit", 10, 0, 100) {
        Ok(l) => l,
        Err(r) => return r,
    };
    if !st.ready() {
        return with_note(not_ready(), note("read"));
    }
    let b = base(&st);
    let mut durable = false;
    let mut entries: Vec<Vec<u8>> = Vec::new();
    for rel in st.releases.all() {
        // Invariant: a collection the caller may not read leaves no trace.
        let Ok((rel, g, view)) = grant_on(&st, &who, rel, "read") else {
            continue;
        };
        let keywords = rel.stac["keywords"]
            .as_array()
            .map(|k| {
                k.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let metadata =
            search.matches_text(&[&rel.dataset, &rel.title, &rel.description, &keywords]);
        let page = if limit == 0 {
            None
        } else {
            let allowed = view.queryables.names().map(str::to_owned).collect();
            let query = ItemQuery {
                filter: Filter::Terms {
                    search: search.clone(),
                    allowed,
                },
                sort: SortKeys::default(),
                after: None,
                offset: 0,
                limit,
                features: false,
            };
            // A view that cannot be read now contributes no features.
            view.page(&query).await.ok()
        };
        let found = page.as_ref().map_or(0, |p| p.json.len());
        if !metadata && found == 0 {
            continue;
        }
        durable |= g.note.durable;
        let id = &rel.dataset;
        let qs: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("q", text)
            .finish();
        let mut head = serde_json::Map::new();
        head.insert("id".into(), json!(id));
        head.insert("title".into(), json!(rel.title));
        head.insert("description".into(), json!(rel.description));
        head.insert("kfm:metadata_matches".into(), json!(metadata));
        head.extend(governance(&rel, &g, &view));
        head.insert(
            "links".into(),
            json!([
                {"rel": "collection", "type": JSON, "href": format!("{b}/collections/{id}")},
                {"rel": "items", "type": GEOJSON, "title": "every match", "href": format!("{b}/collections/{id}/items?{qs}")}
            ]),
        );
        head.insert("numberReturned".into(), json!(found));
        let mut out = Value::Object(head).to_string().into_bytes();
        out.pop();
        out.extend_from_slice(b",\"features\":[");
        for (n, f) in page.iter().flat_map(|p| p.json.iter()).enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(f);
        }
        out.extend_from_slice(b"]}");
        entries.push(out);
    }
    let qs: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("q", text)
        .append_pair("limit", &limit.to_string())
        .finish();
    let mut head = serde_json::Map::new();
    head.insert("q".into(), json!(text));
    head.insert(
        "links".into(),
        json!([{"rel": "self", "type": JSON, "href": format!("{b}/search?{qs}")}]),
    );
    let mut out = Value::Object(head).to_string().into_bytes();
    out.pop();
    out.extend_from_slice(b",\"collections\":[");
    for (n, e) in entries.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"]}");
    with_note(
        bytes_response(StatusCode::OK, JSON, out),
        AuditNote {
            action: "read",
            durable,
            ..AuditNote::default()
        },
    )
}
