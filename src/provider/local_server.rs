//! The private PostgreSQL server of the local provider, under `.envctl/postgres/` of the
//! repository: created with initdb on first use, started on demand on a free loopback port with a
//! generated password, reused by later commands, stopped by `envctl local stop`.
//!
//! initdb and postgres refuse to run as root; when envctl is root they run as the `postgres` user
//! and the directory belongs to that user. A file lock serializes concurrent envctl processes
//! (two `apply`s starting the server at once get one server).
//!
//! The server is for throwaway development databases: it is tuned for speed (`fsync = off`), not
//! durability. It runs with `wal_level = minimal` ([`SPEED_SETTINGS`]), given at every start so a
//! data directory made by an earlier envctl gets it too: rows written into a table made or
//! emptied in the same transaction skip the write-ahead log (a masking's table rewrite, a copy's
//! restore in one transaction), and nothing here replicates or archives.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Starting, stopping or finding the private server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No initdb/pg_ctl on PATH or under /usr/lib/postgresql.
    #[error(
        "PostgreSQL server programs (`initdb`, `pg_ctl`) were not found on PATH or under `/usr/lib/postgresql/*/bin`"
    )]
    BinariesNotFound,
    /// envctl is root and there is no `postgres` user to run the server as.
    #[error(
        "envctl runs as root, and PostgreSQL refuses to; there is no `postgres` user to run it as"
    )]
    NoPostgresUser,
    /// envctl is root and the `postgres` user cannot reach the data directory.
    #[error("the `postgres` user cannot reach `{0}` (a parent directory is closed to other users)")]
    DirectoryUnreachable(PathBuf),
    /// A file of the server directory could not be written or read.
    #[error("cannot use `{path}`")]
    Files {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// initdb, pg_ctl start or stop failed.
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
}

fn files_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Files {
        path: path.to_owned(),
        source,
    }
}

/// The server's connection details.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// This call started it (it was not running).
    pub started: bool,
}

impl ServerInfo {
    /// `postgres://user:password@host:port/postgres`: contains the password; never print it.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@{}:{}/postgres",
            self.user, self.password, self.host, self.port
        )
    }
}

/// Where a repository's private server lives.
#[derive(Clone, Debug)]
pub struct ServerDir {
    pub path: PathBuf,
    /// Set when it is not under the repository, saying where and why.
    pub relocated: Option<String>,
}

/// The server directory of a repository:
/// - `.envctl/postgres/` in it;
/// - or, when envctl runs as root and the `postgres` user cannot reach the repository (root's
///   home is closed to other users), a directory of its own under the system temp directory,
///   named after a hash of the repository's path, so every command (and `envctl local stop`)
///   finds the same one.
pub fn locate(repo_root: &Path) -> Result<ServerDir, ServerError> {
    let root = std::path::absolute(repo_root).unwrap_or_else(|_| repo_root.to_owned());
    let inside = root.join(".envctl").join("postgres");
    // A repository can commit `.envctl` as a link: envctl would then write, chown and delete
    // wherever it points. Only real directories are used.
    for path in [root.join(".envctl"), inside.clone()] {
        if let Ok(metadata) = fs::symlink_metadata(&path)
            && !metadata.file_type().is_dir()
        {
            return Err(ServerError::Files {
                source: std::io::Error::other(
                    "it is not a directory (a symbolic link?); envctl keeps its private server in a real directory there: remove it",
                ),
                path,
            });
        }
    }
    if run_as()?.0.is_none() || check_reachable(&inside).is_ok() {
        return Ok(ServerDir {
            path: inside,
            relocated: None,
        });
    }
    let hash = &crate::model::sha256_hex(root.as_os_str().as_encoded_bytes())[..16];
    let name = format!("envctl-postgres-{hash}");
    let candidates = [std::env::temp_dir(), PathBuf::from("/tmp")];
    let Some(base) = candidates
        .iter()
        .find(|base| check_reachable(&base.join(&name)).is_ok())
    else {
        return Err(ServerError::DirectoryUnreachable(root));
    };
    let path = base.join(name);
    Ok(ServerDir {
        relocated: Some(format!(
            "note: the `postgres` user cannot reach `{}`, so the private PostgreSQL server keeps its data in `{}`",
            root.display(),
            path.display()
        )),
        path,
    })
}

/// Where the server's programs are (`initdb`, `pg_dump`, …), if found.
pub fn binary_dir() -> Option<PathBuf> {
    find_binaries()
        .ok()
        .and_then(|b| b.initdb.parent().map(Path::to_owned))
}

