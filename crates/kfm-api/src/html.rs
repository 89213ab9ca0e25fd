//! HTML views for browsers (as pygeoapi offers): landing page, collections
//! and items, each with policy badges — label, license, attribution and a
//! "coordinates generalized" notice. maud escapes every interpolation.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use geojson::Feature;
use maud::{DOCTYPE, Markup, html};

use crate::bytes_response;
use crate::enforce::Grant;
use crate::releases::{Release, View};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}\
table{border-collapse:collapse;font-size:.9rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}\
.badge{display:inline-block;border-radius:.3rem;padding:.1rem .45rem;margin-right:.3rem;font-size:.8rem;background:#eee}\
.label{background:#dbeafe}.gen{background:#fde68a}.lic{background:#dcfce7}nav a{margin-right:1rem}\
#kfm-map{height:28rem;margin:1rem 0;border:1px solid #ccc}tr.sel{background:#fef9c3}\
.kfm-badges{background:#fffe;padding:.3rem .4rem;border-radius:.3rem;max-width:22rem;font-size:.8rem}";

/// What pages may load and talk to: this server only. A map's tiles,
/// styles and worker come from here (MapLibre is bundled into the binary);
/// no request leaves for a CDN or an outside basemap.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; child-src 'self' blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Where a page's map gets what it draws: every URL a governed answer of
/// this API (TileJSON, items), so the map shows only what the caller may
/// see and decides nothing itself.
pub struct MapSpec {
    /// TileJSON of the collection drawn beneath (the configured basemap).
    pub base_tiles: Option<String>,
    /// TileJSON of the collection itself (its collection page).
    pub tiles: Option<String>,
    /// The items answer whose features the page's table lists.
    pub items: Option<String>,
    /// The layer names inside those tiles (a collection's tiles hold one
    /// layer named after it): known here, the map can ask for its tiles as
    /// soon as it starts, without waiting for the TileJSON first.
    pub base_layer: Option<String>,
    pub layer: Option<String>,
    /// Where the map opens: the extent of the caller's view of the
    /// collection (what its collection answer says), so that the first
    /// tiles asked for are the ones drawn.
    pub bounds: Option<[f64; 4]>,
}

fn page(title: &str, base: &str, body: Markup) -> Response {
    page_with_map(title, base, body, None)
}

fn page_with_map(title: &str, base: &str, body: Markup, map: Option<MapSpec>) -> Response {
    let m = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // No favicon request (it would be a 404 in every log).
                link rel="icon" href="data:,";
                title { (title) " — KFM" }
                style { (STYLE) }
                @if map.is_some() {
                    link rel="stylesheet" href={(base) "/assets/maplibre-gl.css"};
                }
            }
            body {
                nav { a href={(base) "/?f=html"} { "Home" } a href={(base) "/collections?f=html"} { "Collections" } a href={(base) "/openapi.json"} { "OpenAPI" } }
                h1 { (title) }
                @if let Some(m) = &map {
                    div id="kfm-map" data-worker={(base) "/assets/maplibre-gl-csp-worker.js"}
                        data-base-tiles=[m.base_tiles.as_deref()] data-tiles=[m.tiles.as_deref()]
                        data-base-layer=[m.base_tiles.as_ref().and(m.base_layer.as_deref())]
                        data-layer=[m.tiles.as_ref().and(m.layer.as_deref())]
                        data-bounds=[m.bounds.filter(|b| b.iter().all(|v| v.is_finite())).map(|b| format!("{},{},{},{}", b[0], b[1], b[2], b[3]))]
                        data-items=[m.items.as_deref()] data-state="loading" {}
                }
                (body)
                @if map.is_some() {
                    script src={(base) "/assets/maplibre-gl-csp.js"} {}
                    script src={(base) "/assets/kfm-map.js"} {}
                }
            }
        }
    };
    let mut r = bytes_response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        m.into_string().into_bytes(),
    );
    r.headers_mut().insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(CSP),
    );
    r
}

