//! `kfm serve` with the PostGIS backend against the in-memory backend: the
//! same workspace, the same requests, byte for byte; and the query
//! language under attack through the database. Needs PostgreSQL with
//! PostGIS (skipped with a message without it, unless
//! KFM_REQUIRE_SERVICES=1).

mod common;

use std::path::Path;

use common::pg::{Db, psql};
use common::{Resp, Server, get, samples_promoted, token};
use serde_json::Value;

const BASE: &str = "http://kfm.test";

fn projected(ws: &Path, db: &Db) {
    let o = std::process::Command::new(common::bin())
        .current_dir(ws)
        .env("KFM_WORKSPACE", ws)
        .env("KFM_POSTGRES_URL", db.url())
        .args(["projection", "run", "--once"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Percent-encodes everything but letters and digits.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `kfm serve` on `ws` with the PostGIS backend on `db`.
fn postgis_server(ws: &Path, db: &Db) -> Server {
    let url = db.url();
    Server::start(
        ws,
        &[("KFM_SERVE_BACKEND", "postgis"), ("KFM_POSTGRES_URL", &url)],
    )
    .unwrap()
}

/// Every route a caller can ask, for the datasets published.
fn paths() -> Vec<String> {
    let mut p: Vec<String> = [
        "/",
        "/?f=html",
        "/conformance",
        "/collections",
        "/collections?f=html",
        "/catalog",
        "/search?q=kansas",
        "/search?q=wichita,topeka&limit=3",
        "/search?q=synthetic%20site%2012",
        "/search?q=burial&limit=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for ds in [
        "ks-places",
        "ks-counties",
        "ks-sites-synthetic",
        "no-such-thing",
    ] {
        let c = format!("/collections/{ds}");
        for suffix in [
            "",
            "?f=html",
            "/queryables",
            "/stac",
            "/prov",
            "/export?format=geojson",
            "/export?format=csv",
            "/items",
            "/items?limit=7",
            "/items?limit=100&f=html",
            "/items?offset=5&limit=3",
            "/items?bbox=-98,38,-97,39&limit=50",
            "/items?bbox=-101.5,37.5,-99.5,38.5",
            "/items?bbox=170,-10,-170,10",
            "/items?datetime=1980-01-01/1990-12-31&limit=100",
            "/items?datetime=../1960-06-30",
            "/items?datetime=1975-03-14",
            "/items?sortby=-name&limit=25",
            "/items?sortby=name,-admin2&limit=25",
            "/items?sortby=period,-recorded&limit=40",
            "/items?q=synthetic%20site%2011",
            "/items?q=wichita,hays",
            "/items?q=burial&sortby=name",
            "/items?admin2=041",
            "/items?period=Woodland&limit=100",
            "/items?state=Kansas&limit=2",
            "/items/1",
            "/items/20137",
            "/items/SYN-0007",
            "/items/SYN-0007?f=html",
            "/items/nope",
            "/items?limit=20&crs=http%3A%2F%2Fwww.opengis.net%2Fdef%2Fcrs%2FEPSG%2F0%2F4326",
            "/items?limit=20&crs=http%3A%2F%2Fwww.opengis.net%2Fdef%2Fcrs%2FEPSG%2F0%2F3857",
            "/items?bbox=38,-98,39,-97&bbox-crs=http%3A%2F%2Fwww.opengis.net%2Fdef%2Fcrs%2FEPSG%2F0%2F4326",
            "/items?bbox=-10909310,4579425,-10797990,4721671&bbox-crs=http%3A%2F%2Fwww.opengis.net%2Fdef%2Fcrs%2FEPSG%2F0%2F3857&limit=50",
            "/items/SYN-0007?crs=http%3A%2F%2Fwww.opengis.net%2Fdef%2Fcrs%2FEPSG%2F0%2F3857",
        ] {
            p.push(format!("{c}{suffix}"));
        }
        for (lang, f) in [
            ("cql2-text", "name LIKE 'A%' AND admin2 <> '041'"),
            (
                "cql2-text",
                "CASEI(name) LIKE 'w%' OR name IN ('Hays', 'Salina')",
            ),
            ("cql2-text", "NOT (name < 'M') AND name IS NOT NULL"),
            (
                "cql2-text",
                "S_INTERSECTS(geometry, BBOX(-99, 38, -97, 39.5))",
            ),
            (
                "cql2-text",
                "S_WITHIN(geometry, POLYGON((-100 37, -96 37, -96 40, -100 40, -100 37)))",
            ),
            ("cql2-text", "S_INTERSECTS(geometry, POINT(-97.5 38.5))"),
            (
                "cql2-text",
                "T_AFTER(recorded, TIMESTAMP('2000-01-01T00:00:00Z'))",
            ),
            (
                "cql2-text",
                "T_INTERSECTS(recorded, INTERVAL('1960-01-01', '1970-12-31')) AND kind = 'camp'",
            ),
            (
                "cql2-text",
                "recorded >= DATE('2015-06-01') OR period BETWEEN 'Archaic' AND 'Plains'",
            ),
            ("cql2-text", "coordinateUncertaintyInMeters > 7000"),
            ("cql2-text", "geoid > '20100' AND name <> state"),
            (
                "cql2-json",
                r#"{"op":"and","args":[{"op":"like","args":[{"property":"name"},"S%"]},{"op":"s_intersects","args":[{"property":"geometry"},{"type":"Polygon","coordinates":[[[-102,37],[-94,37],[-94,40],[-102,40],[-102,37]]]}]}]}"#,
            ),
        ] {
            p.push(format!(
                "{c}/items?limit=30&filter-lang={lang}&filter={}",
                enc(f)
            ));
        }
    }
    // Evidence of a feature of each published version.
    for vid in ["ks-places@v1", "ks-counties@v1", "ks-sites-synthetic@v1"] {
        for fid in ["1", "20137", "SYN-0003", "nope"] {
            p.push(format!("/evidence/{vid}/{fid}"));
        }
    }
    p
}

/// What must be equal: status, content type and bytes.
fn answer(r: &Resp) -> (u16, Option<String>, Vec<u8>) {
    (
        r.status,
        r.headers.get("content-type").cloned(),
        r.body.clone(),
    )
}

/// Follows `next` links from `first` on one server, collecting the pages.
fn all_pages(addr: &str, first: &str, tok: Option<&str>) -> Vec<Resp> {
    let mut out = Vec::new();
    let mut path = first.to_owned();
    for _ in 0..400 {
        let r = get(addr, &path, tok, &[]);
        let next = (r.status == 200).then(|| r.json()).and_then(|v: Value| {
            v["links"]
                .as_array()?
                .iter()
                .find(|l| l["rel"] == "next")
                .and_then(|l| l["href"].as_str().map(str::to_owned))
        });
        out.push(r);
        match next {
            Some(n) => path = n.trim_start_matches(&format!("http://{addr}")).to_owned(),
            None => return out,
        }
    }
    panic!("more than 400 pages from {first}");
}

#[test]
fn the_postgis_backend_answers_every_route_with_the_memory_backends_bytes() {
    let Some(db) = Db::fresh() else { return };
    let (_dir, ws) = samples_promoted();
    projected(&ws, &db);
    let researcher = token(&ws, "researcher", &["ks-sites-synthetic"]);
    let plain = token(&ws, "researcher", &[]);
    let auditor = token(&ws, "auditor", &[]);
    let memory = Server::start(&ws, &[]).unwrap();
    let postgis = postgis_server(&ws, &db);
    let roles: [(&str, Option<&str>); 4] = [
        ("anonymous", None),
        ("researcher approved", Some(&researcher)),
        ("researcher not approved", Some(&plain)),
        ("auditor", Some(&auditor)),
    ];
    let mut compared = 0;
    let mut statuses = std::collections::BTreeMap::new();
    for p in paths() {
        for (role, tok) in roles {
            let a = get(&memory.addr, &p, tok, &[]);
            let b = get(&postgis.addr, &p, tok, &[]);
            let (a, b) = (
                rebase(answer(&a), &memory.addr),
                rebase(answer(&b), &postgis.addr),
            );
            assert_eq!(
                (a.0, &a.1),
                (b.0, &b.1),
                "{role} {p}: status/type differ; bodies:\nmemory:  {}\npostgis: {}",
                String::from_utf8_lossy(&a.2),
                String::from_utf8_lossy(&b.2)
            );
            assert!(
                a.2 == b.2,
                "{role} {p}: bodies differ\nmemory:  {}\npostgis: {}",
                String::from_utf8_lossy(&a.2)
                    .chars()
                    .take(3000)
                    .collect::<String>(),
                String::from_utf8_lossy(&b.2)
                    .chars()
                    .take(3000)
                    .collect::<String>()
            );
            *statuses.entry(a.0).or_insert(0) += 1;
            compared += 1;
        }
    }
    // Every page of a paged walk, in both orders, for each role.
    for (first, (role, tok)) in [
        ("/collections/ks-places/items?limit=37", roles[0]),
        (
            "/collections/ks-places/items?limit=50&sortby=-admin2,name",
            roles[0],
        ),
        (
            "/collections/ks-sites-synthetic/items?limit=13&sortby=recorded",
            roles[0],
        ),
        (
            "/collections/ks-sites-synthetic/items?limit=13&sortby=recorded",
            roles[1],
        ),
        (
            "/collections/ks-counties/items?limit=9&filter=name%20LIKE%20%27%25a%25%27",
            roles[3],
        ),
    ] {
        let a = all_pages(&memory.addr, first, tok);
        let b = all_pages(&postgis.addr, first, tok);
        assert_eq!(a.len(), b.len(), "{role} {first}: page counts differ");
        assert!(a.len() > 1, "{first}: expected several pages");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                rebase(answer(x), &memory.addr),
                rebase(answer(y), &postgis.addr),
                "{role} {first}"
            );
        }
        compared += a.len();
    }
    eprintln!("{compared} answers compared byte for byte; statuses {statuses:?}");
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 300,
        "{statuses:?}"
    );
    assert!(statuses.contains_key(&404) && statuses.contains_key(&400));
}

