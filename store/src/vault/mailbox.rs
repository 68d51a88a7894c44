//! A mailbox's secrets in the vault (R6.1): its verification token (the `clientState` Graph
//! echoes) and its delegated tokens (access, refresh, expiry), sealed with the vault key and
//! bound to the mailbox and the kind, so a row cannot be moved to another mailbox or read
//! as the other kind. The delegated tokens are re-sealed on every refresh.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::Nonce;
use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Vault, VaultError};

/// Which secret of a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxSecret {
    Verification,
    Delegated,
}

impl MailboxSecret {
    fn as_str(self) -> &'static str {
        match self {
            Self::Verification => "verification",
            Self::Delegated => "delegated",
        }
    }
}

/// A mailbox's delegated tokens. Never printed.
#[derive(Clone)]
pub struct DelegatedTokens {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for DelegatedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegatedTokens")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct SealedTokens {
    access: String,
    refresh: String,
    expires_at: DateTime<Utc>,
}

fn associated(mailbox: Uuid, kind: MailboxSecret) -> Vec<u8> {
    let mut aad = b"mailbox:".to_vec();
    aad.extend_from_slice(mailbox.as_bytes());
    aad.extend_from_slice(kind.as_str().as_bytes());
    aad
}

impl Vault {
    async fn seal_mailbox(
        &self,
        conn: &mut PgConnection,
        mailbox: Uuid,
        kind: MailboxSecret,
        plain: &[u8],
    ) -> Result<(), VaultError> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = associated(mailbox, kind);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Decrypt(mailbox, self.key_id.clone()))?;
        sqlx::query(
            "INSERT INTO mailbox_secrets (mailbox_id, kind, nonce, ciphertext, key_id) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (mailbox_id, kind) DO UPDATE SET nonce = EXCLUDED.nonce, \
             ciphertext = EXCLUDED.ciphertext, key_id = EXCLUDED.key_id, updated_at = now()",
        )
        .bind(mailbox)
        .bind(kind.as_str())
        .bind(&nonce[..])
        .bind(&ciphertext)
        .bind(&self.key_id)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn open_mailbox<'c>(
        &self,
        executor: impl sqlx::PgExecutor<'c>,
        mailbox: Uuid,
        kind: MailboxSecret,
        for_update: bool,
    ) -> Result<Option<Vec<u8>>, VaultError> {
        let sql = if for_update {
            "SELECT nonce, ciphertext FROM mailbox_secrets WHERE mailbox_id = $1 AND kind = $2 FOR UPDATE"
        } else {
            "SELECT nonce, ciphertext FROM mailbox_secrets WHERE mailbox_id = $1 AND kind = $2"
        };
        let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(sql)
            .bind(mailbox)
            .bind(kind.as_str())
            .fetch_optional(executor)
            .await?;
        let Some((nonce, ciphertext)) = row else {
            return Ok(None);
        };
        if nonce.len() != 12 {
            return Err(VaultError::Decrypt(mailbox, self.key_id.clone()));
        }
        let aad = associated(mailbox, kind);
        self.cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &aad,
                },
            )
            .map(Some)
            .map_err(|_| VaultError::Decrypt(mailbox, self.key_id.clone()))
    }

    /// Seals a mailbox's verification token (in the caller's transaction).
    pub async fn store_verification_token(
        &self,
        conn: &mut PgConnection,
        mailbox: Uuid,
        token: &SecretString,
    ) -> Result<(), VaultError> {
        self.seal_mailbox(
            conn,
            mailbox,
            MailboxSecret::Verification,
            token.expose_secret().as_bytes(),
        )
        .await
    }

    /// A mailbox's verification token, if it has one.
    pub async fn verification_token(
        &self,
        pool: &PgPool,
        mailbox: Uuid,
    ) -> Result<Option<SecretString>, VaultError> {
        let plain = self
            .open_mailbox(pool, mailbox, MailboxSecret::Verification, false)
            .await?;
        plain
            .map(|p| {
                String::from_utf8(p)
                    .map(SecretString::from)
                    .map_err(|_| VaultError::Decrypt(mailbox, self.key_id.clone()))
            })
            .transpose()
    }

    /// Seals (or re-seals, after a refresh) a mailbox's delegated tokens.
    pub async fn store_delegated_tokens(
        &self,
        conn: &mut PgConnection,
        mailbox: Uuid,
        tokens: &DelegatedTokens,
    ) -> Result<(), VaultError> {
        let plain = serde_json::to_vec(&SealedTokens {
            access: tokens.access_token.expose_secret().to_owned(),
            refresh: tokens.refresh_token.expose_secret().to_owned(),
            expires_at: tokens.expires_at,
        })
        .map_err(|_| VaultError::Decrypt(mailbox, self.key_id.clone()))?;
        self.seal_mailbox(conn, mailbox, MailboxSecret::Delegated, &plain)
            .await
    }

    /// A mailbox's delegated tokens, if it has them.
    pub async fn delegated_tokens(
        &self,
        pool: &PgPool,
        mailbox: Uuid,
    ) -> Result<Option<DelegatedTokens>, VaultError> {
        self.read_delegated(pool, mailbox, false).await
    }

    /// Like [`delegated_tokens`](Self::delegated_tokens), and holds their row locked until
    /// `tx` ends: one refresh at a time per mailbox, across instances (a refresh token
    /// Entra rotated is void, so two refreshing with it at once would revoke one).
    pub async fn delegated_tokens_for_refresh(
        &self,
        tx: &mut PgConnection,
        mailbox: Uuid,
    ) -> Result<Option<DelegatedTokens>, VaultError> {
        self.read_delegated(tx, mailbox, true).await
    }

    async fn read_delegated<'c>(
        &self,
        executor: impl sqlx::PgExecutor<'c>,
        mailbox: Uuid,
        for_update: bool,
    ) -> Result<Option<DelegatedTokens>, VaultError> {
        let Some(plain) = self
            .open_mailbox(executor, mailbox, MailboxSecret::Delegated, for_update)
            .await?
        else {
            return Ok(None);
        };
        let sealed: SealedTokens = serde_json::from_slice(&plain)
            .map_err(|_| VaultError::Decrypt(mailbox, self.key_id.clone()))?;
        Ok(Some(DelegatedTokens {
            access_token: SecretString::from(sealed.access),
            refresh_token: SecretString::from(sealed.refresh),
            expires_at: sealed.expires_at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegated_tokens_never_print_their_values() {
        let tokens = DelegatedTokens {
            access_token: SecretString::from("eyJ.access.secret"),
            refresh_token: SecretString::from("refresh-secret-1"),
            expires_at: Utc::now(),
        };
        let printed = format!("{tokens:?}");
        assert!(!printed.contains("access.secret") && !printed.contains("refresh-secret"));
    }

    #[test]
    fn a_secret_is_bound_to_its_mailbox_and_kind() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_ne!(
            associated(a, MailboxSecret::Verification),
            associated(b, MailboxSecret::Verification)
        );
        assert_ne!(
            associated(a, MailboxSecret::Verification),
            associated(a, MailboxSecret::Delegated)
        );
    }
}
