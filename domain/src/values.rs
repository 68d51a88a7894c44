//! Typed identifiers and value types, each with a validating parser.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Why a value was refused.
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

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// An MSP workspace: the unit of isolation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspaceId(String);

impl WorkspaceId {
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

/// The canonical id of a Microsoft tenant: its Entra tenant GUID, lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntraTenantId(Uuid);

impl EntraTenantId {
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

/// The aggregate id of a tenant: a workspace and the tenant's Entra GUID. The same Microsoft
/// tenant may be managed by two MSPs; each sees its own tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantKey {
    pub workspace: WorkspaceId,
    pub entra_tenant_id: EntraTenantId,
}

impl TenantKey {
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

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A display name or label: trimmed, non-empty, at most `max` characters.
pub fn clean_name(s: &str, max: usize) -> Option<String> {
    let t = s.trim();
    (!t.is_empty() && t.chars().count() <= max && !t.chars().any(char::is_control))
        .then(|| t.to_owned())
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
}
