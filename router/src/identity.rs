//! A router's long-lived key pair and the peer name derived from it.
//!
//! The key is Ed25519, stored as PKCS#8 PEM (`identity.key`, mode 0600) in the
//! data directory and written atomically. The peer name is the first 64 bits
//! of SHA-256 over the SubjectPublicKeyInfo DER, the same bytes every
//! certificate for the key carries, so a peer's name can be checked against
//! the certificate it presents.

use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{KeyPair, PublicKeyData};
use weft_peer_proto::PeerName;

use crate::store;

pub struct Identity {
    pub key: KeyPair,
    pub name: PeerName,
}

/// The peer name for a SubjectPublicKeyInfo (DER).
pub fn name_of_spki(spki_der: &[u8]) -> PeerName {
    let d = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let mut b = [0u8; 32];
    b.copy_from_slice(d.as_ref());
    PeerName::from_digest(&b)
}

/// The peer name a certificate (DER) proves, from its public key.
pub fn name_of_cert(cert_der: &[u8]) -> Result<PeerName> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| anyhow::anyhow!("unparsable peer certificate: {e}"))?;
    Ok(name_of_spki(cert.public_key().raw))
}

impl Identity {
    pub fn from_key(key: KeyPair) -> Self {
        let name = name_of_spki(&key.subject_public_key_info());
        Identity { key, name }
    }

    /// The key as the mesh core signs with it (topology entries, channel
    /// message sources). Its name must be ours: a key whose name differs
    /// would sign statements every other router refuses.
    pub fn signer(&self) -> Result<weft_peer_proto::sign::KeyPair> {
        use weft_peer_proto::sign::Signer as _;
        let signer = weft_peer_proto::sign::KeyPair::from_pkcs8(&self.key.serialize_der())
            .map_err(|e| anyhow::anyhow!("identity key is not Ed25519: {e}"))?;
        anyhow::ensure!(
            signer.name() == self.name,
            "identity key names {} but the identity is {}",
            signer.name(),
            self.name
        );
        Ok(signer)
    }

    /// Loads `identity.key` from `dir`, or creates it.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let path = dir.join("identity.key");
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let key = KeyPair::from_pem(&pem)
                    .with_context(|| format!("{} is not a PKCS#8 private key", path.display()))?;
                Ok(Self::from_key(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .context("generating identity key")?;
                store::write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)?;
                Ok(Self::from_key(key))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_name_matches_certificate() {
        let dir = std::env::temp_dir().join(format!("weft-id-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let a = Identity::load_or_create(&dir).expect("create");
        let b = Identity::load_or_create(&dir).expect("load");
        assert_eq!(a.name, b.name);
        let cert = rcgen::CertificateParams::new(vec!["weft.mesh".into()])
            .expect("params")
            .self_signed(&a.key)
            .expect("cert");
        assert_eq!(name_of_cert(cert.der()).expect("parse"), a.name);
        let signer = a.signer().expect("an Ed25519 signer");
        assert_eq!(weft_peer_proto::sign::Signer::name(&signer), a.name);
        std::fs::remove_dir_all(&dir).ok();
    }
}
