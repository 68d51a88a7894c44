//! Waiting for something that happens in the background, bounded, without fixed sleeps.

use std::future::Future;
use std::time::Duration;

/// The first pause between two checks; it doubles up to [`LONGEST_PAUSE`], so a condition
/// that holds soon is seen soon and a long wait does not hammer the database.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// What a check answers: `true` or `Some(value)` once the condition holds, `false` or
/// `None` while it does not yet.
pub trait Holds {
    type Value;
    fn holds(self) -> Option<Self::Value>;
}

impl Holds for bool {
    type Value = ();
    fn holds(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Holds for Option<T> {
    type Value = T;
    fn holds(self) -> Option<T> {
        self
    }
}

/// Runs `check` until it holds, with a short pause between tries; panics naming `what`
/// once `timeout` has passed. Returns what the check returned when it held.
pub async fn eventually<F, Fut>(
    what: &str,
    timeout: Duration,
    check: F,
) -> <Fut::Output as Holds>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Holds,
{
    match within(timeout, check).await {
        Some(value) => value,
        None => panic!("waited {timeout:?} for {what}, in vain"),
    }
}

/// Like [`eventually`], but `None` on timeout instead of a panic, for callers that say
/// more about what went wrong than a name can.
pub async fn within<F, Fut>(
    timeout: Duration,
    mut check: F,
) -> Option<<Fut::Output as Holds>::Value>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Holds,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(value) = check().await.holds() {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}
