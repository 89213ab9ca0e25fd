//! OGC API – Features Part 2 (coordinate reference systems by reference):
//! answers in CRS84, EPSG:4326 (latitude first) and EPSG:3857 with
//! `Content-Crs`, and a `bbox` given in any of them, each the same
//! features as the CRS84 question. Both backends agree byte for byte on
//! these (serve_postgis.rs lists them in its differential test).

mod common;

use common::{Server, get, samples_promoted};
use serde_json::Value;

const E4326: &str = "http%3A%2F%2Fwww.opengis.net%2Fdef%2Fcrs%2FEPSG%2F0%2F4326";
const E3857: &str = "http%3A%2F%2Fwww.opengis.net%2Fdef%2Fcrs%2FEPSG%2F0%2F3857";

fn positions(doc: &Value) -> Vec<(String, f64, f64)> {
    doc["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let c = &f["geometry"]["coordinates"];
            (
                f["id"].to_string(),
                c[0].as_f64().unwrap(),
                c[1].as_f64().unwrap(),
            )
        })
        .collect()
}

fn ids(doc: &Value) -> Vec<String> {
    positions(doc).into_iter().map(|(i, _, _)| i).collect()
}

#[test]
fn answers_and_bboxes_in_every_offered_crs() {
    let (_d, ws) = samples_promoted();
    let server = Server::start(&ws, &[]).unwrap();
    let a = server.addr.clone();
    let base = "/collections/ks-places/items?limit=50";

    let crs84 = get(&a, base, None, &[]);
    assert_eq!(
        crs84.headers.get("content-crs").map(String::as_str),
        Some("<http://www.opengis.net/def/crs/OGC/1.3/CRS84>")
    );
    let p84 = positions(&crs84.json());

    let r = get(&a, &format!("{base}&crs={E4326}"), None, &[]);
    assert_eq!(
        r.headers.get("content-crs").map(String::as_str),
        Some("<http://www.opengis.net/def/crs/EPSG/0/4326>")
    );
    for ((i, lon, lat), (j, a1, a2)) in p84.iter().zip(positions(&r.json())) {
        assert_eq!((i, *lat, *lon), (&j, a1, a2), "EPSG:4326 is latitude first");
    }
    // The cached page keeps its header.
    let again = get(&a, &format!("{base}&crs={E4326}"), None, &[]);
    assert_eq!(
        again.headers.get("content-crs"),
        r.headers.get("content-crs")
    );
    assert_eq!(again.body, r.body);

    let m = get(&a, &format!("{base}&crs={E3857}"), None, &[]).json();
    for ((_, lon, lat), (_, x, y)) in p84.iter().zip(positions(&m)) {
        let ex = lon.to_radians() * 6_378_137.0;
        let ey = (std::f64::consts::FRAC_PI_4 + lat.to_radians() / 2.0)
            .tan()
            .ln()
            * 6_378_137.0;
        assert!(
            (x - ex).abs() < 0.01 && (y - ey).abs() < 0.01,
            "{x},{y} vs {ex},{ey}"
        );
    }

    // The same box in three CRSs selects the same features.
    let by84 = ids(&get(
        &a,
        "/collections/ks-places/items?limit=500&bbox=-98,38,-97,39",
        None,
        &[],
    )
    .json());
    assert!(!by84.is_empty());
    let by4326 = ids(&get(
        &a,
        &format!("/collections/ks-places/items?limit=500&bbox=38,-98,39,-97&bbox-crs={E4326}"),
        None,
        &[],
    )
    .json());
    assert_eq!(by84, by4326);
    let (x0, y0) = (
        -98f64.to_radians() * 6_378_137.0,
        (std::f64::consts::FRAC_PI_4 + 38f64.to_radians() / 2.0)
            .tan()
            .ln()
            * 6_378_137.0,
    );
    let (x1, y1) = (
        -97f64.to_radians() * 6_378_137.0,
        (std::f64::consts::FRAC_PI_4 + 39f64.to_radians() / 2.0)
            .tan()
            .ln()
            * 6_378_137.0,
    );
    let by3857 = ids(&get(
        &a,
        &format!(
            "/collections/ks-places/items?limit=500&bbox={x0},{y0},{x1},{y1}&bbox-crs={E3857}"
        ),
        None,
        &[],
    )
    .json());
    assert_eq!(by84, by3857);

    // What is not offered is a 400 naming the parameter.
    for (path, needle) in [
        (
            format!("{base}&crs=EPSG:4326"),
            "crs \"EPSG:4326\" is not offered",
        ),
        (
            format!("{base}&bbox=1,2,3,4&bbox-crs=urn:x"),
            "bbox-crs \"urn:x\" is not offered",
        ),
        (
            format!("{base}&bbox=38,-98,39&bbox-crs={E4326}"),
            "minlat,minlon,maxlat,maxlon",
        ),
        (
            "/collections/ks-places/items/1?crs=x".to_owned(),
            "crs \"x\" is not offered",
        ),
    ] {
        let r = get(&a, &path, None, &[]);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let why = r.json()["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(why.contains(needle), "{path}: {why}");
    }
    let c = get(&a, "/collections/ks-places", None, &[]).json();
    assert_eq!(
        c["storageCrs"],
        "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
    );
    assert_eq!(c["crs"].as_array().unwrap().len(), 3);
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
}

/// The oas30 class is backed by an OpenAPI 3.0 document (the 3.1 one stays
/// under its own link): the same paths, nothing 3.0 does not know.
#[test]
fn an_openapi_30_document_backs_the_oas30_class() {
    let (_d, ws) = samples_promoted();
    let server = Server::start(&ws, &[]).unwrap();
    let a = server.addr.clone();
    let landing = get(&a, "/", None, &[]).json();
    let descs: Vec<&Value> = landing["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["rel"] == "service-desc")
        .collect();
    assert_eq!(
        descs[0]["type"],
        "application/vnd.oai.openapi+json;version=3.0"
    );
    let v30 = get(&a, "/openapi-3.0.json", None, &[]).json();
    let v31 = get(&a, "/openapi.json", None, &[]).json();
    assert_eq!(v30["openapi"], "3.0.3");
    assert_eq!(v31["openapi"], "3.1.0");
    assert_eq!(
        v30["paths"].as_object().unwrap().keys().collect::<Vec<_>>(),
        v31["paths"].as_object().unwrap().keys().collect::<Vec<_>>()
    );
    assert!(v30["info"]["license"].get("identifier").is_none());
    assert!(v30["info"]["license"]["url"].is_string());
    // 3.1-only schema forms: type arrays, null types, const, examples arrays.
    fn walk(v: &Value, at: &str) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    assert!(
                        !(k == "type" && (x.is_array() || x == "null")) && k != "const",
                        "{at}/{k}: {x}"
                    );
                    assert!(!(k == "examples" && x.is_array()), "{at}/{k}");
                    walk(x, &format!("{at}/{k}"));
                }
            }
            Value::Array(xs) => xs.iter().for_each(|x| walk(x, at)),
            _ => {}
        }
    }
    walk(&v30, "");
    let conf = get(&a, "/conformance", None, &[]).json().to_string();
    assert!(conf.contains("ogcapi-features-1/1.0/conf/oas30"));
    assert!(conf.contains("ogcapi-features-2/1.0/conf/crs"));
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
}
