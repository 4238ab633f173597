//! The metadata exchange that opens every connection to an instance, after the TLS handshake
//! and before the PostgreSQL protocol: a 4-byte big-endian length and a protobuf
//! `google.cloud.alloydb.connectors.v1.MetadataExchangeRequest`, answered the same way with a
//! `MetadataExchangeResponse`.
//!
//! Only the few fields of these two messages are encoded and decoded here, by hand. Pure
//! functions over bytes.

use std::fmt;

/// Largest message either side accepts; the connectors use a 16 KiB buffer.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// `MetadataExchangeRequest.AuthType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthType {
    Unspecified,
    /// The database checks the password it receives.
    DbNative,
    /// The server logs the token's principal in as its IAM database user.
    AutoIam,
    Unknown(u64),
}

impl AuthType {
    fn from_wire(value: u64) -> Self {
        match value {
            0 => AuthType::Unspecified,
            1 => AuthType::DbNative,
            2 => AuthType::AutoIam,
            other => AuthType::Unknown(other),
        }
    }

    fn to_wire(self) -> u64 {
        match self {
            AuthType::Unspecified => 0,
            AuthType::DbNative => 1,
            AuthType::AutoIam => 2,
            AuthType::Unknown(other) => other,
        }
    }
}

/// `MetadataExchangeRequest{user_agent = 1, auth_type = 2, oauth2_token = 3}`. `Debug` leaves
/// the token out.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    pub user_agent: String,
    pub auth_type: AuthType,
    pub oauth2_token: String,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("user_agent", &self.user_agent)
            .field("auth_type", &self.auth_type)
            .field("oauth2_token_len", &self.oauth2_token.len())
            .finish()
    }
}

/// `MetadataExchangeResponse.ResponseCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseCode {
    Unspecified,
    Ok,
    Error,
}

/// `MetadataExchangeResponse{response_code = 1, error = 2}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub response_code: ResponseCode,
    pub error: String,
}

impl Response {
    pub fn ok() -> Self {
        Response {
            response_code: ResponseCode::Ok,
            error: String::new(),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Response {
            response_code: ResponseCode::Error,
            error: message.into(),
        }
    }
}

/// Why bytes are not a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed metadata exchange message: {}", self.0)
    }
}

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(DecodeError("truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError("varint longer than 10 bytes"))
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A field's value as it sits on the wire.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Visits every field of a message, skipping unknown ones as protobuf requires.
fn fields<'a>(
    bytes: &'a [u8],
    mut visit: impl FnMut(u64, Value<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let (number, wire_type) = (key >> 3, key & 7);
        if number == 0 {
            return Err(DecodeError("field number 0"));
        }
        let value = match wire_type {
            VARINT => Value::Varint(read_varint(bytes, &mut at)?),
            LEN => {
                let len = usize::try_from(read_varint(bytes, &mut at)?)
                    .map_err(|_| DecodeError("length out of range"))?;
                let end = at
                    .checked_add(len)
                    .filter(|end| *end <= bytes.len())
                    .ok_or(DecodeError("length beyond the message"))?;
                let value = &bytes[at..end];
                at = end;
                Value::Bytes(value)
            }
            FIXED64 | FIXED32 => {
                let width = if wire_type == FIXED64 { 8 } else { 4 };
                at = at
                    .checked_add(width)
                    .filter(|end| *end <= bytes.len())
                    .ok_or(DecodeError("truncated fixed-width field"))?;
                Value::Other
            }
            _ => return Err(DecodeError("unsupported wire type")),
        };
        visit(number, value)?;
    }
    Ok(())
}

fn string(value: Value<'_>, what: &'static str) -> Result<String, DecodeError> {
    match value {
        Value::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| DecodeError(what)),
        _ => Err(DecodeError(what)),
    }
}

fn varint(value: Value<'_>, what: &'static str) -> Result<u64, DecodeError> {
    match value {
        Value::Varint(v) => Ok(v),
        _ => Err(DecodeError(what)),
    }
}

fn put_string(out: &mut Vec<u8>, number: u64, value: &str) {
    if !value.is_empty() {
        write_varint(out, (number << 3) | LEN);
        write_varint(out, value.len() as u64);
        out.extend_from_slice(value.as_bytes());
    }
}

