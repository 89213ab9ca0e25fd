//! The OpenAPI document, generated from the route annotations (utoipa), so
//! it cannot drift from the code. `contracts/openapi.json` holds a copy that
//! a test keeps fresh.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "KFM governed API",
        description = "OGC API - Features compatible, policy-enforced, audited. Every response carries `Kfm-Audit-Ref`. A denied resource answers exactly like a nonexistent one (404).",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        crate::routes::landing,
        crate::routes::conformance,
        crate::routes::collections,
        crate::routes::collection,
        crate::routes::items::items,
        crate::routes::items::item,
        crate::routes::items::queryables,
        crate::routes::search::search,
        crate::routes::tiles::tile_matrix_sets,
        crate::routes::tiles::web_mercator_quad,
        crate::routes::tiles::tilesets,
        crate::routes::tiles::tileset_metadata,
        crate::routes::tiles::tilejson,
        crate::routes::tiles::tile,
        crate::routes::catalog::stac,
        crate::routes::catalog::prov,
        crate::routes::export::export,
        crate::routes::catalog::catalog,
        crate::routes::catalog::evidence,
        crate::routes::probes::audit,
        crate::routes::probes::healthz,
        crate::routes::probes::readyz,
        crate::routes::probes::metrics,
        crate::routes::probes::openapi,
        crate::routes::assets::asset,
    ),
    modifiers(&Security)
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as pretty JSON with a trailing newline.
pub fn document() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}
