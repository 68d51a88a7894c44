//! Fixtures shared by the aggregates' given/when/then tests.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::DomainEvent;

use crate::values::{EntraTenantId, TenantKey, WorkspaceId};
use crate::{FixedClock, Services};

/// The instant every test clock is pinned to.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
}

/// Services whose clock stands still at [`now`].
pub fn services() -> Services {
    Services::new(Arc::new(FixedClock::at(now())))
}

pub fn workspace() -> WorkspaceId {
    "acme".parse().unwrap()
}

/// The tenant under test.
pub fn guid() -> EntraTenantId {
    "72f988bf-86f1-41af-91ab-2d7cd011db47".parse().unwrap()
}

/// Another Entra tenant.
pub fn other_guid() -> EntraTenantId {
    "0b6a2f51-7f0e-4e43-9b2e-52c0e2a1b0a1".parse().unwrap()
}

pub fn tenant_key() -> TenantKey {
    TenantKey::new(workspace(), guid())
}

/// Stored payloads are externally tagged by variant name and `event_type` is written
/// beside them: the two must agree, and every event is version 1.0.
pub fn assert_event_types_match_payload_tags<E: DomainEvent>(events: &[E]) {
    for e in events {
        let tag = match serde_json::to_value(e).unwrap() {
            serde_json::Value::String(s) => s,
            serde_json::Value::Object(m) if m.len() == 1 => m.keys().next().unwrap().clone(),
            other => panic!("not externally tagged: {other}"),
        };
        assert_eq!(e.event_type(), tag);
        assert_eq!(e.event_version(), "1.0");
    }
}

/// The state `events` fold into, as the store would load it.
pub fn fold<A: cqrs_es::Aggregate>(events: impl IntoIterator<Item = A::Event>) -> A {
    let mut aggregate = A::default();
    for event in events {
        aggregate.apply(event);
    }
    aggregate
}
