//! Admission: who may hold a session with us, as rustls configurations for
//! quinn.
//!
//! - **Mesh password.** Every router derives the same CA key from the password
//!   (Argon2id with a fixed salt, so brute-forcing a captured certificate is
//!   slow), self-signs the same CA certificate, and issues itself a node
//!   certificate with it. Both ends of every session verify the other's chain
//!   against the CA (mutual TLS 1.3). Rotation: further passwords are accepted
//!   as extra roots while the first one signs.
//! - **Operator CA.** A CA certificate plus this node's certificate and key,
//!   verified the same way.
//! - **Unauthenticated** (only when asked for explicitly). Sessions are still
//!   encrypted and each side still proves it holds the key its name is derived
//!   from, but any router is admitted.
//!
//! In every mode the peer name is checked against the certificate's public key
//! by the session code, so one admitted router cannot pose as another. Server
//! names are not checked: routers are dialed by address, and the identity
//! that matters is the key.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::identity::Identity;

/// The DNS name every Weft node certificate carries and every client asks for.
pub const SERVER_NAME: &str = "weft.mesh";
const KDF_SALT: &[u8] = b"weft-mesh-ca-v1";

/// How sessions are admitted.
#[derive(Clone)]
pub enum Admission {
    /// The first password signs our certificate; all are accepted.
    Password(Vec<String>),
    /// PEM files: CA certificate(s), this node's certificate chain and key.
    Ca {
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
    },
    /// Any router is admitted.
    Unauthenticated,
}

impl Admission {
    /// How `status` names it.
    pub fn encryption(&self) -> weft_api::Encryption {
        match self {
            Admission::Password(_) => weft_api::Encryption::Password,
            Admission::Ca { .. } => weft_api::Encryption::Ca,
            Admission::Unauthenticated => weft_api::Encryption::None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Admission::Password(_) => "password",
            Admission::Ca { .. } => "ca",
            Admission::Unauthenticated => "none",
        }
    }
}

/// Everything quinn needs, plus our identity.
pub struct TlsSetup {
    pub identity: Identity,
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA key every holder of `password` derives.
fn mesh_ca_key(password: &str) -> Result<KeyPair> {
    if password.is_empty() {
        bail!("the mesh password is empty");
    }
    let params =
        argon2::Params::new(19 * 1024, 2, 1, Some(32)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut seed = [0u8; 32];
    kdf.hash_password_into(password.as_bytes(), KDF_SALT, &mut seed)
        .map_err(|e| anyhow::anyhow!("deriving the mesh key: {e}"))?;
    // PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410).
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    KeyPair::try_from(der.as_slice()).context("building the mesh CA key")
}

fn ca_params() -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, "weft mesh CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Fixed validity and serial: every router must produce the same CA.
    p.not_before = rcgen::date_time_ymd(2000, 1, 1);
    p.not_after = rcgen::date_time_ymd(4000, 1, 1);
    p.serial_number = Some(rcgen::SerialNumber::from(1u64));
    Ok(p)
}

fn node_params(identity: &Identity) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
    p.distinguished_name
        .push(DnType::CommonName, identity.name.to_string());
    // Wide validity: node clocks may be wrong, and the password is the secret.
    p.not_before = rcgen::date_time_ymd(2000, 1, 1);
    p.not_after = rcgen::date_time_ymd(4000, 1, 1);
    Ok(p)
}

fn pem_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {what}"))?;
    if certs.is_empty() {
        bail!("{what} holds no certificate");
    }
    Ok(certs)
}

pub fn setup(admission: &Admission, own: Identity) -> Result<TlsSetup> {
    let provider = provider();
    let (identity, chain, roots): (
        Identity,
        Vec<CertificateDer<'static>>,
        Option<RootCertStore>,
    ) = match admission {
        Admission::Password(passwords) => {
            let mut roots = RootCertStore::empty();
            let mut chain = None;
            for pw in passwords {
                let ca_key = mesh_ca_key(pw)?;
                let ca_cert = ca_params()?.self_signed(&ca_key)?;
                roots
                    .add(ca_cert.der().clone())
                    .context("adding the mesh CA")?;
                if chain.is_none() {
                    let issuer = Issuer::new(ca_params()?, ca_key);
                    let cert = node_params(&own)?.signed_by(&own.key, &issuer)?;
                    chain = Some(vec![cert.der().clone()]);
                }
            }
            let chain = chain.context("no mesh password given")?;
            (own, chain, Some(roots))
        }
        Admission::Ca {
            ca_pem,
            cert_pem,
            key_pem,
        } => {
            let mut roots = RootCertStore::empty();
            for c in pem_certs(ca_pem, "the CA file")? {
                roots.add(c).context("adding the CA certificate")?;
            }
            let chain = pem_certs(cert_pem, "the node certificate file")?;
            let key = KeyPair::from_pem(key_pem).context("parsing the node key file")?;
            // With an operator's CA, the node key is the operator's.
            (Identity::from_key(key), chain, Some(roots))
        }
        Admission::Unauthenticated => {
            let cert = node_params(&own)?.self_signed(&own.key)?;
            (own, vec![cert.der().clone()], None)
        }
    };
    let key_der = PrivateKeyDer::try_from(identity.key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let client_verifier: Arc<dyn ClientCertVerifier> = match &roots {
        Some(r) => rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(r.clone()),
            provider.clone(),
        )
        .build()
        .context("building the client verifier")?,
        None => Arc::new(AnyPeer(provider.clone())),
    };
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key_der.clone_key())
        .context("our certificate does not match our key")?;
    server.alpn_protocols = vec![weft_peer_proto::ALPN.to_vec()];

    let server_verifier: Arc<dyn ServerCertVerifier> = match roots {
        Some(r) => Arc::new(IgnoreServerName(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(r),
                provider.clone(),
            )
            .build()
            .context("building the server verifier")?,
        )),
        None => Arc::new(AnyPeer(provider.clone())),
    };
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier)
        .with_client_auth_cert(chain, key_der)
        .context("our certificate does not match our key")?;
    client.alpn_protocols = vec![weft_peer_proto::ALPN.to_vec()];
    Ok(TlsSetup {
        identity,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// Full WebPKI chain verification against the mesh CA; only the server name
/// is not required to match (routers are dialed by address).
#[derive(Debug)]
struct IgnoreServerName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Unauthenticated mode: any certificate, but the handshake signature must be
/// made with its key (so the peer name, derived from the key, still holds).
#[derive(Debug)]
struct AnyPeer(Arc<CryptoProvider>);

impl AnyPeer {
    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for AnyPeer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for AnyPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_password_same_ca_different_password_different_ca() {
        let a = ca_params()
            .and_then(|p| Ok(p.self_signed(&mesh_ca_key("s3cret")?)?))
            .expect("ca");
        let b = ca_params()
            .and_then(|p| Ok(p.self_signed(&mesh_ca_key("s3cret")?)?))
            .expect("ca");
        let c = ca_params()
            .and_then(|p| Ok(p.self_signed(&mesh_ca_key("other")?)?))
            .expect("ca");
        assert_eq!(a.der(), b.der());
        assert_ne!(a.der(), c.der());
        assert!(mesh_ca_key("").is_err());
    }
}
