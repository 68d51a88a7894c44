//! Starting a multi-stream use case over after it loses an optimistic race.

use std::future::Future;

use crate::AppError;

/// How many times a use case starts over, as for the bus's single-aggregate commands.
const RETRIES: usize = store::bus::CONFLICT_RETRIES;

/// Runs `attempt` until it does not end in a conflict (bounded). Each attempt reads
/// afresh, so it decides against the state that won the race.
pub(crate) async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, AppError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AppError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(AppError::Conflict) if tries < RETRIES => store::bus::conflict_pause(tries).await,
            other => return other,
        }
    }
}
