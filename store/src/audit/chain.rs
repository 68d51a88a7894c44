//! The chain function, pure: which bytes of an event are sealed and how they are linked.
//! README.md ("Audit chain") states the same definition for people who check a chain with
//! tools of their own; the two must not drift apart (the tests below pin known values).

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A link of a chain: a SHA-256 digest.
pub type Hash = [u8; 32];

/// The hash every chain starts from (`hash_0`): 32 zero bytes.
pub const GENESIS: Hash = [0; 32];

/// How `recorded_at` is written into the canonical bytes: RFC 3339, UTC, always six
/// fractional digits (PostgreSQL keeps microseconds), e.g. `2026-11-23T08:15:02.120500Z`.
pub const RECORDED_AT_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// The workspace chain of events whose metadata names no workspace.
pub const NO_WORKSPACE: &str = "";

/// The fields of a stored event that its seal covers, serialized (RFC 8785) as one JSON
/// object with exactly these keys. Declared in RFC 8785 key order, so that plain
/// `serde_json` writes them in canonical order too (see [`SealedFields::canonical_bytes`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SealedFields<'a> {
    pub aggregate_id: &'a str,
    pub aggregate_type: &'a str,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub global_position: i64,
    /// The whole metadata object (workspace, actor, role, correlation, causation and
    /// request ids, idempotency key: whatever the row holds).
    pub metadata: &'a serde_json::Value,
    pub payload: &'a serde_json::Value,
    #[serde(serialize_with = "recorded_at")]
    pub recorded_at: DateTime<Utc>,
    pub sequence: i64,
}

/// [`RECORDED_AT_FORMAT`], written without parsing the format string every time.
fn recorded_at<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

impl<'a> From<&'a crate::log::StoredEvent> for SealedFields<'a> {
    fn from(e: &'a crate::log::StoredEvent) -> Self {
        Self {
            aggregate_id: &e.aggregate_id,
            aggregate_type: &e.aggregate_type,
            event_type: &e.event_type,
            event_version: &e.event_version,
            global_position: e.position.global_position,
            metadata: &e.metadata,
            payload: &e.payload,
            recorded_at: e.recorded_at,
            sequence: e.sequence,
        }
    }
}

/// Integers up to this magnitude are written the same by RFC 8785 (which writes every
/// number as an IEEE double, ECMAScript-style) and by `serde_json` (digits).
const EXACT_INTEGER: u64 = 1 << 53;

impl SealedFields<'_> {
    /// The canonical bytes: RFC 8785 JSON of the fields, as `serde_json_canonicalizer`
    /// writes them. Integers are written as RFC 8785 writes every number (an IEEE double),
    /// exact for positions and sequences below 2^53.
    ///
    /// Fast path: that crate spends about 18 µs on a typical event (it buffers and re-parses
    /// every key), ten times the rest of sealing or verifying one. For the values events
    /// hold — objects whose keys iterate in UTF-16 order, integers below 2^53, strings —
    /// plain `serde_json` output is byte-for-byte the RFC 8785 form (same escapes, no
    /// whitespace, fields declared in key order), so such events skip the crate; anything
    /// else (a fraction, a huge integer, a key beyond the Basic Multilingual Plane) goes
    /// through it. Tests compare both on many values.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let integers_exact = [self.sequence, self.global_position]
            .iter()
            .all(|n| n.unsigned_abs() <= EXACT_INTEGER);
        if integers_exact && plainly_canonical(self.payload) && plainly_canonical(self.metadata) {
            serde_json::to_vec(self)
        } else {
            self.canonical_bytes_by_the_crate()
        }
    }

    /// The reference: RFC 8785 by `serde_json_canonicalizer`, for every value.
    pub fn canonical_bytes_by_the_crate(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json_canonicalizer::to_vec(self)
    }

    /// The workspace chain the event belongs to.
    pub fn workspace_chain(&self) -> &str {
        workspace_chain(self.metadata)
    }
}

