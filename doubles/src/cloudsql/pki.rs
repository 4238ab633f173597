//! Cloud SQL's certificates as the connectors see them: a server CA (`serverCaCert`) that signs
//! each instance's server certificate (common name `project:instance`, as the connectors check
//! when an instance has no DNS name, and every address the instance is reached by as subject
//! alternative names), and a client CA that signs the ephemeral client certificates. The
//! connectors present the ephemeral certificate alone, so the instances trust the client CA
//! itself.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::config::CloudSqlInstance;
use crate::alloydb::pki::RsaPublicKey;

/// The server CA and the client CA of one set of doubles.
pub(crate) struct Pki {
    server_ca: CertifiedIssuer<'static, KeyPair>,
    client_ca: CertifiedIssuer<'static, KeyPair>,
}

/// An issued ephemeral certificate.
pub(crate) struct Ephemeral {
    pub pem: String,
    pub der: Vec<u8>,
    pub not_after: SystemTime,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "fedcred Cloud SQL doubles");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn ca(common_name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(serial());
    CertifiedIssuer::self_signed(params, KeyPair::generate()?)
}

impl Pki {
    pub fn new() -> Result<Pki, rcgen::Error> {
        Ok(Pki {
            server_ca: ca("Google Cloud SQL Server CA")?,
            client_ca: ca("Google Cloud SQL Signing CA")?,
        })
    }

    pub fn server_ca_pem(&self) -> String {
        self.server_ca.pem()
    }

    /// A client certificate for `key`, valid from a minute ago for `duration`.
    pub fn sign_ephemeral(
        &self,
        key: &RsaPublicKey,
        duration: Duration,
    ) -> Result<Ephemeral, rcgen::Error> {
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = name("cloudsql-ephemeral");
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + duration;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial());
        let cert = params.signed_by(key, &self.client_ca)?;
        Ok(Ephemeral {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            not_after: SystemTime::from(params.not_after),
        })
    }

    /// The TLS 1.3 server of `instance`: its own certificate, an ephemeral client certificate
    /// required.
    pub fn server_config(
        &self,
        instance: &CloudSqlInstance,
    ) -> Result<rustls::ServerConfig, String> {
        let parts = instance
            .parts()
            .ok_or_else(|| format!("{} is not a connection name", instance.connection_name))?;
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            CertificateParams::new(instance.server_names()).map_err(|e| e.to_string())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("{}:{}", parts.project, parts.name),
        );
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(serial());
        let cert = params
            .signed_by(&key, &self.server_ca)
            .map_err(|e| e.to_string())?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.client_ca.der().clone())
            .map_err(|e| format!("client CA: {e}"))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
        rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS 1.3: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(|e| format!("server certificate: {e}"))
    }
}
