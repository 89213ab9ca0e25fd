//! The routes in process: the router with its layers, a real store and
//! ledger in a temporary directory and the repository's policy bundle,
//! driven with `tower::ServiceExt::oneshot` (no socket). What the layers
//! promise is checked here: every answer is audited and counted, a bad
//! token never reaches a handler, a collection route never answers
//! undecided, and the stewards' page is for stewards only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use kfm_api::{ApiConfig, AppState, Backend, Releases, Tokens, Zones};
use kfm_core::{Environment, StoreUrl};
use kfm_ledger::{Ledger, LedgerOptions, LedgerSigner};
use kfm_policy::{Bundle, DecisionPoint, Options};
use kfm_store::Store;
use serde_json::Value;
use tower::ServiceExt;

struct Api {
    _dir: tempfile::TempDir,
    st: Arc<AppState>,
    store: Store,
    steward: String,
    researcher: String,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = StoreUrl::parse(&format!("file://{}", dir.path().join("store").display()))
        .expect("store url");
    let store = Store::open(&url, |_| None).expect("store");
    let (skey, vkey) = kfm_ledger::generate_key("kfm.test").expect("key");
    let signer = LedgerSigner::from_key_text(&skey).expect("signer");
    let ledger = Arc::new(
        Ledger::open(store.audit(), signer, LedgerOptions::new("kfm.test/routes"))
            .await
            .expect("ledger"),
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(vkey.splitn(3, '+').nth(2).expect("vkey"))
        .expect("base64");
    let key = ed25519_dalek::VerifyingKey::from_bytes(raw[1..].try_into().expect("32 bytes"))
        .expect("ed25519");
    let bundle = Bundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy"))
        .expect("the repository's policy bundle");
    let policy = DecisionPoint::new(&bundle, Options::default()).expect("policy");
    let zones = Zones {
        published: store.reader(),
        processed: store.reader(),
        catalog: store.reader(),
        quarantine: store.reader(),
    };
    let tokens = dir.path().join("tokens.json");
    let (steward, _) = kfm_api::auth::create(&tokens, "s", "steward", &[]).expect("token");
    let (researcher, _) = kfm_api::auth::create(&tokens, "r", "researcher", &[]).expect("token");
    let config = ApiConfig {
        environment: Environment::Dev,
        policy_problem: None,
        base_url: "http://kfm.test".into(),
        request_timeout: Duration::from_secs(10),
        refresh_every: Duration::from_secs(30),
        batch_interval: Duration::from_micros(200),
        ledger_origin: "kfm.test/routes".into(),
        verifier_key: vkey,
        basemap: None,
    };
    let st = AppState::new(
        config,
        policy,
        Releases::new(zones, key, Backend::Memory),
        ledger,
        Tokens::new(tokens),
    );
    kfm_api::refresh_once(&st).await;
    Api {
        _dir: dir,
        st,
        store,
        steward,
        researcher,
    }
}

async fn get(
    a: &Api,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = kfm_api::router(a.st.clone())
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .expect("body")
        .to_vec();
    (status, headers, body)
}

fn audit_ref(h: &axum::http::HeaderMap) -> String {
    h.get(kfm_api::AUDIT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Reads back the access record an answer's audit reference names.
async fn record(a: &Api, reference: &str) -> Value {
    a.st.audit.drain(Duration::from_secs(5)).await;
    let leaf: [u8; 32] = hex::decode(reference)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let ledger = a.st.audit.ledger();
    let i = ledger
        .find_leaf(&leaf)
        .await
        .expect("the record is in the ledger");
    let e = ledger.entry(i).await.expect("entry");
    serde_json::from_slice(&e).expect("json")
}

#[tokio::test]
async fn every_answer_is_audited_including_the_ones_no_handler_gives() {
    let a = api().await;
    for (path, token, status) in [
        ("/", None, StatusCode::OK),
        ("/conformance", None, StatusCode::OK),
        ("/no/such/route", None, StatusCode::NOT_FOUND),
        ("/collections/ks-places/items", None, StatusCode::NOT_FOUND),
        (
            "/collections/ks-places",
            Some("kfm_not-a-token"),
            StatusCode::UNAUTHORIZED,
        ),
        ("/?f=yaml", None, StatusCode::BAD_REQUEST),
    ] {
        let (s, h, _) = get(&a, path, token).await;
        assert_eq!(s, status, "{path}");
        let r = audit_ref(&h);
        assert_eq!(r.len(), 64, "{path}: no Kfm-Audit-Ref");
        let rec = record(&a, &r).await;
        assert_eq!(rec["status"], status.as_u16(), "{path}: {rec}");
        assert_eq!(rec["path"], path.split('?').next().unwrap_or(path));
    }
}

#[tokio::test]
async fn a_bad_token_never_reaches_a_handler_and_is_recorded_as_unauthenticated() {
    let a = api().await;
    for bad in [
        "kfm_x",
        "Basic abc",
        "kfm_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let mut req = Request::get("/steward");
        req = if bad.starts_with("Basic") {
            req.header("authorization", bad)
        } else {
            req.header("authorization", format!("Bearer {bad}"))
        };
        let resp = kfm_api::router(a.st.clone())
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad}");
        assert!(resp.headers().contains_key("www-authenticate"));
        let rec = record(&a, &audit_ref(resp.headers())).await;
        assert_eq!(rec["subject"], "unauthenticated");
        assert_eq!(rec["action"], "none", "no handler ran: {rec}");
    }
}

#[tokio::test]
async fn a_collection_route_answers_only_after_the_decision_layer() {
    let a = api().await;
    // Every collection route, on a collection that does not exist and on a
    // hostile id: the decision layer answers (404 or 400), recorded
    // durably with the route's action, before any handler parses anything.
    for (path, action) in [
        ("/collections/nope", "read"),
        ("/collections/nope/items?limit=0", "read"),
        ("/collections/nope/items/1", "read"),
        ("/collections/nope/queryables", "read"),
        ("/collections/nope/tiles", "read"),
        ("/collections/nope/tiles/WebMercatorQuad", "read"),
        (
            "/collections/nope/tiles/WebMercatorQuad/tilejson.json",
            "read",
        ),
        ("/collections/nope/tiles/WebMercatorQuad/99/0/0", "read"),
        ("/collections/nope/stac", "read"),
        ("/collections/nope/prov", "read"),
        ("/collections/nope/export?format=xml", "export"),
    ] {
        let (s, h, body) = get(&a, path, None).await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        let rec = record(&a, &audit_ref(&h)).await;
        assert_eq!(rec["action"], action, "{path}");
    }
    let (s, _, body) = get(&a, "/collections/..%2F..%2Fetc/items", None).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn answers_are_counted_by_route_template_never_by_id() {
    let a = api().await;
    get(&a, "/collections/secret-dataset-name/items", None).await;
    let (_, _, body) = get(&a, "/metrics", None).await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("route=\"/collections/{collection_id}/items\""),
        "{text}"
    );
    assert!(!text.contains("secret-dataset-name"), "{text}");
}

#[tokio::test]
async fn every_documented_route_is_routed_and_every_route_documented() {
    let a = api().await;
    let (_, _, body) = get(&a, "/openapi.json", None).await;
    let doc: Value = serde_json::from_slice(&body).expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 28, "{} paths", paths.len());
    for p in paths.keys() {
        // Fill every template variable; a route that is documented but not
        // registered would be the fallback's 404 with action "none".
        let concrete = p
            .replace("{collection_id}", "nope")
            .replace("{feature_id}", "1")
            .replace("{version_id}", "nope@v1")
            .replace("{audit_ref}", &"0".repeat(64))
            .replace("{file}", "kfm-map.js")
            .replace("{tileMatrix}", "0")
            .replace("{tileRow}", "0")
            .replace("{tileCol}", "0");
        let (_, h, _) = get(&a, &concrete, None).await;
        let rec = record(&a, &audit_ref(&h)).await;
        assert_ne!(
            rec["route"], "(unmatched)",
            "{p} is documented but not routed"
        );
        assert_eq!(rec["route"], p.as_str(), "{p}");
    }
}

fn quarantine_report(ds: &str, run_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": "kfm.quarantine-report/v1",
        "run_id": run_id,
        "dataset": ds,
        "operation": "promote",
        "version_attempted": 1,
        "gates": [
            {"gate": "A", "name": "identity", "status": "pass"},
            {"gate": "B", "name": "license", "status": "fail", "reasons": ["license <script>x</script> is not SPDX"]},
            {"gate": "C", "name": "sensitivity", "status": "not-run"}
        ],
        "finished_at": "2026-12-07T08:00:00Z"
    }))
    .expect("json")
}

