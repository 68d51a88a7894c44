//! Persisted queries: the automatic persisted query protocol (APQ) that Apollo Client and
//! others speak. A request may carry `extensions.persistedQuery = {version: 1,
//! sha256Hash}` and no query text; the text is looked up by its hash. A hash not known
//! yet answers `PersistedQueryNotFound` (code `PERSISTED_QUERY_NOT_FOUND`), and the client
//! sends the text once with its hash, which is then remembered.
//!
//! With a list of known queries (an Apollo persisted query manifest), only those are
//! accepted, by hash or by text: production can be restricted to the queries its
//! dashboards were built with.

use std::collections::HashMap;
use std::sync::Mutex;

use async_graphql::{ErrorExtensions, Request, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Most query texts remembered from clients (beyond the known ones). Once full, new texts
/// are still executed but not remembered: a client then keeps sending the text, which is
/// slower but correct, and nobody can grow the memory without bound.
const REMEMBERED: usize = 2_000;

/// The persisted queries of a running service.
#[derive(Debug, Default)]
pub struct PersistedQueries {
    /// Known queries by hash; with `only_known`, the only ones accepted.
    known: HashMap<String, String>,
    only_known: bool,
    /// Texts clients sent with their hash (APQ), by hash.
    remembered: Mutex<HashMap<String, String>>,
    /// The parsed documents of the texts workspaces send again.
    pub(crate) documents: super::documents::Documents,
}

/// Why a list of known queries cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the persisted query manifest is not valid JSON of the expected shape: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "operation `{0}` of the persisted query manifest: its id is not the SHA-256 of its body"
    )]
    HashMismatch(String),
}

/// An Apollo persisted query manifest (`generate-persisted-query-manifest` writes one).
#[derive(Deserialize)]
struct Manifest {
    operations: Vec<ManifestOperation>,
}

#[derive(Deserialize)]
struct ManifestOperation {
    id: String,
    name: Option<String>,
    body: String,
}

impl PersistedQueries {
    /// Any query accepted; hashes learnt from clients (APQ).
    pub fn open() -> Self {
        Self::default()
    }

    /// Only the queries of an Apollo persisted query manifest
    /// (`{"operations": [{"id": <sha256 of body>, "name", "body"}]}`) are accepted.
    pub fn only_known(manifest_json: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_str(manifest_json)?;
        let mut known = HashMap::new();
        for op in manifest.operations {
            if hash(&op.body) != op.id.to_ascii_lowercase() {
                return Err(ManifestError::HashMismatch(op.name.unwrap_or(op.id)));
            }
            known.insert(op.id.to_ascii_lowercase(), op.body);
        }
        Ok(Self {
            known,
            only_known: true,
            remembered: Mutex::default(),
            documents: Default::default(),
        })
    }

    /// The request with its query text, or the answer that refuses it.
    pub(crate) fn resolve(&self, mut request: Request) -> Result<Request, Box<Response>> {
        let persisted = request.extensions.remove("persistedQuery");
        let wanted = match persisted.map(|v| v.into_json()) {
            None => None,
            Some(Ok(serde_json::Value::Object(p))) if p.get("version") == Some(&1.into()) => {
                match p.get("sha256Hash").and_then(|h| h.as_str()) {
                    Some(h) => Some(h.to_ascii_lowercase()),
                    None => {
                        return Err(refusal(
                            "`persistedQuery` needs a `sha256Hash`",
                            "validation_failed",
                        ))
                    }
                }
            }
            Some(_) => {
                return Err(refusal(
                    "only version 1 of the `persistedQuery` extension is supported",
                    "validation_failed",
                ))
            }
        };
        if request.query.is_empty() {
            let Some(wanted) = wanted else {
                return Ok(request);
            };
            return match self.lookup(&wanted) {
                Some(text) => {
                    request.query = text;
                    Ok(request)
                }
                None => Err(refusal(
                    "PersistedQueryNotFound",
                    "PERSISTED_QUERY_NOT_FOUND",
                )),
            };
        }
        // The text's hash is needed only to check it against the one sent with it, or
        // against the manifest: an ordinary request is not hashed.
        if wanted.is_none() && !self.only_known {
            return Ok(request);
        }
        let actual = hash(&request.query);
        if wanted.as_ref().is_some_and(|w| *w != actual) {
            return Err(refusal(
                "the query's SHA-256 is not the `sha256Hash` sent with it",
                "validation_failed",
            ));
        }
        if self.only_known {
            if !self.known.contains_key(&actual) {
                return Err(refusal(
                    "this service accepts only its known (persisted) queries",
                    "forbidden",
                ));
            }
        } else if wanted.is_some() {
            let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
            if remembered.len() < REMEMBERED {
                remembered.insert(actual, request.query.clone());
            }
        }
        Ok(request)
    }

