//! IAM database authentication tokens: the password an Aurora PostgreSQL express cluster takes.
//!
//! A token is a SigV4 presigned URL without its scheme, for service `rds-db`, valid 900 seconds:
//!
//! ```text
//! {host}:{port}/?Action=connect&DBUser={user}&X-Amz-Algorithm=AWS4-HMAC-SHA256
//!   &X-Amz-Credential={key id}%2F{date}%2F{region}%2Frds-db%2Faws4_request&X-Amz-Date={time}
//!   &X-Amz-Expires=900&X-Amz-SignedHeaders=host[&X-Amz-Security-Token={token}]&X-Amz-Signature={hex}
//! ```
//!
//! [`generate_auth_token`] prints byte for byte what botocore's `generate_db_auth_token` (and so
//! `aws rds generate-db-auth-token`) prints, parameter order included. It follows botocore where
//! the SigV4 signers of other SDKs differ:
//!
//! - every query value is percent-encoded as the SigV4 canonical query is: all but
//!   `A-Za-z0-9-_.~`, UTF-8 bytes one by one (`+` → `%2B`, space → `%20`). `aws_sdk_rds::auth_token`
//!   puts the user name in the URL unencoded, so its signature differs for such names;
//! - the signed `host` header is the host name lower-cased, with `:{port}` unless the port is 443
//!   (botocore derives it from `https://{host}:{port}`, where 443 is the default port). The JS
//!   `@aws-sdk/rds-signer` signs `{host}:{port}` as given, so it differs from botocore for port
//!   443 and for host names with upper-case letters; RDS endpoints are lower-case names on 5432;
//! - a session token is sent even when empty, as `X-Amz-Security-Token=`.
//!
//! The canonical request is built here and signed with aws-sigv4's primitives
//! ([`aws_sigv4::sign::v4::generate_signing_key`], [`aws_sigv4::sign::v4::calculate_signature`]),
//! so nothing between the encoded query and the signature is left to another library's parsing.
//! The token is a secret: no error carries it, nor the secret key or session token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// The SigV4 service name of IAM database authentication.
const SERVICE: &str = "rds-db";

/// How long a token can open connections, in seconds (an open session outlives it).
pub const EXPIRES_SECS: u64 = 900;

/// SHA-256 of the empty payload.
const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Everything but the RFC 3986 unreserved characters is encoded (SigV4 canonical query encoding,
/// botocore's `percent_encode`).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The last second a four-digit year can show: 9999-12-31T23:59:59Z.
const LAST_SECOND: u64 = 253_402_300_799;

/// Why no token was generated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The database user name is empty.
    #[error("the database user name is empty")]
    EmptyUser,
    /// The host name is empty or holds a character other than letters, digits, `-`, `.` and `_`.
    #[error(
        "`{0}` is not a host name: give the endpoint's DNS name or IPv4 address alone, without scheme, port or path"
    )]
    InvalidHostname(String),
    /// The region is not a valid region name (botocore's rule: a host label, not all digits).
    #[error(
        "`{0}` is not a region name: expected up to 63 letters, digits and `-`, such as `us-east-1`"
    )]
    InvalidRegion(String),
    /// The access key id or the secret access key is empty.
    #[error("the AWS credentials have an empty access key id or secret access key")]
    IncompleteCredentials,
    /// The signing time is before 1970 or after 9999.
    #[error("the signing time is outside the years 1970 to 9999: check the system clock")]
    TimeOutOfRange,
}

