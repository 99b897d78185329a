//! A private PostgreSQL server of a test's own (not the shared one): with TLS required
//! (`ssl = on`, `hostssl` lines only, a server certificate for `localhost` and `127.0.0.1` from a
//! CA made at test time, [`super::certs`]), or plain with more connections than the shared server
//! allows. Started with envctl's own local-server code under a temp directory, reconfigured,
//! restarted, and stopped and removed when dropped.
//!
//! `pg_hba.conf` is the test's to choose ([`ServerOptions::hba`]); the admin `postgres` always
//! logs in with SCRAM. [`super::iam_ldap`] is a directory server that checks IAM tokens, for
//! `ldap` lines: how a token's arrival at the server is observed.

use std::path::{Path, PathBuf};

use envctl::provider::local_server;

use super::certs::make_certificates;

/// How the server is set up.
pub struct ServerOptions {
    /// `ssl = on` with a certificate from a new CA, and `hostssl` lines only.
    pub tls: bool,
    pub max_connections: u32,
    /// `pg_hba.conf` lines for users other than `postgres`, e.g.
    /// `all app 127.0.0.1/32 ldap ldapserver=…`; `host` or `hostssl` is prefixed. Default: every
    /// user with SCRAM.
    pub hba: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            tls: true,
            max_connections: 100,
            hba: vec!["all all 127.0.0.1/32 scram-sha-256".to_owned()],
        }
    }
}

/// A running private server; stopped and removed on drop.
pub struct PrivateServer {
    /// Holds the server directory (removed on drop).
    root: tempfile::TempDir,
    pub port: u16,
    pub admin_password: String,
    /// The CA that signed the server's certificate (with TLS).
    pub ca: Option<PathBuf>,
}

/// The `postgres` user's ids when the tests run as root (the server runs as that user).
fn server_owner() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("a `postgres` user (Debian's postgresql package makes it)");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// Writes a file the server reads, owned by its user, readable by it alone.
fn write_server_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Some((uid, gid)) = server_owner() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

impl PrivateServer {
    pub fn start(options: ServerOptions) -> PrivateServer {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::Builder::new()
            .prefix("envctl-private-server-")
            .tempdir()
            .unwrap();
        // The server's user passes through it.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = root.path().join("server");
        let started =
            |what: &str, result: Result<local_server::ServerInfo, local_server::ServerError>| {
                result.unwrap_or_else(|e| {
                panic!(
                    "cannot {what} the private test server: {e:?}\ninstall PostgreSQL's server binaries (Debian: `apt-get install postgresql`); its log: {}",
                    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                )
            })
            };
        let info = started("start", local_server::ensure_running(&dir));
        local_server::stop(&dir).unwrap();
        let data = dir.join("data");
        let (kind, ca) = if options.tls {
            let certificates = make_certificates(root.path());
            write_server_file(&data.join("server.crt"), &certificates.server_cert);
            write_server_file(&data.join("server.key"), &certificates.server_key);
            ("hostssl", Some(certificates.ca))
        } else {
            ("host", None)
        };
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "\n# envctl tests\nmax_connections = {}\nlog_connections = on\n",
            options.max_connections
        ));
        if options.tls {
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        write_server_file(&data.join("postgresql.conf"), &conf);
        let mut hba = format!("{kind} all postgres 127.0.0.1/32 scram-sha-256\n");
        for line in &options.hba {
            hba.push_str(&format!("{kind} {line}\n"));
        }
        write_server_file(&data.join("pg_hba.conf"), &hba);
        let info2 = started("restart", local_server::ensure_running(&dir));
        assert_eq!(info.password, info2.password);
        PrivateServer {
            root,
            port: info2.port,
            admin_password: info2.password,
            ca,
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("server")
    }

    /// The admin URL: with TLS, `sslmode=verify-full` against the test CA.
    pub fn url(&self) -> String {
        let base = format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            self.admin_password, self.port
        );
        match &self.ca {
            Some(ca) => format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display()),
            None => format!("{base}?sslmode=disable"),
        }
    }

    /// Runs SQL as the admin through psql; its `-At` output.
    pub fn sql(&self, sql: &str) -> String {
        let output = std::process::Command::new("psql")
            .arg(self.url())
            .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .output()
            .expect("psql runs (install postgresql-client)");
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .trim_end()
            .to_owned()
    }

    /// Stops the server (its clients see their connections close).
    pub fn stop(&self) {
        local_server::stop(&self.dir()).unwrap();
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = local_server::stop(&self.dir());
    }
}
