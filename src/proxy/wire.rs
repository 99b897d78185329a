//! The PostgreSQL wire protocol as far as the proxy reads it, on bytes alone (no IO): what a
//! client sends first (`SSLRequest`, `GSSENCRequest`, `CancelRequest`, `StartupMessage`), the
//! framing of the server's messages during start-up, `BackendKeyData` (the key a client cancels
//! with), and `ErrorResponse` (read from the server, written to clients).
//!
//! Every length is checked before it is used: a start-up packet is at most [`MAX_STARTUP_LEN`]
//! bytes (PostgreSQL's own limit), a server message during start-up at most
//! [`MAX_STARTUP_MESSAGE_LEN`], a cancel key 4 to 256 bytes (protocol 3.2's bound). After
//! start-up the proxy relays bytes without framing them.

/// The request code of `SSLRequest`.
pub const SSL_REQUEST: u32 = 80_877_103;
/// The request code of `GSSENCRequest`.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// The request code of `CancelRequest`.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// The longest start-up packet PostgreSQL accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// The longest server message the proxy frames during start-up (parameter statuses, notices,
/// errors and authentication requests are far smaller).
pub const MAX_STARTUP_MESSAGE_LEN: usize = 1 << 20;
/// The shortest and longest cancel key (protocol 3.0 uses 4 bytes; 3.2 allows up to 256).
const CANCEL_KEY_LEN: std::ops::RangeInclusive<usize> = 4..=256;

/// Why bytes are not the message they should be.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// A length field outside what the message can be.
    #[error("a {what} of {len} bytes is outside {min} to {max}")]
    Length {
        what: &'static str,
        len: i64,
        min: usize,
        max: usize,
    },
    /// A start-up packet whose code is no request or protocol version the proxy knows.
    #[error(
        "the start-up packet asks for protocol {major}.{minor}, which the proxy does not speak"
    )]
    UnsupportedProtocol { major: u16, minor: u16 },
    /// A start-up message whose parameters are not NUL-terminated pairs.
    #[error("the start-up message's parameters are malformed: {0}")]
    MalformedStartup(&'static str),
    /// A message body shorter than its fields.
    #[error("a `{0}` message is truncated")]
    Truncated(&'static str),
}

/// A cancel key: the backend's process id and its secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub process_id: i32,
    pub secret: Vec<u8>,
}

impl CancelKey {
    /// The `CancelRequest` packet that sends this key.
    pub fn cancel_request(&self) -> Vec<u8> {
        let len = 12 + self.secret.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as i32).to_be_bytes());
        out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
        out.extend_from_slice(&self.process_id.to_be_bytes());
        out.extend_from_slice(&self.secret);
        out
    }

    /// The `BackendKeyData` message that hands this key to a client.
    pub fn backend_key_data(&self) -> Vec<u8> {
        let len = 8 + self.secret.len();
        let mut out = Vec::with_capacity(1 + len);
        out.push(b'K');
        out.extend_from_slice(&(len as i32).to_be_bytes());
        out.extend_from_slice(&self.process_id.to_be_bytes());
        out.extend_from_slice(&self.secret);
        out
    }

    /// The key in a `BackendKeyData` body (after the tag and length).
    pub fn from_backend_key_data(body: &[u8]) -> Result<CancelKey, WireError> {
        if body.len() < 4 {
            return Err(WireError::Truncated("BackendKeyData"));
        }
        let secret = &body[4..];
        check_key_len(secret.len())?;
        Ok(CancelKey {
            process_id: i32::from_be_bytes(body[..4].try_into().expect("4 bytes")),
            secret: secret.to_vec(),
        })
    }
}

fn check_key_len(len: usize) -> Result<(), WireError> {
    if CANCEL_KEY_LEN.contains(&len) {
        Ok(())
    } else {
        Err(WireError::Length {
            what: "cancel key",
            len: len as i64,
            min: *CANCEL_KEY_LEN.start(),
            max: *CANCEL_KEY_LEN.end(),
        })
    }
}

/// Start-up parameters: (name, value) pairs of raw bytes, in the client's order.
pub type Params = Vec<(Vec<u8>, Vec<u8>)>;

