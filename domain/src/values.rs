//! Typed identifiers and value types, each with a validating parser.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

use crate::{DomainError, ReasonCode};

/// Why a value was refused. Each message says what is expected, never echoing more than
/// a short prefix of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "workspace id must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    Workspace,
    #[error("the Entra tenant id must be a GUID (e.g. 72f988bf-86f1-41af-91ab-2d7cd011db47); domains such as contoso.com are display labels only")]
    EntraTenantId,
    #[error("`{0}` is not a valid id (expected a UUID)")]
    Uuid(String),
    #[error("a tenant key is `<workspace>:<entra tenant guid>`")]
    TenantKey,
    #[error("unknown provider `{0}` (expected microsoft)")]
    Provider(String),
}

impl DomainError for ValueError {
    fn reason_code(&self) -> ReasonCode {
        ReasonCode::ValidationFailed
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// An MSP workspace: the unit of isolation. A slug: `[a-z0-9][a-z0-9-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspaceId(String);

impl WorkspaceId {
    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for WorkspaceId {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        ok.then(|| Self(s.to_owned())).ok_or(ValueError::Workspace)
    }
}

impl TryFrom<String> for WorkspaceId {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        s.parse()
    }
}

impl From<WorkspaceId> for String {
    fn from(w: WorkspaceId) -> String {
        w.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The canonical id of a Microsoft tenant: its Entra tenant GUID, lowercase (R1.1).
/// Domains change and a tenant may have many, so they are display labels only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntraTenantId(Uuid);

impl EntraTenantId {
    /// The GUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for EntraTenantId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl FromStr for EntraTenantId {
    type Err = ValueError;
    /// Only the hyphenated 8-4-4-4-12 form: braces, URNs and bare hex are refused so one
    /// tenant has one spelling.
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let s = s.trim();
        if s.len() != 36 {
            return Err(ValueError::EntraTenantId);
        }
        Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| ValueError::EntraTenantId)
    }
}

impl TryFrom<String> for EntraTenantId {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        s.parse()
    }
}

impl From<EntraTenantId> for String {
    fn from(e: EntraTenantId) -> String {
        e.to_string()
    }
}

impl fmt::Display for EntraTenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            /// The UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                Uuid::try_parse(s.trim()).map(Self).map_err(|_| ValueError::Uuid(short(s)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0.hyphenated())
            }
        }
    };
}

uuid_id!(
    /// A provider connection.
    ConnectionId
);
uuid_id!(
    /// An operation run.
    RunId
);
uuid_id!(
    /// An MSP customer record ([`Client`](crate::Client)) that contacts belong to.
    ClientId
);
uuid_id!(
    /// A contact of a client ([`Contact`](crate::Contact)). Contacts the sync creates get
    /// [`ContactId::for_entra_user`], so a sync redone after a crash finds its own contact.
    ContactId
);
uuid_id!(
    /// A reconciliation item ([`ReconciliationItem`](crate::ReconciliationItem)); always
    /// [`ReconciliationItemId::for_entra_user`], so queueing a user twice is one item.
    ReconciliationItemId
);

/// A name-based id: the same kind and parts always give the same UUID, different ones
/// (practically) never collide. Like UUIDv5, but SHA-256 (already a dependency) instead of
/// SHA-1, so it carries version 8 ("custom"). Each part is length-prefixed, so
/// `("ab", "c")` and `("a", "bc")` differ.
pub fn derived_uuid(kind: &str, parts: &[&str]) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"tenantflow/");
    for part in std::iter::once(kind).chain(parts.iter().copied()) {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A user of a customer's Entra directory: the tenant and the user's object id. Object ids
/// are unique per tenant only, so the pair names the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntraUserRef {
    pub entra_tenant_id: EntraTenantId,
    pub object_id: Uuid,
}

impl EntraUserRef {
    fn id_parts(&self) -> [String; 2] {
        [self.entra_tenant_id.to_string(), self.object_id.to_string()]
    }
}

impl ContactId {
    /// The contact the sync creates for `user` under `client` in `workspace`: the same every
    /// time. The client is part of it because a tenant mapped to another client starts a
    /// contact of its own there, while the first client keeps its contact.
    pub fn for_entra_user(workspace: &WorkspaceId, client: ClientId, user: &EntraUserRef) -> Self {
        let [tenant, object] = user.id_parts();
        let client = client.to_string();
        Self(derived_uuid(
            "contact",
            &[workspace.as_str(), &client, &tenant, &object],
        ))
    }
}

