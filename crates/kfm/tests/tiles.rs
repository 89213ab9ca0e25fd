//! Governed vector tiles from the embedded (in-memory) backend: what a
//! caller may see and nothing more, the same decision and audit as items,
//! and never a tile of a version the pointer has left. The PostGIS
//! backend's tiles are checked in serve_postgis.rs.

mod common;

use std::time::{Duration, Instant};

use common::{Server, get, kfm, samples_promoted, token};

const SITES: &str = "ks-sites-synthetic";

#[test]
fn tiles_of_a_restricted_dataset_never_carry_precise_coordinates_to_the_public() {
    if !common::tiles::decoder_available() {
        return;
    }
    let (_d, ws) = samples_promoted();
    let researcher = token(&ws, "researcher", &[SITES]);
    let server = Server::start(&ws, &[]).unwrap();
    common::tiles::check_no_precise_coordinates(&server.addr, SITES, &researcher);
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
}

#[test]
fn tile_requests_are_decided_audited_and_checked() {
    let (_d, ws) = samples_promoted();
    let auditor = token(&ws, "auditor", &[]);
    let server = Server::start(&ws, &[]).unwrap();
    let a = server.addr.clone();

    // Metadata says what items say: label, license, generalised.
    let tj = get(
        &a,
        &format!("/collections/{SITES}/tiles/WebMercatorQuad/tilejson.json"),
        None,
        &[],
    );
    assert_eq!(tj.status, 200, "{}", tj.text());
    let doc = tj.json();
    assert_eq!(doc["tilejson"], "3.0.0");
    assert_eq!(doc["kfm:generalized"], true);
    assert_eq!(doc["vector_layers"][0]["id"], SITES);
    let tpl = doc["tiles"][0].as_str().unwrap();
    assert!(
        tpl.ends_with(&format!(
            "/collections/{SITES}/tiles/WebMercatorQuad/{{z}}/{{y}}/{{x}}"
        )),
        "{tpl}"
    );
    assert!(
        doc["attribution"]
            .as_str()
            .is_some_and(|s| !s.contains('<'))
    );
    let meta = get(
        &a,
        &format!("/collections/{SITES}/tiles/WebMercatorQuad"),
        None,
        &[],
    )
    .json();
    assert_eq!(meta["dataType"], "vector");
    assert_eq!(meta["kfm:generalized"], true);
    assert!(meta["boundingBox"]["lowerLeft"].is_array(), "{meta}");
    let list = get(&a, &format!("/collections/{SITES}/tiles"), None, &[]).json();
    assert_eq!(
        list["tilesets"][0]["tileMatrixSetURI"],
        "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
    );
    let tms = get(&a, "/tileMatrixSets/WebMercatorQuad", None, &[]).json();
    assert_eq!(tms["tileMatrices"].as_array().unwrap().len(), 25);
    let conf = get(&a, "/conformance", None, &[]).json().to_string();
    assert!(conf.contains("ogcapi-tiles-1/1.0/conf/mvt"));

    // A tile is audited like a page of items.
    let t = get(
        &a,
        "/collections/ks-counties/tiles/WebMercatorQuad/6/24/14",
        None,
        &[],
    );
    assert_eq!(t.status, 200, "{}", t.text());
    assert!(!t.body.is_empty());
    let entry = get(
        &a,
        &format!("/audit/{}", t.audit_ref()),
        Some(&auditor),
        &[],
    );
    assert_eq!(entry.status, 200, "{}", entry.text());
    assert_eq!(entry.json()["entry"]["action"], "read", "{}", entry.text());
    // Nothing there: 204.
    let empty = get(
        &a,
        "/collections/ks-counties/tiles/WebMercatorQuad/6/0/0",
        None,
        &[],
    );
    assert_eq!(empty.status, 204);

    // Malformed tiles are 400 naming the part; a dataset nobody may read
    // and one that does not exist answer alike.
    for (path, needle) in [
        (
            "/collections/ks-counties/tiles/WebMercatorQuad/25/0/0",
            "zoom level 25",
        ),
        (
            "/collections/ks-counties/tiles/WebMercatorQuad/2/0/4",
            "outside zoom level 2",
        ),
        (
            "/collections/ks-counties/tiles/WebMercatorQuad/x/0/0",
            "tileMatrix",
        ),
        (
            "/collections/ks-counties/tiles/WebMercatorQuad/1/-1/0",
            "tileRow",
        ),
        (
            "/collections/ks-counties/tiles/WebMercatorQuad/1/0/0?x=1",
            "unknown query parameter",
        ),
    ] {
        let r = get(&a, path, None, &[]);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains(needle), "{path}: {}", r.text());
    }
    let none = get(
        &a,
        "/collections/no-such/tiles/WebMercatorQuad/0/0/0",
        None,
        &[],
    );
    let hidden = get(
        &a,
        "/collections/ks-markers-unlicensed/tiles/WebMercatorQuad/0/0/0",
        None,
        &[],
    );
    assert_eq!(none.status, 404);
    assert_eq!(
        (hidden.status, hidden.body.clone()),
        (404, none.body.clone())
    );
    let other_tms = get(
        &a,
        "/collections/ks-counties/tiles/WorldCRS84Quad/0/0/0",
        None,
        &[],
    );
    assert_eq!(other_tms.status, 404);

    // The HTML views carry a map, drawn from assets bundled into the binary,
    // under a policy that lets the page talk to nothing else.
    let page = get(
        &a,
        &format!("/collections/{SITES}/items?f=html&limit=5"),
        None,
        &[],
    );
    assert_eq!(page.status, 200);
    let csp = page
        .headers
        .get("content-security-policy")
        .cloned()
        .unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text();
    assert!(html.contains("id=\"kfm-map\""), "{html}");
    assert!(
        !html.contains("https://"),
        "a page must not load anything from elsewhere"
    );
    for asset in [
        "maplibre-gl-csp.js",
        "maplibre-gl-csp-worker.js",
        "maplibre-gl.css",
        "kfm-map.js",
    ] {
        let r = get(&a, &format!("/assets/{asset}"), None, &[]);
        assert_eq!(r.status, 200, "{asset}");
        assert!(r.body.len() > 1000, "{asset}");
    }
    assert_eq!(get(&a, "/assets/..%2Fkfm.toml", None, &[]).status, 404);
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
}