/// Whether `serde_json` writes `value` exactly as RFC 8785 does: every object's keys
/// iterate in strictly increasing UTF-16 order (within the Basic Multilingual Plane, UTF-8
/// byte order is UTF-16 order), and every number is an integer of at most 2^53.
fn plainly_canonical(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => true,
        Value::Number(n) => {
            n.as_u64().is_some_and(|u| u <= EXACT_INTEGER)
                || n.as_i64()
                    .is_some_and(|i| i.unsigned_abs() <= EXACT_INTEGER)
        }
        Value::Array(items) => items.iter().all(plainly_canonical),
        Value::Object(map) => {
            let mut previous: Option<&str> = None;
            map.iter().all(|(key, item)| {
                let in_order = key.chars().all(|c| (c as u32) < 0x1_0000)
                    && previous.is_none_or(|p| p.as_bytes() < key.as_bytes());
                previous = Some(key);
                in_order && plainly_canonical(item)
            })
        }
    }
}

/// The workspace chain of an event with `metadata`: its `workspace` member when that is a
/// JSON string, else [`NO_WORKSPACE`].
pub fn workspace_chain(metadata: &serde_json::Value) -> &str {
    metadata
        .get("workspace")
        .and_then(|w| w.as_str())
        .unwrap_or(NO_WORKSPACE)
}

/// `hash_n = SHA-256(hash_{n-1} || canonical bytes of event n)`.
pub fn link(previous: &Hash, canonical: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical);
    hasher.finalize().into()
}

/// A hash from its lowercase (or uppercase) hex form.
pub fn parse_hash(hex_digits: &str) -> Option<Hash> {
    let bytes = hex::decode(hex_digits.trim()).ok()?;
    bytes.try_into().ok()
}

