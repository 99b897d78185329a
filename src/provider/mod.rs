//! The provider trait: where environments live. `observe` finds this owner's environments from
//! their tags alone (never a database connection: on AWS that would wake a paused cluster);
//! `create`, `update`, `update_tags` and `delete` manage their lifecycle; `connection` gives the
//! data plane, through which `db` reads the ledger and migrates.
//!
//! Ownership is an argument, never read from the tags being written: every change re-reads the
//! live resource and refuses unless it carries `envctl:managed=true` and this [`Owner`]'s
//! repository and prefix. Every method is idempotent: create of an existing environment of ours
//! succeeds, delete of a missing one succeeds. `apply` reaches providers only through this trait,
//! and commands choose one in one place: [`AnyProvider`].

pub mod aws;
pub mod local;
pub mod local_server;
pub mod upstream;

use std::time::Duration;

use crate::model::{ClusterId, DatabaseSettings, DesiredEnv, ObservedEnv, Owner, TagUpdate, Tags};

pub use crate::sql::{Connection, percent_encode};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Boxes an error as a [`ProviderError`] source.
pub fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> BoxError {
    Box::new(e)
}

/// A provider operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or set up.
    #[error("cannot reach the {provider} provider")]
    Unavailable {
        provider: &'static str,
        #[source]
        source: BoxError,
    },
    /// Listing environments failed.
    #[error("cannot list environments")]
    ObserveFailed(#[source] BoxError),
    /// Creating an environment failed.
    #[error("cannot create `{0}`")]
    CreateFailed(ClusterId, #[source] BoxError),
    /// Changing an environment's settings or tags failed.
    #[error("cannot update `{0}`")]
    UpdateFailed(ClusterId, #[source] BoxError),
    /// Deleting an environment failed.
    #[error("cannot delete `{0}`")]
    DeleteFailed(ClusterId, #[source] BoxError),
    /// The live resource is not ours to change.
    #[error("refusing to touch `{id}`: {why}")]
    NotOurs { id: ClusterId, why: String },
    /// The live resource is protected (`lifecycle.protect`) and the delete was not forced.
    #[error(
        "refusing to delete `{0}`: it is protected (`lifecycle.protect`); `envctl destroy --force` deletes it"
    )]
    Protected(ClusterId),
    /// The live resource has deletion protection on and the delete was not forced.
    #[error(
        "refusing to delete `{0}`: its deletion protection is on (`cluster.deletionProtection`); set it to false and apply first, or `envctl destroy --force` turns it off and deletes"
    )]
    DeletionProtected(ClusterId),
    /// The environment did not become ready in time.
    #[error("`{id}` was not ready after {}", humantime::format_duration(*waited))]
    NotReady {
        id: ClusterId,
        waited: Duration,
        #[source]
        source: Option<BoxError>,
    },
    /// The spec's user cannot log in (wrong password, no such role).
    #[error("cannot log in to `{id}` as `{user}`")]
    LoginFailed {
        id: ClusterId,
        user: String,
        #[source]
        source: BoxError,
    },
    /// The environment does not exist.
    #[error("`{0}` does not exist")]
    NotFound(ClusterId),
    /// The live resource no longer says what the delete was decided on.
    #[error("kept `{id}`: {what}")]
    Changed { id: ClusterId, what: String },
}

/// How `delete` may go about it.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// Delete even when the live resource says `envctl:protect=true` (`destroy --force`), turning
    /// off deletion protection first.
    pub force: bool,
    /// How long to wait for the environment to be gone.
    pub wait_timeout: Duration,
    /// Tags the live resource must still carry with these values (a missing value: must still be
    /// missing), checked right before the delete (prune: the tags its reason was read from; an
    /// apply since then changes `envctl:last-applied`). Otherwise [`ProviderError::Changed`].
    pub unchanged: std::collections::BTreeMap<String, Option<String>>,
}

/// What an interrupted create left behind (the local provider's `{id}-creating`), as prune finds
/// it.
#[derive(Clone, Debug)]
pub struct Leftover {
    /// The resource's own name.
    pub name: String,
    /// The id the create was making.
    pub cluster_id: ClusterId,
    /// Its branch: from its tags, or for an untagged one the branch whose derived id it carries
    /// (the caller fills that in; untagged leftovers of unknown branches are never deleted).
    pub branch: Option<String>,
    /// When it was made, where it says.
    pub created_at: Option<std::time::SystemTime>,
}

/// Whether `live` still carries every tag of `expected` with the same value (`None` values must
/// be missing). `Some(what)` names the first that changed.
pub fn changed_tag(
    live: &Tags,
    expected: &std::collections::BTreeMap<String, Option<String>>,
) -> Option<String> {
    expected.iter().find_map(|(key, want)| {
        let have = live.get(key);
        (have != want.as_ref()).then(|| match (have, want) {
            (Some(have), Some(want)) => {
                format!("its `{key}` tag changed since the plan (`{want}` → `{have}`)")
            }
            (Some(have), None) => format!("its `{key}` tag was set since the plan (`{have}`)"),
            (None, _) => format!("its `{key}` tag was removed since the plan"),
        })
    })
}

/// Where environments live.
#[allow(async_fn_in_trait)]
pub trait Provider: Sync {
    /// `local` or `aws`, as in the plan's `provider`.
    fn name(&self) -> &'static str;

    /// Every live environment of `owner`, from tags alone.
    async fn observe(&self, owner: &Owner) -> Result<Vec<ObservedEnv>, ProviderError>;

    /// Creates the environment with these tags, or succeeds if one of `owner`'s already exists
    /// with this id.
    async fn create(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        tags: &Tags,
    ) -> Result<(), ProviderError>;

