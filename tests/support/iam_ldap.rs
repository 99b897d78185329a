//! A directory server that checks IAM database auth tokens, as RDS does: PostgreSQL's `ldap`
//! authentication (simple bind) asks the client for its password in clear text (over TLS) and
//! binds with it here; this server accepts the bind only when the password is a token for that
//! user, signed with the test's AWS credentials, at most 15 minutes old. Every bind is recorded,
//! so a test sees each token the server received.
//!
//! A token is checked by signing the same request again (host, port, user, region, and the time
//! the token names) with `envctl::provider::aws::token`, whose output `tests/aws_token.rs` pins
//! to botocore's, and comparing the two strings.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;

/// One bind the server received.
#[derive(Clone, Debug)]
pub struct Bind {
    pub user: String,
    pub token: String,
    /// When the token says it was signed.
    pub signed_at: Option<SystemTime>,
    /// Whether it was accepted (a valid token for this user).
    pub accepted: bool,
    /// When the bind arrived.
    pub at: SystemTime,
}

/// The running server (a thread; it lives as long as the test process).
pub struct IamLdap {
    pub port: u16,
    binds: Arc<Mutex<Vec<Bind>>>,
}

impl IamLdap {
    /// Listens on a free loopback port, checking tokens against these credentials.
    pub fn start(credentials: Credentials, region: &str) -> IamLdap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let binds = Arc::new(Mutex::new(Vec::new()));
        let shared = binds.clone();
        let region = region.to_owned();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let binds = shared.clone();
                let credentials = credentials.clone();
                let region = region.clone();
                std::thread::spawn(move || serve(stream, &binds, &credentials, &region));
            }
        });
        IamLdap { port, binds }
    }

    /// Every bind so far.
    pub fn binds(&self) -> Vec<Bind> {
        self.binds.lock().unwrap().clone()
    }

    /// The `pg_hba.conf` line (without `host`/`hostssl`) that sends `user`'s logins here.
    pub fn hba_line(&self, user: &str) -> String {
        format!(
            "all {user} 127.0.0.1/32 ldap ldapserver=127.0.0.1 ldapport={} ldapprefix=\"\" ldapsuffix=\"\"",
            self.port
        )
    }
}

/// One BER element: tag, contents, and what follows it.
fn element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let count = (first & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        rest = &rest[count..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn encode(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if contents.len() < 0x80 {
        out.push(contents.len() as u8);
    } else {
        let bytes = (contents.len() as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
    out
}

/// Reads one whole LDAPMessage (a SEQUENCE) from the stream.
fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).ok()?;
    let mut message = head.to_vec();
    let len = if head[1] < 0x80 {
        head[1] as usize
    } else {
        let count = (head[1] & 0x7f) as usize;
        if count == 0 || count > 4 {
            return None;
        }
        let mut bytes = vec![0u8; count];
        stream.read_exact(&mut bytes).ok()?;
        message.extend_from_slice(&bytes);
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize)
    };
    if len > 1 << 20 {
        return None;
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    message.extend_from_slice(&body);
    Some(message)
}

fn serve(mut stream: TcpStream, binds: &Mutex<Vec<Bind>>, credentials: &Credentials, region: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    while let Some(message) = read_message(&mut stream) {
        let Some((0x30, sequence, _)) = element(&message) else {
            return;
        };
        let Some((0x02, id, rest)) = element(sequence) else {
            return;
        };
        match element(rest) {
            // BindRequest: version, name, simple password.
            Some((0x60, request, _)) => {
                let Some((0x02, _version, rest)) = element(request) else {
                    return;
                };
                let Some((0x04, name, rest)) = element(rest) else {
                    return;
                };
                let Some((0x80, password, _)) = element(rest) else {
                    return;
                };
                let user = String::from_utf8_lossy(name).into_owned();
                let token = String::from_utf8_lossy(password).into_owned();
                let signed_at = check(&token, &user, credentials, region);
                let accepted = signed_at.is_some_and(|at| {
                    SystemTime::now()
                        .duration_since(at)
                        .is_ok_and(|age| age <= Duration::from_secs(900))
                });
                binds.lock().unwrap().push(Bind {
                    user,
                    token,
                    signed_at,
                    accepted,
                    at: SystemTime::now(),
                });
                // BindResponse: success (0) or invalidCredentials (49).
                let code = if accepted { 0u8 } else { 49 };
                let mut response = encode(0x0a, &[code]);
                response.extend(encode(0x04, b""));
                response.extend(encode(0x04, b""));
                let mut reply = encode(0x02, id);
                reply.extend(encode(0x61, &response));
                if stream.write_all(&encode(0x30, &reply)).is_err() {
                    return;
                }
            }
            // UnbindRequest, or anything else: the exchange is over.
            _ => return,
        }
    }
}

/// When `token` was signed, if it is a token for `user` that these credentials signed (the same
/// request signed again gives the same string).
fn check(token: &str, user: &str, credentials: &Credentials, region: &str) -> Option<SystemTime> {
    let (authority, query) = token.split_once("/?")?;
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let date = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("X-Amz-Date="))?;
    let signed_at = humantime::parse_rfc3339(&format!(
        "{}-{}-{}T{}:{}:{}Z",
        date.get(0..4)?,
        date.get(4..6)?,
        date.get(6..8)?,
        date.get(9..11)?,
        date.get(11..13)?,
        date.get(13..15)?
    ))
    .ok()?;
    let again = envctl::provider::aws::token::generate_auth_token(
        credentials,
        region,
        host,
        port,
        user,
        signed_at,
    )
    .ok()?;
    (again == token).then_some(signed_at)
}