fn badges(
    label: &str,
    license: &str,
    attribution: Option<&(String, String)>,
    generalized: bool,
) -> Markup {
    html! {
        p {
            span class="badge label" title="policy label" { "label: " (label) }
            span class="badge lic" title="license" { "license: " (license) }
            @if generalized {
                span class="badge gen" { "coordinates generalized" }
            }
        }
        @if let Some((_, text)) = attribution {
            p { "Attribution: " em { (text) } }
        }
        @if generalized {
            p class="gen" { "Coordinates on this page were generalized by policy: each feature is shown at the centre of its cell; see dataGeneralizations and coordinateUncertaintyInMeters." }
        }
    }
}

pub fn landing(base: &str, collections: &usize) -> Response {
    page(
        "KFM governed API",
        base,
        html! {
            p { "Every answer here is decided by the pinned policy and recorded in the audit ledger (see the Kfm-Audit-Ref response header)." }
            ul {
                li { a href={(base) "/collections?f=html"} { "Collections" } " (" (collections) " published)" }
                li { a href={(base) "/catalog"} { "DCAT catalog (JSON-LD)" } }
                li { a href={(base) "/conformance"} { "Conformance" } }
                li { a href={(base) "/openapi.json"} { "OpenAPI document" } }
                li { a href={(base) "/steward?f=html"} { "Truth path" } " (data stewards: each dataset's stage, gates and quarantine reports)" }
            }
        },
    )
}

/// A collection as listed: the release, its attribution, generalised or not.
pub type Shown = (Arc<Release>, Option<(String, String)>, bool);

pub fn collections(base: &str, shown: &[Shown]) -> Response {
    page(
        "Collections",
        base,
        html! {
            @if shown.is_empty() { p { "No collection is available to you." } }
            @for (rel, attribution, generalized) in shown {
                section {
                    h2 { a href={(base) "/collections/" (rel.dataset) "?f=html"} { (rel.title) } }
                    (badges(&rel.manifest.policy_label, &rel.manifest.license, attribution.as_ref(), *generalized))
                    p { (rel.description) }
                }
            }
        },
    )
}

pub fn collection(
    base: &str,
    rel: &Release,
    g: &Grant,
    view: &View,
    extent: Option<[f64; 4]>,
    map: MapSpec,
) -> Response {
    let id = &rel.dataset;
    page_with_map(
        &rel.title,
        base,
        html! {
            (badges(&rel.manifest.policy_label, &rel.manifest.license, g.attribution.as_ref(), view.generalized))
            p { (rel.description) }
            p { "Version " code { (rel.version_id) } ", " (view.rows) " features." }
            @if let Some(e) = extent { p { "Extent (as served to you): " (format!("{:.4}, {:.4}, {:.4}, {:.4}", e[0], e[1], e[2], e[3])) } }
            ul {
                li { a href={(base) "/collections/" (id) "/items?f=html"} { "Items" } }
                li { a href={(base) "/collections/" (id) "/items"} { "Items (GeoJSON)" } }
                li { a href={(base) "/collections/" (id) "/queryables"} { "Queryables (what to filter and sort by)" } }
                li { a href={(base) "/collections/" (id) "/stac"} { "STAC Collection" } }
                li { a href={(base) "/collections/" (id) "/prov"} { "Provenance (PROV-JSON)" } }
                li { a href={(base) "/collections/" (id) "/export?format=geojson"} { "Export GeoJSON" } " · " a href={(base) "/collections/" (id) "/export?format=csv"} { "Export CSV" } }
                li { a href={(base) "/collections/" (id) "/tiles/WebMercatorQuad/tilejson.json"} { "Vector tiles (TileJSON)" } }
            }
        },
        Some(map),
    )
}

fn coords(f: &Feature) -> String {
    match f.geometry.as_ref().map(|g| &g.value) {
        Some(geojson::GeometryValue::Point { coordinates: c }) if c.len() >= 2 => {
            format!("{:.5}, {:.5}", c[0], c[1])
        }
        Some(v) => v.type_name().to_owned(),
        None => "(none)".into(),
    }
}

