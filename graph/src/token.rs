//! Access tokens and their cache.
//!
//! One slot per (tenant, client id, secret, scope). The slot's async lock is held while a
//! token is fetched, so concurrent callers wait for that one fetch instead of starting their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use uuid::Uuid;

/// A bearer token; never printed.
#[derive(Clone)]
pub(crate) struct AccessToken(SecretString);

impl AccessToken {
    pub(crate) fn bearer(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

/// The token service's answer.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub(crate) access_token: SecretString,
    pub(crate) expires_in: u64,
}

/// A token and the instant after which it is no longer handed out.
#[derive(Clone, Debug)]
pub(crate) struct CachedToken {
    pub(crate) token: AccessToken,
    usable_until: Instant,
    /// Distinguishes fetches, so only the token that failed is evicted.
    generation: u64,
}

/// Identifies whose token a slot holds. The secret enters only as a hash, so a token obtained
/// with one secret is never handed to a caller presenting another.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey {
    tenant: Uuid,
    client_id: String,
    secret_hash: [u8; 32],
    scope: String,
}

impl TokenKey {
    pub(crate) fn new(tenant: Uuid, client_id: &str, secret: &SecretString, scope: &str) -> Self {
        Self {
            tenant,
            client_id: client_id.to_owned(),
            secret_hash: Sha256::digest(secret.expose_secret().as_bytes()).into(),
            scope: scope.to_owned(),
        }
    }

    /// The key of a token for `credentials` and `scope`.
    pub(crate) fn of(credentials: &crate::AppCredentials, scope: &str) -> Self {
        Self::new(
            credentials.tenant_id,
            &credentials.client_id,
            &credentials.client_secret,
            scope,
        )
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// Cache size from which unusable slots are pruned.
const PRUNE_ABOVE: usize = 256;

#[derive(Default)]
pub(crate) struct TokenCache {
    slots: Mutex<Slots>,
    generations: std::sync::atomic::AtomicU64,
}

/// The slots, and the size at which unusable ones are next pruned: twice what the last
/// pruning kept (at least [`PRUNE_ABOVE`]), so a fleet's first pass, where every tenant's
/// slot is new, prunes a few times instead of scanning every slot for each new one.
#[derive(Default)]
struct Slots {
    map: HashMap<TokenKey, Slot>,
    prune_at: usize,
    /// Prunings so far (for the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    prunes: usize,
}

/// Refresh this long before expiry: 10 % of the lifetime, at most five minutes.
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(300))
}

impl TokenCache {
    pub(crate) fn slot(&self, key: &TokenKey) -> Slot {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !slots.map.contains_key(key) && slots.map.len() >= slots.prune_at.max(PRUNE_ABOVE) {
            // Forget slots nobody waits on that hold no usable token (failed or expired),
            // so a stream of wrong credentials cannot grow the cache without bound.
            slots.map.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot
                        .try_lock()
                        .map(|held| held.as_ref().is_some_and(CachedToken::is_usable))
                        .unwrap_or(true)
            });
            slots.prune_at = 2 * slots.map.len();
            slots.prunes += 1;
        }
        slots.map.entry(key.clone()).or_default().clone()
    }

    pub(crate) fn fresh(&self, response: TokenResponse) -> CachedToken {
        let lifetime = Duration::from_secs(response.expires_in);
        CachedToken {
            token: AccessToken(response.access_token),
            usable_until: Instant::now() + lifetime - refresh_margin(lifetime),
            generation: self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Forgets the slot's token if it is still the one that Graph refused.
    pub(crate) async fn evict(&self, key: &TokenKey, refused: &CachedToken) {
        let slot = self.slot(key);
        let mut held = slot.lock().await;
        if held.as_ref().map(|t| t.generation) == Some(refused.generation) {
            *held = None;
        }
    }
}

impl CachedToken {
    pub(crate) fn is_usable(&self) -> bool {
        Instant::now() < self.usable_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_shortly_before_they_expire() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3599)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn a_different_secret_means_a_different_slot() {
        let tenant = Uuid::nil();
        let a = TokenKey::new(tenant, "app", &SecretString::from("one"), "scope");
        let b = TokenKey::new(tenant, "app", &SecretString::from("two"), "scope");
        assert!(a != b);
    }

    #[test]
    fn empty_slots_are_pruned_once_the_cache_is_large() {
        let cache = TokenCache::default();
        for n in 0..PRUNE_ABOVE + 10 {
            let secret = SecretString::from(n.to_string());
            drop(cache.slot(&TokenKey::new(Uuid::nil(), "app", &secret, "scope")));
        }
        let size = cache.slots.lock().unwrap().map.len();
        assert!(size <= PRUNE_ABOVE, "cache holds {size} slots");
    }

    #[test]
    fn a_large_fleets_new_slots_prune_a_few_times_not_once_each() {
        let cache = TokenCache::default();
        let key = |n: usize| {
            let secret = SecretString::from(n.to_string());
            TokenKey::new(Uuid::nil(), "app", &secret, "scope")
        };
        // Slots in use (a token being fetched for each) cannot be pruned.
        let held: Vec<Slot> = (0..2 * PRUNE_ABOVE).map(|n| cache.slot(&key(n))).collect();
        for n in held.len()..held.len() + 4 * PRUNE_ABOVE {
            drop(cache.slot(&key(n)));
        }
        let slots = cache.slots.lock().unwrap();
        // One scan per new slot would be 1,024 scans.
        assert!(slots.prunes <= 4, "{} prunings", slots.prunes);
        // Still bounded: at most twice the slots in use (plus the one just added).
        assert!(
            slots.map.len() <= 2 * held.len() + 1,
            "cache holds {} slots",
            slots.map.len()
        );
    }

    #[test]
    fn a_token_debug_reveals_nothing() {
        let token = AccessToken(SecretString::from("eyJ.secret.token"));
        assert_eq!(format!("{token:?}"), "AccessToken([redacted])");
    }
}