impl ReconciliationItemId {
    /// The one reconciliation item of `user` in `workspace`.
    pub fn for_entra_user(workspace: &WorkspaceId, user: &EntraUserRef) -> Self {
        let [tenant, object] = user.id_parts();
        Self(derived_uuid(
            "reconciliation_item",
            &[workspace.as_str(), &tenant, &object],
        ))
    }
}

/// An email address the way contacts are matched (R5.4): trimmed and lowercased, one `@`,
/// a non-empty local part without spaces and a DNS domain. `None` when it is not one.
pub fn normalize_email(s: &str) -> Option<String> {
    let lower = s.trim().to_lowercase();
    let (local, domain) = lower.split_once('@')?;
    let local_ok = !local.is_empty()
        && local.chars().count() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@');
    let domain = clean_domain(domain)?;
    local_ok.then(|| format!("{local}@{domain}"))
}

/// The aggregate id of a tenant: a workspace and the tenant's Entra GUID. The same Microsoft
/// tenant may be managed by two MSPs; each sees its own tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantKey {
    pub workspace: WorkspaceId,
    pub entra_tenant_id: EntraTenantId,
}

impl TenantKey {
    /// The key of `entra_tenant_id` in `workspace`.
    pub fn new(workspace: WorkspaceId, entra_tenant_id: EntraTenantId) -> Self {
        Self {
            workspace,
            entra_tenant_id,
        }
    }
}

impl FromStr for TenantKey {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let (w, t) = s.split_once(':').ok_or(ValueError::TenantKey)?;
        Ok(Self {
            workspace: w.parse()?,
            entra_tenant_id: t.parse()?,
        })
    }
}

impl TryFrom<String> for TenantKey {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        s.parse()
    }
}

impl From<TenantKey> for String {
    fn from(k: TenantKey) -> String {
        k.to_string()
    }
}

impl fmt::Display for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.workspace, self.entra_tenant_id)
    }
}

/// A provider a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Microsoft,
}

impl Provider {
    /// The stable snake_case spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Microsoft => "microsoft",
        }
    }
}

impl FromStr for Provider {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        match s {
            "microsoft" => Ok(Provider::Microsoft),
            other => Err(ValueError::Provider(short(other))),
        }
    }
}

display_as_str!(Provider);

/// The longest display name, in characters.
pub(crate) const MAX_NAME: usize = 200;

/// A display name or label: trimmed, non-empty, at most `max` characters, no control
/// characters. `None` when the input cannot be one.
pub fn clean_name(s: &str, max: usize) -> Option<String> {
    let t = s.trim();
    (!t.is_empty() && t.chars().count() <= max && !t.chars().any(char::is_control))
        .then(|| t.to_owned())
}

