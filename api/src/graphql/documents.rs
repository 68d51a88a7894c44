//! The parsed documents of the query texts a workspace sends again and again (a dashboard
//! asks for the same pages all day): parsing a page's query took about a sixth of its
//! request's time in this process, and its document is the same every time.
//!
//! Bounded against a hostile client: only texts of at most [`CACHED_QUERY_BYTES`] are kept,
//! at most [`KEPT`] of them, and the whole cache is dropped when it is full (a client that
//! sends ever new texts only costs the parsing every request paid before). Keyed by the
//! workspace as well as the text, so how fast a text is answered tells nobody whether
//! another workspace sent it. Only documents that parsed are kept; every request's
//! variables are still checked, and its document still validated, by execution.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::ExecutableDocument;

/// Longest query text whose document is kept.
pub(crate) const CACHED_QUERY_BYTES: usize = 4 * 1024;
/// Most documents kept.
pub(crate) const KEPT: usize = 256;

/// A query's parsed document, and what the checks computed of it.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub(crate) doc: ExecutableDocument,
    /// Its selections with every fragment spread expanded.
    pub(crate) expanded: u64,
    /// async-graphql has validated it: a request with it ran without errors (set by
    /// `graphql::execute`; what a list page answered its own way relies on).
    pub(crate) validated: std::sync::atomic::AtomicBool,
}

/// See the module's doc.
#[derive(Debug, Default)]
pub(crate) struct Documents {
    kept: Mutex<Kept>,
}

/// The kept documents by workspace, then by text (so a lookup borrows both, copying
/// neither), and how many there are in all.
#[derive(Debug, Default)]
struct Kept {
    by_workspace: HashMap<String, HashMap<String, Arc<Parsed>>>,
    count: usize,
}

impl Documents {
    /// The document of `query` as `workspace` sent it: kept, or `parse`d (and kept if it
    /// parsed and is short enough). `None` when it does not parse.
    pub(crate) fn get_or_parse(
        &self,
        workspace: &str,
        query: &str,
        parse: impl FnOnce(&str) -> Option<Parsed>,
    ) -> Option<Arc<Parsed>> {
        if query.len() > CACHED_QUERY_BYTES {
            return parse(query).map(Arc::new);
        }
        let known = self
            .lock()
            .by_workspace
            .get(workspace)
            .and_then(|texts| texts.get(query))
            .cloned();
        if known.is_some() {
            return known;
        }
        let parsed = Arc::new(parse(query)?);
        let mut kept = self.lock();
        if kept.count >= KEPT {
            *kept = Kept::default();
        }
        let added = kept
            .by_workspace
            .entry(workspace.to_owned())
            .or_default()
            .insert(query.to_owned(), parsed.clone())
            .is_none();
        kept.count += usize::from(added);
        Some(parsed)
    }

    /// How many documents are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic while holding it cannot leave the map half-written: use it as it is.
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Option<Parsed> {
        Some(Parsed {
            validated: Default::default(),
            doc: async_graphql::parser::parse_query(query).ok()?,
            expanded: 1,
        })
    }

    #[test]
    fn a_text_is_parsed_once_per_workspace() {
        let documents = Documents::default();
        let mut parses = 0;
        for workspace in ["acme", "acme", "globex"] {
            documents
                .get_or_parse(workspace, "{ tenants { edges { cursor } } }", |q| {
                    parses += 1;
                    parse(q)
                })
                .unwrap();
        }
        assert_eq!(parses, 2, "once for acme, once for globex");
        assert_eq!(documents.len(), 2);
    }

    #[test]
    fn what_does_not_parse_or_is_long_is_not_kept_and_the_cache_stays_bounded() {
        let documents = Documents::default();
        assert!(documents
            .get_or_parse("acme", "{ tenants ", parse)
            .is_none());
        assert_eq!(documents.len(), 0);
        let long = format!("{{ {} }}", "__typename ".repeat(CACHED_QUERY_BYTES / 10));
        assert!(long.len() > CACHED_QUERY_BYTES);
        assert!(documents.get_or_parse("acme", &long, parse).is_some());
        assert_eq!(documents.len(), 0);
        for i in 0..KEPT * 3 {
            let query = format!("query Q{i} {{ __typename }}");
            assert!(documents.get_or_parse("acme", &query, parse).is_some());
            assert!(documents.len() <= KEPT);
        }
        assert!(documents.len() > 0);
    }
}