/// The tile cache never outlives the release it was drawn from: with v1's
/// tile cached, a promotion of a changed v2 while serving, and the same
/// tile asked for all along: once the items say v2, every tile asked for
/// afterwards is v2's, never v1's.
#[test]
fn a_tile_asked_for_after_a_promotion_is_the_new_versions() {
    let (_d, ws) = samples_promoted();
    let server = Server::start(&ws, &[]).unwrap();
    let a = server.addr.clone();
    let tile = "/collections/ks-places/tiles/WebMercatorQuad/0/0/0";
    let items = "/collections/ks-places/items?limit=1";
    let v1 = get(&a, tile, None, &[]).body;
    assert!(!v1.is_empty());
    assert_eq!(get(&a, tile, None, &[]).body, v1, "the cached tile");

    let src = ws.join("datasets/ks-places.csv");
    let mut csv = std::fs::read_to_string(&src).unwrap();
    csv.push_str("Nowhere,38.5,-98.5,US,KS,009\n");
    std::fs::write(&src, csv).unwrap();
    let o = kfm(&ws, &["ingest", "datasets/ks-places.yaml"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let promote = std::thread::spawn({
        let ws = ws.clone();
        move || kfm(&ws, &["promote", "ks-places"])
    });
    let started = Instant::now();
    let mut moved = false;
    let mut after = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        let t = get(&a, tile, None, &[]).body;
        if moved {
            assert_ne!(t, v1, "a tile of v1 was served after v2 was");
            after.push(t);
            if after.len() >= 20 {
                break;
            }
        }
        if get(&a, items, None, &[]).json()["kfm:version_id"] == "ks-places@v2" {
            moved = true;
        }
    }
    let o = promote.join().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(moved, "v2 was never served");
    let v2 = get(&a, tile, None, &[]).body;
    assert!(after.iter().all(|t| *t == v2));
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
}