struct Binaries {
    initdb: PathBuf,
    pg_ctl: PathBuf,
}

fn find_binaries() -> Result<Binaries, ServerError> {
    let from_path = |name: &str| -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    };
    if let (Some(initdb), Some(pg_ctl)) = (from_path("initdb"), from_path("pg_ctl")) {
        return Ok(Binaries { initdb, pg_ctl });
    }
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    // Newest first: `17` sorts after `15` as text, and versions have two digits.
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .map(|bin| Binaries {
            initdb: bin.join("initdb"),
            pg_ctl: bin.join("pg_ctl"),
        })
        .ok_or(ServerError::BinariesNotFound)
}

/// Who runs the server: ourselves, or the `postgres` user when we are root.
#[derive(Clone, Copy)]
struct RunAs(Option<(u32, u32)>);

fn run_as() -> Result<RunAs, ServerError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(RunAs(None));
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or(ServerError::NoPostgresUser)?;
    Ok(RunAs(Some((user.uid.as_raw(), user.gid.as_raw()))))
}

impl RunAs {
    fn command(self, program: &Path) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.0 {
            command.uid(uid).gid(gid);
            command.env("HOME", "/tmp");
        }
        command.stdin(Stdio::null());
        command
    }

    fn chown(self, path: &Path) -> Result<(), ServerError> {
        if let Some((uid, gid)) = self.0 {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(files_err(path))?;
        }
        Ok(())
    }
}