fn put_varint(out: &mut Vec<u8>, number: u64, value: u64) {
    if value != 0 {
        write_varint(out, (number << 3) | VARINT);
        write_varint(out, value);
    }
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, DecodeError> {
    let mut request = Request {
        user_agent: String::new(),
        auth_type: AuthType::Unspecified,
        oauth2_token: String::new(),
    };
    fields(bytes, |number, value| {
        match number {
            1 => request.user_agent = string(value, "user_agent is not a UTF-8 string")?,
            2 => {
                request.auth_type = AuthType::from_wire(varint(value, "auth_type is not an enum")?)
            }
            3 => request.oauth2_token = string(value, "oauth2_token is not a UTF-8 string")?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(request)
}

pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, 1, &request.user_agent);
    put_varint(&mut out, 2, request.auth_type.to_wire());
    put_string(&mut out, 3, &request.oauth2_token);
    out
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    let mut response = Response {
        response_code: ResponseCode::Unspecified,
        error: String::new(),
    };
    fields(bytes, |number, value| {
        match number {
            1 => {
                response.response_code = match varint(value, "response_code is not an enum")? {
                    1 => ResponseCode::Ok,
                    2 => ResponseCode::Error,
                    _ => ResponseCode::Unspecified,
                }
            }
            2 => response.error = string(value, "error is not a UTF-8 string")?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(response)
}

pub fn encode_response(response: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    let code = match response.response_code {
        ResponseCode::Unspecified => 0,
        ResponseCode::Ok => 1,
        ResponseCode::Error => 2,
    };
    put_varint(&mut out, 1, code);
    put_string(&mut out, 2, &response.error);
    out
}

/// `message` behind its 4-byte big-endian length.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + message.len());
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_as_protobuf_encodes_it() {
        // protoc --encode of {user_agent: "ua", auth_type: AUTO_IAM, oauth2_token: "t"}.
        let wire = [0x0a, 0x02, b'u', b'a', 0x10, 0x02, 0x1a, 0x01, b't'];
        let request = decode_request(&wire).unwrap();
        assert_eq!(request.user_agent, "ua");
        assert_eq!(request.auth_type, AuthType::AutoIam);
        assert_eq!(request.oauth2_token, "t");
        assert_eq!(encode_request(&request), wire);
    }

    #[test]
    fn unknown_fields_are_skipped_and_defaults_stay() {
        // Field 9 as varint, field 10 as fixed32, field 11 as fixed64, then DB_NATIVE.
        let wire = [
            0x48, 0x96, 0x01, 0x55, 1, 2, 3, 4, 0x59, 1, 2, 3, 4, 5, 6, 7, 8, 0x10, 0x01,
        ];
        let request = decode_request(&wire).unwrap();
        assert_eq!(request.auth_type, AuthType::DbNative);
        assert_eq!(request.user_agent, "");
        assert_eq!(
            decode_request(&[]).unwrap().auth_type,
            AuthType::Unspecified
        );
    }

    #[test]
    fn malformed_requests_are_refused() {
        for bad in [
            &[0x0a][..],         // key without a length
            &[0x0a, 0x05, b'a'], // length beyond the message
            &[0x10, 0x80],       // truncated varint
            &[0x0a, 0x01, 0xff], // not UTF-8
            &[0x12, 0x00],       // auth_type as bytes
            &[0x0b],             // group wire type
            &[0x00, 0x01],       // field 0
            &[0x15, 0x00, 0x00], // truncated fixed32
            &[
                0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            assert!(decode_request(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn responses_round_trip_and_ok_is_one_field() {
        assert_eq!(encode_response(&Response::ok()), [0x08, 0x01]);
        let error = Response::error("no");
        assert_eq!(
            encode_response(&error),
            [0x08, 0x02, 0x12, 0x02, b'n', b'o']
        );
        assert_eq!(decode_response(&encode_response(&error)).unwrap(), error);
        assert_eq!(frame(&[0x08, 0x01]), [0, 0, 0, 2, 0x08, 0x01]);
    }

    #[test]
    fn debug_leaves_the_token_out() {
        let request = Request {
            user_agent: "ua".into(),
            auth_type: AuthType::AutoIam,
            oauth2_token: "ya29.secret".into(),
        };
        assert!(!format!("{request:?}").contains("secret"));
    }
}
