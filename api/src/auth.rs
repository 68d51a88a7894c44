//! Bearer JWT authentication (HS256): who the caller is, in which MSP workspace, with
//! which role. Every GraphQL request carries one; `tenantflow token` mints one.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::Role;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The claims tenantflow puts in (and requires of) a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub workspace: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub workspace: String,
    pub role: Role,
}

impl Caller {
    /// Who this is, across workspaces (`<workspace>/<subject>`): the key its writes are
    /// remembered under for read-your-writes on a replica.
    pub fn key(&self) -> String {
        format!("{}/{}", self.workspace, self.subject)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <token>` (mint one with `tenantflow token`)")]
    Missing,
    #[error("the Authorization header must be `Bearer <token>`")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid")]
    Invalid,
    #[error("the token's role cannot be used by a person")]
    ForbiddenRole,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "message": self.to_string(), "extensions": { "code": "unauthenticated" } }]
        });
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(body),
        )
            .into_response()
    }
}

/// Mints and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

impl Authenticator {
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 30;
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        }
    }

    /// A token for `subject` in `workspace` with `role`, valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        workspace: &str,
        role: Role,
        ttl: chrono::Duration,
    ) -> Result<String, AuthError> {
        if role == Role::System {
            return Err(AuthError::ForbiddenRole);
        }
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: subject.to_owned(),
            workspace: workspace.to_owned(),
            role,
            iat: now,
            exp: now + ttl.num_seconds(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AuthError::Invalid)
    }

    /// Verifies a token and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        let c = data.claims;
        if c.role == Role::System {
            return Err(AuthError::ForbiddenRole);
        }
        if c.workspace.is_empty() || c.sub.is_empty() {
            return Err(AuthError::Invalid);
        }
        Ok(Caller {
            subject: c.sub,
            workspace: c.workspace,
            role: c.role,
        })
    }

    /// The caller of an HTTP request, from its `Authorization` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Malformed)?;
        self.verify(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(&SecretString::from(
            "test-secret-of-enough-length-0123456789".to_owned(),
        ))
    }

    #[test]
    fn a_minted_token_verifies_to_its_caller() {
        let a = auth();
        let t = a
            .mint("alice", "acme", Role::Operator, chrono::Duration::hours(1))
            .unwrap();
        assert_eq!(
            a.verify(&t).unwrap(),
            Caller {
                subject: "alice".into(),
                workspace: "acme".into(),
                role: Role::Operator
            }
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let a = auth();
        let t = a
            .mint("alice", "acme", Role::Owner, chrono::Duration::hours(-2))
            .unwrap();
        assert_eq!(a.verify(&t), Err(AuthError::Expired));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let other = Authenticator::new(&SecretString::from(
            "another-secret-entirely-0123456789".to_owned(),
        ));
        let t = other
            .mint("mallory", "acme", Role::Owner, chrono::Duration::hours(1))
            .unwrap();
        assert_eq!(auth().verify(&t), Err(AuthError::Invalid));
    }

    #[test]
    fn the_system_role_cannot_be_minted() {
        assert_eq!(
            auth().mint("x", "acme", Role::System, chrono::Duration::hours(1)),
            Err(AuthError::ForbiddenRole)
        );
    }

    #[test]
    fn headers_without_a_bearer_token_are_refused_clearly() {
        let a = auth();
        let mut h = HeaderMap::new();
        assert_eq!(a.authenticate(&h), Err(AuthError::Missing));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(a.authenticate(&h), Err(AuthError::Malformed));
        h.insert(header::AUTHORIZATION, "Bearer not.a.jwt".parse().unwrap());
        assert_eq!(a.authenticate(&h), Err(AuthError::Invalid));
    }
}