/// A hash as stored (bytea) back to its fixed size; `None` if the row was damaged.
pub fn stored_hash(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields<'a>(
        payload: &'a serde_json::Value,
        metadata: &'a serde_json::Value,
    ) -> SealedFields<'a> {
        SealedFields {
            aggregate_type: "tenant",
            aggregate_id: "acme:72f988bf-86f1-41af-91ab-2d7cd011db47",
            sequence: 3,
            event_type: "TenantRenamed",
            event_version: "1.0",
            payload,
            metadata,
            recorded_at: "2026-11-23T08:15:02.1205Z".parse().unwrap(),
            global_position: 42,
        }
    }

    #[test]
    fn the_canonical_bytes_are_rfc_8785_json_of_the_sealed_fields() {
        let payload = json!({"TenantRenamed": {"display_name": "Acme €", "n": 1.0}});
        let metadata = json!({"workspace": "acme", "actor": "ann", "role": "owner",
            "correlation_id": "c", "request_id": "r"});
        let bytes = fields(&payload, &metadata).canonical_bytes().unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "{\"aggregate_id\":\"acme:72f988bf-86f1-41af-91ab-2d7cd011db47\",\
             \"aggregate_type\":\"tenant\",\"event_type\":\"TenantRenamed\",\
             \"event_version\":\"1.0\",\"global_position\":42,\
             \"metadata\":{\"actor\":\"ann\",\"correlation_id\":\"c\",\"request_id\":\"r\",\
             \"role\":\"owner\",\"workspace\":\"acme\"},\
             \"payload\":{\"TenantRenamed\":{\"display_name\":\"Acme €\",\"n\":1}},\
             \"recorded_at\":\"2026-11-23T08:15:02.120500Z\",\"sequence\":3}"
        );
    }

    #[test]
    fn the_canonical_bytes_do_not_depend_on_key_order() {
        let a = json!({"b": [1, {"y": 2, "x": 1}], "a": null});
        let b = json!({"a": null, "b": [1, {"x": 1, "y": 2}]});
        let m = json!({"workspace": "acme"});
        assert_eq!(
            fields(&a, &m).canonical_bytes().unwrap(),
            fields(&b, &m).canonical_bytes().unwrap()
        );
    }

    #[test]
    fn recorded_at_is_written_in_its_documented_format() {
        for at in [
            "2026-11-23T08:15:02.1205Z",
            "1999-12-31T23:59:59Z",
            "2026-01-02T03:04:05.000001+05:30",
        ] {
            let at: DateTime<Utc> = at.parse().unwrap();
            let p = json!(null);
            let m = json!({});
            let f = SealedFields {
                recorded_at: at,
                ..fields(&p, &m)
            };
            let text = String::from_utf8(f.canonical_bytes().unwrap()).unwrap();
            let expected = format!("\"recorded_at\":\"{}\"", at.format(RECORDED_AT_FORMAT));
            assert!(text.contains(&expected), "{text}");
        }
    }

    #[test]
    fn recorded_at_always_has_six_fractional_digits_in_utc() {
        let p = json!(null);
        let m = json!({});
        let mut f = fields(&p, &m);
        f.recorded_at = "2026-01-02T03:04:05+02:00".parse().unwrap();
        let text = String::from_utf8(f.canonical_bytes().unwrap()).unwrap();
        assert!(
            text.contains("\"recorded_at\":\"2026-01-02T01:04:05.000000Z\""),
            "{text}"
        );
    }

    #[test]
    fn a_link_hashes_the_previous_hash_then_the_canonical_bytes() {
        // sha256(32 zero bytes || "abc"), computed with Python's hashlib.
        assert_eq!(
            hex::encode(link(&GENESIS, b"abc")),
            "365aa7d8f7f9402c4b9434502b4cc89ddb09fe50d7cd95b493b834c62d5a5370"
        );
        assert_ne!(link(&GENESIS, b"abc"), link(&link(&GENESIS, b"x"), b"abc"));
    }

    #[test]
    fn any_change_to_a_field_changes_the_link() {
        let p = json!({"k": "v"});
        let m = json!({"workspace": "acme"});
        let base = fields(&p, &m);
        let hash = |f: SealedFields| link(&GENESIS, &f.canonical_bytes().unwrap());
        let changed_payload = json!({"k": "w"});
        let changed_meta = json!({"workspace": "acme", "actor": "mallory"});
        let variants = [
            SealedFields {
                sequence: 4,
                ..base
            },
            SealedFields {
                global_position: 43,
                ..base
            },
            SealedFields {
                aggregate_id: "other",
                ..base
            },
            SealedFields {
                event_version: "2.0",
                ..base
            },
            SealedFields {
                payload: &changed_payload,
                ..base
            },
            SealedFields {
                metadata: &changed_meta,
                ..base
            },
            SealedFields {
                recorded_at: base.recorded_at + chrono::Duration::microseconds(1),
                ..base
            },
        ];
        for v in variants {
            assert_ne!(hash(v), hash(base), "{v:?}");
        }
    }

    #[test]
    fn events_without_a_string_workspace_belong_to_the_unnamed_chain() {
        assert_eq!(workspace_chain(&json!({"workspace": "acme"})), "acme");
        assert_eq!(workspace_chain(&json!({"actor": "system"})), NO_WORKSPACE);
        assert_eq!(workspace_chain(&json!({"workspace": 5})), NO_WORKSPACE);
        assert_eq!(workspace_chain(&json!(null)), NO_WORKSPACE);
    }

    #[test]
    fn hashes_parse_from_hex_only_at_full_length() {
        let h = link(&GENESIS, b"x");
        assert_eq!(parse_hash(&hex::encode(h)), Some(h));
        assert_eq!(parse_hash("abcd"), None);
        assert_eq!(parse_hash("zz"), None);
    }

    /// Both ways of writing the canonical bytes, for `payload` (and `metadata`).
    fn both_ways(payload: &serde_json::Value) -> (Vec<u8>, Vec<u8>) {
        let m = json!({"workspace": "acme", "actor": payload.clone()});
        let f = fields(payload, &m);
        (
            f.canonical_bytes().unwrap(),
            f.canonical_bytes_by_the_crate().unwrap(),
        )
    }

    #[test]
    fn the_fast_path_writes_what_the_crate_writes() {
        let cases = [
            json!({"TenantRegistered": {"workspace": "acme", "display_name": "Acme", "n": 3}}),
            json!({"s": "quote \" backslash \\ slash / controls \u{0}\u{8}\t\n\u{b}\u{c}\r\u{1f} del \u{7f}"}),
            json!({"unicode": "é € 😀 \u{fb33} \u{2028}\u{2029}", "é": 1, "z": 2, "A": 3, "": 4}),
            json!({"\u{fb33}": 1, "\u{1f600}": 2, "\u{20ac}": 3}),
            json!({"ints": [0, -1, 1, 9007199254740992_i64, -9007199254740992_i64, 9007199254740993_i64, 18446744073709551615_u64]}),
            json!({"floats": [0.5, 1.0, -0.0, 1e30, 4.5, 2e-3, 1e-27, 333_333_333.333_333_3]}),
            json!([[], {}, [{}], {"a": []}, null, true, false]),
            json!("just a string"),
            json!(null),
        ];
        for case in &cases {
            let (fast, reference) = both_ways(case);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(reference).unwrap()
            );
        }
        // The events the service writes take the fast path.
        assert!(plainly_canonical(&cases[0]));
        assert!(
            !plainly_canonical(&cases[4]),
            "2^53 + 1 goes through the crate"
        );
        assert!(
            !plainly_canonical(&cases[5]),
            "fractions go through the crate"
        );
        assert!(
            !plainly_canonical(&cases[3]),
            "keys beyond the BMP go through the crate"
        );
    }

    #[test]
    fn the_fast_path_writes_what_the_crate_writes_for_generated_values() {
        // A small deterministic generator (xorshift): nested values with keys and strings
        // from an alphabet of awkward characters, integers around 2^53 and fractions.
        struct Gen(u64);
        impl Gen {
            fn next(&mut self) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0
            }
            fn text(&mut self) -> String {
                const ALPHABET: &[char] = &[
                    'a',
                    'B',
                    '_',
                    '0',
                    ' ',
                    '"',
                    '\\',
                    '/',
                    '\n',
                    '\u{1}',
                    '\u{7f}',
                    'é',
                    '€',
                    '\u{fb33}',
                    '\u{ffff}',
                    '😀',
                    '\u{10ffff}',
                    '\u{e000}',
                ];
                let len = self.next() % 6;
                (0..len)
                    .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize])
                    .collect()
            }
            fn value(&mut self, depth: u32) -> serde_json::Value {
                match self.next() % if depth > 3 { 5 } else { 7 } {
                    0 => serde_json::Value::Null,
                    1 => json!(self.next() % 2 == 0),
                    2 => json!(self.text()),
                    3 => {
                        let big = (1u64 << 53) as i64;
                        json!(big - 2 + (self.next() % 5) as i64)
                    }
                    4 => match self.next() % 3 {
                        0 => json!((self.next() % 1000) as i64 - 500),
                        1 => json!((self.next() % 100_000) as f64 / 7.0),
                        _ => json!(self.next()),
                    },
                    5 => serde_json::Value::Array(
                        (0..self.next() % 4)
                            .map(|_| self.value(depth + 1))
                            .collect(),
                    ),
                    _ => serde_json::Value::Object(
                        (0..self.next() % 5)
                            .map(|_| (self.text(), self.value(depth + 1)))
                            .collect(),
                    ),
                }
            }
        }
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut fast_paths = 0;
        for _ in 0..5000 {
            let v = g.value(0);
            fast_paths += usize::from(plainly_canonical(&v));
            let (fast, reference) = both_ways(&v);
            assert_eq!(fast, reference, "{v}");
        }
        assert!(
            fast_paths > 1000,
            "the generator exercises the fast path ({fast_paths})"
        );
    }
}
