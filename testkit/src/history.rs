//! A history made through the real use cases, told in chapters: the read models' tests
//! ask for the chapters they look at, or for [`History::complete`], which touches every
//! event type the read models show, in two workspaces.

use std::collections::BTreeMap;

use app::Started;
use chrono::{DateTime, SubsecRound, Utc};
use domain::connection::{ConnectionCommand, HealthStatus};
use domain::contact::ContactField;
use domain::contact_settings::FeatureFlag;
use domain::run::{OperationRun, RunCommand};
use domain::schedule_tick::{tick_key, FanOutCounts, ScheduleTick, TickCommand};
use domain::tenant::{SnapshotSource, Tenant, TenantCommand};
use domain::{ConnectionId, Provider, ReasonCode, RunId, TenantKey};
use secrecy::SecretString;
use store::CommandBus;

use crate::contact_book::{set_field_sync, set_flag, ContactBook};
use crate::tenants::{engine, guid, owner, vault, ReadyTenant, CLIENT_SECRET};
use crate::tenants::{CONTOSO, FABRIKAM, NORTHWIND, TAILSPIN};

/// What a history made. acme's three tenants are always there; the other chapters only
/// when asked for (their accessors panic otherwise).
pub struct History {
    /// acme's tenant, ready: its default connection is `primary`.
    pub contoso: TenantKey,
    /// acme's tenant without a connection: its runs are blocked.
    pub fabrikam: TenantKey,
    /// acme's tenant, renamed and archived.
    pub northwind: TenantKey,
    /// contoso's default connection: credential and consent; with
    /// [`connections`](HistoryBuilder::connections) also rotated, health-checked and an
    /// error recorded.
    pub primary: ConnectionId,
    partner: Option<ConnectionId>,
    runs: Option<Runs>,
    schedule: Option<Schedule>,
    globex: Option<Globex>,
    contacts: Option<ContactBook>,
    mailbox: Option<domain::mailbox::MailboxId>,
}

/// The runs of [`HistoryBuilder::runs`], all of them resyncs.
pub struct Runs {
    /// Ran three step attempts (one failed and retried) and succeeded.
    pub succeeded: RunId,
    /// Cancelled while queued.
    pub cancelled_queued: RunId,
    /// Cancelled while running, its first step started.
    pub cancelled_running: RunId,
    /// Blocked at start: fabrikam has no connection.
    pub blocked: RunId,
}

/// acme's resync schedule of [`HistoryBuilder::schedule`]: set hourly, one tick fired and
/// fanned out (as [`History::TICK_FAN_OUT`] says), re-timed to every 30 minutes, disabled.
pub struct Schedule {
    pub id: String,
    /// The due time of its tick.
    pub tick_due_at: DateTime<Utc>,
}

/// globex's view of Contoso, of [`HistoryBuilder::other_workspace`].
pub struct Globex {
    /// globex's tenant for the same Entra tenant as acme's contoso.
    pub contoso: TenantKey,
    /// Its ready connection.
    pub connection: ConnectionId,
}

impl History {
    /// What the fan-out of the schedule's tick reports.
    pub const TICK_FAN_OUT: FanOutCounts = FanOutCounts {
        started: 1,
        deduplicated: 0,
        busy: 0,
        blocked: 1,
        skipped: 0,
    };

    /// A history of acme's three tenants; add chapters, then [`build`](HistoryBuilder::build).
    pub fn of(bus: &CommandBus) -> HistoryBuilder<'_> {
        HistoryBuilder {
            bus,
            policies: false,
            connections: false,
            runs: false,
            schedule: false,
            other_workspace: false,
            contacts: false,
            mail: false,
        }
    }

    /// Every chapter.
    pub async fn complete(bus: &CommandBus) -> History {
        Self::of(bus)
            .policies()
            .connections()
            .runs()
            .schedule()
            .other_workspace()
            .contacts()
            .mail()
            .build()
            .await
    }

    /// contoso's second connection (to Tailspin's Entra tenant): default for a while,
    /// disabled and enabled again; no credential.
    pub fn partner(&self) -> ConnectionId {
        self.partner.expect("a history with .connections()")
    }

    pub fn runs(&self) -> &Runs {
        self.runs.as_ref().expect("a history with .runs()")
    }

    pub fn schedule(&self) -> &Schedule {
        self.schedule.as_ref().expect("a history with .schedule()")
    }

    pub fn contacts(&self) -> &ContactBook {
        self.contacts.as_ref().expect("a history with .contacts()")
    }

    /// contoso's help desk mailbox of [`HistoryBuilder::mail`].
    pub fn mailbox(&self) -> domain::mailbox::MailboxId {
        self.mailbox.expect("a history with .mail()")
    }

    pub fn globex(&self) -> &Globex {
        self.globex
            .as_ref()
            .expect("a history with .other_workspace()")
    }
}

