//! The OpenAPI document, generated from the route annotations (utoipa) of
//! the routes as the router registers them, so it cannot drift from the
//! code. `contracts/openapi.json` holds a copy that
//! a test keeps fresh.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "KFM governed API",
        description = "OGC API - Features compatible, policy-enforced, audited. Every response carries `Kfm-Audit-Ref`. A denied resource answers exactly like a nonexistent one (404).",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
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

/// What any route can answer besides its own responses, documented on
/// every operation so that a client (and schemathesis) meets no status the
/// document does not name: 400 for an unknown or malformed parameter
/// (every route checks its query string), 401 for a bearer token that is
/// not valid (the governing layer, before any route), 503 while the server
/// is not ready or a version is being projected. Errors share one body.
struct Common;

impl utoipa::Modify for Common {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
        let c = api.components.get_or_insert_with(Default::default);
        c.schemas.insert(
            "Exception".into(),
            RefOr::T(
                ObjectBuilder::new()
                    .property("code", ObjectBuilder::new().schema_type(Type::String))
                    .property(
                        "description",
                        ObjectBuilder::new().schema_type(Type::String),
                    )
                    .required("code")
                    .required("description")
                    .into(),
            ),
        );
        let error = |d: &str| -> Response {
            ResponseBuilder::new()
                .description(d)
                .content(
                    "application/json",
                    Content::new(Some(RefOr::<utoipa::openapi::schema::Schema>::Ref(
                        Ref::from_schema_name("Exception"),
                    ))),
                )
                .build()
        };
        for item in api.paths.paths.values_mut() {
            let Some(op) = item.get.as_mut() else {
                continue;
            };
            let r = &mut op.responses.responses;
            for (code, why) in [
                (
                    "400",
                    "Malformed or unknown parameter (the message names it)",
                ),
                (
                    "401",
                    "The bearer token is not valid: unknown, expired, or not from the configured issuer",
                ),
                (
                    "503",
                    "Not ready (see /readyz), or the data of this version cannot be read just now; retry",
                ),
            ] {
                match r.get_mut(code) {
                    // A route's own words stay; the body is the shared one.
                    Some(RefOr::T(resp)) if resp.content.is_empty() => {
                        let desc = resp.description.clone();
                        *resp = error(&desc);
                    }
                    Some(_) => {}
                    None => {
                        r.insert(code.into(), RefOr::T(error(why)));
                    }
                }
            }
            if let Some(RefOr::T(resp)) = r.get_mut("404")
                && resp.content.is_empty()
            {
                let desc = resp.description.clone();
                *resp = error(&desc);
            }
        }
    }
}

/// The document's frame (title, licence, security scheme); the paths are
/// added by the router as each route is registered.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The whole document: every registered route, with what any route can
/// answer besides its own responses.
fn full() -> utoipa::openapi::OpenApi {
    use utoipa::Modify;
    let (_, mut doc) = crate::routes::api().split_for_parts();
    Common.modify(&mut doc);
    doc
}

/// The document as pretty JSON with a trailing newline.
pub fn document() -> String {
    let mut s = full().to_pretty_json().unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// The same document as OpenAPI 3.0.3, for clients and conformance suites
/// that read only 3.0 (OGC API – Features' oas30 class names 3.0). What
/// utoipa writes that 3.0 lacks is converted: the license's SPDX
/// `identifier` becomes its `url`; the document has no 3.1-only schema
/// keywords (a test in kfm's suite checks it with a 3.0 validator's eyes:
/// no `null` types, no `const`, no `examples` arrays).
pub fn document_30() -> String {
    let mut doc = full();
    if let Some(l) = doc.info.license.as_mut() {
        l.identifier = None;
        l.url = Some("https://www.apache.org/licenses/LICENSE-2.0".into());
    }
    let mut v = serde_json::to_value(&doc).unwrap_or(serde_json::Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("openapi".into(), serde_json::json!("3.0.3"));
    }
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}