/// A page of items; `matched` when known (nothing filters the
/// collection), `next` the link to the following page.
#[allow(clippy::too_many_arguments)]
pub fn items(
    base: &str,
    rel: &Release,
    g: &Grant,
    view: &View,
    feats: &[&Feature],
    matched: Option<u64>,
    next: Option<String>,
    map: MapSpec,
) -> Response {
    let id = &rel.dataset;
    let mut keys: Vec<&String> = Vec::new();
    for f in feats {
        for k in f.properties.iter().flat_map(|p| p.keys()) {
            if !keys.contains(&k) && keys.len() < 12 {
                keys.push(k);
            }
        }
    }
    page_with_map(
        &format!("{} — items", rel.title),
        base,
        html! {
            (badges(&rel.manifest.policy_label, &rel.manifest.license, g.attribution.as_ref(), view.generalized))
            p {
                @if let Some(m) = matched { (m) " features; " }
                "showing " (feats.len()) "."
            }
            @if let Some(n) = next {
                p { a href=(n) { "Next page" } }
            }
            table {
                tr { th { "id" } th { "coordinates" } @for k in &keys { th { (k) } } }
                @for f in feats {
                    @let fid = match &f.id { Some(geojson::feature::Id::String(s)) => s.clone(), Some(geojson::feature::Id::Number(n)) => n.to_string(), None => String::new() };
                    tr data-fid=(fid) {
                        td { a href={(base) "/collections/" (id) "/items/" (fid) "?f=html"} { (fid) } }
                        td { (coords(f)) }
                        @for k in &keys {
                            td { @match f.property(k.as_str()) { Some(serde_json::Value::String(s)) => (s), Some(serde_json::Value::Null) | None => "", Some(v) => (v.to_string()) } }
                        }
                    }
                }
            }
        },
        Some(map),
    )
}

fn gate_table(gates: &[kfm_pipeline::GateResult]) -> Markup {
    html! {
        table class="gates" {
            tr { th { "gate" } th { "check" } th { "result" } th { "reasons" } }
            @for g in gates {
                tr class={"gate-" (g.status.as_str().replace(' ', "-"))} {
                    td { (format!("{:?}", g.gate)) }
                    td { (g.name) }
                    td { (g.status.as_str()) }
                    td { @for r in &g.reasons { (r) br; } }
                }
            }
        }
    }
}

fn run(r: &crate::routes::steward::Run) -> Markup {
    html! {
        p {
            code { (r.run_id) } " · " (r.operation) " of v" (r.version) " · "
            strong { (r.outcome) } " · finished " (r.finished_at)
            @if let Some(k) = &r.report { " · report " code { (k) } }
        }
        @if let Some(why) = &r.gates_unavailable {
            p class="gen" { "The gate table cannot be shown: " (why) }
        } @else {
            (gate_table(&r.gates))
        }
    }
}

/// The stewards' truth-path page (see `routes::steward`).
pub fn steward(
    base: &str,
    datasets: &[crate::routes::steward::DatasetPath],
    problems: &[String],
) -> Response {
    page(
        "Truth path",
        base,
        html! {
            p { "Every dataset the store knows of: its stage on the truth path (raw → work/quarantine → processed → catalog → published), the gate table of its last run, and its quarantine reports. Shown to stewards only; this view is recorded in the audit ledger." }
            @if !problems.is_empty() {
                h2 { "Problems" }
                ul { @for p in problems { li { (p) } } }
            }
            table id="truth-path" {
                tr { th { "dataset" } th { "stage" } th { "published version" } th { "last run" } th { "quarantined runs" } }
                @for d in datasets {
                    tr data-dataset=(d.dataset) {
                        td { a href={"#ds-" (d.dataset)} { (d.dataset) } }
                        td { span class={"badge stage-" (d.stage)} { (d.stage) } }
                        td { @if let Some(p) = &d.published { code { (p.version_id) } } @else { "none" } }
                        td { @if let Some(r) = &d.last_run { (r.outcome) } }
                        td { (d.quarantined.len()) }
                    }
                }
            }
            @for d in datasets {
                section id={"ds-" (d.dataset)} {
                    h2 { (d.dataset) " " span class={"badge stage-" (d.stage)} { (d.stage) } }
                    @if let Some(p) = &d.published {
                        p {
                            span class="badge label" { "label: " (p.policy_label) }
                            span class="badge lic" { "license: " (p.license) }
                            "Published " code { (p.version_id) } " at " (p.published_at) ", manifest " code { (p.manifest_digest) }
                        }
                    }
                    @if let Some(r) = &d.last_run {
                        h3 { "Last run" }
                        (run(r))
                    }
                    @if !d.quarantined.is_empty() {
                        h3 { "Quarantine reports" }
                        @for r in &d.quarantined { (run(r)) }
                    }
                }
            }
        },
    )
}
