//! Vector tiles read back by an outside decoder (`mapbox-vector-tile` from
//! PyPI), and the check that tiles of a restricted dataset never carry a
//! precise coordinate to a caller who may not see it. Shared by the
//! in-memory and the PostGIS backend's tests.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

use super::get;

pub const EXTENT: f64 = 4096.0;

/// The tile of zoom `z` holding a position.
pub fn tile_of(lon: f64, lat: f64, z: u32) -> (u32, u32) {
    let n = f64::from(1u32 << z);
    let x = ((lon + 180.0) / 360.0 * n).floor();
    let r = lat.to_radians();
    let y = ((1.0 - (r.tan() + 1.0 / r.cos()).ln() / std::f64::consts::PI) / 2.0 * n).floor();
    (x as u32, y as u32)
}

/// A position in tile `z/x/y`'s units (extent 4096, y down).
pub fn in_tile(lon: f64, lat: f64, z: u32, x: u32, y: u32) -> (f64, f64) {
    let n = f64::from(1u32 << z);
    let r = lat.to_radians();
    let tx = ((lon + 180.0) / 360.0 * n - f64::from(x)) * EXTENT;
    let ty = ((1.0 - (r.tan() + 1.0 / r.cos()).ln() / std::f64::consts::PI) / 2.0 * n
        - f64::from(y))
        * EXTENT;
    (tx, ty)
}

/// Whether the outside decoder is installed; without it the check is
/// skipped with a message, unless KFM_REQUIRE_SERVICES=1.
pub fn decoder_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import mapbox_vector_tile"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("KFM_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "KFM_REQUIRE_SERVICES=1 but python3 cannot import mapbox_vector_tile (pip install mapbox-vector-tile)"
        );
        eprintln!(
            "SKIPPED: python3 cannot import mapbox_vector_tile (pip install mapbox-vector-tile)"
        );
    }
    ok
}

/// Decodes tiles with `mapbox-vector-tile`: for each, its layers' features
/// as JSON (geometry in tile units, y down).
pub fn decode(tiles: &[Vec<u8>]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    for (i, t) in tiles.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.mvt")), t).unwrap();
    }
    let script = r#"
import json, sys, mapbox_vector_tile
out = []
for i in range(int(sys.argv[2])):
    data = open(f"{sys.argv[1]}/{i}.mvt", "rb").read()
    out.append(mapbox_vector_tile.decode(data, default_options={"y_coord_down": True}) if data else {})
print(json.dumps(out))
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(dir.path())
        .arg(tiles.len().to_string())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "decoder: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    match serde_json::from_slice(&o.stdout).unwrap() {
        Value::Array(v) => v,
        other => panic!("decoder printed {other}"),
    }
}

/// Every point of a decoded tile's layer `layer`.
pub fn points(decoded: &Value, layer: &str) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let Some(fs) = decoded[layer]["features"].as_array() else {
        return out;
    };
    for f in fs {
        let g = &f["geometry"];
        let c = &g["coordinates"];
        match g["type"].as_str() {
            Some("Point") => out.push((c[0].as_f64().unwrap(), c[1].as_f64().unwrap())),
            Some("MultiPoint") => {
                for p in c.as_array().unwrap() {
                    out.push((p[0].as_f64().unwrap(), p[1].as_f64().unwrap()));
                }
            }
            other => panic!("a point layer drew {other:?}"),
        }
    }
    out
}

fn positions(doc: &Value) -> Vec<(f64, f64)> {
    doc["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let c = &f["geometry"]["coordinates"];
            (c[0].as_f64().unwrap(), c[1].as_f64().unwrap())
        })
        .collect()
}

/// Within one and a half tile units: what snapping to the grid moves.
fn near(a: (f64, f64), b: (f64, f64)) -> bool {
    (a.0 - b.0).abs() <= 1.5 && (a.1 - b.1).abs() <= 1.5
}