    fn lookup(&self, hash: &str) -> Option<String> {
        if let Some(text) = self.known.get(hash) {
            return Some(text.clone());
        }
        if self.only_known {
            return None;
        }
        let remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        remembered.get(hash).cloned()
    }
}

/// Lowercase hex SHA-256 of a query's text, as APQ clients compute it.
pub fn hash(query: &str) -> String {
    hex::encode(Sha256::digest(query.as_bytes()))
}

fn refusal(message: &str, code: &'static str) -> Box<Response> {
    let error = async_graphql::Error::new(message).extend_with(|_, ext| ext.set("code", code));
    Box::new(Response::from_errors(vec![
        error.into_server_error(Default::default())
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_hash(query: &str, hash: &str) -> Request {
        let mut r = Request::new(query);
        r.extensions.insert(
            "persistedQuery".into(),
            async_graphql::Value::from_json(
                serde_json::json!({ "version": 1, "sha256Hash": hash }),
            )
            .unwrap(),
        );
        r
    }

    fn code(answer: Result<Request, Box<Response>>) -> String {
        let errors = answer.expect_err("a refusal").errors;
        let ext = errors[0].extensions.as_ref().expect("extensions");
        ext.get("code").expect("a code").to_string()
    }

    #[test]
    fn a_hash_is_learnt_from_the_text_sent_with_it_once() {
        let apq = PersistedQueries::open();
        let q = "{ me { role } }";
        assert_eq!(
            code(apq.resolve(with_hash("", &hash(q)))),
            "\"PERSISTED_QUERY_NOT_FOUND\""
        );
        assert_eq!(apq.resolve(with_hash(q, &hash(q))).unwrap().query, q);
        assert_eq!(apq.resolve(with_hash("", &hash(q))).unwrap().query, q);
        assert_eq!(
            code(apq.resolve(with_hash(q, &hash("other")))),
            "\"validation_failed\""
        );
        // Plain requests are untouched.
        assert_eq!(apq.resolve(Request::new(q)).unwrap().query, q);
    }

    #[test]
    fn only_known_queries_pass_by_hash_or_by_text() {
        let known = "{ me { role } }";
        let manifest = serde_json::json!({ "format": "apollo-persisted-query-manifest", "version": 1,
            "operations": [{ "id": hash(known), "name": "Me", "type": "query", "body": known }] });
        let only = PersistedQueries::only_known(&manifest.to_string()).unwrap();
        assert_eq!(
            only.resolve(with_hash("", &hash(known))).unwrap().query,
            known
        );
        assert_eq!(only.resolve(Request::new(known)).unwrap().query, known);
        let other = "{ tenants { edges { node { id } } } }";
        assert_eq!(code(only.resolve(Request::new(other))), "\"forbidden\"");
        assert_eq!(
            code(only.resolve(with_hash(other, &hash(other)))),
            "\"forbidden\""
        );
        // Nothing is learnt in this mode.
        assert_eq!(
            code(only.resolve(with_hash("", &hash(other)))),
            "\"PERSISTED_QUERY_NOT_FOUND\""
        );
    }

    #[test]
    fn a_hash_is_lowercase_hex_sha256() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_manifest_whose_ids_are_not_the_bodies_hashes_is_refused() {
        let manifest = serde_json::json!({ "operations": [{ "id": "abc", "name": "Me", "body": "{ me { role } }" }] });
        assert!(matches!(
            PersistedQueries::only_known(&manifest.to_string()),
            Err(ManifestError::HashMismatch(name)) if name == "Me"
        ));
    }
}
