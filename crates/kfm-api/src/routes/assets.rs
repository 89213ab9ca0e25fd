//! The files the HTML views' maps load, bundled into the binary at build
//! time: MapLibre GL JS (BSD-3-Clause, the npm package pinned in
//! `web/package-lock.json`, copied by `web/vendor.sh`) and KFM's own map
//! script. Nothing is fetched from a CDN; a page's Content-Security-Policy
//! forbids it anyway.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use super::note;
use crate::{bytes_response, not_found};

/// Name, media type and bytes of every file served under `/assets/`.
pub(crate) const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "maplibre-gl-csp.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/maplibre-gl/maplibre-gl-csp.js"),
    ),
    (
        "maplibre-gl-csp-worker.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/maplibre-gl/maplibre-gl-csp-worker.js"),
    ),
    (
        "maplibre-gl.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/maplibre-gl/maplibre-gl.css"),
    ),
    (
        "kfm-map.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/kfm-map.js"),
    ),
];

#[utoipa::path(get, path = "/assets/{file}", tag = "HTML",
    params(("file" = String, Path, description = "maplibre-gl-csp.js, maplibre-gl-csp-worker.js, maplibre-gl.css or kfm-map.js")),
    responses((status = 200, description = "A file the HTML views' maps load (bundled into the binary)"),
        (status = 404, description = "No such file")))]
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == file) {
        Some((_, ctype, bytes)) => {
            let mut r = bytes_response(StatusCode::OK, ctype, *bytes);
            // The bytes change only with the binary.
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            r
        }
        None => not_found(note("none")),
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// The bundled MapLibre files are exactly what `web/vendor.sh` copied
    /// from the pinned npm package.
    #[test]
    fn bundled_maplibre_matches_its_recorded_digests() {
        let sums = include_str!("../../assets/maplibre-gl/SHA256SUMS");
        let mut checked = 0;
        for line in sums.lines() {
            let (digest, name) = line.split_once("  ").expect("sha256sum format");
            let (_, _, bytes) = super::ASSETS
                .iter()
                .find(|(n, _, _)| *n == name)
                .expect("every recorded file is served");
            assert_eq!(hex::encode(Sha256::digest(bytes)), digest, "{name}");
            checked += 1;
        }
        assert_eq!(checked, 3);
    }
}
