//! The local provider in-process, on the shared test server: for tests that call the provider
//! seam directly (ownership re-checks, races between a delete and a tag change) rather than
//! through the binary.

use std::time::Duration;

use envctl::model::{Owner, Prefix, RepoName};
use envctl::provider::local::{LocalProvider, Server};

/// A tokio runtime as envctl's own (two workers).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The local provider connected to the shared test server (not a private one).
pub async fn local_provider() -> LocalProvider {
    LocalProvider::connect(
        &Server {
            url: super::server_url().to_owned(),
            private: false,
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap()
}

/// Repository `repo` under `prefix`: whose environments a provider call may touch.
pub fn owner(repo: &str, prefix: &str) -> Owner {
    Owner {
        repo: RepoName::parse(repo).unwrap(),
        prefix: Prefix::parse(prefix).unwrap(),
    }
}
