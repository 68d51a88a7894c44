//! The credential vault (R1.4): client secrets encrypted with AES-256-GCM, outside the
//! event log. Events carry only the row id (the credential reference) and a keyed
//! fingerprint, so an auditor can tell two credentials apart without seeing either.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use uuid::Uuid;

mod mailbox;
pub use mailbox::{DelegatedTokens, MailboxSecret};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the vault key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("credential {0} not found")]
    NotFound(Uuid),
    #[error("credential {0} cannot be decrypted with the configured key (key id {1})")]
    Decrypt(Uuid, String),
    #[error("cannot read or write the vault key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A decrypted credential, for the Graph client only.
pub struct Credential {
    pub client_id: String,
    pub client_secret: SecretString,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// What the events may know about a stored credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub credential_ref: Uuid,
    pub fingerprint: String,
}

/// Encrypts and decrypts credentials with one key.
#[derive(Clone)]
pub struct Vault {
    cipher: Aes256Gcm,
    fingerprint_key: [u8; 32],
    key_id: String,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault from a base64-encoded 32-byte key.
    pub fn from_base64(key: &SecretString) -> Result<Self, VaultError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.expose_secret().trim())
            .map_err(|_| VaultError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| VaultError::BadKey)?;
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| VaultError::BadKey)?;
        // Separate keys for encryption and fingerprints, both derived from the one secret.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|_| VaultError::BadKey)?;
        mac.update(b"tenantflow credential fingerprint v1");
        let fingerprint_key: [u8; 32] = mac.finalize().into_bytes().into();
        let key_id = hex::encode(&Sha256::digest(key)[..4]);
        Ok(Self {
            cipher,
            fingerprint_key,
            key_id,
        })
    }

    /// Reads the key file, creating it (0600, random key) the first time.
    pub fn load_or_create_key_file(path: &Path) -> Result<SecretString, VaultError> {
        let err = |source| VaultError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        if let Ok(s) = std::fs::read_to_string(path) {
            return Ok(SecretString::from(s.trim().to_owned()));
        }
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let encoded = base64::engine::general_purpose::STANDARD.encode(key);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(encoded.as_bytes()).map_err(err)?;
        Ok(SecretString::from(encoded))
    }

    /// Which key encrypted a row (a short hash of the key, not the key).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A keyed fingerprint of a credential in a workspace: equal credentials give equal
    /// fingerprints within the workspace, and nothing about the secret can be learned from
    /// it without the key. The workspace is part of what is keyed, so two MSPs who hold the
    /// same secret cannot tell from their fingerprints (`v2`; fingerprints recorded before
    /// were not per workspace and say `hmac-sha256:` alone).
    pub fn fingerprint(&self, workspace: &str, client_id: &str, secret: &SecretString) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.fingerprint_key)
            .expect("HMAC takes any key length");
        mac.update(b"v2");
        mac.update(&(workspace.len() as u64).to_be_bytes());
        mac.update(workspace.as_bytes());
        mac.update(client_id.as_bytes());
        mac.update(&[0]);
        mac.update(secret.expose_secret().as_bytes());
        format!(
            "hmac-sha256:v2:{}",
            hex::encode(&mac.finalize().into_bytes()[..16])
        )
    }

    /// Encrypts and stores a credential in the caller's transaction (so it commits with
    /// the `CredentialSet` event, or not at all).
    pub async fn store(
        &self,
        conn: &mut PgConnection,
        workspace: &str,
        connection_id: Uuid,
        client_id: &str,
        secret: &SecretString,
        actor: &str,
    ) -> Result<StoredCredential, VaultError> {
        let id = Uuid::now_v7();
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = associated_data(id, connection_id);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Decrypt(id, self.key_id.clone()))?;
        let fingerprint = self.fingerprint(workspace, client_id, secret);
        sqlx::query(
            "INSERT INTO credential_vault (id, workspace_id, connection_id, client_id, nonce, ciphertext, key_id, fingerprint, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id)
        .bind(workspace)
        .bind(connection_id)
        .bind(client_id)
        .bind(&nonce[..])
        .bind(&ciphertext)
        .bind(&self.key_id)
        .bind(&fingerprint)
        .bind(actor)
        .execute(conn)
        .await?;
        Ok(StoredCredential {
            credential_ref: id,
            fingerprint,
        })
    }

    /// Deletes credentials of `workspace` in the caller's transaction (with the event that
    /// says they are cleared): the ciphertext is gone, not only unreferenced. Returns how
    /// many rows went.
    pub async fn shred(
        &self,
        conn: &mut PgConnection,
        workspace: &str,
        credential_refs: &[Uuid],
    ) -> Result<u64, VaultError> {
        if credential_refs.is_empty() {
            return Ok(0);
        }
        let done =
            sqlx::query("DELETE FROM credential_vault WHERE workspace_id = $1 AND id = ANY($2)")
                .bind(workspace)
                .bind(credential_refs)
                .execute(conn)
                .await?;
        Ok(done.rows_affected())
    }

    /// Decrypts a stored credential.
    pub async fn fetch(
        &self,
        pool: &PgPool,
        credential_ref: Uuid,
    ) -> Result<Credential, VaultError> {
        let row: Option<(Uuid, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT connection_id, client_id, nonce, ciphertext FROM credential_vault WHERE id = $1",
        )
        .bind(credential_ref)
        .fetch_optional(pool)
        .await?;
        let (connection_id, client_id, nonce, ciphertext) =
            row.ok_or(VaultError::NotFound(credential_ref))?;
        self.open(&SealedCredential {
            id: credential_ref,
            connection_id,
            client_id,
            nonce,
            ciphertext,
        })
    }

    /// Decrypts a vault row read by another query (e.g. together with a workflow claim).
    pub fn open(&self, sealed: &SealedCredential) -> Result<Credential, VaultError> {
        let id = sealed.id;
        if sealed.nonce.len() != 12 {
            return Err(VaultError::Decrypt(id, self.key_id.clone()));
        }
        let aad = associated_data(id, sealed.connection_id);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Decrypt(id, self.key_id.clone()))?;
        let secret =
            String::from_utf8(plain).map_err(|_| VaultError::Decrypt(id, self.key_id.clone()))?;
        Ok(Credential {
            client_id: sealed.client_id.clone(),
            client_secret: SecretString::from(secret),
        })
    }
}

