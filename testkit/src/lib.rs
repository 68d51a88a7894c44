//! Test support for every crate's tests, so setup is written once:
//!
//! - a fresh, migrated database per test on one embedded cluster per test binary
//!   ([`TestDb`]), stopped and removed by its watchdog however the process exits;
//! - waiting without fixed sleeps ([`eventually`], [`within`]) and for consumers of the log
//!   ([`caught_up`], [`SteppedConsumer`]);
//! - who acts ([`owner`], [`meta`], [`engine`]) and on which tenants ([`CONTOSO`], ...);
//!   a tenant ready for operations ([`ReadyTenant`]); a history touching every read model
//!   ([`History`]); a contact sync history of one workspace ([`ContactBook`]);
//! - an engine driven by the test on a controlled clock ([`SteppedEngine`]);
//! - with the feature `service`: the service in this process on a free port ([`TestApp`])
//!   and a GraphQL client for it or for the real binary ([`GraphqlClient`]);
//! - with the feature `browser`: a headless Chromium over WebDriver ([`Browser`]), installed
//!   from the system's packages when missing.

#[cfg(feature = "browser")]
mod browser;
mod consumers;
mod contact_book;
mod db;
mod engine;
#[cfg(feature = "service")]
mod graphql;
mod history;
#[cfg(feature = "service")]
mod mail;
mod replica;
#[cfg(feature = "service")]
mod served;
mod tenants;
mod wait;

#[cfg(feature = "browser")]
pub use browser::{foreign, Browser, PAGE_WAIT};
pub use consumers::{caught_up, has_read_everything, log_below_horizon, SteppedConsumer, CATCH_UP};
pub use contact_book::{set_field_sync, set_flag, ContactBook};
pub use contact_book::{CIPP_FINGERPRINT, CIPP_URL, DELTA_LINK, DIRECT_FINGERPRINT};
pub use db::{count_events, TestDb, READ_MODEL_TABLES};
pub use engine::{OneTenant, SteppedEngine};
#[cfg(feature = "browser")]
pub use fantoccini;
#[cfg(feature = "service")]
pub use graphql::{token, token_for, GraphqlClient};
pub use history::{
    queued_resync, record_progress, release_scope, Globex, History, HistoryBuilder, Runs, Schedule,
};
#[cfg(feature = "service")]
pub use mail::MailWorld;
pub use replica::{Replicated, DATABASE as REPLICATED_DATABASE};
#[cfg(feature = "service")]
pub use served::TestApp;
pub use tenants::{engine, guid, meta, owner, vault, ReadyTenant};
pub use tenants::{CLIENT_SECRET, CONTOSO, FABRIKAM, JWT_SECRET, NORTHWIND, TAILSPIN, VAULT_KEY};
pub use wait::{eventually, within, Holds};
