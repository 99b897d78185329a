//! A certificate authority made for one test (rcgen), and a server certificate for `localhost`
//! and `127.0.0.1` it signs: what a test needs to stand in for AWS's RDS CA (a bundle envctl must
//! trust) or for a server envctl must verify; and an HTTPS server of files (`openssl s_server`)
//! to stand in for AWS's bundle URL.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a `localhost` server certificate, as PEM files in a directory of their own.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

/// A CA and the server certificate it signed.
pub struct Certificates {
    /// The CA's certificate (PEM): what `sslrootcert` names.
    pub ca: PathBuf,
    pub server_cert: String,
    pub server_key: String,
}

/// A CA certificate (PEM) that signed nothing the server has: verify-full must fail with it.
pub fn unrelated_ca(dir: &Path) -> PathBuf {
    let (cert, _) = make_ca("envctl unrelated test CA");
    let path = dir.join("unrelated-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

fn make_ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

/// A new CA (written to `dir/ca.pem`) and a server certificate for `localhost` and `127.0.0.1`.
pub fn make_certificates(dir: &Path) -> Certificates {
    let (ca_cert, issuer) = make_ca("envctl test CA");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    Certificates {
        ca,
        server_cert: cert.pem(),
        server_key: key.serialize_pem(),
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("envctl-ca-")
            .tempdir()
            .unwrap();
        let made = make_certificates(dir.path());
        std::fs::write(dir.path().join("server.pem"), made.server_cert).unwrap();
        std::fs::write(dir.path().join("server.key"), made.server_key).unwrap();
        TestCa { dir }
    }

    /// The CA's certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate (PEM), for `localhost` and `127.0.0.1`.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server's key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// `openssl s_server -WWW`: an HTTPS server of the files in `root`, on a free loopback port,
/// until dropped.
pub struct HttpsFiles {
    child: std::process::Child,
    pub port: u16,
}

impl HttpsFiles {
    pub fn start(ca: &TestCa, root: &Path) -> HttpsFiles {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .current_dir(root)
            .args(["s_server", "-WWW", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(ca.server_cert())
            .arg("-key")
            .arg(ca.server_key())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl runs");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "openssl s_server did not listen"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        HttpsFiles { child, port }
    }
}

impl Drop for HttpsFiles {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