/// A machine name: an operation type (`policy.resync`), module, step or count name.
/// 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit, so
/// that names compare as plain strings (runs and scope locks match types this way).
pub(crate) fn is_machine_name(s: &str) -> bool {
    s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// A DNS name such as `contoso.com` or `contoso.onmicrosoft.com`, trimmed and lowercased:
/// at least two labels of a-z, 0-9 and inner '-', at most 253 characters.
pub(crate) fn clean_domain(s: &str) -> Option<String> {
    let d = s.trim().to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    (d.len() <= 253 && d.contains('.') && d.split('.').all(label_ok)).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_is_refused_as_an_entra_tenant_id() {
        let err = "contoso.com".parse::<EntraTenantId>().unwrap_err();
        assert!(err.to_string().contains("GUID"));
        assert!(err.to_string().contains("display labels"));
    }

    #[test]
    fn entra_tenant_ids_are_canonical_lowercase() {
        let id: EntraTenantId = "72F988BF-86F1-41AF-91AB-2D7CD011DB47".parse().unwrap();
        assert_eq!(id.to_string(), "72f988bf-86f1-41af-91ab-2d7cd011db47");
        assert!("{72f988bf-86f1-41af-91ab-2d7cd011db47}"
            .parse::<EntraTenantId>()
            .is_err());
        assert!("72f988bf86f141af91ab2d7cd011db47"
            .parse::<EntraTenantId>()
            .is_err());
    }

    #[test]
    fn workspace_ids_are_slugs() {
        assert!("acme-msp".parse::<WorkspaceId>().is_ok());
        for bad in ["", "Acme", "-x", "a b", "a:b", &"x".repeat(64)] {
            assert!(bad.parse::<WorkspaceId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_keys_round_trip() {
        let k: TenantKey = "acme:72f988bf-86f1-41af-91ab-2d7cd011db47".parse().unwrap();
        assert_eq!(k.to_string(), "acme:72f988bf-86f1-41af-91ab-2d7cd011db47");
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<TenantKey>(&json).unwrap(), k);
        assert!("acme".parse::<TenantKey>().is_err());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(clean_name("  Contoso ", 10).as_deref(), Some("Contoso"));
        assert_eq!(clean_name("   ", 10), None);
        assert_eq!(clean_name("x\u{7}y", 10), None);
        assert_eq!(clean_name(&"x".repeat(11), 10), None);
    }

    #[test]
    fn ids_refuse_bad_input_when_deserialized_too() {
        assert!(serde_json::from_str::<EntraTenantId>(r#""contoso.com""#).is_err());
        assert!(serde_json::from_str::<WorkspaceId>(r#""Acme MSP""#).is_err());
        assert!(serde_json::from_str::<TenantKey>(r#""acme:contoso.com""#).is_err());
        let id: EntraTenantId =
            serde_json::from_str(r#""72F988BF-86F1-41AF-91AB-2D7CD011DB47""#).unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            r#""72f988bf-86f1-41af-91ab-2d7cd011db47""#
        );
    }

    #[test]
    fn uuid_ids_parse_and_print_hyphenated() {
        let c = ConnectionId::new();
        assert_eq!(c.to_string().parse::<ConnectionId>().unwrap(), c);
        assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        assert_eq!(
            "nope".parse::<RunId>().unwrap_err(),
            ValueError::Uuid("nope".into())
        );
    }

    #[test]
    fn providers_are_snake_case() {
        assert_eq!(
            "microsoft".parse::<Provider>().unwrap(),
            Provider::Microsoft
        );
        assert_eq!(
            serde_json::to_string(&Provider::Microsoft).unwrap(),
            r#""microsoft""#
        );
        assert!("google".parse::<Provider>().is_err());
    }

    #[test]
    fn machine_names_have_one_spelling() {
        for ok in [
            "policy.resync",
            "connection.health_check",
            "fetch-policies",
            "m",
        ] {
            assert!(is_machine_name(ok), "{ok}");
        }
        for bad in ["", "Policy.Resync", "policy resync", ".x", &"x".repeat(65)] {
            assert!(!is_machine_name(bad), "{bad}");
        }
    }

    #[test]
    fn value_errors_are_validation_failures() {
        assert_eq!(
            ValueError::EntraTenantId.reason_code(),
            ReasonCode::ValidationFailed
        );
    }

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        assert_eq!(
            normalize_email("  Adele.Vance@Contoso.COM ").as_deref(),
            Some("adele.vance@contoso.com")
        );
        for bad in [
            "",
            "adele",
            "@contoso.com",
            "a@b@contoso.com",
            "a b@contoso.com",
            "a@contoso",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad}");
        }
    }

    #[test]
    fn derived_ids_are_stable_and_tell_their_inputs_apart() {
        let user = EntraUserRef {
            entra_tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".parse().unwrap(),
            object_id: Uuid::from_u128(7),
        };
        let acme: WorkspaceId = "acme".parse().unwrap();
        let other: WorkspaceId = "other".parse().unwrap();
        let client = ClientId(Uuid::from_u128(1));
        let id = ContactId::for_entra_user(&acme, client, &user);
        assert_eq!(id, ContactId::for_entra_user(&acme, client, &user));
        assert_ne!(id, ContactId::for_entra_user(&other, client, &user));
        assert_ne!(
            id,
            ContactId::for_entra_user(&acme, ClientId(Uuid::from_u128(2)), &user)
        );
        assert_ne!(
            id.as_uuid(),
            ReconciliationItemId::for_entra_user(&acme, &user).as_uuid()
        );
        assert_eq!(id.as_uuid().get_version_num(), 8);
        assert_ne!(
            derived_uuid("k", &["ab", "c"]),
            derived_uuid("k", &["a", "bc"])
        );
    }

    #[test]
    fn domains_are_lowercased_dns_names() {
        assert_eq!(
            clean_domain(" Contoso.OnMicrosoft.com ").as_deref(),
            Some("contoso.onmicrosoft.com")
        );
        for bad in ["contoso", "contoso..com", "-x.com", "a b.com", "x.com/", ""] {
            assert_eq!(clean_domain(bad), None, "{bad}");
        }
    }
}