/// Links carry the server's own address: written as one base for both.
fn rebase(a: (u16, Option<String>, Vec<u8>), addr: &str) -> (u16, Option<String>, Vec<u8>) {
    let from = format!("http://{addr}");
    let text = String::from_utf8_lossy(&a.2).replace(&from, BASE);
    (a.0, a.1, text.into_bytes())
}

/// Hostile filters, property names, sort keys and search words: refused
/// with a 400 that names what is wrong, or answered as the values they
/// are; the database is untouched afterwards.
#[test]
fn hostile_queries_never_reach_sql_as_text() {
    let Some(db) = Db::fresh() else { return };
    let (_dir, ws) = samples_promoted();
    projected(&ws, &db);
    let postgis = postgis_server(&ws, &db);
    let items = "/collections/ks-places/items";
    let refused: &[(&str, &str)] = &[
        (
            "filter=name%20%3D%20%27x%27%3B%20DROP%20TABLE%20kfm.layers%3B%20--",
            "filter",
        ),
        ("filter=pg_sleep(5)%20%3D%201", "pg_sleep"),
        (
            "filter=%22na%22%22me%22%20%3D%20%27x%27",
            "unknown property",
        ),
        (
            "filter=%22name%27)%3B%20DROP%20TABLE%20x%3B--%22%20%3D%20%27a%27",
            "unknown property",
        ),
        ("filter=name%20%3D%20current_user", "current_user"),
        ("filter=version()%20%3D%20%27x%27", "version"),
        (
            "filter=name%20%2F*%20comment%20*%2F%20%3D%20%27x%27",
            "filter",
        ),
        (
            "filter-lang=cql2-json&filter=%7B%22op%22%3A%22%3D%22%2C%22args%22%3A%5B%7B%22property%22%3A%22props%22%7D%2C1%5D%7D",
            "props",
        ),
        (
            "filter-lang=cql2-json&filter=%7B%22op%22%3A%22lo_import%22%2C%22args%22%3A%5B%22%2Fetc%2Fpasswd%22%5D%7D",
            "lo_import",
        ),
        ("filter=admin2%20%3E%205", "cannot be compared"),
        ("sortby=name%3BDROP%20TABLE%20x", "unknown property"),
        ("sortby=-(select%201)", "unknown property"),
        ("nam%27e--=Abilene", "unknown query parameter"),
        ("cursor=W10", "cursor"),
        ("cursor=bm90IGpzb24", "cursor"),
        ("datetime=2020-01-01%27%3B--", "datetime"),
        ("filter=name%20LIKE%20%27a%5C%27", "escape"),
    ];
    for (q, names) in refused {
        let r = get(&postgis.addr, &format!("{items}?{q}"), None, &[]);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(
            r.text().contains(names),
            "{q}: the error should name {names:?}: {}",
            r.text()
        );
    }
    // Values are values: quotes, comments and semicolons are searched for
    // as text and simply match nothing.
    for q in [
        "filter=name%20%3D%20%27%27%27%3B%20DROP%20TABLE%20kfm.layers%3B%20--%27",
        "filter=name%20%3D%20%27x%27%27%20OR%20%27%271%27%27%3D%27%271%27",
        "name=Abilene%27%20OR%20%271%27%3D%271",
        "q=%27)%3B%20DROP%20TABLE%20kfm.projections%3B%20--",
        "filter=name%20LIKE%20%27%25%27%27%3B--%25%27",
    ] {
        let r = get(&postgis.addr, &format!("{items}?{q}"), None, &[]);
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        assert_eq!(r.json()["numberReturned"], 0, "{q}");
    }
    let ok = get(&postgis.addr, &format!("{items}?name=Abilene"), None, &[]);
    assert_eq!(ok.json()["numberReturned"], 1, "{}", ok.text());
    // Nothing was dropped or changed.
    assert_eq!(psql(&db.0, "SELECT count(*) FROM kfm.projections"), "3");
    let v = std::process::Command::new(common::bin())
        .current_dir(&ws)
        .env("KFM_WORKSPACE", &ws)
        .env("KFM_POSTGRES_URL", db.url())
        .args(["projection", "verify"])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

/// A dataset only staff may read, with a word found nowhere else.
fn internal_dataset(ws: &Path) {
    let d = ws.join("datasets");
    std::fs::write(
        d.join("ks-zebra.csv"),
        "name,lat,lon\nZebra crossing one,38.1,-97.1\nZebra crossing two,38.2,-97.2\nPlain stop,38.3,-97.3\n",
    )
    .unwrap();
    std::fs::write(
        d.join("ks-zebra.yaml"),
        "id: ks-zebra\ntitle: Zebra crossings (internal)\ndescription: Internal notes on zebra crossings.\n\
         publisher: {name: KFM project, url: \"https://kfm.example.org/\"}\n\
         contact: {name: KFM data stewards, email: stewards@kfm.example.org}\n\
         keywords: [zebra]\n\
         source: {uri: ks-zebra.csv, format: csv, lat_column: lat, lon_column: lon}\n\
         license: {spdx: CC0-1.0, rights_holder: KFM project}\n\
         sensitivity: {policy_label: internal}\n\
         qa: {min_features: 1}\n",
    )
    .unwrap();
    for args in [
        &["ingest", "datasets/ks-zebra.yaml"][..],
        &["promote", "ks-zebra"][..],
    ] {
        let o = common::kfm(ws, args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Search is governed per collection: what the caller may not read is
/// not found, not counted and not hinted at, by either backend.
#[test]
fn a_search_never_reveals_what_the_caller_may_not_read() {
    let Some(db) = Db::fresh() else { return };
    let (_dir, ws) = samples_promoted();
    internal_dataset(&ws);
    projected(&ws, &db);
    let staff = token(&ws, "steward", &[]);
    let memory = Server::start(&ws, &[]).unwrap();
    let postgis = postgis_server(&ws, &db);
    for s in [&memory, &postgis] {
        let anon = get(&s.addr, "/search?q=zebra", None, &[]);
        assert_eq!(anon.status, 200, "{}", anon.text());
        assert_eq!(
            anon.json()["collections"],
            serde_json::json!([]),
            "{}",
            anon.text()
        );
        // Shaped exactly like a search for a word that is nowhere.
        let none = get(&s.addr, "/search?q=qqqqq", None, &[]);
        assert_eq!(
            anon.text().replace("zebra", "qqqqq"),
            none.text(),
            "a denied match must leave no trace"
        );
        // The same for a collection's items: the one 404.
        let hidden = get(&s.addr, "/collections/ks-zebra/items?q=zebra", None, &[]);
        let missing = get(&s.addr, "/collections/ks-nothing/items?q=zebra", None, &[]);
        assert_eq!(
            (hidden.status, hidden.text()),
            (missing.status, missing.text())
        );
        // Staff find it, metadata and features alike.
        let found = get(&s.addr, "/search?q=zebra", Some(&staff), &[]);
        let c = &found.json()["collections"];
        assert_eq!(c.as_array().map(Vec::len), Some(1), "{}", found.text());
        assert_eq!(c[0]["id"], "ks-zebra");
        assert_eq!(c[0]["kfm:metadata_matches"], true);
        assert_eq!(c[0]["numberReturned"], 2, "{}", found.text());
        // The sensitive sample is searched through the caller's view: its
        // words are found, its precise coordinates are not served.
        let sites = get(
            &s.addr,
            "/search?q=synthetic%20site%2012&limit=100",
            None,
            &[],
        );
        let v = sites.json();
        let entry = v["collections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "ks-sites-synthetic")
            .cloned()
            .unwrap_or_else(|| panic!("{}", sites.text()));
        assert_eq!(entry["kfm:generalized"], true);
        for f in entry["features"].as_array().unwrap() {
            assert!(
                f["properties"]["dataGeneralizations"].is_string(),
                "{f}: served generalized"
            );
        }
    }
}

/// A promotion moves the pointer before the projector has loaded the new
/// version: the PostGIS backend then answers 503 (retry shortly) for its
/// features, never the old version's, and serves the new one once loaded.
#[test]
fn a_promoted_version_is_served_from_postgis_only_once_it_is_projected() {
    let Some(db) = Db::fresh() else { return };
    let (_dir, ws) = samples_promoted();
    projected(&ws, &db);
    let postgis = postgis_server(&ws, &db);
    let items = "/collections/ks-places/items?limit=1";
    let v1 = get(&postgis.addr, items, None, &[]);
    assert_eq!(v1.json()["kfm:version_id"], "ks-places@v1");
    let src = ws.join("datasets/ks-places.csv");
    let mut csv = std::fs::read_to_string(&src).unwrap();
    csv.push_str("Nowhere,38.5,-98.5,US,KS,009\n");
    std::fs::write(&src, csv).unwrap();
    for args in [
        &["ingest", "datasets/ks-places.yaml"][..],
        &["promote", "ks-places"][..],
    ] {
        let o = common::kfm(&ws, args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The server learns of the move at once; v2 is not projected yet.
    assert!(
        common::eventually(std::time::Duration::from_secs(30), || {
            get(&postgis.addr, items, None, &[]).status == 503
        }),
        "the new version must not be served before it is projected"
    );
    let pending = get(&postgis.addr, items, None, &[]);
    assert_eq!(
        pending.headers.get("retry-after").map(String::as_str),
        Some("2")
    );
    assert!(
        pending.text().contains("being projected"),
        "{}",
        pending.text()
    );
    projected(&ws, &db);
    assert!(
        common::eventually(std::time::Duration::from_secs(30), || {
            let r = get(&postgis.addr, items, None, &[]);
            r.status == 200 && r.json()["kfm:version_id"] == "ks-places@v2"
        }),
        "v2 is served once projected"
    );
    let r = get(&postgis.addr, items, None, &[]);
    assert_eq!(r.json()["numberMatched"], 217);

    // The database gone: the server says it is not ready, and a feature
    // read answers 503 rather than anything else.
    psql("postgres", &format!("DROP DATABASE {} WITH (FORCE)", db.0));
    assert!(
        common::eventually(std::time::Duration::from_secs(30), || {
            get(&postgis.addr, "/readyz", None, &[]).status == 503
        }),
        "readiness follows the database"
    );
    let ready = get(&postgis.addr, "/readyz", None, &[]);
    assert!(ready.text().contains("projections"), "{}", ready.text());
    let r = get(
        &postgis.addr,
        "/collections/ks-places/items?limit=3",
        None,
        &[],
    );
    assert_eq!(r.status, 503, "{}", r.text());
}

/// A policy that redacts a property: neither backend serves it, lets it be
/// filtered, sorted or searched, or names it in queryables or exports; and
/// the two still agree byte for byte.
#[test]
fn a_redacted_property_is_neither_served_nor_queryable_by_either_backend() {
    let Some(db) = Db::fresh() else { return };
    let (_dir, ws) = samples_promoted();
    projected(&ws, &db);
    let rego = ws.join("policy/kfm/authz.rego");
    let mut text = std::fs::read_to_string(&rego).unwrap();
    text.push_str(
        "\n# Test: the places' names are withheld from everyone but staff.\n\
         obligation_set contains {\"type\": \"redact_fields\", \"fields\": [\"name\"]} if {\n\
         \tdataset == \"ks-places\"\n\
         \tnot staff\n\
         }\n",
    );
    std::fs::write(&rego, text).unwrap();
    let o = common::kfm(&ws, &["policy", "pin", "--env", "dev"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let memory = Server::start(&ws, &[]).unwrap();
    let postgis = postgis_server(&ws, &db);
    for p in [
        "/collections/ks-places/items?limit=50",
        "/collections/ks-places/items/1",
        "/collections/ks-places/queryables",
        "/collections/ks-places/export?format=csv",
        "/collections/ks-places/export?format=geojson",
        "/collections/ks-places/items?q=abilene",
        "/search?q=abilene",
        "/collections/ks-places/items?filter=name%20%3D%20%27Abilene%27",
        "/collections/ks-places/items?sortby=name",
        "/collections/ks-places/items?name=Abilene",
    ] {
        let a = rebase(answer(&get(&memory.addr, p, None, &[])), &memory.addr);
        let b = rebase(answer(&get(&postgis.addr, p, None, &[])), &postgis.addr);
        assert_eq!(a, b, "{p}");
        let body = String::from_utf8_lossy(&a.2).to_lowercase();
        assert!(
            !body.contains("abilene") || p.contains("abilene"),
            "{p} served the redacted name: {body}"
        );
        if p.contains("filter=") || p.contains("sortby=") || p.contains("name=") {
            assert_eq!(
                a.0, 400,
                "{p}: a redacted property cannot be queried: {body}"
            );
        }
    }
    let q = get(
        &postgis.addr,
        "/collections/ks-places/items?q=abilene",
        None,
        &[],
    );
    assert_eq!(
        q.json()["numberReturned"],
        0,
        "a redacted property is not searched"
    );
    let csv = get(
        &postgis.addr,
        "/collections/ks-places/export?format=csv",
        None,
        &[],
    );
    assert!(
        !csv.text()
            .lines()
            .any(|l| l.starts_with("id,") && l.contains(",name")),
        "{}",
        csv.text()
    );
}

/// Tiles drawn by PostGIS (`ST_AsMVT`) keep the membrane: an anonymous
/// caller's tiles of the restricted dataset come from its generalised
/// table only, an approved researcher's hold the precise positions; and a
/// tile of a polygon layer carries each feature's KFM id and properties.
#[test]
fn postgis_tiles_never_carry_precise_coordinates_to_the_public() {
    let Some(db) = Db::fresh() else { return };
    if !common::tiles::decoder_available() {
        return;
    }
    let (_dir, ws) = samples_promoted();
    projected(&ws, &db);
    let researcher = token(&ws, "researcher", &["ks-sites-synthetic"]);
    let server = postgis_server(&ws, &db);
    common::tiles::check_no_precise_coordinates(&server.addr, "ks-sites-synthetic", &researcher);
    let t = get(
        &server.addr,
        "/collections/ks-counties/tiles/WebMercatorQuad/6/24/14",
        None,
        &[],
    );
    assert_eq!(t.status, 200, "{}", t.text());
    let decoded = common::tiles::decode(&[t.body]);
    let fs = decoded[0]["ks-counties"]["features"].as_array().unwrap();
    assert!(!fs.is_empty());
    for f in fs {
        assert!(f["properties"]["kfm:id"].is_string(), "{f}");
        assert!(f["id"].is_u64(), "{f}");
        assert!(
            matches!(
                f["geometry"]["type"].as_str(),
                Some("Polygon" | "MultiPolygon")
            ),
            "{f}"
        );
    }
    let (code, out) = server.stop();
    assert_eq!(code, 0, "{out}");
}