/// A `StartupMessage`: the protocol version and the parameters, as raw bytes (values need not be
/// UTF-8: they reach the server unchanged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupMessage {
    /// Major version in the high 16 bits, minor in the low (3.0 is 196608).
    pub version: u32,
    pub params: Params,
}

impl StartupMessage {
    /// The last value of `key` (PostgreSQL takes the last one), as text.
    pub fn get(&self, key: &str) -> Option<String> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Sets `key` to `value`, replacing every earlier value (it goes where the first one was).
    pub fn set(&mut self, key: &str, value: &str) {
        let position = self.params.iter().position(|(k, _)| k == key.as_bytes());
        self.params.retain(|(k, _)| k != key.as_bytes());
        let pair = (key.as_bytes().to_vec(), value.as_bytes().to_vec());
        match position {
            Some(at) => self.params.insert(at.min(self.params.len()), pair),
            None => self.params.push(pair),
        }
    }

    /// The packet: length, version, `key\0value\0`…, `\0`.
    pub fn encode(&self) -> Vec<u8> {
        let body: usize = self.params.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let len = 4 + 4 + body + 1;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as i32).to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        for (k, v) in &self.params {
            out.extend_from_slice(k);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out.push(0);
        out
    }
}

/// What a client sends before anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstMessage {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup(StartupMessage),
}

/// The body length of a start-up packet from its 4-byte length field (which counts itself).
pub fn startup_body_len(header: [u8; 4]) -> Result<usize, WireError> {
    // Unsigned, as said: a length field of all ones is 4294967295 bytes, not -1.
    let len = u32::from_be_bytes(header) as i64;
    if !(8..=MAX_STARTUP_LEN as i64).contains(&len) {
        return Err(WireError::Length {
            what: "start-up packet",
            len,
            min: 8,
            max: MAX_STARTUP_LEN,
        });
    }
    Ok(len as usize - 4)
}

/// A start-up packet's body (after its length field).
pub fn parse_first(body: &[u8]) -> Result<FirstMessage, WireError> {
    if body.len() < 4 {
        return Err(WireError::Truncated("start-up packet"));
    }
    let code = u32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
    let rest = &body[4..];
    match code {
        SSL_REQUEST | GSSENC_REQUEST if !rest.is_empty() => Err(WireError::MalformedStartup(
            "an encryption request carries no data",
        )),
        SSL_REQUEST => Ok(FirstMessage::SslRequest),
        GSSENC_REQUEST => Ok(FirstMessage::GssEncRequest),
        CANCEL_REQUEST => {
            if rest.len() < 4 {
                return Err(WireError::Truncated("CancelRequest"));
            }
            check_key_len(rest.len() - 4)?;
            Ok(FirstMessage::Cancel(CancelKey {
                process_id: i32::from_be_bytes(rest[..4].try_into().expect("4 bytes")),
                secret: rest[4..].to_vec(),
            }))
        }
        version if version >> 16 == 3 => Ok(FirstMessage::Startup(StartupMessage {
            version,
            params: parse_params(rest)?,
        })),
        version => Err(WireError::UnsupportedProtocol {
            major: (version >> 16) as u16,
            minor: (version & 0xffff) as u16,
        }),
    }
}

/// `key\0value\0…\0`: pairs up to the final empty key.
fn parse_params(mut rest: &[u8]) -> Result<Params, WireError> {
    let mut params = Vec::new();
    loop {
        let (key, after) = cstring(rest).ok_or(WireError::MalformedStartup(
            "a parameter name has no terminator",
        ))?;
        if key.is_empty() {
            if !after.is_empty() {
                return Err(WireError::MalformedStartup(
                    "bytes follow the final terminator",
                ));
            }
            return Ok(params);
        }
        let (value, after) = cstring(after).ok_or(WireError::MalformedStartup(
            "a parameter value has no terminator",
        ))?;
        params.push((key.to_vec(), value.to_vec()));
        rest = after;
    }
}

/// The bytes up to the first NUL, and what follows it.
fn cstring(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|b| *b == 0)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

