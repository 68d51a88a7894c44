//! Short, safe messages: what users and events may carry about a failure (R1.3, R2.4).
//!
//! One sanitizer for the whole domain. It marks the characters that look like credentials,
//! then renders each marked span as `[redacted]`, and only then truncates, so a secret cut
//! by the length limit is still masked.

use serde_json::Value;

/// The longest message stored or shown, in characters.
pub const MAX_MESSAGE: usize = 300;

const REDACTED: &str = "[redacted]";

/// Key names whose values are credentials, matched as a suffix of the key so that
/// `client_secret`, `access_token` and `x-api-key` are all caught.
const SENSITIVE_KEYS: &[&str] = &[
    "secret",
    "password",
    "passwd",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "accountkey",
    "sig",
    "assertion",
    "authorization",
    "cookie",
];

/// Opaque runs at least this long are judged by how random they look.
const OPAQUE_MIN: usize = 24;
/// Hex runs at least this long are keys or hashes, never something a person reads.
const HEX_MIN: usize = 32;

/// Makes a message safe to store and show: control characters and runs of whitespace
/// become one space; bearer and basic credentials, `secret=`/`token:`-style values (also
/// JSON-quoted), JWTs and long opaque base64 or hex runs become `[redacted]`; the result
/// is cut to [`MAX_MESSAGE`] characters. GUIDs and ordinary paths stay readable.
pub fn sanitize_message(message: &str) -> String {
    let normalized = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>();
    let chars: Vec<char> = normalized
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .collect();
    let mut masked = vec![false; chars.len()];
    mask_auth_schemes(&chars, &mut masked);
    mask_key_values(&chars, &mut masked);
    mask_jwts(&chars, &mut masked);
    mask_opaque_runs(&chars, &mut masked);
    truncate(render(&chars, &masked))
}

