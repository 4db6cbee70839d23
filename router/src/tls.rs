//! Admission: who may hold a session with us, as rustls configurations for
//! quinn, and the node certificate those configurations present.
//!
//! - **Mesh secret.** Every router derives the same CA key from the secret
//!   and the mesh id ([`crate::secret`]), self-signs the same CA
//!   certificate, and issues itself a node certificate with it. Both ends of
//!   every session verify the other's chain against the CA (mutual TLS 1.3).
//!   Rotation: further secrets are accepted as extra roots while the first
//!   one issues.
//! - **Operator CA.** A CA certificate plus this node's certificate and key,
//!   verified the same way.
//! - **Unauthenticated** (only when asked for explicitly). Sessions are still
//!   encrypted and each side still proves it holds the key its name is derived
//!   from, but any router is admitted.
//!
//! Certificates we issue ourselves are valid for [`NODE_CERT_VALIDITY`] and
//! re-issued in memory at half of it ([`NodeCert::renew_if_due`]); both
//! configurations resolve the certificate at each handshake, so new sessions
//! present the new one and sessions already up are not touched (TLS 1.3
//! authenticates once, at the handshake). Sessions are never resumed, so
//! every one is admitted on a certificate valid at its start. An operator's
//! certificate is used as given.
//!
//! In every mode the peer name is checked against the certificate's public key
//! by the session code, so one admitted router cannot pose as another. Server
//! names are not checked: routers are dialed by address, and the identity
//! that matters is the key.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::identity::Identity;

/// The DNS name every Weft node certificate carries and every client asks for.
pub const SERVER_NAME: &str = "weft.mesh";
/// How long a certificate we issue ourselves is valid.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How far back a certificate's validity starts, so that a peer whose
/// clock is behind ours by less than this still accepts it.
pub const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// How sessions are admitted.
#[derive(Clone)]
pub enum Admission {
    /// The first secret issues our certificate; all are accepted. The mesh
    /// id salts the derivation of each.
    Password {
        secrets: Vec<String>,
        mesh_id: String,
    },
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
            Admission::Password { .. } => weft_api::Encryption::Password,
            Admission::Ca { .. } => weft_api::Encryption::Ca,
            Admission::Unauthenticated => weft_api::Encryption::None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Admission::Password { .. } => "password",
            Admission::Ca { .. } => "ca",
            Admission::Unauthenticated => "none",
        }
    }
}

