//! Canonical JSON (RFC 8785) and SHA-256: how snapshots are hashed (R3.2).

use sha2::{Digest, Sha256};

/// The RFC 8785 canonical form of a JSON value: keys sorted by UTF-16 code units, no
/// whitespace, ECMAScript number formatting, minimal string escapes. Two values equal as
/// JSON give the same string.
pub fn canonical_json(value: &serde_json::Value) -> String {
    // Only non-finite numbers fail, and a `serde_json::Value` cannot hold one.
    serde_json_canonicalizer::to_string(value).unwrap_or_default()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_canonical_form() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, 2]}, "b": 1});
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
    }

    #[test]
    fn numbers_are_canonical() {
        assert_eq!(canonical_json(&json!({"n": 1.0e2})), r#"{"n":100}"#);
    }

    #[test]
    fn the_rfc_8785_example_canonicalizes_as_published() {
        // RFC 8785, section 3.2.2 (input) and 3.2.3 (output).
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let value: serde_json::Value = serde_json::from_str(input).unwrap();
        assert_eq!(
            canonical_json(&value),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units_not_code_points() {
        // From the sorting example of RFC 8785, section 3.2.3: U+1F600 is the surrogate
        // pair D83D DE00 in UTF-16, so it sorts before U+FB33 although its code point is
        // higher.
        let v = json!({"\u{fb33}": 1, "\u{1f600}": 2, "\u{20ac}": 3});
        assert_eq!(
            canonical_json(&v),
            "{\"\u{20ac}\":3,\"\u{1f600}\":2,\"\u{fb33}\":1}"
        );
    }

    #[test]
    fn the_hash_of_a_snapshot_ignores_key_order() {
        let a = json!({"id": "p1", "state": "enabled"});
        let b = json!({"state": "enabled", "id": "p1"});
        assert_eq!(
            sha256_hex(canonical_json(&a).as_bytes()),
            sha256_hex(canonical_json(&b).as_bytes())
        );
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