/// An IAM database authentication token for `user` at `hostname:port`, signed with `credentials`
/// for `region` at `now` (to the second), valid for [`EXPIRES_SECS`]. The same string as
/// `aws rds generate-db-auth-token --hostname H --port P --username U --region R` at that time.
pub fn generate_auth_token(
    credentials: &Credentials,
    region: &str,
    hostname: &str,
    port: u16,
    user: &str,
    now: SystemTime,
) -> Result<String, TokenError> {
    if user.is_empty() {
        return Err(TokenError::EmptyUser);
    }
    if !is_hostname(hostname) {
        return Err(TokenError::InvalidHostname(hostname.to_owned()));
    }
    if !is_region(region) {
        return Err(TokenError::InvalidRegion(region.to_owned()));
    }
    let key_id = credentials.access_key_id();
    let secret = credentials.secret_access_key();
    if key_id.is_empty() || secret.is_empty() {
        return Err(TokenError::IncompleteCredentials);
    }
    let (now, timestamp) = signing_time(now)?;
    let date = &timestamp[..8];
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");

    // botocore's order: operation parameters, then the auth parameters as it inserts them.
    let expires = EXPIRES_SECS.to_string();
    let mut params: Vec<(&str, String)> = vec![
        ("Action", encode("connect")),
        ("DBUser", encode(user)),
        ("X-Amz-Algorithm", encode("AWS4-HMAC-SHA256")),
        ("X-Amz-Credential", encode(&format!("{key_id}/{scope}"))),
        ("X-Amz-Date", encode(&timestamp)),
        ("X-Amz-Expires", encode(&expires)),
        ("X-Amz-SignedHeaders", encode("host")),
    ];
    if let Some(token) = credentials.session_token() {
        params.push(("X-Amz-Security-Token", encode(token)));
    }

    let mut canonical_params = params.clone();
    canonical_params.sort();
    let canonical_query = join_query(&canonical_params);
    let canonical_request = format!(
        "GET\n/\n{canonical_query}\nhost:{}\n\nhost\n{EMPTY_PAYLOAD_SHA256}",
        signed_host(hostname, port)
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let signing_key = generate_signing_key(secret, now, region, SERVICE);
    let signature = calculate_signature(signing_key, string_to_sign.as_bytes());

    Ok(format!(
        "{hostname}:{port}/?{}&X-Amz-Signature={signature}",
        join_query(&params)
    ))
}

/// Percent-encodes a query value as SigV4's canonical query (and botocore) does.
fn encode(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

fn join_query(params: &[(&str, String)]) -> String {
    params
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The `host` header botocore signs: the host of `https://{hostname}:{port}`, lower-cased, without
/// the default port.
fn signed_host(hostname: &str, port: u16) -> String {
    let host = hostname.to_ascii_lowercase();
    if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// A DNS name or IPv4 address: what can stand between `https://` and `:{port}` unchanged.
fn is_hostname(hostname: &str) -> bool {
    !hostname.is_empty()
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// botocore's `validate_region_name`: a host label of up to 63 characters, not all digits.
fn is_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 63
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-')
        && !region.bytes().all(|b| b.is_ascii_digit())
}

/// `now` truncated to the second, and as SigV4's `YYYYMMDDTHHMMSSZ`.
fn signing_time(now: SystemTime) -> Result<(SystemTime, String), TokenError> {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TokenError::TimeOutOfRange)?
        .as_secs();
    if secs > LAST_SECOND {
        return Err(TokenError::TimeOutOfRange);
    }
    let (days, second_of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    let timestamp = format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    );
    Ok((UNIX_EPOCH + Duration::from_secs(secs), timestamp))
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    use aws_credential_types::Credentials;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE+/=";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn akid(session_token: Option<&str>) -> Credentials {
        Credentials::new(
            "akid",
            "secret",
            session_token.map(str::to_owned),
            None,
            "test",
        )
    }

    // The expected tokens below were printed by botocore 1.44.8's `generate_db_auth_token` with its
    // clock frozen at the same time; the first is also aws-sdk-rds 1.159's own test vector.

    #[test]
    fn signs_a_plain_user_as_botocore_and_the_rust_sdk_do() {
        let token = generate_auth_token(
            &akid(None),
            "us-east-1",
            "prod-instance.us-east-1.rds.amazonaws.com",
            3306,
            "peccy",
            at(1_724_709_600),
        )
        .unwrap();
        assert_eq!(
            token,
            "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy\
             &X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89"
        );
    }

    #[test]
    fn puts_the_session_token_before_the_signature_and_truncates_the_time() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            SECRET,
            Some(SESSION_TOKEN.to_owned()),
            None,
            "test",
        );
        let token = generate_auth_token(
            &credentials,
            "eu-central-1",
            "envctl-feature-login-1a2b3c4d.cluster-abcdefghijkl.eu-central-1.rds.amazonaws.com",
            5432,
            "postgres",
            at(1_741_964_966) + Duration::from_millis(535),
        )
        .unwrap();
        assert_eq!(
            token,
            "envctl-feature-login-1a2b3c4d.cluster-abcdefghijkl.eu-central-1.rds.amazonaws.com:5432\
             /?Action=connect&DBUser=postgres&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20250314%2Feu-central-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20250314T150926Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE%2B%2F%3D\
             &X-Amz-Signature=08e948a0927b935ba59943bc2b4ebfec16288c6418b066359321f827ed87847d"
        );
    }

    #[test]
    fn encodes_the_user_and_signs_port_443_as_botocore_does() {
        // Port 443 and upper case: botocore signs `host:prod-instance.us-east-1.rds.amazonaws.com`.
        let token = generate_auth_token(
            &akid(None),
            "us-east-1",
            "Prod-Instance.US-east-1.rds.amazonaws.com",
            443,
            "a+b c/=&ü~",
            at(1_724_709_600),
        )
        .unwrap();
        assert_eq!(
            token,
            "Prod-Instance.US-east-1.rds.amazonaws.com:443/?Action=connect\
             &DBUser=a%2Bb%20c%2F%3D%26%C3%BC~&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=480e133cf5a9d476f5e9173472a3e61e21a206cb20c67ca8c3f73545962b0b34"
        );
    }

    #[test]
    fn sends_an_empty_session_token_as_botocore_does() {
        let token = generate_auth_token(
            &akid(Some("")),
            "us-east-1",
            "h",
            5432,
            "x",
            at(1_724_709_600),
        )
        .unwrap();
        assert_eq!(
            token,
            "h:5432/?Action=connect&DBUser=x&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request\
             &X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
             &X-Amz-Security-Token=\
             &X-Amz-Signature=137fb4010fd4466bef4f7acfc770deb9a7c9c9f467318b64a11cfbe3d8461c5a"
        );
    }

    #[test]
    fn aws_sigv4s_presigner_computes_the_same_signature() {
        // An independent check of the canonical request: aws-sigv4's own presigner, given the
        // already-encoded query and the URL botocore signs, must reach the same signature.
        use aws_sigv4::http_request::{
            SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
        };
        use aws_smithy_runtime_api::client::identity::Identity;

        for (session_token, port, user) in [
            (None, 5432, "postgres"),
            (Some(SESSION_TOKEN), 5432, "a+b c/=&ü~"),
            (Some(SESSION_TOKEN), 443, "with space"),
        ] {
            let credentials = Credentials::new(
                "AKIDEXAMPLE",
                SECRET,
                session_token.map(str::to_owned),
                None,
                "t",
            );
            let now = at(1_741_964_966);
            let host = "db.example.com";
            let ours =
                generate_auth_token(&credentials, "eu-west-1", host, port, user, now).unwrap();

            let identity: Identity = credentials.into();
            let mut settings = SigningSettings::default();
            settings.signature_location = SignatureLocation::QueryParams;
            settings.expires_in = Some(Duration::from_secs(EXPIRES_SECS));
            let params = aws_sigv4::sign::v4::SigningParams::builder()
                .identity(&identity)
                .region("eu-west-1")
                .name(SERVICE)
                .time(now)
                .settings(settings)
                .build()
                .unwrap()
                .into();
            let url = format!(
                "https://{host}:{port}/?Action=connect&DBUser={}",
                encode(user)
            );
            let request =
                SignableRequest::new("GET", url, std::iter::empty(), SignableBody::empty())
                    .unwrap();
            let (_, signature) = sign(request, &params).unwrap().into_parts();
            assert!(
                ours.ends_with(&format!("&X-Amz-Signature={signature}")),
                "{user:?} on port {port}: aws-sigv4 signed {signature}"
            );
        }
    }

    #[test]
    fn encodes_all_but_unreserved_characters() {
        assert_eq!(encode("AZaz09-_.~"), "AZaz09-_.~");
        assert_eq!(encode("a+b"), "a%2Bb");
        assert_eq!(encode("with space"), "with%20space");
        assert_eq!(encode("a/b=c&d"), "a%2Fb%3Dc%26d");
        assert_eq!(encode("ünï"), "%C3%BCn%C3%AF");
        assert_eq!(encode("%:?#@!*'()"), "%25%3A%3F%23%40%21%2A%27%28%29");
        assert_eq!(encode("🐘\0"), "%F0%9F%90%98%00");
    }

    #[test]
    fn formats_the_signing_time_in_utc() {
        let format = |secs| signing_time(at(secs)).map(|(_, timestamp)| timestamp);
        assert_eq!(format(0).unwrap(), "19700101T000000Z");
        assert_eq!(format(951_868_799).unwrap(), "20000229T235959Z");
        assert_eq!(format(1_709_251_199).unwrap(), "20240229T235959Z");
        assert_eq!(format(1_709_251_200).unwrap(), "20240301T000000Z");
        assert_eq!(format(4_107_542_400).unwrap(), "21000301T000000Z");
        assert_eq!(format(LAST_SECOND).unwrap(), "99991231T235959Z");
        assert_eq!(format(LAST_SECOND + 1), Err(TokenError::TimeOutOfRange));
        let before_1970 = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(signing_time(before_1970), Err(TokenError::TimeOutOfRange));
        let (truncated, _) = signing_time(at(7) + Duration::from_nanos(999_999_999)).unwrap();
        assert_eq!(truncated, at(7));
    }

    #[test]
    fn refuses_what_cannot_name_a_user_an_endpoint_or_a_signer() {
        let token = |region: &str, host: &str, user: &str| {
            generate_auth_token(&akid(None), region, host, 5432, user, at(1_724_709_600))
        };
        assert_eq!(token("us-east-1", "h", ""), Err(TokenError::EmptyUser));
        for host in [
            "",
            "h:5432",
            "https://h",
            "h/x",
            "h x",
            "ü.example",
            "[::1]",
            "u@h",
        ] {
            assert_eq!(
                token("us-east-1", host, "u"),
                Err(TokenError::InvalidHostname(host.to_owned())),
                "{host:?}"
            );
        }
        for region in [
            "",
            "-us",
            "us-",
            "123",
            "us east",
            "us_east_1",
            &"a".repeat(64),
        ] {
            assert_eq!(
                token(region, "h", "u"),
                Err(TokenError::InvalidRegion(region.to_owned())),
                "{region:?}"
            );
        }
        for region in ["us-east-1", "US-EAST-1", "a", "1a", &"a".repeat(63)] {
            assert!(token(region, "h", "u").is_ok(), "{region:?}");
        }
        for host in ["10.0.0.1", "my_host.local", "h.example.com."] {
            assert!(token("us-east-1", host, "u").is_ok(), "{host:?}");
        }
        let no_key = Credentials::new("", "secret", None, None, "test");
        let no_secret = Credentials::new("akid", "", None, None, "test");
        for credentials in [no_key, no_secret] {
            assert_eq!(
                generate_auth_token(&credentials, "us-east-1", "h", 1, "u", at(0)),
                Err(TokenError::IncompleteCredentials)
            );
        }
    }

    #[test]
    fn errors_never_show_secrets() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            SECRET,
            Some(SESSION_TOKEN.to_owned()),
            None,
            "test",
        );
        let errors = [
            generate_auth_token(&credentials, "us-east-1", "h", 5432, "", at(0)),
            generate_auth_token(&credentials, "us-east-1", "h:1", 5432, "u", at(0)),
            generate_auth_token(&credentials, "bad region", "h", 5432, "u", at(0)),
            generate_auth_token(
                &credentials,
                "us-east-1",
                "h",
                5432,
                "u",
                at(LAST_SECOND + 1),
            ),
        ];
        for error in errors {
            let error = error.unwrap_err();
            for shown in [error.to_string(), format!("{error:?}")] {
                assert!(!shown.contains(SECRET), "{shown}");
                assert!(!shown.contains(SESSION_TOKEN), "{shown}");
            }
            assert!(
                !error.to_string().starts_with(char::is_uppercase),
                "{error}"
            );
        }
    }
}