/// The chapters a [`History`] tells. They are told in one order, whatever the order they
/// were asked for in.
pub struct HistoryBuilder<'a> {
    bus: &'a CommandBus,
    policies: bool,
    connections: bool,
    runs: bool,
    schedule: bool,
    other_workspace: bool,
    contacts: bool,
    mail: bool,
}

impl HistoryBuilder<'_> {
    /// contoso's help desk mailbox: added, subscribed, one message notified and received
    /// (enriched), another notified and received minimally (its fetch failed).
    pub fn mail(mut self) -> Self {
        self.mail = true;
        self
    }

    /// contoso is resynced; two policy snapshots from Graph (the second with a diff and a
    /// drift alert), an import (a third snapshot, no second alert within the hour, and the
    /// policy intent) and a license refresh.
    pub fn policies(mut self) -> Self {
        self.policies = true;
        self
    }

    /// contoso's partner connection, and the default moving to it and back; the primary
    /// connection's credential rotated, a degraded health check, an error, a healthy check.
    pub fn connections(mut self) -> Self {
        self.connections = true;
        self
    }

    /// contoso's runs (succeeded, cancelled while queued, cancelled while running) and
    /// fabrikam's blocked one.
    pub fn runs(mut self) -> Self {
        self.runs = true;
        self
    }

    /// acme's resync schedule and one tick of it, without the scheduler.
    pub fn schedule(mut self) -> Self {
        self.schedule = true;
        self
    }

    /// globex registers Contoso too, with a ready connection.
    pub fn other_workspace(mut self) -> Self {
        self.other_workspace = true;
        self
    }

    /// acme's contact sync: a [`ContactBook`], the `ui` flag on and a field sync config.
    pub fn contacts(mut self) -> Self {
        self.contacts = true;
        self
    }

    pub async fn build(self) -> History {
        let bus = self.bus;
        let (contoso, primary) = ReadyTenant::new(bus, CONTOSO)
            .connection_named("Contoso Graph")
            .build()
            .await;
        let fabrikam = register(bus, FABRIKAM, "Fabrikam", "fabrikam.com").await;
        let northwind = register(bus, NORTHWIND, "Northwind", "nw.com").await;
        let rename = TenantCommand::Rename {
            display_name: "Northwind Traders".into(),
        };
        for command in [rename, TenantCommand::Archive] {
            app::change_tenant(bus, &owner(), &northwind, command)
                .await
                .unwrap();
        }
        if self.policies {
            policies(bus, &contoso).await;
        }
        let partner = match self.connections {
            true => Some(connections(bus, &contoso, primary).await),
            false => None,
        };
        let runs = match self.runs {
            true => Some(runs(bus, &contoso, &fabrikam).await),
            false => None,
        };
        let schedule = match self.schedule {
            true => Some(schedule(bus).await),
            false => None,
        };
        let globex = match self.other_workspace {
            true => {
                let (contoso, connection) = ReadyTenant::new(bus, CONTOSO)
                    .workspace("globex")
                    .named("Contoso (globex)", "contoso.com")
                    .connection_named("Globex view")
                    .build()
                    .await;
                Some(Globex {
                    contoso,
                    connection,
                })
            }
            false => None,
        };
        let contacts = match self.contacts {
            true => {
                let book = ContactBook::seed(bus, "acme").await;
                set_flag(bus, "acme", FeatureFlag::Ui, true).await;
                set_field_sync(bus, "acme", &[ContactField::JobTitle]).await;
                Some(book)
            }
            false => None,
        };
        let mailbox = match self.mail {
            true => Some(mail(bus, &contoso).await),
            false => None,
        };
        History {
            mailbox,
            contoso,
            fabrikam,
            northwind,
            primary,
            partner,
            runs,
            schedule,
            globex,
            contacts,
        }
    }
}

async fn register(bus: &CommandBus, entra: &str, name: &str, domain: &str) -> TenantKey {
    app::register_tenant(bus, &owner(), guid(entra), name, domain)
        .await
        .unwrap()
}

async fn record_on_tenant(bus: &CommandBus, tenant: &TenantKey, command: TenantCommand) {
    bus.execute::<Tenant>(&tenant.to_string(), command, &engine("acme"))
        .await
        .unwrap();
}