/// Everything quinn needs, plus our identity and the certificate to renew.
pub struct TlsSetup {
    pub identity: Identity,
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    pub cert: Arc<NodeCert>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA key every holder of `secret` in mesh `mesh_id` derives.
fn mesh_ca_key(secret: &str, mesh_id: &str) -> Result<KeyPair> {
    let seed = crate::secret::ca_seed(secret, mesh_id)?;
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

/// The CA of one secret: its key (to issue with) and its certificate (a root).
fn mesh_ca(secret: &str, mesh_id: &str) -> Result<(KeyPair, CertificateDer<'static>)> {
    let key = mesh_ca_key(secret, mesh_id)?;
    let cert = ca_params()?.self_signed(&key)?;
    Ok((key, cert.der().clone()))
}

fn node_params(identity_name: &str, now: SystemTime) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
    p.distinguished_name.push(DnType::CommonName, identity_name);
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("the clock is before 1970")?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + since_epoch.saturating_sub(CLOCK_SKEW);
    p.not_after = epoch + since_epoch + NODE_CERT_VALIDITY;
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

/// Who signs our certificate.
enum Signer {
    /// The mesh CA of the first secret.
    MeshCa(Box<Issuer<'static, KeyPair>>),
    /// Our own key (unauthenticated mode: nobody checks the chain).
    SelfSigned,
    /// An operator's chain, used as given.
    Fixed,
}

/// Our certificate as both the server and the client side of every
/// handshake present it, renewed in place.
pub struct NodeCert {
    signer: Signer,
    /// The node key, for rcgen to put in the certificates it issues.
    key: KeyPair,
    /// The same key, for rustls to sign handshakes with.
    signing: Arc<dyn SigningKey>,
    name: String,
    current: ArcSwap<CertifiedKey>,
    /// When the current certificate was issued (None: the operator's,
    /// never renewed here).
    issued: Mutex<Option<SystemTime>>,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("name", &self.name)
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

impl NodeCert {
    fn new(
        signer: Signer,
        key: KeyPair,
        name: String,
        fixed_chain: Option<Vec<CertificateDer<'static>>>,
        now: SystemTime,
    ) -> Result<Self> {
        let key_der =
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow::anyhow!("{e}"))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .context("the node key cannot sign handshakes")?;
        let (chain, issued) = match fixed_chain {
            Some(chain) => (chain, None),
            None => (vec![issue(&signer, &key, &name, now)?], Some(now)),
        };
        Ok(NodeCert {
            current: ArcSwap::from_pointee(CertifiedKey::new(chain, signing.clone())),
            signer,
            key,
            signing,
            name,
            issued: Mutex::new(issued),
        })
    }

    /// Re-issues the certificate once half its validity has passed (or the
    /// clock went back before it was issued). Returns when the new one
    /// expires; None when nothing was due (or the certificate is the
    /// operator's). New handshakes present the new certificate; sessions
    /// already up keep theirs.
    pub fn renew_if_due(&self, now: SystemTime) -> Result<Option<SystemTime>> {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = *issued else {
            return Ok(None);
        };
        let due = now >= at + NODE_CERT_VALIDITY / 2 || now < at;
        if !due {
            return Ok(None);
        }
        let cert = issue(&self.signer, &self.key, &self.name, now)?;
        self.current.store(Arc::new(CertifiedKey::new(
            vec![cert],
            self.signing.clone(),
        )));
        *issued = Some(now);
        Ok(Some(now + NODE_CERT_VALIDITY))
    }

    /// The chain new handshakes present.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }
}

/// A certificate for `name`'s `key`, valid from `now` (less the skew) for
/// [`NODE_CERT_VALIDITY`].
fn issue(
    signer: &Signer,
    key: &KeyPair,
    name: &str,
    now: SystemTime,
) -> Result<CertificateDer<'static>> {
    let params = node_params(name, now)?;
    let cert = match signer {
        Signer::MeshCa(issuer) => params.signed_by(key, issuer)?,
        Signer::SelfSigned => params.self_signed(key)?,
        Signer::Fixed => bail!("an operator's certificate is not issued here"),
    };
    Ok(cert.der().clone())
}

impl ResolvesServerCert for NodeCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for NodeCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// How peers' certificates are checked: against `roots`, or (None) not at
/// all beyond the handshake signature.
fn verifiers(
    roots: Option<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<dyn ClientCertVerifier>, Arc<dyn ServerCertVerifier>)> {
    let Some(roots) = roots else {
        return Ok((
            Arc::new(AnyPeer(provider.clone())),
            Arc::new(AnyPeer(provider.clone())),
        ));
    };
    let roots = Arc::new(roots);
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .context("building the client verifier")?;
    let server = Arc::new(IgnoreServerName(
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .context("building the server verifier")?,
    ));
    Ok((client, server))
}

/// The roots of a mesh secret admission, and who issues our certificate.
fn mesh_roots(secrets: &[String], mesh_id: &str) -> Result<(RootCertStore, Signer)> {
    let mut roots = RootCertStore::empty();
    let mut signer = None;
    for secret in secrets {
        let (key, cert) = mesh_ca(secret, mesh_id)?;
        roots.add(cert).context("adding the mesh CA")?;
        if signer.is_none() {
            signer = Some(Signer::MeshCa(Box::new(Issuer::new(ca_params()?, key))));
        }
    }
    let signer = signer.context("no mesh secret given")?;
    Ok((roots, signer))
}

/// The configurations of `admission` for a router whose identity is `own`,
/// its certificate issued at `now`.
pub fn setup(admission: &Admission, own: Identity, now: SystemTime) -> Result<TlsSetup> {
    let provider = provider();
    let (identity, signer, fixed_chain, roots) = match admission {
        Admission::Password { secrets, mesh_id } => {
            let (roots, signer) = mesh_roots(secrets, mesh_id)?;
            (own, signer, None, Some(roots))
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
            (
                Identity::from_key(key),
                Signer::Fixed,
                Some(chain),
                Some(roots),
            )
        }
        Admission::Unauthenticated => (own, Signer::SelfSigned, None, None),
    };
    let key = KeyPair::try_from(identity.key.serialize_der().as_slice())
        .context("copying the node key")?;
    let cert = Arc::new(NodeCert::new(
        signer,
        key,
        identity.name.to_string(),
        fixed_chain,
        now,
    )?);
    cert.current
        .load()
        .keys_match()
        .context("our certificate does not match our key")?;
    let (client_verifier, server_verifier) = verifiers(roots, &provider)?;

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(cert.clone());
    server.alpn_protocols = vec![weft_peer_proto::ALPN.to_vec()];
    // No resumption: a resumed session would skip the certificate, and so
    // its expiry and the roots of the day. Sessions are long-lived; a full
    // handshake per session costs nothing that matters.
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier)
        .with_client_cert_resolver(cert.clone());
    client.alpn_protocols = vec![weft_peer_proto::ALPN.to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    Ok(TlsSetup {
        identity,
        server: Arc::new(server),
        client: Arc::new(client),
        cert,
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

    const NEW: &str = "6c2f0e8b9d1a4735c0e2b7f19a8d3c64e5f0a1b2c3d4e5f60718293a4b5c6d7e";
    const OLD: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
    const OTHER: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn identity() -> Identity {
        Identity::from_key(KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key"))
    }

    fn password(secrets: &[&str]) -> Admission {
        Admission::Password {
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            mesh_id: String::new(),
        }
    }

    fn at(t: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970"),
        )
    }

    /// What the verifiers of `admission` say of `chain` at `now`: the
    /// client side (our server checking a dialer) and the server side.
    fn verdicts(
        admission: &Admission,
        chain: &[CertificateDer<'static>],
        now: SystemTime,
    ) -> (Result<(), rustls::Error>, Result<(), rustls::Error>) {
        let Admission::Password { secrets, mesh_id } = admission else {
            panic!("a password admission")
        };
        let (roots, _) = mesh_roots(secrets, mesh_id).expect("roots");
        let (client, server) = verifiers(Some(roots), &provider()).expect("verifiers");
        let name = ServerName::try_from(SERVER_NAME).expect("name");
        (
            client
                .verify_client_cert(&chain[0], &chain[1..], at(now))
                .map(|_| ()),
            server
                .verify_server_cert(&chain[0], &chain[1..], &name, &[], at(now))
                .map(|_| ()),
        )
    }

    fn expired(r: &Result<(), rustls::Error>) -> bool {
        matches!(
            r,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        )
    }

    #[test]
    fn same_secret_same_ca_different_secret_or_mesh_id_different_ca() {
        let a = mesh_ca(NEW, "").expect("ca").1;
        assert_eq!(a, mesh_ca(NEW, "").expect("ca").1);
        assert_ne!(a, mesh_ca(OTHER, "").expect("ca").1);
        assert_ne!(a, mesh_ca(NEW, "mesh-b").expect("ca").1);
        assert!(mesh_ca_key("", "").is_err());
    }

    #[test]
    fn node_certificates_expire_are_refused_when_expired_and_renew_at_half_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let admission = password(&[NEW]);
        let tls = setup(&admission, identity(), t0).expect("setup");
        let first = tls.cert.chain();
        let hour = Duration::from_secs(3600);

        let (c, s) = verdicts(&admission, &first, t0 + hour);
        assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
        // A peer whose clock is behind ours by less than the skew accepts it.
        let (c, s) = verdicts(&admission, &first, t0 - CLOCK_SKEW / 2);
        assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
        let (c, s) = verdicts(&admission, &first, t0 + NODE_CERT_VALIDITY + hour);
        assert!(expired(&c) && expired(&s), "{c:?} {s:?}");

        // Not due before half the validity; then re-issued, valid again.
        assert_eq!(tls.cert.renew_if_due(t0 + hour).expect("renew"), None);
        assert_eq!(tls.cert.chain(), first);
        let half = t0 + NODE_CERT_VALIDITY / 2;
        assert_eq!(
            tls.cert.renew_if_due(half).expect("renew"),
            Some(half + NODE_CERT_VALIDITY)
        );
        let renewed = tls.cert.chain();
        assert_ne!(renewed, first);
        let (c, s) = verdicts(&admission, &renewed, t0 + NODE_CERT_VALIDITY + hour);
        assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
        // The renewed certificate still proves the same name.
        assert_eq!(
            crate::identity::name_of_cert(&renewed[0]).expect("name"),
            tls.identity.name
        );
    }

    #[test]
    fn during_a_roll_both_secrets_are_accepted_and_the_first_issues() {
        let now = SystemTime::now();
        let rolling = password(&[NEW, OLD]);
        let on_new = setup(&password(&[NEW]), identity(), now).expect("setup");
        let on_old = setup(&password(&[OLD]), identity(), now).expect("setup");
        let other = setup(&password(&[OTHER]), identity(), now).expect("setup");
        let mid_roll = setup(&rolling, identity(), now).expect("setup");

        for (chain, what) in [(on_new.cert.chain(), "new"), (on_old.cert.chain(), "old")] {
            let (c, s) = verdicts(&rolling, &chain, now);
            assert!(c.is_ok() && s.is_ok(), "{what}: {c:?} {s:?}");
        }
        let (c, s) = verdicts(&rolling, &other.cert.chain(), now);
        assert!(c.is_err() && s.is_err(), "a third secret admitted");
        // The router mid-roll issues with the first secret: routers that
        // accept only the new one admit it, routers on the old one alone not.
        let (c, s) = verdicts(&password(&[NEW]), &mid_roll.cert.chain(), now);
        assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
        let (c, s) = verdicts(&password(&[OLD]), &mid_roll.cert.chain(), now);
        assert!(c.is_err() && s.is_err(), "issued with the old secret");
    }

    fn leaf(conn: &quinn::Connection) -> CertificateDer<'static> {
        let chain = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .expect("a certificate chain");
        chain[0].clone()
    }

    /// Two real QUIC endpoints on loopback: after both renew, the session
    /// already up still carries data, and a new one presents the new
    /// certificates both ways.
    #[tokio::test]
    async fn renewal_reaches_new_handshakes_and_leaves_sessions_up() {
        // Issued 13 hours ago: still valid, and due now.
        let then = SystemTime::now() - Duration::from_secs(13 * 3600);
        let admission = password(&[NEW]);
        let server = setup(&admission, identity(), then).expect("setup");
        let client = setup(&admission, identity(), then).expect("setup");
        let quic_server = quinn::crypto::rustls::QuicServerConfig::try_from(server.server.clone())
            .expect("QUIC server config");
        let endpoint = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(quic_server)),
            ([127, 0, 0, 1], 0).into(),
        )
        .expect("server endpoint");
        let addr = endpoint.local_addr().expect("address");
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let acceptor = tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let conn = incoming.await.expect("accepted");
                let _ = seen_tx.send(leaf(&conn));
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let got = recv.read_to_end(64).await.expect("read");
                        send.write_all(&got).await.expect("echo");
                        send.finish().expect("finish");
                    }
                });
            }
        });
        let mut dialer = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).expect("client");
        dialer.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client.client.clone())
                .expect("QUIC client config"),
        )));
        let dial = |ep: quinn::Endpoint| async move {
            ep.connect(addr, SERVER_NAME)
                .expect("connect")
                .await
                .expect("handshake")
        };
        let echo = |conn: quinn::Connection| async move {
            let (mut send, mut recv) = conn.open_bi().await.expect("stream");
            send.write_all(b"ping").await.expect("write");
            send.finish().expect("finish");
            recv.read_to_end(64).await.expect("read")
        };

        let first = dial(dialer.clone()).await;
        assert_eq!(leaf(&first), server.cert.chain()[0]);
        assert_eq!(seen.recv().await.expect("seen"), client.cert.chain()[0]);
        let now = SystemTime::now();
        assert!(server.cert.renew_if_due(now).expect("renew").is_some());
        assert!(client.cert.renew_if_due(now).expect("renew").is_some());

        assert_eq!(echo(first.clone()).await, b"ping");
        assert!(
            first.close_reason().is_none(),
            "the first session went down"
        );
        let second = dial(dialer.clone()).await;
        assert_eq!(
            leaf(&second),
            server.cert.chain()[0],
            "the old server certificate"
        );
        assert_ne!(leaf(&second), leaf(&first));
        assert_eq!(seen.recv().await.expect("seen"), client.cert.chain()[0]);
        assert_eq!(echo(second).await, b"ping");
        assert!(
            first.close_reason().is_none(),
            "the first session went down"
        );
        acceptor.abort();
    }
}
