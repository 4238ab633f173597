//! TLS material of the webhook: a self-signed CA and a serving certificate signed by it
//! (ECDSA P-256), and the rustls server configuration that serves one.

use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, date_time_ymd,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::Error;

/// How long a generated CA and serving certificate are valid.
const VALIDITY_DAYS: i64 = 365;

/// PEM-encoded TLS material for the webhook.
#[derive(Clone)]
pub struct CertBundle {
    /// The CA certificate: the API server's `caBundle`.
    pub ca_pem: String,
    /// The serving certificate, signed by the CA.
    pub cert_pem: String,
    /// The serving certificate's private key (PKCS #8).
    pub key_pem: String,
    /// When the serving certificate expires.
    pub not_after: jiff::Timestamp,
    /// When the CA certificate expires.
    pub ca_not_after: jiff::Timestamp,
}

impl std::fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never goes into logs.
        f.debug_struct("CertBundle")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Generates a fresh CA and a serving certificate for `names`, each a DNS name
/// (`fedcred-webhook.fedcred-system.svc`) or an IP address (`127.0.0.1`), valid from yesterday
/// (clock skew between nodes) for a year.
pub fn generate(names: &[String]) -> Result<CertBundle, Error> {
    let now = jiff::Timestamp::now();
    let ca = new_ca(now)?;
    let serving = sign_serving(&ca.key_pem, names, now)?;
    Ok(CertBundle {
        ca_pem: ca.cert_pem,
        cert_pem: serving.cert_pem,
        key_pem: serving.key_pem,
        not_after: serving.not_after,
        ca_not_after: ca.not_after,
    })
}

/// A certificate with its private key (PKCS #8 PEM) and the end of its validity.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: jiff::Timestamp,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

fn cert_err(e: rcgen::Error) -> Error {
    Error::certificate("generating a certificate", e)
}

/// Sets the validity window of a certificate issued at `now`: from yesterday (clock skew
/// between nodes) to [`VALIDITY_DAYS`] from today, at midnight UTC. Returns its end.
fn set_validity(
    params: &mut CertificateParams,
    now: jiff::Timestamp,
) -> Result<jiff::Timestamp, Error> {
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let date_err = |e: jiff::Error| Error::certificate("certificate validity", e);
    let start = today.yesterday().map_err(date_err)?;
    let end = today
        .checked_add(jiff::Span::new().days(VALIDITY_DAYS))
        .map_err(date_err)?;
    let ymd = |d: jiff::civil::Date| date_time_ymd(d.year().into(), d.month() as u8, d.day() as u8);
    let end_ts = end
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(date_err)?
        .timestamp();
    params.not_before = ymd(start);
    params.not_after = ymd(end);
    Ok(end_ts)
}

/// The CA's parameters. The same every time, so that the CA key alone (with these) signs
/// serving certificates that chain to the CA certificate issued earlier.
fn ca_params() -> Result<CertificateParams, Error> {
    let mut ca_params = CertificateParams::new(Vec::new()).map_err(cert_err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fedcred webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca_params)
}

/// A fresh self-signed CA (ECDSA P-256), valid for a year from `now`.
pub fn new_ca(now: jiff::Timestamp) -> Result<Issued, Error> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
    let mut params = ca_params()?;
    let end = set_validity(&mut params, now)?;
    let ca_cert = params.self_signed(&ca_key).map_err(cert_err)?;
    Ok(Issued {
        cert_pem: ca_cert.pem(),
        key_pem: ca_key.serialize_pem(),
        not_after: end,
    })
}

/// A serving certificate for `names` signed by the CA whose key is `ca_key_pem` (made by
/// [`new_ca`]), valid for a year from `now`.
pub fn sign_serving(
    ca_key_pem: &str,
    names: &[String],
    now: jiff::Timestamp,
) -> Result<Issued, Error> {
    if names.is_empty() {
        return Err(Error::certificate(
            "the serving certificate's names",
            "a serving certificate needs at least one DNS name or IP address",
        ));
    }
    let ca_key =
        KeyPair::from_pem(ca_key_pem).map_err(|e| Error::certificate("the CA key PEM", e))?;
    let issuer = Issuer::new(ca_params()?, ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(cert_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let end = set_validity(&mut params, now)?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: end,
    })
}

/// The certificate chain in `cert_pem`: at least one certificate.
fn parse_chain(cert_pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::certificate("the serving certificate PEM", e))?;
    if chain.is_empty() {
        return Err(Error::certificate(
            "the serving certificate PEM",
            "it holds no certificate",
        ));
    }
    Ok(chain)
}

/// The certificate chain and private key in `cert_pem` and `key_pem`.
fn parse_pems(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let chain = parse_chain(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::certificate("the serving key PEM", e))?;
    Ok((chain, key))
}