async fn policies(bus: &CommandBus, contoso: &TenantKey) {
    record_on_tenant(bus, contoso, TenantCommand::RecordResync { at: Utc::now() }).await;
    for (state, source) in [
        ("enabled", SnapshotSource::Graph),
        ("disabled", SnapshotSource::Graph),
        ("enabled", SnapshotSource::Import),
    ] {
        let raw = serde_json::json!({
            "id": "p1", "displayName": "MFA for admins", "state": state,
            "conditions": {"users": {"includeUsers": ["All"]}},
            "grantControls": {"operator": "OR", "builtInControls": ["mfa"]}
        });
        let snapshot = TenantCommand::RecordSnapshot {
            snapshot_id: uuid::Uuid::now_v7(),
            policies: domain::policy::curate(&[raw]).unwrap(),
            source,
        };
        record_on_tenant(bus, contoso, snapshot).await;
    }
    let licenses = TenantCommand::RecordLicenses {
        capabilities: domain::policy::capabilities(&[]),
    };
    record_on_tenant(bus, contoso, licenses).await;
}

/// Returns the partner connection.
async fn connections(bus: &CommandBus, contoso: &TenantKey, primary: ConnectionId) -> ConnectionId {
    let acme = owner();
    let partner = app::create_connection(
        bus,
        &acme,
        contoso,
        Provider::Microsoft,
        guid(TAILSPIN),
        "Contoso partner",
    )
    .await
    .unwrap();
    app::make_default(bus, &acme, partner).await.unwrap();
    app::make_default(bus, &acme, primary).await.unwrap();
    for command in [ConnectionCommand::Disable, ConnectionCommand::Enable] {
        app::change_connection(bus, &acme, partner, command)
            .await
            .unwrap();
    }
    // Rotation: a second credential for the primary connection.
    let secret = SecretString::from(CLIENT_SECRET.to_owned());
    app::set_credential(bus, &vault(), &acme, primary, "client-1", &secret, None)
        .await
        .unwrap();
    for command in [
        ConnectionCommand::RecordHealthCheck {
            health: HealthStatus::Degraded,
            scopes_granted: vec!["Policy.Read.All".into(), "User.Read.All".into()],
        },
        ConnectionCommand::RecordError {
            reason: ReasonCode::GraphThrottled,
            message: "429 from graph".into(),
        },
        ConnectionCommand::RecordHealthCheck {
            health: HealthStatus::Healthy,
            scopes_granted: vec!["Policy.Read.All".into()],
        },
    ] {
        app::change_connection(bus, &engine("acme"), primary, command)
            .await
            .unwrap();
    }
    partner
}

async fn runs(bus: &CommandBus, contoso: &TenantKey, fabrikam: &TenantKey) -> Runs {
    let succeeded = queued_resync(bus, contoso).await;
    let start_step = |step: &str, attempt| RunCommand::StartStep {
        step: step.into(),
        attempt,
    };
    let commands = [
        RunCommand::Start,
        start_step("fetch", 1),
        RunCommand::CompleteStep {
            step: "fetch".into(),
            attempt: 1,
            summary: serde_json::json!({ "policies": 12 }),
        },
        start_step("store", 1),
        RunCommand::FailStep {
            step: "store".into(),
            attempt: 1,
            reason: ReasonCode::GraphThrottled,
            message: "throttled".into(),
            retry_at: Some(Utc::now() + chrono::Duration::seconds(30)),
        },
        // Completed without a recorded start.
        RunCommand::CompleteStep {
            step: "store".into(),
            attempt: 2,
            summary: serde_json::json!({ "stored": 12 }),
        },
        RunCommand::Succeed {
            summary_counts: BTreeMap::from([("policies".to_owned(), 12)]),
        },
    ];
    record_progress(bus, succeeded, commands).await;
    release_scope(bus, succeeded).await;

    let cancelled_queued = queued_resync(bus, contoso).await;
    app::cancel_run(bus, &owner(), cancelled_queued)
        .await
        .unwrap();

    let cancelled_running = queued_resync(bus, contoso).await;
    record_progress(
        bus,
        cancelled_running,
        [RunCommand::Start, start_step("fetch", 1)],
    )
    .await;
    app::cancel_run(bus, &owner(), cancelled_running)
        .await
        .unwrap();
    record_progress(bus, cancelled_running, [RunCommand::Cancel]).await;
    release_scope(bus, cancelled_running).await;

    let blocked = match app::start_operation(bus, &owner(), fabrikam, "policy.resync", "policies")
        .await
        .unwrap()
    {
        Started::Blocked(run, _) => run,
        other => panic!("fabrikam has no connection, yet {other:?}"),
    };
    Runs {
        succeeded,
        cancelled_queued,
        cancelled_running,
        blocked,
    }
}