    /// Checks and prepares what creating `desired` needs beyond the environment itself (the local
    /// provider's role for the spec's user), before a replace deletes anything.
    async fn prepare(&self, owner: &Owner, desired: &DesiredEnv) -> Result<(), ProviderError>;

    /// Waits until the environment accepts connections from the spec's user, telling `on_wait`
    /// what it waits for whenever that changes.
    async fn wait_ready(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        timeout: Duration,
        on_wait: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), ProviderError>;

    /// Applies scaling and deletion protection in place.
    async fn update(&self, owner: &Owner, desired: &DesiredEnv) -> Result<(), ProviderError>;

    /// Sets and removes tags on the live resource; every other tag stays as it is. Checks the
    /// live resource is `owner`'s even when the update is empty.
    async fn update_tags(
        &self,
        owner: &Owner,
        id: &ClusterId,
        update: &TagUpdate,
    ) -> Result<(), ProviderError>;

    /// Deletes the environment after re-checking ownership and protection on the live resource.
    /// A missing one is not an error, unless the delete was decided on its tags
    /// ([`DeleteOptions::unchanged`]): then [`ProviderError::NotFound`] says someone was first.
    async fn delete(
        &self,
        owner: &Owner,
        id: &ClusterId,
        options: DeleteOptions,
    ) -> Result<(), ProviderError>;

    /// Leftovers of interrupted creates under `owner`'s prefix that are `owner`'s or may be
    /// (untagged ones carry no owner; see [`Leftover::branch`]). None where creates leave none
    /// (AWS creates a cluster and its tags in one call).
    async fn leftovers(&self, owner: &Owner) -> Result<Vec<Leftover>, ProviderError> {
        let _ = owner;
        Ok(Vec::new())
    }

    /// Deletes a leftover if it still is one of `owner`'s, older than `min_age` where its age is
    /// known, and no create is working on it now. `Ok(false)` when it no longer qualifies.
    async fn delete_leftover(
        &self,
        owner: &Owner,
        leftover: &Leftover,
        min_age: Duration,
    ) -> Result<bool, ProviderError> {
        let _ = (owner, leftover, min_age);
        Ok(false)
    }

    /// How to connect to the environment's database as its user.
    async fn connection(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError>;

    /// How `envctl proxy` opens its own connections to the environment's database as its user:
    /// resolved once (on AWS one describe of the cluster), then each connection takes a fresh
    /// password from [`upstream::Credential::fresh`] (on AWS a token signed locally, no API call).
    async fn upstream(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<upstream::Upstream, ProviderError>;

    /// How a plan reads the ledger: the most reliable login the provider has (the local server's
    /// admin, whose password no one else changes; on AWS the spec's user with a token).
    async fn ledger_reader(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError> {
        self.connection(id, database).await
    }
}

/// The provider a command runs on, chosen once from `--provider`. An enum rather than a trait
/// object: the trait's async methods are not object-safe.
pub enum AnyProvider {
    Local(Box<local::LocalProvider>),
    Aws(Box<aws::AwsProvider>),
}

/// Calls the same method on whichever provider this is.
macro_rules! dispatch {
    ($self:ident, $provider:ident => $call:expr) => {
        match $self {
            AnyProvider::Local($provider) => $call,
            AnyProvider::Aws($provider) => $call,
        }
    };
}

impl Provider for AnyProvider {
    fn name(&self) -> &'static str {
        dispatch!(self, p => p.name())
    }

    async fn observe(&self, owner: &Owner) -> Result<Vec<ObservedEnv>, ProviderError> {
        dispatch!(self, p => p.observe(owner).await)
    }

    async fn create(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        tags: &Tags,
    ) -> Result<(), ProviderError> {
        dispatch!(self, p => p.create(owner, desired, tags).await)
    }

    async fn prepare(&self, owner: &Owner, desired: &DesiredEnv) -> Result<(), ProviderError> {
        dispatch!(self, p => p.prepare(owner, desired).await)
    }

    async fn wait_ready(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        timeout: Duration,
        on_wait: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), ProviderError> {
        dispatch!(self, p => p.wait_ready(owner, desired, timeout, on_wait).await)
    }

    async fn update(&self, owner: &Owner, desired: &DesiredEnv) -> Result<(), ProviderError> {
        dispatch!(self, p => p.update(owner, desired).await)
    }

    async fn update_tags(
        &self,
        owner: &Owner,
        id: &ClusterId,
        update: &TagUpdate,
    ) -> Result<(), ProviderError> {
        dispatch!(self, p => p.update_tags(owner, id, update).await)
    }

    async fn delete(
        &self,
        owner: &Owner,
        id: &ClusterId,
        options: DeleteOptions,
    ) -> Result<(), ProviderError> {
        dispatch!(self, p => p.delete(owner, id, options).await)
    }

    async fn leftovers(&self, owner: &Owner) -> Result<Vec<Leftover>, ProviderError> {
        dispatch!(self, p => p.leftovers(owner).await)
    }

    async fn delete_leftover(
        &self,
        owner: &Owner,
        leftover: &Leftover,
        min_age: Duration,
    ) -> Result<bool, ProviderError> {
        dispatch!(self, p => p.delete_leftover(owner, leftover, min_age).await)
    }

    async fn connection(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError> {
        dispatch!(self, p => p.connection(id, database).await)
    }

    async fn ledger_reader(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError> {
        dispatch!(self, p => p.ledger_reader(id, database).await)
    }

    async fn upstream(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<upstream::Upstream, ProviderError> {
        dispatch!(self, p => p.upstream(id, database).await)
    }
}
