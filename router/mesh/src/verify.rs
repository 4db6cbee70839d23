//! Checking what other routers signed, at most once per statement.
//!
//! A topology entry or channel message is checked only when it would change
//! something (news, an equivocation, a message not seen before); what
//! passed is remembered by the hash of its signed bytes and signature, so
//! that copies arriving again (from other neighbours, or at other cores of
//! one simulation) cost a hash, not an Ed25519 check.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use weft_peer_proto::sign::{Sig, SignError};
use weft_peer_proto::topology::{EntryError, PeerEntry};
use weft_peer_proto::{GossipMsg, PeerName};

/// What passed, by SHA-256 of `signed bytes || key || signature`, and in
/// which order (the oldest is forgotten first).
type Passed = (HashSet<[u8; 32]>, VecDeque<[u8; 32]>);

/// Signatures that passed, remembered up to a capacity.
#[derive(Debug)]
pub struct SigCache {
    capacity: usize,
    seen: Mutex<Passed>,
}

impl SigCache {
    pub fn new(capacity: usize) -> Self {
        SigCache {
            capacity: capacity.max(1),
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// Checks that `sig` signs `msg` and was made by `who`.
    pub fn check(&self, who: PeerName, msg: &[u8], sig: &Sig) -> Result<(), SignError> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(msg);
        ctx.update(&sig.key.0);
        ctx.update(&sig.sig.0);
        ctx.update(&sig.sig.1);
        let mut id = [0u8; 32];
        id.copy_from_slice(ctx.finish().as_ref());
        self.check_id(who, id, sig, || Ok(msg.to_vec()))
    }

    /// As [`SigCache::check`], with `id` a digest that binds the signed
    /// bytes, the key and the signature; the bytes are made only when `id`
    /// is not in the cache.
    fn check_id(
        &self,
        who: PeerName,
        id: [u8; 32],
        sig: &Sig,
        msg: impl FnOnce() -> Result<Vec<u8>, SignError>,
    ) -> Result<(), SignError> {
        let signer = sig.signer();
        if signer != who {
            return Err(SignError::WrongSigner { signer });
        }
        // A poisoned lock only means another core panicked; the set is still sound.
        if self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .contains(&id)
        {
            return Ok(());
        }
        sig.verify_bytes(&msg()?)?;
        let mut g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.insert(id) {
            g.1.push_back(id);
            while g.1.len() > self.capacity {
                if let Some(old) = g.1.pop_front() {
                    g.0.remove(&old);
                }
            }
        }
        Ok(())
    }

    /// [`PeerEntry::verify`], through the cache; `digest` is the entry's
    /// [`PeerEntry::content_digest`] (the encoding covers what is signed,
    /// the key and the signature).
    pub fn check_entry(&self, e: &PeerEntry, digest: [u8; 32]) -> Result<(), EntryError> {
        e.check_form()?;
        Ok(self.check_id(e.name, digest, &e.sig, || e.signing_bytes())?)
    }

    /// [`GossipMsg::verify`], through the cache.
    pub fn check_msg(&self, m: &GossipMsg) -> Result<(), SignError> {
        let msg = m.signing_bytes()?;
        self.check(m.source(), &msg, &m.sig)
    }
}
