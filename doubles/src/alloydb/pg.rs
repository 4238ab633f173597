//! The few PostgreSQL wire-protocol messages the instance double reads or writes before it
//! relays a connection: the client's first packets (SSL/GSS encryption requests, cancel
//! requests, the startup message with its `user`) and the server's `ErrorResponse`.
//!
//! Pure functions over bytes.

/// Longest startup packet accepted, as PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET: usize = 10_000;

const PROTOCOL_3: u32 = 196_608;
const CANCEL_REQUEST: u32 = 80_877_102;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// A client's first packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    /// SSLRequest: the connection is already encrypted by the TLS the proxy opened; answered `N`.
    Ssl,
    /// GSSENCRequest: answered `N`.
    GssEnc,
    /// CancelRequest, relayed as it is.
    Cancel,
    /// StartupMessage of protocol 3.x with its parameters.
    Startup {
        user: Option<String>,
        database: Option<String>,
    },
}

/// Reads a whole startup-phase packet (length prefix included).
pub fn parse_startup(packet: &[u8]) -> Result<Startup, String> {
    if packet.len() < 8 {
        return Err("startup packet shorter than 8 bytes".to_owned());
    }
    let len = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]) as usize;
    if len != packet.len() {
        return Err("startup packet length does not match".to_owned());
    }
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST if len == 8 => return Ok(Startup::Ssl),
        GSSENC_REQUEST if len == 8 => return Ok(Startup::GssEnc),
        CANCEL_REQUEST if len == 16 => return Ok(Startup::Cancel),
        _ => {}
    }
    if code >> 16 != PROTOCOL_3 >> 16 {
        return Err(format!(
            "unsupported frontend protocol {}.{}",
            code >> 16,
            code & 0xffff
        ));
    }
    // name\0value\0 pairs, then one more \0.
    let unterminated = || "startup parameters are not terminated".to_owned();
    let params = packet[8..].strip_suffix(&[0]).ok_or_else(unterminated)?;
    let mut user = None;
    let mut database = None;
    if params.is_empty() {
        return Ok(Startup::Startup { user, database });
    }
    let params = params.strip_suffix(&[0]).ok_or_else(unterminated)?;
    let mut parts = params.split(|b| *b == 0);
    while let Some(name) = parts.next() {
        let value = parts
            .next()
            .ok_or_else(|| "startup parameter without a value".to_owned())?;
        let value = String::from_utf8(value.to_vec())
            .map_err(|_| "startup parameter is not UTF-8".to_owned())?;
        match name {
            b"user" => user = Some(value),
            b"database" => database = Some(value),
            _ => {}
        }
    }
    Ok(Startup::Startup { user, database })
}

/// The length a startup packet announces in its first 4 bytes, when acceptable.
pub fn startup_length(header: [u8; 4]) -> Result<usize, String> {
    let len = u32::from_be_bytes(header) as usize;
    if (8..=MAX_STARTUP_PACKET).contains(&len) {
        Ok(len)
    } else {
        Err(format!("invalid startup packet length {len}"))
    }
}

/// A FATAL `ErrorResponse` with SQLSTATE `code`.
pub fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

/// SQLSTATE `invalid_authorization_specification`.
pub const INVALID_AUTHORIZATION: &str = "28000";

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        packet
    }

    #[test]
    fn the_startup_message_names_user_and_database() {
        let packet = startup(&[
            ("user", "app@proj.iam"),
            ("database", "postgres"),
            ("application_name", "psql"),
        ]);
        assert_eq!(
            parse_startup(&packet),
            Ok(Startup::Startup {
                user: Some("app@proj.iam".into()),
                database: Some("postgres".into())
            })
        );
        assert_eq!(
            parse_startup(&startup(&[])),
            Ok(Startup::Startup {
                user: None,
                database: None
            })
        );
    }

    #[test]
    fn encryption_and_cancel_requests_are_recognised() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(parse_startup(&ssl), Ok(Startup::Ssl));
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(parse_startup(&gss), Ok(Startup::GssEnc));
        let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
        cancel.extend_from_slice(&[0; 8]);
        assert_eq!(parse_startup(&cancel), Ok(Startup::Cancel));
    }

    #[test]
    fn malformed_packets_are_refused() {
        let mut unterminated = startup(&[("user", "u")]);
        unterminated.pop();
        unterminated[3] -= 1;
        // A name without a value: "user\0" and no terminator after a value.
        let mut dangling = vec![0, 0, 0, 13];
        dangling.extend_from_slice(&PROTOCOL_3.to_be_bytes());
        dangling.extend_from_slice(b"user\0");
        let mut v2 = startup(&[]);
        v2[5] = 2;
        for bad in [&[0u8, 0, 0, 4][..], &unterminated, &dangling, &v2] {
            assert!(parse_startup(bad).is_err(), "{bad:?}");
        }
        assert!(startup_length([0, 0, 0, 7]).is_err());
        assert!(startup_length([0, 1, 0, 0]).is_err());
        assert_eq!(startup_length([0, 0, 0, 8]), Ok(8));
    }

    #[test]
    fn error_responses_are_framed() {
        let e = error_response(INVALID_AUTHORIZATION, "no");
        assert_eq!(e[0], b'E');
        assert_eq!(
            u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize,
            e.len() - 1
        );
        assert!(e.ends_with(b"Mno\0\0"));
    }
}
