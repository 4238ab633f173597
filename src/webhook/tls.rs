//! TLS material of the webhook: a self-signed CA and a serving certificate signed by it
//! (ECDSA P-256), and the rustls server configuration that serves one.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, date_time_ymd,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    if names.is_empty() {
        return Err(Error::Certificate(
            "a serving certificate needs at least one DNS name or IP address".to_owned(),
        ));
    }
    let cert_err = |e: rcgen::Error| Error::Certificate(e.to_string());
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let date_err = |e: jiff::Error| Error::Certificate(format!("certificate validity: {e}"));
    let start = today.yesterday().map_err(date_err)?;
    let end = today
        .checked_add(jiff::Span::new().days(VALIDITY_DAYS))
        .map_err(date_err)?;
    let ymd = |d: jiff::civil::Date| date_time_ymd(d.year().into(), d.month() as u8, d.day() as u8);
    let (not_before, not_after) = (ymd(start), ymd(end));

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
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
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(cert_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;

    Ok(CertBundle {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The rustls configuration serving `cert_pem` (the serving certificate, optionally followed
/// by intermediates) with `key_pem`: TLS 1.2 and 1.3, HTTP/1.1 only (the API server speaks
/// HTTP/1.1 or HTTP/2 to webhooks; this server answers HTTP/1.1).
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, Error> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate(format!("the serving certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(Error::Certificate(
            "the serving certificate PEM holds no certificate".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::Certificate(format!("the serving key PEM: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Certificate(format!("the serving certificate and key: {e}")))?;
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
}
