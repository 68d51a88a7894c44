//! Who acts, on which Entra tenants, and a tenant made ready for operations through the
//! real use cases.

use domain::connection::ConnectionCommand;
use domain::{ConnectionId, EntraTenantId, Provider, Role, TenantKey};
use secrecy::SecretString;
use store::{CommandBus, Metadata, Vault};

/// Entra tenant ids the tests register (GUID literals).
pub const CONTOSO: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const FABRIKAM: &str = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
pub const NORTHWIND: &str = "9e8d7c6b-5a49-4382-9170-6f5e4d3c2b1a";
pub const TAILSPIN: &str = "0b6a2f51-7f0e-4e43-9b2e-52c0e2a1b0a1";

/// The client secret [`ReadyTenant`] stores unless told otherwise; it must never show up
/// in an event, a log line or a read model.
pub const CLIENT_SECRET: &str = "s3cr3t-Value~that-must-not-leak";

/// The vault key of [`vault`] (base64 of 32 bytes), for child processes.
pub const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The secret the API's tokens are signed with in tests, for child processes too.
pub const JWT_SECRET: &str = "e2e-test-jwt-secret-0123456789abcdef";

/// An Entra tenant id from a GUID literal.
pub fn guid(s: &str) -> EntraTenantId {
    s.parse().expect("a GUID literal")
}

/// A vault with a fixed key: tests can decrypt what another test step stored.
pub fn vault() -> Vault {
    Vault::from_base64(&SecretString::from(VAULT_KEY.to_owned())).expect("the test key is 32 bytes")
}

/// Someone with `role` in `workspace`; each role is always the same person (an owner is
/// `alice`), and the workflow engine acts as `engine`.
pub fn meta(workspace: &str, role: Role) -> Metadata {
    let person = match role {
        Role::Owner => "alice",
        Role::Manager => "maria",
        Role::Operator => "oscar",
        Role::Readonly => "rita",
        Role::Auditor => "audrey",
        Role::System => "engine",
    };
    Metadata::new(workspace, person, role)
}

/// An owner of the `acme` workspace, where most tests act.
pub fn owner() -> Metadata {
    meta("acme", Role::Owner)
}

/// The workflow engine acting in `workspace`.
pub fn engine(workspace: &str) -> Metadata {
    meta(workspace, Role::System)
}

/// A tenant registered with a Microsoft connection that has a credential and consent:
/// everything a start needs. The register -> connect -> credential -> consent sequence,
/// once.
///
/// `ReadyTenant::new(&bus, CONTOSO).build().await` registers Contoso for acme's owner;
/// `ReadyTenant::simulated(&bus, &sim_tenant)` uses a simulated tenant's names and the
/// credentials the Graph simulator accepts.
pub struct ReadyTenant<'a> {
    bus: &'a CommandBus,
    by: Metadata,
    entra: EntraTenantId,
    display_name: String,
    primary_domain: String,
    connection_name: String,
    client_id: String,
    client_secret: SecretString,
    /// Whether the credential names its Entra tenant (checked against the connection's).
    credential_names_tenant: bool,
    vault: Vault,
    consent: bool,
}

impl<'a> ReadyTenant<'a> {
    /// The Entra tenant `entra` (a GUID literal), registered as Contoso by acme's owner.
    pub fn new(bus: &'a CommandBus, entra: &str) -> Self {
        Self {
            bus,
            by: owner(),
            entra: guid(entra),
            display_name: "Contoso".into(),
            primary_domain: "contoso.com".into(),
            connection_name: "Graph".into(),
            client_id: "client-1".into(),
            client_secret: SecretString::from(CLIENT_SECRET.to_owned()),
            credential_names_tenant: false,
            vault: vault(),
            consent: true,
        }
    }

    /// One of the Graph simulator's tenants, with the credentials it accepts.
    pub fn simulated(bus: &'a CommandBus, tenant: &graph::sim::SimTenant) -> Self {
        Self {
            entra: EntraTenantId::from(tenant.tenant_id),
            display_name: tenant.display_name.clone(),
            primary_domain: tenant.default_domain.clone(),
            client_id: tenant.client_id.clone(),
            client_secret: tenant.client_secret.clone(),
            credential_names_tenant: true,
            ..Self::new(bus, CONTOSO)
        }
    }

    /// Registered by the owner of `workspace` instead of acme's.
    pub fn workspace(self, workspace: &str) -> Self {
        self.by(meta(workspace, Role::Owner))
    }

    /// Registered (and connected) by `by`.
    pub fn by(mut self, by: Metadata) -> Self {
        self.by = by;
        self
    }

    /// The tenant's display name and primary domain.
    pub fn named(mut self, display_name: &str, primary_domain: &str) -> Self {
        self.display_name = display_name.into();
        self.primary_domain = primary_domain.into();
        self
    }

    /// The connection's display name.
    pub fn connection_named(mut self, name: &str) -> Self {
        self.connection_name = name.into();
        self
    }

    /// The client secret stored for the connection.
    pub fn client_secret(mut self, secret: &str) -> Self {
        self.client_secret = SecretString::from(secret.to_owned());
        self
    }

    /// Whether consent is granted (without it, starts are blocked).
    pub fn consent(mut self, granted: bool) -> Self {
        self.consent = granted;
        self
    }

    /// Registers, connects, stores the credential and grants consent; returns the tenant
    /// and its connection (the tenant's default).
    pub async fn build(self) -> (TenantKey, ConnectionId) {
        let (bus, by) = (self.bus, &self.by);
        let tenant = app::register_tenant(
            bus,
            by,
            self.entra,
            &self.display_name,
            &self.primary_domain,
        )
        .await
        .unwrap_or_else(|e| panic!("register {}: {e}", self.display_name));
        let connection = app::create_connection(
            bus,
            by,
            &tenant,
            Provider::Microsoft,
            self.entra,
            &self.connection_name,
        )
        .await
        .unwrap_or_else(|e| panic!("connect {tenant}: {e}"));
        app::set_credential(
            bus,
            &self.vault,
            by,
            connection,
            &self.client_id,
            &self.client_secret,
            self.credential_names_tenant.then_some(self.entra),
        )
        .await
        .unwrap_or_else(|e| panic!("store the credential of {connection}: {e}"));
        if self.consent {
            let consent = ConnectionCommand::GrantConsent {
                scopes: vec!["Policy.Read.All".into()],
            };
            app::change_connection(bus, by, connection, consent)
                .await
                .unwrap_or_else(|e| panic!("grant consent on {connection}: {e}"));
        }
        (tenant, connection)
    }
}
