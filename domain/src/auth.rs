//! Roles and the permissions they grant (R1.5).

use serde::{Deserialize, Serialize};

/// A member's role in an MSP workspace. `System` is the engine itself (workflows,
/// schedules); it can never be minted into a user token. `Auditor` reads everything a
/// workspace records (events, the audit log, run histories, earlier states) and changes
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Manager,
    Operator,
    Readonly,
    Auditor,
    System,
}

/// What a command needs from the caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Register, rename, archive tenants.
    ManageTenants,
    /// Create connections, set or rotate credentials, make default, consent.
    ManageConnections,
    /// Start and cancel operations (resync, health check, ...).
    StartOperations,
    /// Set, change and disable a workspace's recurring schedules.
    ManageSchedules,
    /// Acknowledge drift alerts: the work of whoever watches the fleet.
    HandleAlerts,
    /// Internal progress of workflows: only the engine records it.
    RecordProgress,
    /// Contact sync (R5): connect the partner, map tenants, edit clients and contacts,
    /// resolve reconciliation items, configure field sync and feature flags.
    ManageContactSync,
}

impl Permission {
    /// Every permission: together, everything that changes anything.
    pub const ALL: [Permission; 7] = [
        Permission::ManageTenants,
        Permission::ManageConnections,
        Permission::StartOperations,
        Permission::ManageSchedules,
        Permission::HandleAlerts,
        Permission::RecordProgress,
        Permission::ManageContactSync,
    ];
}

impl Role {
    /// Whether this role may do what `permission` guards.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::System => true,
            Role::Owner | Role::Manager => {
                matches!(
                    permission,
                    ManageTenants
                        | ManageConnections
                        | StartOperations
                        | ManageSchedules
                        | ManageContactSync
                        | HandleAlerts
                )
            }
            Role::Operator => matches!(permission, StartOperations | HandleAlerts),
            Role::Readonly | Role::Auditor => false,
        }
    }

    /// Whether this role may change anything at all. The API refuses every mutation to a
    /// role that may not, before reading its input.
    pub fn may_change_anything(self) -> bool {
        Permission::ALL.into_iter().any(|p| self.allows(p))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Manager => "manager",
            Role::Operator => "operator",
            Role::Readonly => "readonly",
            Role::Auditor => "auditor",
            Role::System => "system",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "owner" => Ok(Role::Owner),
            "manager" => Ok(Role::Manager),
            "operator" => Ok(Role::Operator),
            "readonly" => Ok(Role::Readonly),
            "auditor" => Ok(Role::Auditor),
            "system" => Ok(Role::System),
            _ => Err(UnknownRole(s.chars().take(32).collect())),
        }
    }
}

display_as_str!(Role);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}` (expected owner, manager, operator, readonly or auditor)")]
pub struct UnknownRole(pub String);

/// Implemented by every aggregate's command type: the permission it requires. The command
/// bus checks it against the caller's role before the aggregate sees the command, so a
/// refusal writes nothing.
pub trait Authorize {
    fn permission(&self) -> Permission;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readonly_and_auditor_may_do_nothing_that_writes() {
        for role in [Role::Readonly, Role::Auditor] {
            for p in Permission::ALL {
                assert!(!role.allows(p), "{role:?} {p:?}");
            }
            assert!(!role.may_change_anything(), "{role:?}");
        }
        for role in [Role::Owner, Role::Manager, Role::Operator, Role::System] {
            assert!(role.may_change_anything(), "{role:?}");
        }
    }

    #[test]
    fn the_auditor_role_is_spelled_auditor() {
        assert_eq!(serde_json::to_value(Role::Auditor).unwrap(), "auditor");
        assert_eq!("auditor".parse::<Role>(), Ok(Role::Auditor));
        assert_eq!("Auditor".parse::<Role>(), Ok(Role::Auditor));
        assert_eq!(Role::Auditor.to_string(), "auditor");
    }

    #[test]
    fn operator_starts_operations_but_manages_nothing() {
        assert!(Role::Operator.allows(Permission::StartOperations));
        assert!(!Role::Operator.allows(Permission::ManageConnections));
        assert!(!Role::Operator.allows(Permission::ManageTenants));
        assert!(!Role::Operator.allows(Permission::ManageSchedules));
        assert!(!Role::Operator.allows(Permission::ManageContactSync));
    }

    #[test]
    fn owner_and_manager_manage_connections_but_not_workflow_progress() {
        for r in [Role::Owner, Role::Manager] {
            assert!(r.allows(Permission::ManageConnections));
            assert!(r.allows(Permission::StartOperations));
            assert!(r.allows(Permission::ManageSchedules));
            assert!(r.allows(Permission::ManageContactSync));
            assert!(!r.allows(Permission::RecordProgress));
        }
    }
}