/// A schedule's life without the scheduler: set, one tick fired and fanned out (as the
/// scheduler records them), re-timed, disabled.
async fn schedule(bus: &CommandBus) -> Schedule {
    use chrono::Duration;
    let acme = owner();
    let first = (Utc::now() - Duration::minutes(150)).trunc_subsecs(0);
    let id = app::set_schedule(bus, &acme, "policy.resync", 60, true, Some(first))
        .await
        .unwrap();
    let tick_due_at = first + Duration::minutes(120);
    let tick = tick_key(&id, tick_due_at);
    let fire = TickCommand::Fire {
        workspace: "acme".parse().unwrap(),
        schedule_id: id.clone(),
        run_type: "policy.resync".into(),
        due_at: tick_due_at,
    };
    let fanned_out = TickCommand::CompleteFanOut {
        counts: History::TICK_FAN_OUT,
    };
    for command in [fire, fanned_out] {
        bus.execute::<ScheduleTick>(&tick, command, &engine("acme"))
            .await
            .unwrap();
    }
    app::set_schedule(bus, &acme, "policy.resync", 30, true, None)
        .await
        .unwrap();
    app::disable_schedule(bus, &acme, &id).await.unwrap();
    Schedule { id, tick_due_at }
}

/// Starts a resync of acme's ready `tenant` as its owner; the run must be queued.
pub async fn queued_resync(bus: &CommandBus, tenant: &TenantKey) -> RunId {
    match app::start_operation(bus, &owner(), tenant, "policy.resync", "policies").await {
        Ok(Started::Queued(run)) => run,
        other => panic!("{tenant} is ready, yet {other:?}"),
    }
}

/// Records `commands` on an acme run as the workflow engine does.
pub async fn record_progress(
    bus: &CommandBus,
    run: RunId,
    commands: impl IntoIterator<Item = RunCommand>,
) {
    for command in commands {
        bus.execute::<OperationRun>(&run.to_string(), command, &engine("acme"))
            .await
            .unwrap_or_else(|e| panic!("record progress of {run}: {e}"));
    }
}

/// What the workflow does when an acme run has ended: frees its scope for the next run.
pub async fn release_scope(bus: &CommandBus, run: RunId) {
    let mut uow = bus.begin().await.unwrap();
    let state = uow
        .load::<OperationRun>(&run.to_string())
        .await
        .unwrap()
        .aggregate;
    app::release_scope(&mut uow, &state, run).await.unwrap();
    uow.commit().await.unwrap();
}

async fn mail(bus: &CommandBus, contoso: &TenantKey) -> domain::mailbox::MailboxId {
    use domain::inbound_email::{
        EmailData, InboundEmail, InboundEmailCommand, Participant, Processed,
    };
    use domain::mailbox::{Mailbox, MailboxCommand};
    let id = app::mailboxes::add_mailbox(
        bus,
        &vault(),
        &owner(),
        app::mailboxes::NewMailbox {
            tenant: contoso.clone(),
            address: "help@contoso.com".into(),
            delegated: None,
            legacy_client_state: None,
        },
    )
    .await
    .unwrap();
    let system = engine("acme");
    bus.execute::<Mailbox>(
        &id.to_string(),
        MailboxCommand::RecordSubscription {
            subscription_id: "sub-contoso-1".into(),
            expires_at: Utc::now().trunc_subsecs(0) + chrono::Duration::days(2),
        },
        &system,
    )
    .await
    .unwrap();
    for (message, fetched) in [("AAMkADhistory1", true), ("AAMkADhistory2", false)] {
        let stream = InboundEmail::id(id, message);
        bus.execute::<InboundEmail>(
            &stream,
            InboundEmailCommand::RecordNotification {
                workspace: contoso.workspace.clone(),
                tenant: contoso.clone(),
                mailbox: id,
                message_id: message.into(),
                subscription_id: "sub-contoso-1".into(),
            },
            &system,
        )
        .await
        .unwrap();
        let email = fetched.then(|| {
            Box::new(EmailData {
                internet_message_id: Some("<h1@customer.example>".into()),
                subject: "Printer".into(),
                from: Some(Participant {
                    name: "Pat".into(),
                    address: "pat@customer.example".into(),
                }),
                to: vec![],
                cc: vec![],
                received_at: Some(Utc::now().trunc_subsecs(0)),
                thread_id: Some("conv-1".into()),
                in_reply_to: None,
                references: vec![],
                body_text: "jammed".into(),
                body_truncated: false,
                body_preview: "jammed".into(),
                headers: vec![],
                attachments: vec![],
            })
        });
        let failure = (!fetched).then_some(ReasonCode::MailFetchFailed);
        bus.execute::<InboundEmail>(
            &stream,
            InboundEmailCommand::Receive {
                email,
                failure,
                processed: fetched.then(|| Processed::Categorized {
                    category: "tenantflow/processed".into(),
                }),
            },
            &system,
        )
        .await
        .unwrap();
    }
    id
}
