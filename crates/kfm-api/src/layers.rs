//! The cross-cutting concerns, each one tower layer (axum middleware)
//! around small handlers. From the outside in:
//!
//! 1. [`measure`]: counts every answer by route template and status and
//!    times it (the audit append included: it is part of the answer's cost).
//! 2. [`audit`]: appends the access record to the ledger, durably when the
//!    decision said so, and stamps `Kfm-Audit-Ref`; an answer it cannot
//!    account for is withheld.
//! 3. [`authenticate`]: turns the bearer token into a [`Principal`] for the
//!    handlers, or answers 401 itself.
//! 4. [`decide`] (a route layer, on the routes of one collection): looks up
//!    the served release, asks the policy decision point and hands the
//!    handler a [`Decided`]: the release, the grant with its obligations and
//!    the view those obligations select. A denial never reaches a handler.
//!
//! The layers talk through extensions: the handler (or a layer) leaves an
//! [`AuditNote`] on its response, [`authenticate`] leaves the caller on it,
//! and [`audit`] reads both.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::audit::{self, AuditNote};
use crate::auth::{self, Principal};
use crate::enforce::Grant;
use crate::releases::{Release, View};
use crate::{AUDIT_HEADER, AppState, error, metrics};

/// The route template, never the ids in the path: what metrics and the
/// audit record name. (`MatchedPath` is a shared string: no copy per
/// request.)
fn route_of(req: &Request) -> Option<MatchedPath> {
    req.extensions().get::<MatchedPath>().cloned()
}

/// The name of a route in metrics and records.
fn route_name(m: Option<&MatchedPath>) -> &str {
    m.map_or("(unmatched)", MatchedPath::as_str)
}

/// At most `max` characters of `s`, copied once (not character by
/// character): what the record keeps of a path or query.
fn truncated(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => s[..cut].to_owned(),
        None => s.to_owned(),
    }
}

/// Counts and times every answer.
pub async fn measure(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = route_of(&req);
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let route = route_name(route.as_ref()).to_owned();
    let m = &st.metrics;
    m.latency
        .get_or_create(&metrics::DurationLabels {
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&metrics::RouteLabels { route, status })
        .inc();
    resp
}

/// Authenticates the caller: no `Authorization` header is the anonymous
/// caller; a bearer token must be valid (unknown, expired or foreign is
/// 401, never a silent downgrade to anonymous).
pub async fn authenticate(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let who = match req.headers().get(header::AUTHORIZATION) {
        None => Ok(Principal::anonymous()),
        Some(v) => match v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            Some(t) => st.tokens.authenticate(t.trim()),
            None => Err(auth::AuthError("use `Authorization: Bearer <token>`")),
        },
    };
    match who {
        Ok(p) => {
            req.extensions_mut().insert(p.clone());
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(p);
            resp
        }
        Err(e) => {
            let mut r = error(StatusCode::UNAUTHORIZED, "Unauthorized", e.0);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kfm\""),
            );
            let mut anon = Principal::anonymous();
            anon.id = "unauthenticated".into();
            r.extensions_mut().insert(anon);
            r
        }
    }
}