/// The rustls configuration serving `cert_pem` (the serving certificate, optionally followed
/// by intermediates) with `key_pem`: TLS 1.2 and 1.3, HTTP/1.1 only (the API server speaks
/// HTTP/1.1 or HTTP/2 to webhooks; this server answers HTTP/1.1).
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, Error> {
    let (chain, key) = parse_pems(cert_pem, key_pem)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::certificate("the TLS configuration", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::certificate("the serving certificate and key", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Whether a client trusting only the CA `ca_pem` accepts the serving certificate `cert_pem`
/// (optionally followed by intermediates) for every one of `names` at `now`, as the API server
/// checks it against the `caBundle`: signed by that CA, valid at that moment, issued for those
/// names, for server authentication. Pure.
pub fn trusted_for(ca_pem: &str, cert_pem: &str, names: &[String], now: jiff::Timestamp) -> bool {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    let mut roots = rustls::RootCertStore::empty();
    let Ok(ca) = CertificateDer::from_pem_slice(ca_pem.as_bytes()) else {
        return false;
    };
    if roots.add(ca).is_err() {
        return false;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let Ok(verifier) =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()
    else {
        return false;
    };
    let Ok(chain) = parse_chain(cert_pem) else {
        return false;
    };
    let Some((serving, intermediates)) = chain.split_first() else {
        return false;
    };
    let Ok(seconds) = u64::try_from(now.as_second()) else {
        return false;
    };
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds));
    !names.is_empty()
        && names.iter().all(|name| {
            ServerName::try_from(name.as_str()).is_ok_and(|name| {
                verifier
                    .verify_server_cert(serving, intermediates, &name, &[], at)
                    .is_ok()
            })
        })
}

/// The serving certificate and key as rustls serves them, checked to belong together.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, Error> {
    let (chain, key) = parse_pems(cert_pem, key_pem)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| Error::certificate("the serving certificate and key", e))
}

/// A serving certificate that can be swapped while the server runs: every handshake gets the
/// one set last.
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    ca_pem: RwLock<String>,
    /// When the served certificate and its CA expire.
    not_after: RwLock<(jiff::Timestamp, jiff::Timestamp)>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert").finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Starts with `bundle`'s serving certificate and key.
    pub fn new(bundle: &CertBundle) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(ReloadingCert {
            current: RwLock::new(certified_key(&bundle.cert_pem, &bundle.key_pem)?),
            ca_pem: RwLock::new(bundle.ca_pem.clone()),
            not_after: RwLock::new((bundle.not_after, bundle.ca_not_after)),
        }))
    }

    /// Serves `bundle`'s certificate from the next handshake on. An unusable bundle leaves
    /// the current certificate in place.
    pub fn set(&self, bundle: &CertBundle) -> Result<(), Error> {
        let key = certified_key(&bundle.cert_pem, &bundle.key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        bundle
            .ca_pem
            .clone_into(&mut self.ca_pem.write().unwrap_or_else(|e| e.into_inner()));
        *self.not_after.write().unwrap_or_else(|e| e.into_inner()) =
            (bundle.not_after, bundle.ca_not_after);
        Ok(())
    }

    /// When the certificate served now expires, and when its CA does.
    pub fn not_after(&self) -> (jiff::Timestamp, jiff::Timestamp) {
        *self.not_after.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The PEM of the CA that signed the certificate served now; `None` when unknown.
    pub fn ca_pem(&self) -> Option<String> {
        let ca = self.ca_pem.read().unwrap_or_else(|e| e.into_inner());
        (!ca.is_empty()).then(|| ca.clone())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Like [`server_config`], serving whatever certificate `cert` holds at each handshake.
pub fn reloading_server_config(cert: Arc<ReloadingCert>) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::certificate("the TLS configuration", e))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_bundle_makes_a_server_config() {
        let bundle = generate(&["127.0.0.1".to_owned(), "fedcred.example.svc".to_owned()]).unwrap();
        assert!(bundle.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(bundle.ca_pem, bundle.cert_pem);
        assert!(bundle.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{bundle:?}").contains(&bundle.key_pem));
        server_config(&bundle.cert_pem, &bundle.key_pem).unwrap();
    }

    #[test]
    fn mismatched_or_garbage_pems_are_errors() {
        let a = generate(&["a.example".to_owned()]).unwrap();
        let b = generate(&["b.example".to_owned()]).unwrap();
        assert!(server_config(&a.cert_pem, &b.key_pem).is_err());
        assert!(server_config("not a pem", &a.key_pem).is_err());
        assert!(server_config(&a.cert_pem, "").is_err());
        assert!(generate(&[]).is_err());
    }

    #[test]
    fn a_reloading_cert_serves_the_bundle_set_last() {
        let a = generate(&["a.example".to_owned()]).unwrap();
        let b = generate(&["b.example".to_owned()]).unwrap();
        let cert = ReloadingCert::new(&a).unwrap();
        reloading_server_config(cert.clone()).unwrap();
        let leaf = |bundle: &CertBundle| {
            CertificateDer::pem_slice_iter(bundle.cert_pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
        };
        assert_eq!(cert.get().end_entity_cert().unwrap(), &leaf(&a));
        cert.set(&b).unwrap();
        assert_eq!(cert.get().end_entity_cert().unwrap(), &leaf(&b));
        let broken = CertBundle {
            key_pem: a.key_pem.clone(),
            ..b.clone()
        };
        assert!(cert.set(&broken).is_err());
        assert_eq!(cert.get().end_entity_cert().unwrap(), &leaf(&b));
    }
}