/// The length of the first whole server message in `buf` (tag, length field and body), `None`
/// while it is incomplete.
pub fn message_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[1..5].try_into().expect("4 bytes")) as i64;
    if !(4..=MAX_STARTUP_MESSAGE_LEN as i64).contains(&len) {
        return Err(WireError::Length {
            what: "server message",
            len,
            min: 4,
            max: MAX_STARTUP_MESSAGE_LEN,
        });
    }
    let total = 1 + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// The fields of an `ErrorResponse` or `NoticeResponse` body: (code, value) in order.
pub fn parse_error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some((value, after)) = cstring(after) else {
            break;
        };
        fields.push((code, String::from_utf8_lossy(value).into_owned()));
        rest = after;
    }
    fields
}

/// A server error as one line: `message (SQLSTATE code)`.
pub fn describe_error(body: &[u8]) -> String {
    let fields = parse_error_fields(body);
    let field = |code: u8| {
        fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    };
    match (field(b'M'), field(b'C')) {
        (Some(message), Some(code)) => format!("{message} (SQLSTATE {code})"),
        (Some(message), None) => message.to_owned(),
        _ => "an error without a message".to_owned(),
    }
}

/// Where a stream of the server's messages stands in their framing (a type byte, a length that
/// counts itself, the body), fed the bytes as they reach the client: a message of the proxy's
/// own may go to the client only between two of the server's, never inside one it has part of.
#[derive(Debug, Default)]
pub struct Framing {
    header: [u8; 5],
    /// Bytes of the current message's header seen (0 to 4).
    seen: usize,
    /// Bytes of the current message's body still to come.
    body_left: usize,
}

impl Framing {
    /// Follows `bytes`, the next the client got.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (self.header.len() - self.seen).min(bytes.len());
            self.header[self.seen..self.seen + n].copy_from_slice(&bytes[..n]);
            self.seen += n;
            bytes = &bytes[n..];
            if self.seen == self.header.len() {
                let length = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                // A length under 4 is no message PostgreSQL sends; counted as an empty body.
                self.body_left = (length as usize).saturating_sub(4);
                self.seen = 0;
            }
        }
    }

    /// Whether the client has every message it was sent part of.
    pub fn between_messages(&self) -> bool {
        self.seen == 0 && self.body_left == 0
    }
}

