//! The cluster's certificates: a root CA (the `caCert` clients trust), an intermediate that
//! signs client certificates, and the instance's server certificate; the TLS 1.3 server
//! configuration that requires a client certificate chained to the root.
//!
//! Also the parsing of the client's public key as `generateClientCertificate` receives it
//! ([`parse_public_key`], pure): PEM PKCS#1 `RSA PUBLIC KEY`, as the Go connector sends, or
//! SubjectPublicKeyInfo `PUBLIC KEY`, and only RSA 2048.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The only key size the Admin API accepts for client certificates.
pub const RSA_BITS: usize = 2048;

/// An RSA public key, as the PKCS#1 `RSAPublicKey` DER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RsaPublicKey {
    pkcs1: Vec<u8>,
    bits: usize,
}

impl RsaPublicKey {
    pub fn bits(&self) -> usize {
        self.bits
    }
}

impl PublicKeyData for RsaPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.pkcs1
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// `rsaEncryption`, 1.2.840.113549.1.1.1.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// One DER element: tag and contents; advances `input` past it.
fn der<'a>(input: &mut &'a [u8]) -> Result<(u8, &'a [u8]), String> {
    let bad = || "the public key is not valid DER".to_owned();
    let (&tag, rest) = input.split_first().ok_or_else(bad)?;
    let (&first, mut rest) = rest.split_first().ok_or_else(bad)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(bad());
    }
    let (contents, after) = rest.split_at(len);
    *input = after;
    Ok((tag, contents))
}

/// The single element `input` holds, which must have `tag`.
fn only(mut input: &[u8], tag: u8) -> Result<&[u8], String> {
    let (found, contents) = der(&mut input)?;
    if found != tag || !input.is_empty() {
        return Err("the public key is not an RSA public key".to_owned());
    }
    Ok(contents)
}

/// Checks a PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_from_pkcs1(pkcs1: &[u8]) -> Result<RsaPublicKey, String> {
    let not_rsa = || "the public key is not an RSA public key".to_owned();
    let mut seq = only(pkcs1, 0x30)?;
    let (tag, modulus) = der(&mut seq)?;
    let (etag, exponent) = der(&mut seq)?;
    if tag != 0x02 || etag != 0x02 || !seq.is_empty() {
        return Err(not_rsa());
    }
    let positive = |n: &[u8]| n.first().is_some_and(|b| b & 0x80 == 0);
    if !positive(modulus) || !positive(exponent) {
        return Err(not_rsa());
    }
    let modulus = strip_zeros(modulus);
    let exponent = strip_zeros(exponent);
    let bits = match modulus.first() {
        Some(first) => modulus.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    };
    let odd = exponent.last().is_some_and(|b| b & 1 == 1);
    if !odd || (exponent.len() == 1 && exponent[0] < 3) {
        return Err("the RSA public exponent is not valid".to_owned());
    }
    if bits != RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; client certificates need {RSA_BITS}-bit keys"
        ));
    }
    Ok(RsaPublicKey {
        pkcs1: pkcs1.to_vec(),
        bits,
    })
}

fn strip_zeros(n: &[u8]) -> &[u8] {
    let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
    &n[first..]
}

/// The RSA 2048 key of a PEM `RSA PUBLIC KEY` (PKCS#1) or `PUBLIC KEY` (SubjectPublicKeyInfo).
/// An `RSA PUBLIC KEY` block holding a SubjectPublicKeyInfo is read too: the Cloud SQL
/// connectors send their key that way, and the Cloud SQL Admin API accepts it.
pub fn parse_public_key(pem: &str) -> Result<RsaPublicKey, String> {
    let (label, der_bytes) = pem_block(pem)?;
    match label.as_str() {
        "RSA PUBLIC KEY" if holds_spki(&der_bytes) => rsa_from_spki(&der_bytes),
        "RSA PUBLIC KEY" => rsa_from_pkcs1(&der_bytes),
        "PUBLIC KEY" => rsa_from_spki(&der_bytes),
        other => Err(format!(
            "expected a PEM RSA PUBLIC KEY or PUBLIC KEY block, got {other:?}"
        )),
    }
}

/// Whether `der_bytes` is a SEQUENCE whose first element is a SEQUENCE (a SubjectPublicKeyInfo's
/// algorithm) rather than an INTEGER (a PKCS#1 key's modulus).
fn holds_spki(der_bytes: &[u8]) -> bool {
    only(der_bytes, 0x30).is_ok_and(|mut inner| der(&mut inner).is_ok_and(|(tag, _)| tag == 0x30))
}

fn rsa_from_spki(der_bytes: &[u8]) -> Result<RsaPublicKey, String> {
    let mut spki = only(der_bytes, 0x30)?;
    let (tag, algorithm) = der(&mut spki)?;
    let (bit_tag, bits) = der(&mut spki)?;
    let mut algorithm = algorithm;
    let (oid_tag, oid) = der(&mut algorithm)?;
    if tag != 0x30 || bit_tag != 0x03 || !spki.is_empty() {
        return Err("the public key is not a SubjectPublicKeyInfo".to_owned());
    }
    if oid_tag != 0x06 || oid != RSA_ENCRYPTION {
        return Err("the public key is not an RSA public key".to_owned());
    }
    match bits.split_first() {
        Some((0, pkcs1)) => rsa_from_pkcs1(pkcs1),
        _ => Err("the public key is not an RSA public key".to_owned()),
    }
}

