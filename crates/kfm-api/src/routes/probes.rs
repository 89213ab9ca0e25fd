//! The audit trail (for auditors) and the probes an orchestrator and a
//! monitoring system read: liveness, readiness, metrics, the OpenAPI
//! document.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{JSON, bad_request, json_answer, not_ready, note, with_note};
use crate::auth::Principal;
use crate::{AppState, bytes_response, enforce, error, not_found};

#[utoipa::path(get, path = "/audit/{audit_ref}", tag = "Audit",
    params(("audit_ref" = String, Path, description = "A Kfm-Audit-Ref value (the record's leaf hash, 64 hex)")),
    responses((status = 200, description = "The ledger entry, its inclusion proof and the signed checkpoint (auditors only)"),
        (status = 202, description = "Pending (with an event backbone): the record is durable in the event stream and not yet integrated into the log by the sequencer; ask again (Retry-After)"),
        (status = 404, description = "No such record, or not available to this caller (same answer)")))]
pub(crate) async fn audit(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(r): Path<String>,
) -> Response {
    if !st.ready() {
        return with_note(not_ready(), note("audit"));
    }
    let mut leaf = [0u8; 32];
    if r.len() != 64 || hex::decode_to_slice(&r, &mut leaf).is_err() {
        return bad_request(
            "an audit reference is 64 lowercase hex digits (the Kfm-Audit-Ref header)",
        );
    }
    let (allow, n) = enforce::audit_read(&st, &who);
    if !allow {
        return not_found(n);
    }
    st.audit.settle(&leaf).await;
    let ledger = st.audit.ledger();
    let Some(index) = ledger.find_leaf(&leaf).await else {
        if st.audit.awaiting_sequencer(&leaf) {
            let doc = json!({
                "ref": r,
                "status": "pending",
                "detail": "durable in the event stream; the sequencer has not integrated it into the log yet, so it has no index or proof: ask again",
            });
            let mut resp = json_answer(StatusCode::ACCEPTED, JSON, &doc, n);
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            return resp;
        }
        return not_found(n);
    };
    let (entry, proof) = match (ledger.entry(index).await, ledger.prove(index).await) {
        (Ok(e), Ok(p)) => (e, p),
        _ => {
            return with_note(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "LedgerUnavailable",
                    "the ledger could not be read",
                ),
                n,
            );
        }
    };
    let entry_json: Value = serde_json::from_slice(&entry).unwrap_or(Value::Null);
    let doc = json!({
        "ref": r,
        "index": index,
        "leaf_hash": hex::encode(leaf),
        "entry": entry_json,
        "entry_base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &entry),
        "inclusion_proof": {
            "tree_size": proof.size,
            "hashes": proof.proof.iter().map(hex::encode).collect::<Vec<_>>(),
        },
        "checkpoint": String::from_utf8_lossy(&proof.checkpoint),
        "origin": st.config.ledger_origin,
        "verifier_key": st.config.verifier_key,
    });
    json_answer(StatusCode::OK, JSON, &doc, n)
}

#[utoipa::path(get, path = "/livez", tag = "Probes",
    responses((status = 200, description = "The same as /healthz, under the name Kubernetes probes use"),
        (status = 503, description = "The ledger writer gave up: restart the process")))]
pub(crate) async fn livez(st: State<Arc<AppState>>) -> Response {
    healthz(st).await
}

#[utoipa::path(get, path = "/healthz", tag = "Probes",
    responses((status = 200, description = "The process is up and its ledger writer works (or is retrying)"),
        (status = 503, description = "The ledger writer gave up: restart the process (reopening recovers every durable entry)")))]
pub(crate) async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let h = st.audit.ledger().health();
    match h.failed {
        None => json_answer(
            StatusCode::OK,
            JSON,
            &json!({
                "status": "ok",
                "ledger_retrying": h.appends_retrying.as_ref().map(|(e, _)| e),
                "tiles_retrying": h.tiles_retrying.as_ref().map(|(e, _)| e),
            }),
            note("none"),
        ),
        Some(f) => json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            &json!({"status": "unhealthy", "reason": format!("the ledger writer gave up: {f}"),
                "action": "restart the process: reopening the ledger recovers every durable entry"}),
            note("none"),
        ),
    }
}

#[utoipa::path(get, path = "/readyz", tag = "Probes",
    responses((status = 200, description = "Pinned policy loaded, ledger open and healthy, the projections' database answering (PostGIS backend); releases that are not served are counted (named, with the reason, to callers the policy lets read the audit trail)"),
        (status = 503, description = "Not ready, with the reasons")))]
pub(crate) async fn readyz(
    State(st): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Response {
    let mut why = st.not_ready();
    // With the PostGIS backend the features live in the database: a server
    // that cannot reach it is not ready (an orchestrator then routes
    // elsewhere), whatever else is well.
    if let crate::Backend::Postgis(reader) = st.releases.backend()
        && let Err(e) = reader.ping(std::time::Duration::from_secs(2)).await
    {
        tracing::warn!(error = %e, "the projections' database does not answer");
        why.push("projections: the database does not answer".into());
    }
    // A poisoned lock still holds the list: report it rather than an empty
    // one (a panic elsewhere must not make the probe claim all is served).
    let not_served = match st.not_served.read() {
        Ok(n) => n.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    // Naming a dataset would tell anyone it exists: only callers the
    // policy lets read the audit trail see which releases and why.
    let (details, n) = if not_served.is_empty() {
        (false, note("none"))
    } else {
        enforce::audit_read(&st, &who)
    };
    st.metrics.ready.set(i64::from(why.is_empty()));
    let status = if why.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_answer(
        status,
        JSON,
        &json!({
            "ready": why.is_empty(),
            "reasons": why,
            "policy_digest": st.policy.digest().to_string(),
            "environment": st.config.environment.as_str(),
            "ledger_size": st.audit.ledger().size(),
            "releases": st.releases.all().len(),
            "releases_not_served": not_served.len(),
            "not_served": details.then_some(not_served),
        }),
        n,
    )
}

#[utoipa::path(get, path = "/metrics", tag = "Probes",
    responses((status = 200, description = "Prometheus/OpenMetrics text; labels are route templates, status, decision and action only")))]
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    st.metrics.ready.set(i64::from(st.ready()));
    with_note(
        bytes_response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            st.metrics.render().into_bytes(),
        ),
        note("none"),
    )
}

#[utoipa::path(get, path = "/openapi.json", tag = "Probes",
    responses((status = 200, description = "This document (OpenAPI 3.1)")))]
pub(crate) async fn openapi() -> Response {
    with_note(
        bytes_response(
            StatusCode::OK,
            JSON,
            crate::openapi::document().into_bytes(),
        ),
        note("none"),
    )
}

#[utoipa::path(get, path = "/openapi-3.0.json", tag = "Probes",
    responses((status = 200, description = "This document as OpenAPI 3.0.3")))]
pub(crate) async fn openapi30() -> Response {
    with_note(
        bytes_response(
            StatusCode::OK,
            JSON,
            crate::openapi::document_30().into_bytes(),
        ),
        note("none"),
    )
}
