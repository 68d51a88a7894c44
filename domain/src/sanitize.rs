//! Short, safe messages: what users and events may carry about a failure (R2.4).

/// The longest message stored or shown.
pub const MAX_MESSAGE: usize = 300;

/// Truncates a message and masks anything that looks like a credential: bearer tokens and
/// JWTs, `secret=`/`password=`/`token=` values, and long runs of base64 or hex.
pub fn sanitize_message(message: &str) -> String {
    let mut out = Vec::new();
    let mut mask_next = false;
    for word in message.split_whitespace() {
        if mask_next {
            out.push("[redacted]".to_owned());
            mask_next = false;
            continue;
        }
        let lower = word.to_ascii_lowercase();
        if lower == "bearer" || lower == "basic" {
            out.push(word.to_owned());
            mask_next = true;
            continue;
        }
        out.push(mask_word(word));
    }
    let joined = out.join(" ");
    if joined.chars().count() > MAX_MESSAGE {
        let mut t: String = joined.chars().take(MAX_MESSAGE - 1).collect();
        t.push('…');
        t
    } else {
        joined
    }
}

fn mask_word(word: &str) -> String {
    let lower = word.to_ascii_lowercase();
    for key in [
        "secret",
        "password",
        "token",
        "apikey",
        "api_key",
        "client_secret",
        "sig",
    ] {
        for sep in ['=', ':'] {
            let pat = format!("{key}{sep}");
            if let Some(i) = lower.find(&pat) {
                return format!("{}[redacted]", &word[..i + pat.len()]);
            }
        }
    }
    if word.starts_with("eyJ") && word.len() > 20 {
        return "[redacted]".to_owned();
    }
    let secretish = word
        .chars()
        .filter(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-' | '~' | '.')
        })
        .count();
    let has_digit = word.chars().any(|c| c.is_ascii_digit());
    let has_alpha = word.chars().any(|c| c.is_ascii_alphabetic());
    // Long opaque runs (secrets, tokens) but not GUIDs, which users need to see.
    let guid_like = word.len() == 36 && word.chars().filter(|c| *c == '-').count() == 4;
    if word.len() >= 32 && secretish == word.len() && has_digit && has_alpha && !guid_like {
        return "[redacted]".to_owned();
    }
    word.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_and_jwts_are_masked() {
        let m = sanitize_message("call failed: Authorization: Bearer abc.def.ghi and eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig");
        assert!(!m.contains("abc.def.ghi"));
        assert!(!m.contains("eyJhbGci"));
    }

    #[test]
    fn key_value_secrets_are_masked() {
        let m = sanitize_message("client_secret=s3cr3t-Value&x password:hunter2");
        assert!(!m.contains("s3cr3t"));
        assert!(!m.contains("hunter2"));
    }

    #[test]
    fn long_opaque_runs_are_masked_but_guids_stay() {
        let m = sanitize_message("key Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg== tenant 72f988bf-86f1-41af-91ab-2d7cd011db47");
        assert!(!m.contains("Zm9vYmFy"));
        assert!(m.contains("72f988bf-86f1-41af-91ab-2d7cd011db47"));
    }

    #[test]
    fn messages_are_truncated() {
        let m = sanitize_message(&"word ".repeat(200));
        assert_eq!(m.chars().count(), MAX_MESSAGE);
    }
}
