//! The webhook certificate Secret reader (`certs::Stored::from_data`) and `certs::decide` on
//! arbitrary Secret contents built from real material: keys missing, swapped between two CAs,
//! altered bytes, garbage, extra PEM blocks, odd annotations. Checks: a CA is accepted only
//! when its key can sign a serving certificate, a serving pair only when it makes a TLS
//! configuration, and `Keep` only for a serving certificate that a client trusting the CA
//! (as the API server trusts the `caBundle`) accepts for the names at that moment.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use fedcred::webhook::certs::{self, Decision, Stored};
use fedcred::webhook::tls::{self, Issued};
use k8s_openapi::ByteString;
use libfuzzer_sys::fuzz_target;

struct Material {
    ca: [Issued; 2],
    serving: [Issued; 2],
}

static MATERIAL: LazyLock<Material> = LazyLock::new(|| {
    let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
    let names = ["fedcred-webhook.fedcred-system.svc".to_owned()];
    let ca = [tls::new_ca(now).unwrap(), tls::new_ca(now).unwrap()];
    let serving = [
        tls::sign_serving(&ca[0].key_pem, &names, now).unwrap(),
        tls::sign_serving(&ca[1].key_pem, &names, now).unwrap(),
    ];
    Material { ca, serving }
});

#[derive(Arbitrary, Debug)]
enum Value {
    Missing,
    /// The CA (0, 1) or serving (2, 3) certificate or key of either set.
    Real {
        which: u8,
        key: bool,
    },
    Altered {
        which: u8,
        key: bool,
        at: u16,
        byte: u8,
    },
    Doubled {
        which: u8,
        key: bool,
        other: u8,
    },
    Bytes(Vec<u8>),
}

impl Value {
    fn bytes(&self) -> Option<Vec<u8>> {
        let m = &*MATERIAL;
        let pem = |which: u8, key: bool| {
            let issued = match which % 4 {
                0 => &m.ca[0],
                1 => &m.ca[1],
                2 => &m.serving[0],
                _ => &m.serving[1],
            };
            if key {
                issued.key_pem.clone()
            } else {
                issued.cert_pem.clone()
            }
        };
        Some(match self {
            Value::Missing => return None,
            Value::Real { which, key } => pem(*which, *key).into_bytes(),
            Value::Altered {
                which,
                key,
                at,
                byte,
            } => {
                let mut b = pem(*which, *key).into_bytes();
                let i = *at as usize % b.len();
                b[i] = *byte;
                b
            }
            Value::Doubled { which, key, other } => {
                format!("{}{}", pem(*which, *key), pem(*other, *key)).into_bytes()
            }
            Value::Bytes(b) => b.clone(),
        })
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    ca_crt: Value,
    ca_key: Value,
    tls_crt: Value,
    tls_key: Value,
    ca_not_after: Option<String>,
    not_after: Option<String>,
    names: Option<String>,
    now_offset_days: i16,
}

fuzz_target!(|input: Input| {
    let mut data = BTreeMap::new();
    for (key, value) in [
        (certs::CA_CRT, &input.ca_crt),
        (certs::CA_KEY, &input.ca_key),
        (certs::TLS_CRT, &input.tls_crt),
        (certs::TLS_KEY, &input.tls_key),
    ] {
        if let Some(bytes) = value.bytes() {
            data.insert(key.to_owned(), ByteString(bytes));
        }
    }
    let mut annotations = BTreeMap::new();
    let year = "2027-01-15T00:00:00Z".to_owned();
    for (key, value) in [
        (certs::CA_NOT_AFTER, &input.ca_not_after),
        (certs::NOT_AFTER, &input.not_after),
        (certs::NAMES, &input.names),
    ] {
        // `Some("")` stands for a well-formed value, so that the PEMs get exercised.
        let value = match value.as_deref() {
            Some("") if key == certs::NAMES => "fedcred-webhook.fedcred-system.svc".to_owned(),
            Some("") => year.clone(),
            Some(v) => v.to_owned(),
            None => continue,
        };
        annotations.insert(key.to_owned(), value);
    }

    let stored = Stored::from_data(&data, &annotations);
    let names = vec!["fedcred-webhook.fedcred-system.svc".to_owned()];
    let now =
        jiff::Timestamp::from_second(1_800_000_000 + i64::from(input.now_offset_days) * 86_400)
            .unwrap();
    if let Some(ca) = &stored.ca {
        tls::sign_serving(&ca.key_pem, &names, now)
            .unwrap_or_else(|e| panic!("an accepted CA cannot sign: {e}"));
    }
    if let Some((serving, served_names)) = &stored.serving {
        tls::server_config(&serving.cert_pem, &serving.key_pem)
            .unwrap_or_else(|e| panic!("an accepted serving pair makes no TLS config: {e}"));
        assert!(annotations.contains_key(certs::NAMES));
        let _ = served_names;
    }
    let decision = certs::decide(&stored, &names, now);
    if decision == Decision::Keep {
        let (Some(ca), Some((serving, _))) = (&stored.ca, &stored.serving) else {
            panic!("kept without a CA and a serving pair");
        };
        assert!(
            tls::trusted_for(&ca.cert_pem, &serving.cert_pem, &names, now),
            "kept a serving certificate the API server would refuse with this CA"
        );
    }
    if stored.ca.is_none() {
        assert_eq!(decision, Decision::RenewAll);
    }
});
