//! What every projection needs from a stored event: its payload decoded as a domain event
//! (or skipped, loudly, when the domain has no such event), its metadata and aggregate id,
//! the snake_case names of domain enums, and the version-guarded statement shape.

use cqrs_es::Aggregate;
use serde::de::{self, DeserializeOwned, Visitor};
use serde::Serialize;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Encode, Postgres, Type};
use store::{ConsumerError, StoredEvent};

/// Implements `Consumer` and `Projection` for a read model of one aggregate's events:
/// each event of the batch, decoded, goes in order to `$apply(tx, stored, event)`, and only
/// that aggregate's events are read with their payloads.
macro_rules! aggregate_projection {
    ($projection:ty, $aggregate:ty, $name:expr, $apply:path, $tables:expr) => {
        #[async_trait::async_trait]
        impl store::Consumer for $projection {
            fn name(&self) -> &str {
                $name
            }

            fn payloads_of(&self) -> store::Payloads {
                store::Payloads::OfAggregates(&[<$aggregate as cqrs_es::Aggregate>::TYPE])
            }

            async fn handle(
                &self,
                tx: &mut sqlx::PgConnection,
                events: &[store::StoredEvent],
            ) -> Result<(), store::ConsumerError> {
                for decoded in $crate::event::events_of::<$aggregate>($name, events) {
                    let (e, event) = decoded?;
                    $apply(tx, e, event).await?;
                }
                Ok(())
            }
        }

        impl $crate::Projection for $projection {
            fn tables(&self) -> &'static [&'static str] {
                $tables
            }
        }
    };
}
pub(crate) use aggregate_projection;

/// The events of aggregate `A` in a batch, in order, decoded (see [`decode`]).
pub(crate) fn events_of<'e, A: Aggregate>(
    consumer: &'e str,
    events: &'e [StoredEvent],
) -> impl Iterator<Item = Result<(&'e StoredEvent, A::Event), ConsumerError>> + 'e {
    events
        .iter()
        .filter(|e| e.aggregate_type == A::TYPE)
        .map(move |e| {
            decode::<A::Event>(e).map(|d| (e, d)).inspect_err(|error| {
                tracing::debug!(consumer, %error, "a projection stops before an event");
            })
        })
}

/// Decodes `event` as `E` (an aggregate's event enum). An event type `E` has no variant of
/// was written by a newer version: the projection stops before it (the runner keeps the
/// checkpoint, says so in readiness and metrics, and retries), so a newer instance applies
/// it instead of this one skipping it for good. A known event type whose payload does not
/// decode is an error too (the runner retries and logs it).
fn decode<E: DeserializeOwned>(event: &StoredEvent) -> Result<E, ConsumerError> {
    if !variants::<E>().contains(&event.event_type.as_str()) {
        return Err(ConsumerError::UnknownEvent {
            position: event.position,
            aggregate_type: event.aggregate_type.clone(),
            event_type: event.event_type.clone(),
        });
    }
    event.decode()
}

/// A statement about one read-model row: `$1` is the row's key and `$2` the aggregate
/// sequence of `event`, for the `version < $2` guard that makes replays change nothing.
pub(crate) fn versioned<'q, K>(
    sql: &'q str,
    key: K,
    event: &StoredEvent,
) -> Query<'q, Postgres, PgArguments>
where
    K: 'q + Encode<'q, Postgres> + Type<Postgres> + Send,
{
    sqlx::query(sql).bind(key).bind(event.sequence)
}

/// A value an event carries, as JSON for a `jsonb` column.
pub(crate) fn to_json<T: Serialize + ?Sized>(
    e: &StoredEvent,
    value: &T,
) -> Result<serde_json::Value, ConsumerError> {
    serde_json::to_value(value).map_err(|source| ConsumerError::Decode {
        position: e.position,
        event_type: e.event_type.clone(),
        source,
    })
}

/// The event's aggregate id as a UUID (connections and runs are keyed by one).
pub(crate) fn uuid_id(event: &StoredEvent) -> Result<uuid::Uuid, ConsumerError> {
    event
        .aggregate_id
        .parse()
        .map_err(|_| ConsumerError::Refused {
            position: event.position,
            message: format!("the {} id is not a UUID", event.aggregate_type),
        })
}

/// A metadata field every event written by the command bus has.
pub(crate) fn required_meta<'e>(
    event: &'e StoredEvent,
    key: &str,
) -> Result<&'e str, ConsumerError> {
    event.meta(key).ok_or_else(|| ConsumerError::Refused {
        position: event.position,
        message: format!("the event's metadata has no `{key}`"),
    })
}

/// The name serde gives a unit variant of a domain enum (`HealthStatus::Healthy` is
/// `"healthy"`), so read models spell statuses exactly as events and the API do.
pub(crate) fn serde_name<T: Serialize>(
    event: &StoredEvent,
    value: &T,
) -> Result<String, ConsumerError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        _ => Err(ConsumerError::Refused {
            position: event.position,
            message: format!("a value of {} has no name", std::any::type_name::<T>()),
        }),
    }
}

/// The variant names of an externally tagged enum, as its `Deserialize` impl declares them
/// (the derive passes them to `deserialize_enum`). This keeps "does the domain know this
/// event type?" in step with the domain without a hand-kept list.
fn variants<E: DeserializeOwned>() -> &'static [&'static str] {
    let mut found: &'static [&'static str] = &[];
    // The probe always ends in an error: it only records what it was asked for.
    let _ = E::deserialize(VariantProbe(&mut found));
    found
}

struct VariantProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for VariantProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = variants;
        Err(de::Error::custom("variant probe"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not an enum"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::connection::{ConnectionEvent, HealthStatus};
    use domain::run::RunEvent;
    use domain::tenant::TenantEvent;

    #[test]
    fn the_variants_of_a_domain_event_enum_are_its_event_types() {
        let names = variants::<TenantEvent>();
        assert!(names.contains(&"TenantRegistered"));
        assert!(names.contains(&"TenantResynced"));
        assert!(variants::<ConnectionEvent>().contains(&"ConnectionMadeDefault"));
        assert!(variants::<RunEvent>().contains(&"RunCancelled"));
        assert!(!names.contains(&"RunCancelled"));
    }

    #[test]
    fn unit_variants_are_named_as_serde_spells_them() {
        let event = StoredEvent {
            position: store::Position::default(),
            aggregate_type: "provider_connection".into(),
            aggregate_id: "c".into(),
            sequence: 1,
            event_type: "HealthChecked".into(),
            event_version: "1.0".into(),
            payload: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            recorded_at: chrono::Utc::now(),
        };
        assert_eq!(
            serde_name(&event, &HealthStatus::Healthy).unwrap(),
            "healthy"
        );
        assert!(serde_name(&event, &42).is_err());
    }
}
