//! Who may take part in a rendezvous: a per-job secret ([`JobSecret`]) and an HMAC-SHA256
//! challenge–response over it, the same for both rendezvous (the launchers' JSON lines and
//! the workers' rank-0 exchange).
//!
//! The handshake, on every connection, before anything else is read or granted:
//! 1. the server sends a fresh random nonce `Ns`;
//! 2. the client answers with its own nonce `Nc` and `HMAC(secret, client label ‖ Ns ‖ Nc ‖
//!    claim)` ([`JobSecret::client_proof`]), where `claim` is what it asks for (the workers'
//!    hello; empty for the launchers, whose requests follow on the authenticated line);
//! 3. the server checks it in constant time and, when it holds, proves itself with
//!    `HMAC(secret, server label ‖ Ns ‖ Nc ‖ reply)` ([`JobSecret::server_proof`]).
//!
//! The secret never crosses the wire; a recorded answer is useless on another connection
//! (the server's nonce differs), and a client only believes a reply from a server that
//! knows the secret. What the handshake does not give: secrecy of what follows (the NCCL
//! id travels in the clear) or integrity against someone on the path of an established
//! connection. docs/security.md has the threat model.
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::env;

/// Bytes of a secret made by [`JobSecret::generate`].
pub const SECRET_BYTES: usize = 32;
/// The shortest secret accepted (128 bits).
pub const MIN_SECRET_BYTES: usize = 16;
/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a proof (HMAC-SHA256).
pub const MAC_BYTES: usize = 32;

/// What the client's proof is computed over, before the nonces.
const CLIENT_LABEL: &[u8] = b"ferroclip rendezvous v1: client";
/// What the server's proof is computed over, before the nonces.
const SERVER_LABEL: &[u8] = b"ferroclip rendezvous v1: server";

/// Why a secret cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The text is not hex of at least [`MIN_SECRET_BYTES`] bytes.
    #[error("{source_name}: {reason}")]
    BadSecret {
        /// Where the text came from (a variable or a file).
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The secret file is readable by others than its owner.
    #[error("{path}: the job secret file must be readable by its owner only (mode {mode:o}; run chmod 600)")]
    OpenPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing the secret file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The operating system gave no random bytes.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// A job's shared secret. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct JobSecret(Vec<u8>);

impl std::fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobSecret({} bytes)", self.0.len())
    }
}

impl JobSecret {
    /// A new random secret of [`SECRET_BYTES`] bytes.
    pub fn generate() -> Result<JobSecret, AuthError> {
        let mut bytes = vec![0u8; SECRET_BYTES];
        getrandom::getrandom(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(JobSecret(bytes))
    }

    /// The secret written as hex (surrounding white space ignored); `source_name` names
    /// where the text came from in errors.
    pub fn from_hex(text: &str, source_name: &str) -> Result<JobSecret, AuthError> {
        let bad = |reason: String| AuthError::BadSecret {
            source_name: source_name.to_string(),
            reason,
        };
        let bytes = crate::from_hex(text.trim()).ok_or_else(|| bad("expected the secret as hex digits".into()))?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(bad(format!(
                "a secret of {} bytes is too short (at least {MIN_SECRET_BYTES}: {} hex digits)",
                bytes.len(),
                2 * MIN_SECRET_BYTES
            )));
        }
        Ok(JobSecret(bytes))
    }

    /// The secret as lower-case hex (how it is stored and handed to workers).
    pub fn to_hex(&self) -> String {
        crate::to_hex(&self.0)
    }