/// For every tile of zoom 0 to 14 that holds a feature of `dataset` (a
/// restricted point dataset), precise or generalised: decoded by the
/// outside decoder, an anonymous caller's tile holds only generalised
/// positions and never a precise one, and an approved researcher's tile
/// holds the precise positions (at zoom 14, some that no generalised
/// position is near).
pub fn check_no_precise_coordinates(addr: &str, dataset: &str, researcher: &str) {
    let items = format!("/collections/{dataset}/items?limit=10000");
    let anon_doc = get(addr, &items, None, &[]).json();
    assert_eq!(anon_doc["kfm:generalized"], true, "{anon_doc}");
    let precise_doc = get(addr, &items, Some(researcher), &[]).json();
    assert_eq!(precise_doc["kfm:generalized"], false);
    let generalised = positions(&anon_doc);
    let precise = positions(&precise_doc);
    assert!(!precise.is_empty());

    let mut tiles: BTreeSet<(u32, u32, u32)> = BTreeSet::new();
    for z in 0..=14 {
        for &(lon, lat) in generalised.iter().chain(precise.iter()) {
            let (x, y) = tile_of(lon, lat, z);
            tiles.insert((z, x, y));
        }
    }
    let tiles: Vec<(u32, u32, u32)> = tiles.into_iter().collect();
    let fetch = |tok: Option<&str>| -> Vec<Vec<u8>> {
        tiles
            .iter()
            .map(|(z, x, y)| {
                let r = get(
                    addr,
                    &format!("/collections/{dataset}/tiles/WebMercatorQuad/{z}/{y}/{x}"),
                    tok,
                    &[],
                );
                assert!(
                    r.status == 200 || r.status == 204,
                    "{z}/{y}/{x}: {} {}",
                    r.status,
                    r.text()
                );
                if r.status == 200 {
                    assert_eq!(
                        r.headers.get("content-type").map(String::as_str),
                        Some("application/vnd.mapbox-vector-tile")
                    );
                }
                r.body
            })
            .collect()
    };
    let anon = decode(&fetch(None));
    let approved = decode(&fetch(Some(researcher)));
    let mut precise_only_seen = 0;
    let mut drawn: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for (i, &(z, x, y)) in tiles.iter().enumerate() {
        let g: Vec<(f64, f64)> = generalised
            .iter()
            .map(|&(a, b)| in_tile(a, b, z, x, y))
            .collect();
        let p: Vec<(f64, f64)> = precise
            .iter()
            .map(|&(a, b)| in_tile(a, b, z, x, y))
            .collect();
        // Precise positions that this zoom can tell from every generalised
        // one (more than four tile units away); at low zooms a tile unit is
        // kilometres and there may be none.
        let secret: Vec<(f64, f64)> = p
            .iter()
            .copied()
            .filter(|s| {
                !g.iter()
                    .any(|q| (s.0 - q.0).abs() <= 4.0 && (s.1 - q.1).abs() <= 4.0)
            })
            .collect();
        let a = points(&anon[i], dataset);
        for pt in &a {
            assert!(
                g.iter().any(|q| near(*pt, *q)),
                "tile {z}/{y}/{x} for an anonymous caller draws {pt:?}, which is no generalised position"
            );
            assert!(
                !secret.iter().any(|s| near(*pt, *s)),
                "tile {z}/{y}/{x} for an anonymous caller draws a precise position {pt:?}"
            );
        }
        let r = points(&approved[i], dataset);
        for pt in &r {
            assert!(
                p.iter().any(|q| near(*pt, *q)),
                "tile {z}/{y}/{x} for the approved researcher draws {pt:?}, which is no precise position"
            );
        }
        if z == 14 {
            precise_only_seen += r
                .iter()
                .filter(|pt| secret.iter().any(|s| near(**pt, *s)))
                .count();
        }
        let e = drawn.entry(z).or_default();
        e.0 += a.len();
        e.1 += r.len();
    }
    // At zoom 0 one tile holds every feature, for either caller.
    assert_eq!(drawn[&0], (generalised.len(), precise.len()), "{drawn:?}");
    assert!(
        precise_only_seen > 0,
        "the approved researcher's zoom-14 tiles hold no precise position"
    );
    eprintln!(
        "{} tiles of z0-14 checked for each caller; features drawn per zoom (anonymous, approved): {drawn:?}",
        tiles.len()
    );
}