/// Appends the access record for every answer and stamps its reference.
pub async fn audit(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let matched = route_of(&req);
    let route = route_name(matched.as_ref());
    let method = req.method().clone();
    let path = truncated(req.uri().path(), 512);
    let query = req.uri().query().map(|q| truncated(q, 1024));
    let mut resp = next.run(req).await;
    // Set by `authenticate` on every answer it lets through or gives; an
    // answer without it (a layer below failed in an unforeseen way) is
    // recorded as from nobody known rather than not at all.
    let who = resp
        .extensions_mut()
        .remove::<Principal>()
        .unwrap_or_else(|| {
            let mut p = Principal::anonymous();
            p.id = "unknown".into();
            p
        });
    let note = resp
        .extensions_mut()
        .remove::<AuditNote>()
        .unwrap_or(AuditNote {
            action: "none",
            ..AuditNote::default()
        });
    let record = audit::AccessRecord {
        kind: audit::ACCESS_KIND,
        request_id: uuid::Uuid::new_v4().to_string(),
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        subject: &who.id,
        roles: &who.roles,
        auth: who.method,
        method: method.as_str(),
        route,
        path: &path,
        query: query.as_deref(),
        status: resp.status().as_u16(),
        action: note.action,
        dataset: note.dataset.as_deref(),
        version_id: note.version_id.as_deref(),
        decision: note.decision.as_deref(),
    };
    // Invariant: every answer is audited, and no record is signed with a
    // part missing. A decision that cannot be encoded withholds the answer
    // and is recorded without it (that record has no obligations to fail).
    let entry = match record.to_entry() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(%route, error = %e, "the decision could not be encoded for the audit record; the answer is withheld");
            resp = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "AuditUnavailable",
                "the access record could not be written, so the answer is withheld",
            );
            let withheld = audit::AccessRecord {
                status: resp.status().as_u16(),
                decision: None,
                ..record
            };
            match withheld.to_entry() {
                Ok(e) => e,
                Err(_) => return resp,
            }
        }
    };
    let (leaf, reference) = audit::reference(&entry);
    if note.durable {
        // Invariant: an answer the decision obliged to be recorded durably
        // is not sent before its record is.
        if st.audit.append_durable(entry).await.is_err() {
            resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "AuditUnavailable",
                "the audit ledger could not record this request, so the answer is withheld",
            );
        }
    } else {
        st.audit.append_batched(entry, leaf).await;
    }
    if let Ok(v) = HeaderValue::from_str(&reference) {
        resp.headers_mut().insert(AUDIT_HEADER, v);
    }
    tracing::debug!(%route, status = resp.status().as_u16(), audit_ref = %reference, "answered");
    resp
}

/// The action a [`decide`] layer asks the policy about (`read`, `export`).
#[derive(Debug, Clone, Copy)]
pub struct Action(pub &'static str);

/// What the decision layer hands a handler of one collection: the served
/// release, the grant (obligations to honour, the audit note) and the view
/// the grant selects. A handler that has one was allowed.
#[derive(Clone)]
pub(crate) struct Decided {
    pub rel: Arc<Release>,
    pub grant: Grant,
    pub view: Arc<View>,
}

/// A [`Decided`] is in a request's extensions only under a [`decide`]
/// layer; a handler that asks for one elsewhere is a wiring mistake, and it
/// fails closed (500) rather than answering undecided.
impl<S: Send + Sync> FromRequestParts<S> for Decided {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        parts.extensions.remove::<Decided>().ok_or_else(|| {
            tracing::error!("a collection route is not under the decision layer");
            not_decided()
        })
    }
}

fn not_decided() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "NotDecided",
        "this route was reached without a policy decision, so it does not answer",
    )
}

/// Decides the request's collection (`{collection_id}` in the path) for
/// the layer's action. Denied, unknown, not ready or not yet projected:
/// answered here, as [`crate::routes`] says each one is. Allowed: the
/// handler gets a [`Decided`], and whatever it answers is recorded with
/// this decision unless it left a note of its own.
pub async fn decide(
    State(Action(action)): State<Action>,
    params: RawPathParams,
    mut req: Request,
    next: Next,
) -> Response {
    // Both are set by the layers outside this one; without them nothing
    // can be decided, so nothing is answered.
    let (Some(st), Some(who)) = (
        req.extensions().get::<Arc<AppState>>().cloned(),
        req.extensions().get::<Principal>(),
    ) else {
        tracing::error!("the decision layer runs without the server state or the caller");
        return not_decided();
    };
    let id = params
        .iter()
        .find(|(k, _)| *k == "collection_id")
        .map_or("", |(_, v)| v);
    let (rel, grant, view) = match crate::routes::granted(&st, who, id, action) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let note = grant.note.clone();
    req.extensions_mut().insert(Decided { rel, grant, view });
    let mut resp = next.run(req).await;
    if resp.extensions().get::<AuditNote>().is_none() {
        resp.extensions_mut().insert(note);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::truncated;

    #[test]
    fn truncation_counts_characters_and_never_splits_one() {
        assert_eq!(truncated("abc", 5), "abc");
        assert_eq!(truncated("abcdef", 3), "abc");
        // Multi-byte characters: cut after the third character, not byte.
        assert_eq!(truncated("ééééé", 3), "ééé");
        assert_eq!(truncated("", 0), "");
    }
}
