//! Graph's wire conventions as the simulator speaks them: error envelopes, paging, `$select`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use url::Url;

use super::http::Incoming;

/// A Graph failure, before it is rendered as Graph's error envelope.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) retry_after: Option<u64>,
}

impl Failure {
    pub(crate) fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// Renders `{"error":{"code","message","innerError":{...}}}` with the request's ids.
    pub(crate) fn render(&self, incoming: &Incoming) -> Response {
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "innerError": {
                "date": Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": incoming.ids.request_id,
                "client-request-id": incoming.ids.client_request_id,
            }
        }});
        let mut response = json_response(self.status, &body);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON answer; `Value::Null` means no body (204).
pub(crate) fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if body.is_null() {
        return status.into_response();
    }
    (status, axum::Json(body)).into_response()
}

/// An answer that is not JSON at all, as a broken proxy would send.
pub(crate) fn malformed_response() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><body><h1>Bad gateway</h1>",
    )
        .into_response()
}

/// Opaque page and delta tokens: base64url of a small JSON cursor.
pub(crate) fn encode_token<T: Serialize>(cursor: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(cursor).unwrap_or_default())
}

pub(crate) fn decode_token<T: DeserializeOwned>(token: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keeps the `$select`ed fields (plus `id` and annotations); without `$select`, drops the
/// fields Graph only returns on request.
pub(crate) fn project(item: &Value, select: Option<&str>, hidden: &[&str]) -> Value {
    let Value::Object(fields) = item else {
        return item.clone();
    };
    let kept: Map<String, Value> = match select {
        Some(select) => {
            let wanted: Vec<&str> = select.split(',').map(str::trim).collect();
            fields
                .iter()
                .filter(|(k, _)| {
                    k.as_str() == "id"
                        || k.starts_with('@')
                        || wanted.iter().any(|w| w.eq_ignore_ascii_case(k))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }
        None => fields
            .iter()
            .filter(|(k, _)| !hidden.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    Value::Object(kept)
}

/// The marker of a page that has gone (fault `paging_not_found`).
pub(crate) const GONE_PAGE: &str = "gone";

#[derive(Serialize, Deserialize)]
struct PageCursor {
    o: usize,
    t: usize,
    s: Option<String>,
}

/// One page of `items` per the request's `$top`/`$select`/`$skiptoken`.
pub(crate) fn page(
    items: &[Value],
    incoming: &Incoming,
    page_size: usize,
    max_top: usize,
    set: &str,
    hidden: &[&str],
) -> Result<Value, Failure> {
    let cursor = match incoming.query("$skiptoken") {
        Some(GONE_PAGE) => {
            return Err(Failure::new(404, "ResourceNotFound", "The page was not found."));
        }
        Some(token) => decode_token::<PageCursor>(token)
            .ok_or_else(|| Failure::bad_request("Invalid $skiptoken."))?,
        None => PageCursor {
            o: 0,
            t: match incoming.query("$top") {
                Some(top) => top
                    .parse::<usize>()
                    .ok()
                    .filter(|t| (1..=max_top).contains(t))
                    .ok_or_else(|| Failure::bad_request(format!("Invalid page size specified: '{top}'. Must be between 1 and {max_top} inclusive.")))?,
                None => page_size.max(1),
            },
            s: incoming.query("$select").map(str::to_owned),
        },
    };
    let end = (cursor.o + cursor.t).min(items.len());
    let value: Vec<Value> = items
        .get(cursor.o..end)
        .unwrap_or_default()
        .iter()
        .map(|item| project(item, cursor.s.as_deref(), hidden))
        .collect();
    let mut body = json!({
        "@odata.context": incoming.context(set),
        "value": value,
    });
    if end < items.len() {
        let next = PageCursor {
            o: end,
            t: cursor.t,
            s: cursor.s,
        };
        body["@odata.nextLink"] = json!(incoming.link("$skiptoken", &encode_token(&next)));
    }
    Ok(body)
}

/// A link to the request's own path with one query parameter.
pub(crate) fn link_to(base: &Url, path: &str, key: &str, value: &str) -> String {
    let mut url = base.clone();
    url.set_path(path);
    // Graph writes `$skiptoken=` with a literal dollar sign.
    let value: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    url.set_query(Some(&format!("{key}={value}")));
    url.to_string()
}

/// HTML reduced to text, as Graph does for `Prefer: outlook.body-content-type="text"`.
pub(crate) fn html_to_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.trim().to_owned()
}
