//! The operator console: hand-written HTML, CSS and ES modules in `api/console/`, embedded
//! at build time and served at `/` (and, as its query page, at `GET /graphql`). There is
//! no build step: the files in the repository are what the browser runs, and nothing is
//! loaded from another origin (see [`crate::security`] for the policy that says so).

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

use crate::AppState;

/// One embedded file, served under `/console/<path>`.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../console/", $path)),
        }
    };
}

/// Every file of the console. A file added to `api/console/` is served once it is listed here.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("main.js", JS),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("chart.js", JS),
    asset!("pages/tenants.js", JS),
    asset!("pages/runs.js", JS),
    asset!("pages/contacts.js", JS),
    asset!("pages/mail.js", JS),
    asset!("pages/events.js", JS),
    asset!("pages/query.js", JS),
];

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/console/{*path}", get(file))
}

/// The console's page; the script picks the page from the path and the fragment.
pub(crate) async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.path == path) {
        Some(i) => serve(i, &headers),
        None => (StatusCode::NOT_FOUND, "no such file in the console").into_response(),
    }
}

/// Each asset's entity tag: a hash of its bytes, so a new binary's files are fetched anew.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = hex::encode(&Sha256::digest(a.body)[..12]);
                HeaderValue::from_str(&format!("\"{digest}\""))
                    .unwrap_or(HeaderValue::from_static("\"0\""))
            })
            .collect()
    })
}

/// The asset, or 304 when the browser's copy is current. `no-cache`: the browser keeps
/// the files but asks each time (a cheap 304), so it never runs a stale console.
fn serve(i: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[i];
    let etag = etags()[i].clone();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == etag.to_str().unwrap_or_default())
        });
    let cache = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

/// URLs in `text` that would make a browser reach another origin: absolute `http(s)://` and
/// `ws(s)://` URLs and protocol-relative `//host` references in attributes, strings, CSS
/// `url()` and imports. XML namespace names are identifiers, not requests, and are allowed.
pub fn external_urls(text: &str) -> Vec<String> {
    const NAMESPACES: &[&str] = &["http://www.w3.org/2000/svg"];
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices("//") {
        let scheme_start = text[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == ':' || c == '+' || c == '-'))
            .map_or(0, |p| p + 1);
        let scheme = &text[scheme_start..i];
        let before = scheme_start.checked_sub(1).map(|p| bytes[p]);
        let absolute = ["http:", "https:", "ws:", "wss:"]
            .iter()
            .any(|s| scheme.eq_ignore_ascii_case(s));
        let relative = scheme.is_empty()
            && matches!(before, Some(b'"' | b'\'' | b'(' | b'`' | b'='))
            && text[i + 2..].starts_with(|c: char| c.is_ascii_alphanumeric());
        if !(absolute || relative) {
            continue;
        }
        let end = text[i..]
            .find(|c: char| c.is_whitespace() || "\"'`)<>".contains(c))
            .map_or(text.len(), |e| i + e);
        let url = &text[scheme_start..end];
        if !NAMESPACES.contains(&url) {
            found.push(url.to_owned());
        }
    }
    found
}

/// Every embedded file as text, by path (for checks of what the console serves).
pub fn assets() -> impl Iterator<Item = (&'static str, &'static str)> {
    ASSETS
        .iter()
        .map(|a| (a.path, std::str::from_utf8(a.body).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_served_file_names_another_origin() {
        for (path, text) in assets() {
            assert!(!text.is_empty(), "{path} is embedded");
            assert_eq!(external_urls(text), Vec::<String>::new(), "{path}");
        }
    }

    #[test]
    fn the_scan_finds_absolute_protocol_relative_and_socket_urls() {
        let page = r#"<script src="https://cdn.example/react.js"></script>
            <link href="//fonts.example/x.css"> body { background: url(//img.example/a.png) }
            import x from 'http://esm.example/x.js'; new WebSocket("wss://evil.example/ws");
            // a comment, "https:" alone, and the SVG namespace http://www.w3.org/2000/svg"#;
        assert_eq!(
            external_urls(page),
            [
                "https://cdn.example/react.js",
                "//fonts.example/x.css",
                "//img.example/a.png",
                "http://esm.example/x.js",
                "wss://evil.example/ws",
            ]
        );
    }

    #[test]
    fn every_module_the_console_imports_is_embedded() {
        for (path, text) in assets().filter(|(p, _)| p.ends_with(".js")) {
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let target = line.rsplit_once(" from ").map_or(line, |(_, t)| t);
                let target = target.trim_matches(|c| c == '"' || c == ';' || c == '\'' || c == ' ');
                let resolved = resolve(dir, target);
                assert!(
                    ASSETS.iter().any(|a| a.path == resolved),
                    "{path} imports {target} ({resolved}), which is not embedded"
                );
            }
        }
    }

    fn resolve(dir: &str, target: &str) -> String {
        let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for piece in target.split('/') {
            match piece {
                "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        parts.join("/")
    }
}
