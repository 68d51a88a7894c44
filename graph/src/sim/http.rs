//! Per-request plumbing: request ids, the request log, and what handlers read of a request.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;
use url::Url;
use uuid::Uuid;

use super::state::Sim;
use super::RequestRecord;
use crate::Endpoint;

/// `request-id` and `client-request-id` of one request.
#[derive(Debug, Clone)]
pub(crate) struct RequestIds {
    pub(crate) request_id: String,
    pub(crate) client_request_id: String,
}

/// Set by a handler on its response so the log knows what was called for whom.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tag {
    pub(crate) endpoint: Option<Endpoint>,
    pub(crate) tenant: Option<Uuid>,
}

#[derive(Clone)]
struct RequestContext {
    ids: RequestIds,
    base: Url,
    /// The full path: nested routers only see the part below their prefix.
    path: String,
}

/// Everything a handler reads of a request besides its body.
pub(crate) struct Incoming {
    pub(crate) ids: RequestIds,
    pub(crate) headers: HeaderMap,
    pub(crate) path: String,
    query: HashMap<String, String>,
    base: Url,
}

impl Incoming {
    pub(crate) fn query(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `@odata.context` for an entity set.
    pub(crate) fn context(&self, set: &str) -> String {
        format!("{}graph/v1.0/$metadata#{set}", self.base)
    }

    /// A link to this request's path with one query parameter.
    pub(crate) fn link(&self, key: &str, value: &str) -> String {
        super::wire::link_to(&self.base, &self.path, key, value)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Incoming {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let context = parts.extensions.get::<RequestContext>().cloned();
        let (ids, base, path) = match context {
            Some(context) => (context.ids, context.base, context.path),
            None => (
                new_ids(&parts.headers),
                fallback_base(),
                parts.uri.path().to_owned(),
            ),
        };
        let query = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        Ok(Self {
            ids,
            headers: parts.headers.clone(),
            path,
            query,
            base,
        })
    }
}

fn fallback_base() -> Url {
    Url::parse("http://127.0.0.1/").unwrap_or_else(|_| unreachable!("constant URL"))
}

fn new_ids(headers: &HeaderMap) -> RequestIds {
    let request_id = Uuid::new_v4().to_string();
    let client_request_id = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| request_id.clone());
    RequestIds {
        request_id,
        client_request_id,
    }
}

/// Gives every request its ids (echoed as headers) and logs every non-admin request.
pub(crate) async fn record(
    State(sim): State<Arc<Sim>>,
    mut request: Request,
    next: Next,
) -> Response {
    let received_at = Utc::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let ids = new_ids(request.headers());
    request.extensions_mut().insert(RequestContext {
        ids: ids.clone(),
        base: sim.base.clone(),
        path: path.clone(),
    });
    let mut response = next.run(request).await;
    for (name, value) in [
        ("request-id", &ids.request_id),
        ("client-request-id", &ids.client_request_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name, value);
        }
    }
    if !path.starts_with("/_sim") {
        let tag = response.extensions().get::<Tag>().copied();
        sim.log(RequestRecord {
            received_at,
            method,
            path,
            query,
            endpoint: tag.and_then(|t| t.endpoint),
            tenant: tag.and_then(|t| t.tenant),
            status: response.status().as_u16(),
        });
    }
    response
}