#[tokio::test]
async fn the_truth_path_page_is_for_stewards_only() {
    let a = api().await;
    a.store
        .quarantine()
        .create(
            "ks-wells/20261207T080000Z-aaaa/report.json",
            quarantine_report("ks-wells", "20261207T080000Z-aaaa").into(),
        )
        .await
        .expect("report");
    for who in [None, Some(a.researcher.as_str())] {
        let (s, h, _) = get(&a, "/steward", who).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let rec = record(&a, &audit_ref(&h)).await;
        assert_eq!(rec["action"], "steward");
        assert_eq!(rec["decision"]["reason"], "steward.stewards_only", "{rec}");
    }
    let (s, h, body) = get(&a, "/steward", Some(&a.steward)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let doc: Value = serde_json::from_slice(&body).expect("json");
    let ds = &doc["datasets"][0];
    assert_eq!(ds["dataset"], "ks-wells");
    assert_eq!(ds["stage"], "quarantined");
    assert_eq!(ds["last_run"]["gates"][1]["status"], "fail");
    assert_eq!(
        ds["last_run"]["report"],
        "quarantine/ks-wells/20261207T080000Z-aaaa/report.json"
    );
    let rec = record(&a, &audit_ref(&h)).await;
    assert_eq!(rec["decision"]["reason"], "steward.steward", "{rec}");
    // The page escapes what a report says.
    let (s, _, body) = get(&a, "/steward?f=html", Some(&a.steward)).await;
    assert_eq!(s, StatusCode::OK);
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains("&lt;script&gt;"), "{html}");
    assert!(!html.contains("<script>x"), "{html}");
}

#[tokio::test]
async fn a_report_that_does_not_read_as_one_is_named_not_skipped() {
    let a = api().await;
    a.store
        .quarantine()
        .create(
            "ks-wells/20261207T090000Z-bbbb/report.json",
            b"{not json".to_vec().into(),
        )
        .await
        .expect("report");
    let (s, _, body) = get(&a, "/steward", Some(&a.steward)).await;
    assert_eq!(s, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).expect("json");
    let problems = doc["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{doc}");
    assert!(
        problems[0]
            .as_str()
            .unwrap_or_default()
            .starts_with("quarantine/ks-wells/20261207T090000Z-bbbb/report.json"),
        "{doc}"
    );
}