    /// Reads a secret file (hex), which must not be readable by group or others.
    pub fn read_file(path: &Path) -> Result<JobSecret, AuthError> {
        let io = |source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(AuthError::OpenPermissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        if metadata.len() > 4096 {
            return Err(AuthError::BadSecret {
                source_name: path.display().to_string(),
                reason: format!("{} bytes is not a secret file", metadata.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        JobSecret::from_hex(&text, &path.display().to_string())
    }

    /// Writes the secret (hex and a newline) to a new file readable by its owner only;
    /// an existing file is an error (a secret is not overwritten behind a running job).
    pub fn write_new_file(&self, path: &Path) -> Result<(), AuthError> {
        let io = |source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        file.write_all(format!("{}\n", self.to_hex()).as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(io)
    }

    /// The job's secret from [`env::JOB_SECRET`] (hex) or else [`env::JOB_SECRET_FILE`] (a
    /// file, see [`JobSecret::read_file`]), through `lookup`; `None` when neither is set.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<JobSecret>, AuthError> {
        if let Some(text) = lookup(env::JOB_SECRET).filter(|t| !t.trim().is_empty()) {
            return JobSecret::from_hex(&text, env::JOB_SECRET).map(Some);
        }
        match lookup(env::JOB_SECRET_FILE).filter(|t| !t.trim().is_empty()) {
            Some(path) => JobSecret::read_file(Path::new(path.trim())).map(Some),
            None => Ok(None),
        }
    }

    /// [`JobSecret::from_lookup`] over the process environment.
    pub fn from_env() -> Result<Option<JobSecret>, AuthError> {
        JobSecret::from_lookup(&|name| std::env::var(name).ok())
    }

    /// The client's proof for the server's nonce, its own, and what it claims.
    pub fn client_proof(&self, server_nonce: &[u8], client_nonce: &[u8], claim: &[u8]) -> [u8; MAC_BYTES] {
        self.mac(CLIENT_LABEL, &[server_nonce, client_nonce, claim])
    }

    /// Whether `proof` is the client's proof for these nonces and claim (constant time).
    pub fn check_client_proof(&self, server_nonce: &[u8], client_nonce: &[u8], claim: &[u8], proof: &[u8]) -> bool {
        self.verify(CLIENT_LABEL, &[server_nonce, client_nonce, claim], proof)
    }

    /// The server's proof for both nonces and its reply.
    pub fn server_proof(&self, server_nonce: &[u8], client_nonce: &[u8], reply: &[u8]) -> [u8; MAC_BYTES] {
        self.mac(SERVER_LABEL, &[server_nonce, client_nonce, reply])
    }

    /// Whether `proof` is the server's proof for these nonces and reply (constant time).
    pub fn check_server_proof(&self, server_nonce: &[u8], client_nonce: &[u8], reply: &[u8], proof: &[u8]) -> bool {
        self.verify(SERVER_LABEL, &[server_nonce, client_nonce, reply], proof)
    }

    fn keyed(&self, label: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(label);
        // Each part with its length first, so that no two lists of parts read alike.
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; MAC_BYTES] {
        self.keyed(label, parts).finalize().into_bytes().into()
    }

    fn verify(&self, label: &[u8], parts: &[&[u8]], proof: &[u8]) -> bool {
        self.keyed(label, parts).verify_slice(proof).is_ok()
    }
}

/// A fresh random nonce.
pub fn nonce() -> Result<[u8; NONCE_BYTES], AuthError> {
    let mut bytes = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_hold_only_for_the_same_secret_nonces_and_claim() {
        let secret = JobSecret::generate().unwrap();
        let other = JobSecret::generate().unwrap();
        let (ns, nc) = (nonce().unwrap(), nonce().unwrap());
        let proof = secret.client_proof(&ns, &nc, b"rank 1");
        assert!(secret.check_client_proof(&ns, &nc, b"rank 1", &proof));
        assert!(!other.check_client_proof(&ns, &nc, b"rank 1", &proof), "another secret");
        assert!(
            !secret.check_client_proof(&nonce().unwrap(), &nc, b"rank 1", &proof),
            "a replay"
        );
        assert!(!secret.check_client_proof(&ns, &nc, b"rank 2", &proof), "another claim");
        assert!(!secret.check_server_proof(&ns, &nc, b"rank 1", &proof), "roles differ");
        assert!(
            !secret.check_client_proof(&ns, &nc, b"rank 1", &proof[..31]),
            "a cut proof"
        );
        // Length prefixes: moving a byte between parts changes the proof.
        assert_ne!(
            secret.client_proof(b"ab", b"c", b""),
            secret.client_proof(b"a", b"bc", b"")
        );
    }

    #[test]
    fn secrets_read_from_hex_variables_and_private_files() {
        let secret = JobSecret::generate().unwrap();
        assert_eq!(JobSecret::from_hex(&secret.to_hex(), "x").unwrap(), secret);
        let short = JobSecret::from_hex("00ff", env::JOB_SECRET).unwrap_err().to_string();
        assert!(
            short.starts_with("FERROCLIP_JOB_SECRET: a secret of 2 bytes is too short"),
            "{short}"
        );
        let not_hex = JobSecret::from_hex("zz", "x").unwrap_err().to_string();
        assert!(not_hex.contains("hex"), "{not_hex}");
        assert!(
            !format!("{secret:?}").contains(&secret.to_hex()[..8]),
            "Debug shows the secret"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.secret");
        secret.write_new_file(&path).unwrap();
        assert_eq!(JobSecret::read_file(&path).unwrap(), secret);
        assert!(
            secret.write_new_file(&path).is_err(),
            "an existing secret file was overwritten"
        );
        let lookup = |name: &str| (name == env::JOB_SECRET_FILE).then(|| path.display().to_string());
        assert_eq!(JobSecret::from_lookup(&lookup).unwrap(), Some(secret.clone()));
        assert_eq!(JobSecret::from_lookup(&|_| None).unwrap(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let open = JobSecret::read_file(&path).unwrap_err().to_string();
            assert!(open.contains("readable by its owner only (mode 644"), "{open}");
        }
    }
}
