//! Relay-style cursor pagination: opaque cursors over a keyset, bounded page sizes.

use async_graphql::connection::{Connection, CursorType, Edge};
use async_graphql::OutputType;
use base64::Engine;

use super::errors::invalid;
use super::MAX_PAGE;

/// A validated page request: how many rows, after which key.
pub(crate) struct PageRequest {
    pub first: i64,
    pub after: Option<Vec<serde_json::Value>>,
}

impl PageRequest {
    pub fn parse(first: Option<i32>, after: Option<String>) -> async_graphql::Result<Self> {
        let first = first.unwrap_or(20);
        if !(1..=MAX_PAGE).contains(&first) {
            return Err(invalid(format!("`first` must be between 1 and {MAX_PAGE}")));
        }
        let after = after.map(|c| decode(&c)).transpose()?;
        Ok(Self {
            first: first as i64,
            after,
        })
    }

    /// Rows to fetch: one more than the page, to know whether another page follows.
    ///
    /// A list's statement takes it as a literal (`q.push(page.limit())`), not as a bound
    /// parameter: a plan that does not know its `LIMIT` costs more than any plan that
    /// does, so PostgreSQL never settles on a generic plan for the prepared statement and
    /// plans it again on every execution (`pg_prepared_statements.custom_plans`). That
    /// cost the tenant and run lists a quarter of their PostgreSQL time a page
    /// (docs/BENCHMARKS.md). At most `MAX_PAGE` texts per list, each prepared once per
    /// connection. Lists whose plan should depend on their filters' values (the audit
    /// log's and the events' time windows) keep it bound.
    pub fn limit(&self) -> i64 {
        self.first + 1
    }

    /// The `i`-th key of the `after` cursor as a string.
    pub fn key_str(&self, i: usize) -> async_graphql::Result<Option<String>> {
        match &self.after {
            None => Ok(None),
            Some(k) => k
                .get(i)
                .and_then(|v| v.as_str())
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| invalid("invalid cursor")),
        }
    }

    /// The `after` cursor of a list ordered by a time and then an id: both keys, the id
    /// named `what` in the error when it is not one.
    pub fn time_and_id(
        &self,
        what: &str,
    ) -> async_graphql::Result<Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)>> {
        let (Some(at), Some(id)) = (self.key_str(0)?, self.key_str(1)?) else {
            return Ok(None);
        };
        let at = at.parse().map_err(|_| invalid("invalid cursor"))?;
        Ok(Some((at, super::query::parse_uuid(&id, what)?)))
    }

    /// The `i`-th key of the `after` cursor as an integer.
    pub fn key_i64(&self, i: usize) -> async_graphql::Result<Option<i64>> {
        match &self.after {
            None => Ok(None),
            Some(k) => k
                .get(i)
                .and_then(|v| v.as_i64())
                .map(Some)
                .ok_or_else(|| invalid("invalid cursor")),
        }
    }
}

pub(crate) fn encode(key: &[serde_json::Value]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::Value::Array(key.to_vec()).to_string())
}

fn decode(cursor: &str) -> async_graphql::Result<Vec<serde_json::Value>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid("invalid cursor"))?;
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Array(a)) => Ok(a),
        _ => Err(invalid("invalid cursor")),
    }
}

/// A row's place in its list: its sort key, made into the opaque cursor string only when a
/// client asks for it (an edge's `cursor`, `pageInfo`'s `startCursor` and `endCursor`), so a
/// page whose edges nobody asks the cursor of encodes one cursor, not one per row.
pub struct Cursor(Vec<serde_json::Value>);

impl Cursor {
    pub(crate) fn of(key: Vec<serde_json::Value>) -> Self {
        Self(key)
    }
}

impl CursorType for Cursor {
    type Error = &'static str;

    fn decode_cursor(s: &str) -> Result<Self, Self::Error> {
        decode(s).map(Cursor).map_err(|_| "invalid cursor")
    }

    fn encode_cursor(&self) -> String {
        encode(&self.0)
    }
}

/// Builds a connection from up to `limit` rows; `key` gives each row's cursor key.
pub(crate) fn connection<T: OutputType>(
    req: &PageRequest,
    mut rows: Vec<T>,
    key: impl Fn(&T) -> Vec<serde_json::Value>,
) -> Connection<Cursor, T> {
    let has_next = rows.len() as i64 > req.first;
    rows.truncate(req.first as usize);
    let mut c = Connection::new(req.after.is_some(), has_next);
    c.edges
        .extend(rows.into_iter().map(|r| Edge::new(Cursor(key(&r)), r)));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_made_only_from_its_key_and_reads_back_to_it() {
        let key = vec![
            serde_json::json!("Contoso"),
            serde_json::json!("acme:6f1c2a4e-0000-4000-8000-000000000001"),
        ];
        let cursor = Cursor(key.clone()).encode_cursor();
        assert_eq!(
            cursor,
            encode(&key),
            "the same opaque string as an eager one"
        );
        assert_eq!(Cursor::decode_cursor(&cursor).unwrap().0, key);
        assert_eq!(decode(&cursor).unwrap(), key);
        assert!(Cursor::decode_cursor("not a cursor!").is_err());
        assert!(Cursor::decode_cursor(&encode_raw("{\"not\": \"a list\"}")).is_err());
    }

    fn encode_raw(text: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }
}
