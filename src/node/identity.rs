//! A server's persistent identity: its id (`server_<uuid4>` or
//! `master_server_<uuid4>`) and RSA-4096 key, kept in the keys folder as
//! `<role>.id` and `<role>.pem` so that wiping the database keeps them.

use std::path::{Path, PathBuf};

use crate::crypto::{CryptoError, PrivateKey};
use crate::wire::ids::{self, IdKind};

/// A server's id and key.
#[derive(Debug)]
pub struct Identity {
    pub id: String,
    pub key: PrivateKey,
}

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} holds {found:?}, which is not a {expected} id; restore it or delete it and its .pem to start a new identity"
    )]
    BadId {
        path: String,
        found: String,
        expected: IdKind,
    },
    #[error(
        "{path} exists without its key {key}; restore the key or delete both to start a new identity"
    )]
    MissingKey { path: String, key: String },
    #[error(transparent)]
    Key(#[from] CryptoError),
}

/// Paths of a role's identity files.
pub fn paths(keys_dir: &Path, role: &str) -> (PathBuf, PathBuf) {
    (
        keys_dir.join(format!("{role}.id")),
        keys_dir.join(format!("{role}.pem")),
    )
}

/// Loads the identity of `role` (`master` or `local`), creating it on first
/// use. Returns it and whether it was created. Key generation takes about a
/// second: call from a blocking context.
pub fn load_or_create(keys_dir: &Path, master: bool) -> Result<(Identity, bool), IdentityError> {
    let role = if master { "master" } else { "local" };
    let expected = if master {
        IdKind::Master
    } else {
        IdKind::LocalServer
    };
    let (id_path, key_path) = paths(keys_dir, role);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| IdentityError::Io { path, source }
    };
    if id_path.exists() {
        let found = std::fs::read_to_string(&id_path).map_err(io(&id_path))?;
        let id = found.trim().to_owned();
        if ids::check_server(&id).ok() != Some(expected) {
            return Err(IdentityError::BadId {
                path: id_path.display().to_string(),
                found: id,
                expected,
            });
        }
        if !key_path.exists() {
            return Err(IdentityError::MissingKey {
                path: id_path.display().to_string(),
                key: key_path.display().to_string(),
            });
        }
        let key = PrivateKey::load(&key_path)?;
        return Ok((Identity { id, key }, false));
    }
    std::fs::create_dir_all(keys_dir).map_err(io(keys_dir))?;
    let (key, _) = PrivateKey::load_or_generate(&key_path)?;
    let id = if master {
        ids::new_master_id()
    } else {
        ids::new_local_server_id()
    };
    std::fs::write(&id_path, format!("{id}\n")).map_err(io(&id_path))?;
    Ok((Identity { id, key }, true))
}