/// Sanitizes every string in a JSON value (keys included) and masks the whole value of a
/// sensitive key, for small structured summaries that end up in events.
pub fn sanitize_json(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(sanitize_message(s)),
        Value::Array(items) => Value::Array(items.iter().map(sanitize_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_sensitive_key(k) {
                        Value::String(REDACTED.to_owned())
                    } else {
                        sanitize_json(v)
                    };
                    (sanitize_message(k), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SENSITIVE_KEYS.iter().any(|s| key.ends_with(s))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Characters that make up tokens, keys and encoded secrets (base64, base64url, Azure
/// client secrets).
fn is_opaque(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-' | '~' | '.')
}

/// Where a credential value starting at `start` ends.
fn value_end(chars: &[char], start: usize) -> usize {
    chars[start..]
        .iter()
        .position(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '&' | ',' | ';' | '}' | ')'))
        .map_or(chars.len(), |n| start + n)
}

fn mark(masked: &mut [bool], from: usize, to: usize) {
    masked[from..to].iter_mut().for_each(|m| *m = true);
}

fn is_auth_scheme(word: &[char]) -> bool {
    let w: String = word.iter().collect::<String>().to_ascii_lowercase();
    w == "bearer" || w == "basic"
}

/// `Bearer <token>` and `Basic <credentials>`: the scheme stays, what follows goes.
fn mask_auth_schemes(chars: &[char], masked: &mut [bool]) {
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_alphabetic() || (i > 0 && is_ident(chars[i - 1])) {
            i += 1;
            continue;
        }
        let end = chars[i..]
            .iter()
            .position(|c| !c.is_ascii_alphabetic())
            .map_or(chars.len(), |n| i + n);
        if is_auth_scheme(&chars[i..end]) && chars.get(end) == Some(&' ') {
            let value = end + 1;
            mark(masked, value, value_end(chars, value));
        }
        i = end;
    }
}

/// `client_secret=...`, `password: ...` and `"access_token": "..."`.
fn mask_key_values(chars: &[char], masked: &mut [bool]) {
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) {
            i += 1;
            continue;
        }
        let end = chars[i..]
            .iter()
            .position(|c| !is_ident(*c))
            .map_or(chars.len(), |n| i + n);
        let key: String = chars[i..end].iter().collect();
        i = end;
        if !is_sensitive_key(&key) {
            continue;
        }
        let mut j = end;
        if matches!(chars.get(j), Some('"' | '\'')) {
            j += 1;
        }
        while chars.get(j) == Some(&' ') {
            j += 1;
        }
        if !matches!(chars.get(j), Some('=' | ':')) {
            continue;
        }
        j += 1;
        while chars.get(j) == Some(&' ') {
            j += 1;
        }
        if matches!(chars.get(j), Some('"' | '\'')) {
            j += 1;
        }
        let value = value_end(chars, j);
        // `Authorization: Bearer x`: the scheme rule masks the credential itself.
        if !is_auth_scheme(&chars[j..value]) {
            mark(masked, j, value);
        }
        i = value.max(i);
    }
}

/// JWTs (`eyJ...`, the base64url of `{"`) wherever they stand, even inside JSON.
fn mask_jwts(chars: &[char], masked: &mut [bool]) {
    let mut i = 0;
    while i + 3 <= chars.len() {
        let at_start = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if at_start && chars[i..i + 3] == ['e', 'y', 'J'] {
            let end = chars[i..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .map_or(chars.len(), |n| i + n);
            if end - i >= 20 {
                mark(masked, i, end);
            }
            i = end;
        } else {
            i += 1;
        }
    }
}

/// Long runs of hex (keys, hashes) and long runs that look random (base64 secrets,
/// refresh tokens). Randomness is measured as how often the character class (upper,
/// lower, digit, symbol) changes from one character to the next: about 0.6 for random
/// base64, about 0.2-0.3 for paths and identifiers such as `conditionalAccess`. GUIDs are
/// left out of the measure so that paths with ids in them stay readable.
fn mask_opaque_runs(chars: &[char], masked: &mut [bool]) {
    // Already-masked text ends a run: `client_secret=` is not judged with its value.
    let open: Vec<bool> = chars
        .iter()
        .zip(masked.iter())
        .map(|(c, m)| is_opaque(*c) && !m)
        .collect();
    let mut i = 0;
    while i < chars.len() {
        if !open[i] {
            i += 1;
            continue;
        }
        let end = (i..chars.len()).find(|&k| !open[k]).unwrap_or(chars.len());
        let run = &chars[i..end];
        if has_long_hex(run) || looks_random(&without_guids(run)) {
            mark(masked, i, end);
        }
        i = end;
    }
}

fn has_long_hex(run: &[char]) -> bool {
    run.split(|c| !c.is_ascii_hexdigit()).any(|h| {
        h.len() >= HEX_MIN
            && h.iter().any(char::is_ascii_digit)
            && h.iter().any(char::is_ascii_alphabetic)
    })
}

fn is_guid_at(run: &[char], i: usize) -> bool {
    const DASHES: [usize; 4] = [8, 13, 18, 23];
    run.len() >= i + 36
        && (0..36).all(|k| {
            let c = run[i + k];
            if DASHES.contains(&k) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn without_guids(run: &[char]) -> Vec<char> {
    let mut out = Vec::with_capacity(run.len());
    let mut i = 0;
    while i < run.len() {
        if is_guid_at(run, i) {
            // A separator, so the text on both sides is not measured as one run.
            out.push('/');
            i += 36;
        } else {
            out.push(run[i]);
            i += 1;
        }
    }
    out
}

fn looks_random(run: &[char]) -> bool {
    if run.len() < OPAQUE_MIN {
        return false;
    }
    let class = |c: char| {
        if c.is_ascii_uppercase() {
            0
        } else if c.is_ascii_lowercase() {
            1
        } else if c.is_ascii_digit() {
            2
        } else {
            3
        }
    };
    let changes = run
        .windows(2)
        .filter(|w| class(w[0]) != class(w[1]))
        .count();
    // changes / (len - 1) >= 0.4, in integers.
    changes * 5 >= (run.len() - 1) * 2
}

fn render(chars: &[char], masked: &[bool]) -> String {
    let mut out = String::with_capacity(chars.len());
    for (i, c) in chars.iter().enumerate() {
        if !masked[i] {
            out.push(*c);
        } else if i == 0 || !masked[i - 1] {
            out.push_str(REDACTED);
        }
    }
    out
}

fn truncate(s: String) -> String {
    if s.chars().count() <= MAX_MESSAGE {
        return s;
    }
    let mut t: String = s.chars().take(MAX_MESSAGE - 1).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLWJ5dGVz";

    #[test]
    fn bearer_tokens_and_jwts_are_masked() {
        let m = sanitize_message(&format!(
            "call failed: Authorization: Bearer abc.def.ghi and {JWT}"
        ));
        assert_eq!(
            m,
            "call failed: Authorization: Bearer [redacted] and [redacted]"
        );
    }

    #[test]
    fn a_jwt_inside_json_is_masked() {
        let m = sanitize_message(&format!(r#"{{"id_token2":"x","jwt":"{JWT}"}}"#));
        assert!(!m.contains("eyJ"), "{m}");
    }

    #[test]
    fn key_value_secrets_are_masked() {
        let m = sanitize_message("client_secret=s3cr3t-Value&x=1 password:hunter2");
        assert_eq!(m, "client_secret=[redacted]&x=1 password:[redacted]");
    }

    #[test]
    fn json_quoted_secrets_are_masked() {
        let m = sanitize_message(r#"{"access_token": "opaque", "client_secret":"abc~DEF"}"#);
        assert_eq!(
            m,
            r#"{"access_token": "[redacted]", "client_secret":"[redacted]"}"#
        );
    }

    #[test]
    fn long_opaque_runs_are_masked_but_guids_and_paths_stay() {
        let m = sanitize_message(
            "key Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg== secret Xy8Q~a1B2c3D4e5F6g7H8i9J0kLmN \
             hash 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 \
             tenant 72f988bf-86f1-41af-91ab-2d7cd011db47 \
             GET /v1.0/identity/conditionalAccess/policies \
             /tenants/72f988bf-86f1-41af-91ab-2d7cd011db47/connections \
             scope DeviceManagementConfiguration.ReadWrite.All",
        );
        for secret in ["Zm9vYmFy", "Xy8Q", "9f86d081"] {
            assert!(!m.contains(secret), "{secret} in {m}");
        }
        for kept in [
            "tenant 72f988bf-86f1-41af-91ab-2d7cd011db47",
            "GET /v1.0/identity/conditionalAccess/policies",
            "/tenants/72f988bf-86f1-41af-91ab-2d7cd011db47/connections",
            "DeviceManagementConfiguration.ReadWrite.All",
        ] {
            assert!(m.contains(kept), "{kept} missing from {m}");
        }
    }

    #[test]
    fn ordinary_prose_is_left_alone() {
        let m = "Graph returned 502 for the conditional access policies; retry later";
        assert_eq!(sanitize_message(m), m);
    }

    #[test]
    fn control_characters_and_whitespace_are_flattened() {
        assert_eq!(sanitize_message(" a\n\tb\u{7}c  "), "a b c");
    }

    #[test]
    fn messages_are_truncated_after_masking() {
        let m = sanitize_message(&"word ".repeat(200));
        assert_eq!(m.chars().count(), MAX_MESSAGE);
        assert!(m.ends_with('…'));
        let tail = format!("{} {JWT}", "x".repeat(MAX_MESSAGE - 10));
        assert!(!sanitize_message(&tail).contains("eyJ"));
    }

    #[test]
    fn json_summaries_are_sanitized_to_the_leaves() {
        let v = json!({
            "policies": 3,
            "client_secret": "abc",
            "notes": [format!("Bearer {JWT}")],
            "nested": {"refresh_token": {"v": 1}},
        });
        assert_eq!(
            sanitize_json(&v),
            json!({
                "policies": 3,
                "client_secret": "[redacted]",
                "notes": ["Bearer [redacted]"],
                "nested": {"refresh_token": "[redacted]"},
            })
        );
    }
}
