//! `envctl proxy` as a running process: started with the caller's command line, its listening
//! line read from stdout (the port and URL), its stderr kept in a file, signalled and waited for
//! with bounds. Killed on drop if it still runs, so a failing test leaves no proxy behind.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

pub struct ProxyProcess {
    child: Child,
    /// The first line it printed.
    pub line: String,
    pub port: u16,
    /// The URL of the line (text output), or the `url` field (JSON).
    pub url: String,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Spawns `command` (an `envctl … proxy …` command line) and waits up to 60 s for its line.
    pub fn start(mut command: Command) -> ProxyProcess {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("envctl starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = sender.send(line);
            // Anything more is read to the end, so the proxy never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if !line.is_empty() => line.trim_end().to_owned(),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the proxy printed no line: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        let (port, url) = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(json) => (
                json["port"].as_u64().unwrap() as u16,
                json["url"].as_str().unwrap().to_owned(),
            ),
            Err(_) => {
                let (port, url) = line.split_once(' ').expect("`PORT URL`");
                (port.parse().expect("a port"), url.to_owned())
            }
        };
        ProxyProcess {
            child,
            line,
            port,
            url,
            stderr,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Its exit status, if it ends within `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until stderr holds `text` (up to `limit`); its stderr then.
    pub fn wait_for_stderr(&self, text: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let stderr = self.stderr();
            if stderr.contains(text) {
                return stderr;
            }
            assert!(
                start.elapsed() < limit,
                "the proxy did not say {text:?} within {limit:?}:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open file descriptors of the process (Linux: `/proc/PID/fd`).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `signal` to a process.
pub fn signal(pid: u32, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}
