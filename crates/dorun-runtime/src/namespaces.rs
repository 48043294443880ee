//! Durable Object namespaces and IDs.
//!
//! IDs follow workerd's local derivation (`actor-id-impl.c++`) so they match workerd and
//! Miniflare byte for byte: `key = SHA-256(uniqueKey)`, a named id is
//! `a = HMAC(key, name)[..16]`, `id = a ‖ HMAC(key, a)[..16]`, in lowercase hex.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use deno_core::{op2, OpState};
use dorun_storage::Durability;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::mailbox::Mailboxes;

/// A Durable Object class this Worker can reach through a binding.
#[derive(Clone, Debug)]
pub struct ObjectNamespace {
    /// The binding name in `env`.
    pub binding: String,
    pub class_name: String,
    /// Stable key the IDs and the data directory derive from (`<worker>-<Class>`).
    pub unique_key: String,
    /// Created by `new_sqlite_classes` (SQL and sync KV APIs available).
    pub sqlite: bool,
    /// Set when the class lives in another worker served by the same process
    /// (`script_name`): calls go to that worker's isolate threads.
    pub foreign: Option<Arc<ForeignNamespace>>,
}

/// A namespace whose class another worker of this process implements.
#[derive(Debug)]
pub struct ForeignNamespace {
    /// The worker that owns the class.
    pub worker: String,
    /// The namespace's index in the owning worker's namespaces.
    pub index: u32,
    /// The owning worker's isolate threads, set once its pool has started.
    pub mailboxes: OnceLock<Mailboxes>,
}

impl ObjectNamespace {
    fn id_key(&self) -> [u8; 32] {
        Sha256::digest(self.unique_key.as_bytes()).into()
    }

    fn mac(&self, head: &[u8; 16]) -> [u8; 16] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.id_key()).expect("any key");
        mac.update(head);
        let out = mac.finalize().into_bytes();
        out[..16].try_into().expect("16 bytes")
    }

    pub fn id_from_name(&self, name: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.id_key()).expect("any key");
        mac.update(name.as_bytes());
        let head: [u8; 16] = mac.finalize().into_bytes()[..16]
            .try_into()
            .expect("16 bytes");
        self.id_from_head(&head)
    }

    fn id_from_head(&self, head: &[u8; 16]) -> String {
        let tail = self.mac(head);
        let mut out = String::with_capacity(64);
        for byte in head.iter().chain(tail.iter()) {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    pub fn new_unique_id(&self) -> String {
        let head: [u8; 16] = rand::random();
        self.id_from_head(&head)
    }

    /// Validates a 64-hex id, with Cloudflare's error messages.
    pub fn check_id(&self, text: &str) -> Result<String, IdError> {
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::NotHex);
        }
        let lower = text.to_ascii_lowercase();
        let mut head = [0u8; 16];
        for (i, byte) in head.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&lower[i * 2..i * 2 + 2], 16).expect("hex");
        }
        if self.id_from_head(&head) != lower {
            return Err(IdError::WrongNamespace);
        }
        Ok(lower)
    }
}

/// Everything the Durable Objects layer needs, shared by all isolate threads of a Worker.
#[derive(Debug)]
pub struct ObjectConfig {
    pub namespaces: Vec<ObjectNamespace>,
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// `--replicate-to`: every object commit also goes to the store.
    pub replication: Option<std::sync::Arc<dorun_storage::replica::Replication>>,
}

impl ObjectConfig {
    pub fn namespace(&self, index: u32) -> Result<&ObjectNamespace, IdError> {
        self.namespaces
            .get(index as usize)
            .ok_or(IdError::UnknownNamespace)
    }

    /// Where a namespace keeps its objects' files and its alarm index.
    pub fn namespace_dir(&self, index: u32) -> Result<PathBuf, IdError> {
        Ok(self.data_dir.join(&self.namespace(index)?.unique_key))
    }
}

/// Why an ID could not be made or read, with Cloudflare's messages.
#[derive(Debug, PartialEq, Eq, thiserror::Error, deno_error::JsError)]
#[class(type)]
pub enum IdError {
    #[error("Invalid Durable Object ID: must be 64 hex digits")]
    NotHex,
    #[error("Durable Object ID is not valid for this namespace.")]
    WrongNamespace,
    #[error("unknown Durable Object namespace")]
    UnknownNamespace,
}

fn config(state: &OpState) -> &ObjectConfig {
    state.borrow::<Arc<ObjectConfig>>()
}

#[op2]
#[string]
pub fn op_dorun_id_from_name(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] name: &str,
) -> Result<String, IdError> {
    Ok(config(state).namespace(namespace)?.id_from_name(name))
}

#[op2]
#[string]
pub fn op_dorun_new_unique_id(
    state: &mut OpState,
    #[smi] namespace: u32,
) -> Result<String, IdError> {
    Ok(config(state).namespace(namespace)?.new_unique_id())
}

#[op2]
#[string]
pub fn op_dorun_id_from_string(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] text: &str,
) -> Result<String, IdError> {
    config(state).namespace(namespace)?.check_id(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(unique_key: &str) -> ObjectNamespace {
        ObjectNamespace {
            binding: "NS".into(),
            class_name: "Class".into(),
            unique_key: unique_key.into(),
            sqlite: true,
            foreign: None,
        }
    }

    #[test]
    fn id_from_name_matches_workerd_test_vectors() {
        let ns = namespace("mykey");
        assert_eq!(
            ns.id_from_name("http://foo/"),
            "59002eb8cf872e541722977a258a12d6a93bbe8192b502e1c0cb250aa91af234"
        );
        assert_eq!(
            ns.id_from_name("http://foo/bar"),
            "02b496f65dd35cbac90e3e72dc5a398ee93926ea4a3821e26677082d2e6f9b79"
        );
    }

    #[test]
    fn unique_ids_validate_only_in_their_namespace() {
        let ns = namespace("a");
        let id = ns.new_unique_id();
        assert_eq!(ns.check_id(&id.to_uppercase()), Ok(id.clone()));
        assert_eq!(namespace("b").check_id(&id), Err(IdError::WrongNamespace));
        assert_eq!(ns.check_id("abc"), Err(IdError::NotHex));
    }
}