/// A vault row as stored: encrypted (see [`Vault::open`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCredential {
    pub id: Uuid,
    pub connection_id: Uuid,
    pub client_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedCredential")
            .field("id", &self.id)
            .field("connection_id", &self.connection_id)
            .finish_non_exhaustive()
    }
}

/// Binds a ciphertext to its row and connection, so rows cannot be swapped.
fn associated_data(id: Uuid, connection_id: Uuid) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32);
    aad.extend_from_slice(id.as_bytes());
    aad.extend_from_slice(connection_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        Vault::from_base64(&SecretString::from(key)).unwrap()
    }

    #[test]
    fn fingerprints_are_stable_and_do_not_contain_the_secret() {
        let v = vault();
        let s = SecretString::from("super-secret-value".to_owned());
        let a = v.fingerprint("acme", "client", &s);
        assert_eq!(a, v.fingerprint("acme", "client", &s));
        assert_ne!(
            a,
            v.fingerprint("acme", "client", &SecretString::from("other".to_owned()))
        );
        assert!(!a.contains("super-secret-value"));
    }

    #[test]
    fn the_same_secret_has_another_fingerprint_in_another_workspace() {
        let v = vault();
        let s = SecretString::from("shared-secret".to_owned());
        assert_ne!(
            v.fingerprint("acme", "client", &s),
            v.fingerprint("globex", "client", &s)
        );
        // The workspace's length is keyed too: no two splits of one string collide.
        assert_ne!(v.fingerprint("ab", "c", &s), v.fingerprint("a", "bc", &s));
    }

    #[test]
    fn a_short_key_is_refused() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        assert!(matches!(
            Vault::from_base64(&SecretString::from(key)),
            Err(VaultError::BadKey)
        ));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let c = Credential {
            client_id: "cid".into(),
            client_secret: SecretString::from("hunter2-secret".to_owned()),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(!format!("{:?}", vault()).contains(&key));
    }
}