fn run(mut command: Command, what: &str) -> Result<String, ServerError> {
    let output = command.output().map_err(|e| ServerError::Command {
        command: what.to_owned(),
        output: e.to_string(),
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(ServerError::Command {
            command: what.to_owned(),
            output: text.trim().to_owned(),
        })
    }
}

/// Starts the server under `dir` unless it runs already, and returns how to reach it.
pub fn ensure_running(dir: &Path) -> Result<ServerInfo, ServerError> {
    let binaries = find_binaries()?;
    let run_as = run_as()?;
    fs::create_dir_all(dir).map_err(files_err(dir))?;
    check_owned(dir, run_as)?;
    // Keep the password and data out of the user's commits.
    if let Some(envctl_dir) = dir.parent().filter(|p| p.ends_with(".envctl")) {
        // Whatever the umask: the server's user must pass through it.
        fs::set_permissions(envctl_dir, fs::Permissions::from_mode(0o755))
            .map_err(files_err(envctl_dir))?;
        let ignore = envctl_dir.join(".gitignore");
        refuse_links(std::slice::from_ref(&ignore))?;
        if fs::symlink_metadata(&ignore).is_err() {
            let written = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(NOFOLLOW)
                .open(&ignore)
                .and_then(|mut file| {
                    std::io::Write::write_all(
                        &mut file,
                        b"# envctl's private PostgreSQL server: never commit it.\n*\n",
                    )
                });
            match written {
                Ok(()) => {}
                // Another envctl wrote it first.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(files_err(&ignore)(e)),
            }
        }
    }
    refuse_links(&[
        dir.join("data"),
        dir.join("data.making"),
        dir.join("server.log"),
        dir.join("password"),
        dir.join("lock"),
    ])?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(files_err(dir))?;
    run_as.chown(dir)?;
    if run_as.0.is_some() {
        check_reachable(dir)?;
    }

    let lock_path = dir.join("lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(NOFOLLOW)
        .open(&lock_path)
        .map_err(files_err(&lock_path))?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    let _guard = lock.write().map_err(files_err(&lock_path))?;

    let data = dir.join("data");
    let password_path = dir.join("password");
    if !data.join("PG_VERSION").is_file() {
        init(dir, &data, &password_path, &binaries, run_as)?;
    }
    let password = read_nofollow(&password_path)?.trim().to_owned();

    let running = is_running(&binaries, run_as, &data);
    let port = if running {
        read_port(&data)?
    } else {
        start(dir, &data, &binaries, run_as)?
    };
    Ok(ServerInfo {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        password,
        started: !running,
    })
}

/// What `envctl doctor` sees of the server under `dir`, changing nothing.
#[derive(Debug)]
pub struct Inspection {
    /// Where initdb and pg_ctl were found, or why not.
    pub binaries: Result<PathBuf, ServerError>,
    /// Who would run the server, or why no one can (root without a `postgres` user).
    pub runs_as: Result<Option<String>, ServerError>,
    /// The data directory exists (made by the first command that needs the server).
    pub initialized: bool,
    /// The port it listens on, when it runs.
    pub running_on: Option<u16>,
}

/// Looks at the server under `dir` without starting, creating or changing anything.
pub fn inspect(dir: &Path) -> Inspection {
    let binaries = find_binaries();
    let run_as = run_as();
    let data = dir.join("data");
    let initialized = data.join("PG_VERSION").is_file();
    let running_on = match (&binaries, &run_as) {
        (Ok(binaries), Ok(run_as)) if initialized && is_running(binaries, *run_as, &data) => {
            read_port(&data).ok()
        }
        _ => None,
    };
    Inspection {
        binaries: binaries.map(|b| b.initdb.parent().map(Path::to_owned).unwrap_or_default()),
        runs_as: run_as.map(|r| r.0.map(|_| "postgres".to_owned())),
        initialized,
        running_on,
    }
}

/// Stops the server under `dir`; `Ok(false)` when it was not running.
pub fn stop(dir: &Path) -> Result<bool, ServerError> {
    let data = dir.join("data");
    refuse_links(std::slice::from_ref(&data))?;
    if !data.join("PG_VERSION").is_file() {
        return Ok(false);
    }
    let binaries = find_binaries()?;
    let run_as = run_as()?;
    let running = is_running(&binaries, run_as, &data);
    if !running {
        return Ok(false);
    }
    let mut command = run_as.command(&binaries.pg_ctl);
    command.args(["stop", "-m", "fast", "-w", "-D"]).arg(&data);
    run(command, "pg_ctl stop")?;
    Ok(true)
}

/// `pg_ctl status`: whether a server runs on this data directory.
fn is_running(binaries: &Binaries, run_as: RunAs, data: &Path) -> bool {
    run_as
        .command(&binaries.pg_ctl)
        .arg("status")
        .arg("-D")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The server directory must be a real directory of ours: in a shared temp directory someone
/// else could have made it first (or made it a symbolic link to elsewhere).
fn check_owned(dir: &Path, run_as: RunAs) -> Result<(), ServerError> {
    use std::os::unix::fs::MetadataExt;
    let metadata = fs::symlink_metadata(dir).map_err(files_err(dir))?;
    let me = nix::unistd::geteuid().as_raw();
    let allowed = |uid: u32| uid == me || run_as.0.is_some_and(|(server, _)| uid == server);
    if !metadata.is_dir() || !allowed(metadata.uid()) {
        return Err(ServerError::Files {
            path: dir.to_owned(),
            source: std::io::Error::other(
                "it is not a directory owned by envctl's user or the server's; remove it",
            ),
        });
    }
    Ok(())
}

fn check_reachable(dir: &Path) -> Result<(), ServerError> {
    // The postgres user needs search (x) permission on every ancestor.
    let mut current = dir.parent();
    while let Some(path) = current {
        current = path.parent();
        let mode = match fs::metadata(path) {
            Ok(metadata) => metadata.permissions().mode(),
            // Not made yet: envctl makes it readable to others.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(files_err(path)(e)),
        };
        if mode & 0o001 == 0 {
            return Err(ServerError::DirectoryUnreachable(path.to_owned()));
        }
    }
    Ok(())
}

fn init(
    dir: &Path,
    data: &Path,
    password_path: &Path,
    binaries: &Binaries,
    run_as: RunAs,
) -> Result<(), ServerError> {
    if data.exists() {
        // A data directory without PG_VERSION: left by an older envctl's interrupted initdb.
        fs::remove_dir_all(data).map_err(files_err(data))?;
    }
    // Made whole under another name, then renamed: a run stopped half-way (a signal to a command
    // that stops at once, a SIGKILL) leaves no `data` that looks made but lacks its settings.
    let making = dir.join("data.making");
    if making.exists() {
        fs::remove_dir_all(&making).map_err(files_err(&making))?;
    }
    let password = random_password()?;
    // The directory belongs to the server's user: never follow a link planted in it.
    let _ = fs::remove_file(password_path);
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .custom_flags(NOFOLLOW)
        .open(password_path)
        .map_err(files_err(password_path))?;
    writeln!(file, "{password}").map_err(files_err(password_path))?;
    if let Some((uid, gid)) = run_as.0 {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(files_err(password_path))?;
    }
    drop(file);

    let mut command = run_as.command(&binaries.initdb);
    command
        .arg("-D")
        .arg(&making)
        .args([
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .arg(format!("--pwfile={}", password_path.display()))
        .current_dir(dir);
    run(command, "initdb")?;
    let conf = making.join("postgresql.conf");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .map_err(files_err(&conf))?;
    file.write_all(
        b"\n# envctl: a private server for throwaway databases, tuned for speed over durability.\n\
          listen_addresses = '127.0.0.1'\n\
          unix_socket_directories = ''\n\
          max_connections = 200\n\
          fsync = off\n\
          synchronous_commit = off\n\
          full_page_writes = off\n",
    )
    .map_err(files_err(&conf))?;
    file.sync_all().map_err(files_err(&conf))?;
    fs::rename(&making, data).map_err(files_err(data))
}

/// Server settings given on `postgres`'s command line at every start (they take a restart, so
/// they cannot be set later): the write-ahead log only for crash recovery, which `fsync = off`
/// gives up anyway, so a rewrite or a bulk load into a new table is not logged page by page.
/// The command line wins over `ALTER SYSTEM`, so the settings `minimal` refuses to start with
/// (archiving, senders) are given too: a superuser's `ALTER SYSTEM SET archive_mode = on` would
/// otherwise leave a server that no longer starts.
const SPEED_SETTINGS: &str = "-c wal_level=minimal -c max_wal_senders=0 -c archive_mode=off";

fn start(dir: &Path, data: &Path, binaries: &Binaries, run_as: RunAs) -> Result<u16, ServerError> {
    let log = dir.join("server.log");
    let mut last_error = None;
    // The port it had before, if it is free: URLs pasted into `.env` files and tools' settings
    // keep working across `envctl local stop`. A free port can be taken between choosing and
    // binding it: try a few.
    let mut before = previous_port(data).filter(|p| port_is_free(*p));
    for _ in 0..3 {
        let port = match before.take() {
            Some(port) => port,
            None => free_port().map_err(files_err(dir))?,
        };
        let mut command = run_as.command(&binaries.pg_ctl);
        command
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!("-p {port} {SPEED_SETTINGS}"))
            .stdout(Stdio::null());
        // pg_ctl must not keep our stdout/stderr open: a caller reading our output to EOF would hang.
        match run(command, "pg_ctl start") {
            Ok(_) => return Ok(port),
            Err(e) => last_error = Some(e),
        }
    }
    let tail = fs::read_to_string(&log)
        .map(|text| {
            text.lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    Err(match last_error {
        Some(ServerError::Command { command, output }) => ServerError::Command {
            command,
            output: format!("{output}\n{tail}"),
        },
        Some(other) => other,
        None => ServerError::Command {
            command: "pg_ctl start".into(),
            output: tail,
        },
    })
}

/// Refuses symbolic links where the server keeps its files: a repository can commit them, and
/// envctl would write, start or stop whatever they point at.
fn refuse_links(paths: &[PathBuf]) -> Result<(), ServerError> {
    for path in paths {
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ServerError::Files {
                path: path.clone(),
                source: std::io::Error::other(
                    "it is a symbolic link; envctl keeps its private server's files in real files and directories: remove it",
                ),
            });
        }
    }
    Ok(())
}

/// `O_NOFOLLOW`: root opens files in a directory another user owns.
const NOFOLLOW: i32 = nix::fcntl::OFlag::O_NOFOLLOW.bits();

/// Reads a small file of the server directory without following a symbolic link.
fn read_nofollow(path: &Path) -> Result<String, ServerError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(path)
        .map_err(files_err(path))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, 64 * 1024), &mut text)
        .map_err(files_err(path))?;
    Ok(text)
}

/// The port a running server listens on, from `postmaster.pid` (line 4).
fn read_port(data: &Path) -> Result<u16, ServerError> {
    let pid_file = data.join("postmaster.pid");
    let text = read_nofollow(&pid_file)?;
    text.lines()
        .nth(3)
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| ServerError::Files {
            path: pid_file,
            source: std::io::Error::other("no port on line 4"),
        })
}

/// The port the server was last started on: `-p N` in `postmaster.opts`, which `pg_ctl start`
/// writes and leaves after a stop.
fn previous_port(data: &Path) -> Option<u16> {
    let text = read_nofollow(&data.join("postmaster.opts")).ok()?;
    let words: Vec<&str> = text
        .split_whitespace()
        .map(|w| w.trim_matches('"'))
        .collect();
    words
        .windows(2)
        .find(|pair| pair[0] == "-p")
        .and_then(|pair| pair[1].parse().ok())
        .filter(|port| *port != 0)
}

/// Whether a loopback port can be bound now.
fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

fn random_password() -> Result<String, ServerError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 24];
    let mut file = fs::File::open(path).map_err(files_err(path))?;
    std::io::Read::read_exact(&mut file, &mut bytes).map_err(files_err(path))?;
    Ok(hex::encode(bytes))
}