/// A `FATAL` `ErrorResponse` with a SQLSTATE, a message and a hint. NUL bytes in the texts
/// (which would end a field early) are dropped.
pub fn fatal_error(code: &str, message: &str, hint: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut field = |tag: u8, text: &str| {
        body.push(tag);
        body.extend(text.bytes().filter(|b| *b != 0));
        body.push(0);
    };
    field(b'S', "FATAL");
    field(b'V', "FATAL");
    field(b'C', code);
    field(b'M', message);
    if let Some(hint) = hint {
        field(b'H', hint);
    }
    body.push(0);
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(b'E');
    out.extend_from_slice(&((4 + body.len()) as i32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// `AuthenticationOk`.
pub const AUTHENTICATION_OK: [u8; 9] = [b'R', 0, 0, 0, 8, 0, 0, 0, 0];

/// What an `Authentication…` message (tag `R`) asks of the client.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// Kerberos, GSSAPI, SSPI: methods the proxy does not speak, by their code.
    Other(i32),
}

/// The request in an `Authentication…` body (after the tag and length).
pub fn parse_auth(body: &[u8]) -> Result<AuthRequest<'_>, WireError> {
    if body.len() < 4 {
        return Err(WireError::Truncated("Authentication"));
    }
    let code = i32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
    let rest = &body[4..];
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => AuthRequest::Md5 {
            salt: rest
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or(WireError::Truncated("AuthenticationMD5Password"))?,
        },
        10 => {
            let mut mechanisms = Vec::new();
            let mut rest = rest;
            loop {
                let (name, after) =
                    cstring(rest).ok_or(WireError::Truncated("AuthenticationSASL"))?;
                if name.is_empty() {
                    break;
                }
                mechanisms.push(String::from_utf8_lossy(name).into_owned());
                rest = after;
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(rest),
        12 => AuthRequest::SaslFinal(rest),
        other => AuthRequest::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_field_of_all_ones_is_said_as_the_number_it_is() {
        let error = startup_body_len([0xff; 4]).unwrap_err().to_string();
        assert_eq!(
            error,
            format!("a start-up packet of 4294967295 bytes is outside 8 to {MAX_STARTUP_LEN}")
        );
    }

    fn packet(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        body
    }

    #[test]
    fn encryption_requests_are_recognised_by_their_codes() {
        // Golden bytes: what libpq sends (length 8, then the code).
        let ssl = [0x04, 0xd2, 0x16, 0x2f];
        let gss = [0x04, 0xd2, 0x16, 0x30];
        assert_eq!(parse_first(&ssl), Ok(FirstMessage::SslRequest));
        assert_eq!(parse_first(&gss), Ok(FirstMessage::GssEncRequest));
        assert_eq!(startup_body_len([0, 0, 0, 8]), Ok(4));
        assert!(parse_first(&[0x04, 0xd2, 0x16, 0x2f, 0]).is_err());
    }

    #[test]
    fn a_startup_message_round_trips_with_raw_values() {
        let bytes = b"\x00\x00\x00\x31\x00\x03\x00\x00user\x00alice\x00database\x00shop\x00options\x00-c x=\xff\x00\x00";
        let body_len = startup_body_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(body_len, bytes.len() - 4);
        let FirstMessage::Startup(startup) = parse_first(&bytes[4..]).unwrap() else {
            panic!("not a startup message");
        };
        assert_eq!(startup.version, 196_608);
        assert_eq!(startup.get("user").as_deref(), Some("alice"));
        assert_eq!(startup.get("database").as_deref(), Some("shop"));
        assert_eq!(startup.params[2].1, b"-c x=\xff");
        assert_eq!(startup.encode(), bytes.to_vec());
    }

    #[test]
    fn set_replaces_every_earlier_value_in_place() {
        let mut startup = StartupMessage {
            version: 196_608,
            params: vec![
                (b"user".to_vec(), b"a".to_vec()),
                (b"application_name".to_vec(), b"psql".to_vec()),
                (b"user".to_vec(), b"b".to_vec()),
            ],
        };
        startup.set("user", "app");
        startup.set("database", "envctl-x");
        assert_eq!(
            startup.params,
            vec![
                (b"user".to_vec(), b"app".to_vec()),
                (b"application_name".to_vec(), b"psql".to_vec()),
                (b"database".to_vec(), b"envctl-x".to_vec()),
            ]
        );
    }

    #[test]
    fn malformed_startup_messages_are_errors_not_panics() {
        for rest in [&b"user\x00alice"[..], b"user", b"user\x00a\x00\x00x", b""] {
            assert!(
                matches!(
                    parse_first(&packet(196_608, rest)),
                    Err(WireError::MalformedStartup(_))
                ),
                "{rest:?}"
            );
        }
        assert_eq!(
            parse_first(&packet(2 << 16, b"\x00")),
            Err(WireError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        assert!(parse_first(&[0, 3]).is_err());
        for len in [0, 7, -1, 10_001, i32::MAX] {
            assert!(startup_body_len(len.to_be_bytes()).is_err(), "{len}");
        }
    }

    #[test]
    fn cancel_requests_carry_keys_of_four_to_256_bytes() {
        let key = CancelKey {
            process_id: 4242,
            secret: vec![1, 2, 3, 4],
        };
        let bytes = key.cancel_request();
        // Golden: length 16, code 80877102, pid, key.
        assert_eq!(
            bytes,
            [
                0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x10, 0x92, 1, 2, 3, 4
            ]
        );
        assert_eq!(
            parse_first(&bytes[4..]),
            Ok(FirstMessage::Cancel(key.clone()))
        );
        let long = CancelKey {
            process_id: 1,
            secret: vec![7; 32],
        };
        assert_eq!(
            parse_first(&long.cancel_request()[4..]),
            Ok(FirstMessage::Cancel(long))
        );
        let mut short = packet(CANCEL_REQUEST, &4242i32.to_be_bytes());
        short.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(parse_first(&short), Err(WireError::Length { .. })));
    }

    #[test]
    fn backend_key_data_round_trips() {
        let key = CancelKey {
            process_id: -5,
            secret: vec![9, 8, 7, 6],
        };
        let message = key.backend_key_data();
        assert_eq!(message[0], b'K');
        assert_eq!(message_len(&message), Ok(Some(13)));
        assert_eq!(CancelKey::from_backend_key_data(&message[5..]), Ok(key));
        assert!(CancelKey::from_backend_key_data(&[0, 0, 0, 1, 2]).is_err());
    }

    #[test]
    fn server_messages_are_framed_only_when_whole_and_bounded() {
        assert_eq!(message_len(b"Z\x00\x00"), Ok(None));
        assert_eq!(message_len(b"Z\x00\x00\x00\x05"), Ok(None));
        assert_eq!(message_len(b"Z\x00\x00\x00\x05I"), Ok(Some(6)));
        assert!(message_len(b"Z\x00\x00\x00\x03").is_err());
        assert!(message_len(b"D\x7f\xff\xff\xff").is_err());
    }

    #[test]
    fn authentication_requests_are_read_by_their_codes() {
        assert_eq!(parse_auth(&[0, 0, 0, 0]), Ok(AuthRequest::Ok));
        assert_eq!(parse_auth(&[0, 0, 0, 3]), Ok(AuthRequest::Cleartext));
        assert_eq!(
            parse_auth(&[0, 0, 0, 5, 1, 2, 3, 4]),
            Ok(AuthRequest::Md5 { salt: [1, 2, 3, 4] })
        );
        assert_eq!(
            parse_auth(b"\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"),
            Ok(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            })
        );
        assert_eq!(
            parse_auth(b"\x00\x00\x00\x0br=abc"),
            Ok(AuthRequest::SaslContinue(b"r=abc"))
        );
        assert_eq!(parse_auth(&[0, 0, 0, 7]), Ok(AuthRequest::Other(7)));
        assert!(parse_auth(&[0, 0, 0, 5, 1]).is_err());
        assert!(parse_auth(b"\x00\x00\x00\x0aSCRAM").is_err());
        assert!(parse_auth(&[0, 0]).is_err());
    }

    #[test]
    fn errors_written_for_clients_read_back_field_by_field() {
        let message = fatal_error("08001", "cannot reach `db`\0!", Some("try again"));
        assert_eq!(message_len(&message), Ok(Some(message.len())));
        let fields = parse_error_fields(&message[5..]);
        assert_eq!(
            fields,
            vec![
                (b'S', "FATAL".to_owned()),
                (b'V', "FATAL".to_owned()),
                (b'C', "08001".to_owned()),
                (b'M', "cannot reach `db`!".to_owned()),
                (b'H', "try again".to_owned()),
            ]
        );
        assert_eq!(
            describe_error(&message[5..]),
            "cannot reach `db`! (SQLSTATE 08001)"
        );
    }

    #[test]
    fn framing_follows_messages_split_anywhere() {
        // ReadyForQuery, a DataRow of 6 body bytes, CommandComplete.
        let stream: &[u8] =
            b"Z\x00\x00\x00\x05ID\x00\x00\x00\x0a\x00\x01abcdC\x00\x00\x00\x0dSELECT 1\x00";
        let ends = [6, 17, stream.len()];
        for cut in 0..=stream.len() {
            let mut framing = Framing::default();
            framing.feed(&stream[..cut]);
            assert_eq!(
                framing.between_messages(),
                cut == 0 || ends.contains(&cut),
                "{cut}"
            );
            // Fed in two pieces or byte by byte, the same.
            framing.feed(&stream[cut..]);
            assert!(framing.between_messages(), "{cut}");
            let mut bytewise = Framing::default();
            for byte in &stream[..cut] {
                bytewise.feed(std::slice::from_ref(byte));
            }
            assert_eq!(
                bytewise.between_messages(),
                cut == 0 || ends.contains(&cut),
                "{cut}"
            );
        }
    }
}
