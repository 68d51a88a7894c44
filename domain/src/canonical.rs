//! Canonical JSON (RFC 8785) and SHA-256: how snapshots are hashed (R3.2).

use sha2::{Digest, Sha256};

/// The RFC 8785 canonical form of a JSON value: sorted keys, no whitespace, canonical
/// numbers. Two values equal as JSON give the same string.
pub fn canonical_json(value: &serde_json::Value) -> String {
    // Serializing a `serde_json::Value` cannot fail.
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
    fn sha256_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
