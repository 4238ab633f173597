//! The few MySQL client/server protocol packets a Cloud SQL for MySQL instance double reads or
//! writes before it relays a connection: packet framing, the client's `HandshakeResponse41`
//! (for its user name) and the server's `ERR_Packet`.
//!
//! Pure functions over bytes.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest handshake packet accepted.
pub const MAX_HANDSHAKE_PACKET: usize = 16 * 1024;

const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
const CLIENT_SSL: u32 = 0x0000_0800;

/// One packet: sequence id and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub sequence: u8,
    pub payload: Vec<u8>,
}

impl Packet {
    /// The packet as it goes on the wire: 3-byte little-endian length, sequence id, payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = u32::try_from(self.payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes();
        let mut bytes = vec![len[0], len[1], len[2], self.sequence];
        bytes.extend_from_slice(&self.payload);
        bytes
    }
}

/// Reads one packet of at most [`MAX_HANDSHAKE_PACKET`] bytes.
pub async fn read_packet(stream: &mut (impl AsyncRead + Unpin)) -> Result<Packet, String> {
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| format!("reading a MySQL packet: {e}"))?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    if len > MAX_HANDSHAKE_PACKET {
        return Err(format!(
            "a MySQL handshake packet of {len} bytes is too long"
        ));
    }
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| format!("reading a MySQL packet: {e}"))?;
    Ok(Packet {
        sequence: header[3],
        payload,
    })
}

/// What the client's handshake response says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// `SSLRequest`: the client wants TLS inside the connection.
    SslRequest,
    /// `HandshakeResponse41` with its user name.
    Response { user: String },
}

/// Reads a `HandshakeResponse41` (or an `SSLRequest`): capability flags, max packet size,
/// character set, 23 reserved bytes, then the NUL-terminated user name.
pub fn parse_handshake_response(payload: &[u8]) -> Result<Handshake, String> {
    let flags = payload
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "the handshake response is shorter than its capability flags".to_owned())?;
    if flags & CLIENT_PROTOCOL_41 == 0 {
        return Err("the client does not speak protocol 4.1 (CLIENT_PROTOCOL_41)".to_owned());
    }
    if payload.len() == 32 && flags & CLIENT_SSL != 0 {
        return Ok(Handshake::SslRequest);
    }
    let rest = payload
        .get(32..)
        .ok_or_else(|| "the handshake response is too short".to_owned())?;
    let end = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| "the handshake response's user name is not terminated".to_owned())?;
    let user = String::from_utf8(rest[..end].to_vec())
        .map_err(|_| "the handshake response's user name is not UTF-8".to_owned())?;
    Ok(Handshake::Response { user })
}

/// Clears `CLIENT_SSL` in a server greeting (`HandshakeV10`), so that clients do not ask for
/// TLS inside a connection the proxy's TLS already protects.
pub fn without_ssl(greeting: &mut [u8]) -> Result<(), String> {
    if greeting.first() != Some(&10) {
        return Err("the server greeting is not protocol 10".to_owned());
    }
    let version_end = greeting[1..]
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| "the server greeting's version is not terminated".to_owned())?;
    // Version and its NUL, thread id (4), auth data part 1 (8), filler (1).
    let at = 1 + version_end + 1 + 4 + 8 + 1;
    let flags = greeting
        .get_mut(at..at + 2)
        .ok_or_else(|| "the server greeting is too short".to_owned())?;
    let lower = u16::from_le_bytes([flags[0], flags[1]]) & !(CLIENT_SSL as u16);
    flags.copy_from_slice(&lower.to_le_bytes());
    Ok(())
}

/// `ERR_Packet` with `code`, SQL state `state` and `message`, as packet `sequence`.
pub fn error_packet(sequence: u8, code: u16, state: &str, message: &str) -> Vec<u8> {
    let mut payload = vec![0xff];
    payload.extend_from_slice(&code.to_le_bytes());
    payload.push(b'#');
    payload.extend_from_slice(state.as_bytes());
    payload.extend_from_slice(message.as_bytes());
    Packet { sequence, payload }.to_bytes()
}

/// `ER_ACCESS_DENIED_ERROR`.
pub const ACCESS_DENIED: u16 = 1045;

#[cfg(test)]
mod tests {
    use super::*;

    fn response(flags: u32, user: &[u8]) -> Vec<u8> {
        let mut payload = flags.to_le_bytes().to_vec();
        payload.extend_from_slice(&16_777_216u32.to_le_bytes());
        payload.push(45);
        payload.extend_from_slice(&[0; 23]);
        payload.extend_from_slice(user);
        payload
    }

    #[test]
    fn the_user_name_is_read_from_a_4_1_response() {
        let mut payload = response(CLIENT_PROTOCOL_41 | 0x000a_8000, b"orders-api\0");
        payload.extend_from_slice(&[0, b'x']);
        assert_eq!(
            parse_handshake_response(&payload),
            Ok(Handshake::Response {
                user: "orders-api".to_owned()
            })
        );
        assert_eq!(
            parse_handshake_response(&response(CLIENT_PROTOCOL_41 | CLIENT_SSL, b"")),
            Ok(Handshake::SslRequest)
        );
    }

    #[test]
    fn other_responses_are_refused() {
        for bad in [
            vec![],
            vec![0, 2],
            response(0, b"old\0"),
            response(CLIENT_PROTOCOL_41, b"unterminated"),
            response(CLIENT_PROTOCOL_41, b"\xff\xfe\0"),
        ] {
            assert!(parse_handshake_response(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn greetings_lose_their_ssl_flag() {
        let mut greeting = vec![10];
        greeting.extend_from_slice(b"10.11.19-MariaDB\0");
        greeting.extend_from_slice(&[1, 0, 0, 0]);
        greeting.extend_from_slice(&[b'a'; 8]);
        greeting.push(0);
        let at = greeting.len();
        greeting.extend_from_slice(&0xfffeu16.to_le_bytes());
        greeting.extend_from_slice(&[8, 2, 0]);
        without_ssl(&mut greeting).unwrap();
        assert_eq!(
            u16::from_le_bytes([greeting[at], greeting[at + 1]]),
            0xfffe & !0x0800
        );
        assert!(without_ssl(&mut [9, 0]).is_err());
        assert!(without_ssl(&mut greeting[..at]).is_err());
    }

    #[tokio::test]
    async fn packets_round_trip() {
        let packet = Packet {
            sequence: 2,
            payload: vec![7; 300],
        };
        let bytes = packet.to_bytes();
        assert_eq!(&bytes[..4], &[44, 1, 0, 2]);
        let read = read_packet(&mut bytes.as_slice()).await.unwrap();
        assert_eq!(read, packet);
        let error = error_packet(2, ACCESS_DENIED, "28000", "no");
        let read = read_packet(&mut error.as_slice()).await.unwrap();
        assert_eq!(read.payload[0], 0xff);
        assert_eq!(&read.payload[3..9], b"#28000");
    }
}