/// The label and contents of the one PEM block in `pem`.
fn pem_block(pem: &str) -> Result<(String, Vec<u8>), String> {
    let not_pem = || "the public key is not PEM encoded".to_owned();
    let pem = pem.trim();
    let rest = pem.strip_prefix("-----BEGIN ").ok_or_else(not_pem)?;
    let (label, rest) = rest.split_once("-----").ok_or_else(not_pem)?;
    let end = format!("-----END {label}-----");
    let body = rest.strip_suffix(end.as_str()).ok_or_else(not_pem)?;
    let body: String = body.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| not_pem())?;
    Ok((label.to_owned(), bytes))
}

/// Root CA, intermediate CA and server certificate of one set of doubles.
pub(crate) struct Pki {
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "fedcred AlloyDB doubles");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn ca_params(common_name: &str, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(serial());
    params
}

impl Pki {
    /// Fresh keys; the server certificate names `server_names` (DNS names or IPs).
    pub fn new(server_names: &[String]) -> Result<Pki, rcgen::Error> {
        let root = CertifiedIssuer::self_signed(
            ca_params("AlloyDB cluster root CA", 1),
            KeyPair::generate()?,
        )?;
        let intermediate = CertifiedIssuer::signed_by(
            ca_params("AlloyDB client intermediate CA", 0),
            KeyPair::generate()?,
            &root,
        )?;
        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(server_names.to_vec())?;
        params.distinguished_name = name("AlloyDB instance");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(serial());
        let server_cert = params.signed_by(&server_key, &root)?;
        Ok(Pki {
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
            root,
            intermediate,
        })
    }

    /// The `caCert` of the cluster.
    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// A client certificate for `key`, valid from a minute ago for `duration`, with the
    /// chain `[client, intermediate, root]` as PEM blocks.
    pub fn sign_client(
        &self,
        key: &RsaPublicKey,
        subject: &str,
        duration: Duration,
    ) -> Result<Vec<String>, rcgen::Error> {
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(subject);
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + duration;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial());
        let cert = params.signed_by(key, &self.intermediate)?;
        Ok(vec![cert.pem(), self.intermediate.pem(), self.root.pem()])
    }

    /// TLS 1.3 only, a client certificate chained to the root required.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.root.der().clone())
            .map_err(|e| format!("root CA: {e}"))?;
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
                vec![self.server_cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone())),
            )
            .map_err(|e| format!("server certificate: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(label: &str, der: &[u8]) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }

    /// PKCS#1 DER of a key with a modulus of `bits` bits and exponent 65537.
    fn pkcs1(bits: usize) -> Vec<u8> {
        let mut modulus = vec![0u8; bits / 8];
        modulus[0] = 0x80;
        modulus[bits / 8 - 1] = 0x01;
        modulus.insert(0, 0); // positive
        let mut ints = vec![0x02, 0x82];
        ints.extend_from_slice(&(modulus.len() as u16).to_be_bytes());
        ints.extend_from_slice(&modulus);
        ints.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut out = vec![0x30, 0x82];
        out.extend_from_slice(&(ints.len() as u16).to_be_bytes());
        out.extend_from_slice(&ints);
        out
    }

    fn spki(pkcs1: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x30, 0x0d, 0x06, 0x09];
        alg.extend_from_slice(RSA_ENCRYPTION);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut bits = vec![0x03, 0x82];
        bits.extend_from_slice(&((pkcs1.len() + 1) as u16).to_be_bytes());
        bits.push(0);
        bits.extend_from_slice(pkcs1);
        let inner = [alg, bits].concat();
        let mut out = vec![0x30, 0x82];
        out.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        out.extend_from_slice(&inner);
        out
    }

    #[test]
    fn rsa_2048_keys_are_accepted_in_both_encodings() {
        let key = parse_public_key(&pem("RSA PUBLIC KEY", &pkcs1(2048))).unwrap();
        assert_eq!(key.bits(), 2048);
        let key = parse_public_key(&pem("PUBLIC KEY", &spki(&pkcs1(2048)))).unwrap();
        assert_eq!(key.der_bytes(), pkcs1(2048));
        // As the Cloud SQL connectors label theirs.
        let key = parse_public_key(&pem("RSA PUBLIC KEY", &spki(&pkcs1(2048)))).unwrap();
        assert_eq!(key.der_bytes(), pkcs1(2048));
        let small = parse_public_key(&pem("RSA PUBLIC KEY", &spki(&pkcs1(1024)))).unwrap_err();
        assert!(small.contains("1024 bits"), "{small}");
    }

    #[test]
    fn other_keys_and_garbage_are_refused() {
        let small = parse_public_key(&pem("RSA PUBLIC KEY", &pkcs1(1024))).unwrap_err();
        assert!(small.contains("1024 bits"), "{small}");
        let ec = KeyPair::generate().unwrap();
        let ec_pem = pem("PUBLIC KEY", &ec.subject_public_key_info());
        assert!(parse_public_key(&ec_pem).is_err());
        for bad in [
            "",
            "not pem",
            "-----BEGIN RSA PUBLIC KEY-----\n!!!\n-----END RSA PUBLIC KEY-----",
            &pem("CERTIFICATE", &pkcs1(2048)),
            &pem("RSA PUBLIC KEY", &pkcs1(2048)[..100]),
            &pem("RSA PUBLIC KEY", &[pkcs1(2048), vec![0]].concat()),
        ] {
            assert!(parse_public_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_chain_is_client_intermediate_root() {
        let pki = Pki::new(&["localhost".to_owned()]).unwrap();
        let key = parse_public_key(&pem("RSA PUBLIC KEY", &pkcs1(2048))).unwrap();
        let chain = pki
            .sign_client(&key, "c", Duration::from_secs(3600))
            .unwrap();
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[2], pki.root_pem());
        assert!(pki.server_config().is_ok());
    }
}
