//! A tiny aggregate for exercising the bus mechanics without the real domain.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use domain::{Authorize, DomainError, Permission, ReasonCode, Services};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counter {
    pub value: i64,
}

#[derive(Debug, Clone)]
pub enum CounterCommand {
    Add(i64),
    /// Only the engine may do this.
    Reset,
}

impl Authorize for CounterCommand {
    fn permission(&self) -> Permission {
        match self {
            CounterCommand::Add(_) => Permission::StartOperations,
            CounterCommand::Reset => Permission::RecordProgress,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterEvent {
    Added { by: i64 },
    Reset,
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        match self {
            CounterEvent::Added { .. } => "Added".into(),
            CounterEvent::Reset => "Reset".into(),
        }
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CounterError {
    #[error("only positive amounts can be added")]
    NotPositive,
}

impl DomainError for CounterError {
    fn reason_code(&self) -> ReasonCode {
        ReasonCode::ValidationFailed
    }
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: CounterCommand,
        _: &Services,
        sink: &EventSink<Self>,
    ) -> Result<(), CounterError> {
        match command {
            CounterCommand::Add(by) if by <= 0 => Err(CounterError::NotPositive),
            CounterCommand::Add(by) => {
                sink.write(CounterEvent::Added { by }, self).await;
                Ok(())
            }
            CounterCommand::Reset => {
                sink.write(CounterEvent::Reset, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: CounterEvent) {
        match event {
            CounterEvent::Added { by } => self.value += by,
            CounterEvent::Reset => self.value = 0,
        }
    }
}
