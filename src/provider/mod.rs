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
pub mod copy;
pub mod database_settings;
pub mod local;
pub mod local_server;
pub mod local_setup;
pub mod masked_copy;
pub mod upstream;

use std::time::Duration;

use crate::cli::ProviderKind;
use crate::model::{ClusterId, DatabaseSettings, DesiredEnv, ObservedEnv, Owner, TagUpdate, Tags};

pub use crate::model::Leftover;
pub use crate::sql::{Connection, percent_encode};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Boxes an error as a [`ProviderError`] source.
/// What [`Provider::source_status`] found of a cluster envctl does not manage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    pub status: String,
    /// What the status means for a copy, where the provider can say.
    pub hint: Option<String>,
    /// A copy envctl made (under any repository or prefix) whose masking has not committed
    /// (`envctl:masked=pending`): its data is the unmasked data of its own source.
    pub masking_pending: bool,
    /// The digest of the masking rules and files a copy's masking committed with
    /// ([`crate::model::tags::masked_with`]), where it records one.
    pub masked_with: Option<String>,
    /// Its master user, which a copy keeps and masking logs in as, where the provider has one
    /// per cluster (AWS).
    pub master_user: Option<String>,
}

pub fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> BoxError {
    Box::new(e)
}

/// A driver error as a provider's failure, as users should read it ([`crate::sql::SqlError`]).
pub(crate) fn sql_failed(e: sqlx::Error) -> BoxError {
    boxed(crate::sql::SqlError(e))
}

/// Why a provider could not be opened or set up: what could not be done, what to do about it,
/// and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SetupError {
    pub message: String,
    pub hint: String,
    #[source]
    pub source: Option<BoxError>,
}

impl SetupError {
    pub fn new<E: Into<BoxError>>(
        message: impl Into<String>,
        hint: impl Into<String>,
        source: Option<E>,
    ) -> SetupError {
        SetupError {
            message: message.into(),
            hint: hint.into(),
            source: source.map(Into::into),
        }
    }
}

/// A provider error as a cause: "cannot reach the … provider" adds nothing under a message that
/// says what could not be reached, so its own cause stands in for it.
pub(crate) fn without_provider_layer(e: ProviderError) -> BoxError {
    match e {
        ProviderError::Unavailable { source, .. } => source,
        other => Box::new(other),
    }
}

/// What `envctl doctor` hands the provider's checks.
pub struct DoctorInput<'a> {
    pub root: &'a std::path::Path,
    pub git: Option<&'a crate::git::Git>,
    /// This run's owner, when the repository is known.
    pub owner: Option<&'a Owner>,
    /// What the valid specs ask for (name, engine version, scaling).
    pub specs: &'a [crate::model::SpecAsk],
}

/// The provider `kind` names, checked read-only for `envctl doctor` (never opened: opening the
/// local provider would start its server).
pub async fn doctor(kind: ProviderKind, input: &DoctorInput<'_>) -> Vec<crate::model::Check> {
    match kind {
        ProviderKind::Local => local_setup::doctor(input.root, input.git),
        ProviderKind::Aws => aws::doctor::checks(input.owner, input.specs).await,
    }
}

/// What opening a provider needs from the command that opens it.
pub struct OpenContext<'a> {
    /// The repository's root (the local provider keeps its private server under it).
    pub root: &'a std::path::Path,
    pub git: Option<&'a crate::git::Git>,
    /// How long to wait for the provider to answer.
    pub timeout: Duration,
    /// Tells the user something worth knowing (a server was started).
    pub note: &'a (dyn Fn(&str) + Send + Sync),
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
    #[error("`{id}` was not ready after {}", crate::model::duration_text(*waited))]
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
    /// The provider cannot do this.
    #[error("the {provider} provider has no {what}")]
    Unsupported {
        provider: &'static str,
        what: &'static str,
    },
    /// The live resource no longer says what the delete was decided on.
    #[error("kept `{id}`: {what}")]
    Changed { id: ClusterId, what: String },
    /// A signal asked envctl to stop while it waited: the resource carries on without it.
    #[error(
        "stopped waiting for `{id}` ({what}) on a signal; running the command again picks it up where it stopped"
    )]
    Interrupted { id: ClusterId, what: String },
}

/// What a create did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// Made it now.
    New,
    /// Found it made already (another run, or an earlier attempt whose answer was lost): ours,
    /// so the create succeeds without making anything.
    Existing,
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

/// Refuses to create with tags that do not name `owner` (a caller's mistake).
pub fn check_create_tags(owner: &Owner, id: &ClusterId, tags: &Tags) -> Result<(), ProviderError> {
    match owner.owns(tags) {
        true => Ok(()),
        false => Err(ProviderError::CreateFailed(
            id.clone(),
            "internal error: the tags to write do not name this repository and prefix".into(),
        )),
    }
}

/// The checks every delete makes on the live resource right before it acts, whatever the
/// provider: its id under `owner`'s prefix (every id envctl makes is: one outside it was tagged
/// by hand, even with `--force`); unless forced, neither `envctl:protect=true` nor deletion
/// protection; and every tag the delete was decided on unchanged ([`DeleteOptions::unchanged`]).
/// Ownership itself (the tags) the provider checks as it reads the resource.
pub fn check_delete(
    owner: &Owner,
    id: &ClusterId,
    tags: &Tags,
    deletion_protection: bool,
    options: &DeleteOptions,
) -> Result<(), ProviderError> {
    if let Some(why) = owner.id_outside_prefix(id) {
        return Err(ProviderError::NotOurs {
            id: id.clone(),
            why,
        });
    }
    if !options.force {
        if tags.get(crate::model::tags::PROTECT).map(String::as_str) == Some("true") {
            return Err(ProviderError::Protected(id.clone()));
        }
        if deletion_protection {
            return Err(ProviderError::DeletionProtected(id.clone()));
        }
    }
    match changed_tag(tags, &options.unchanged) {
        Some(what) => Err(ProviderError::Changed {
            id: id.clone(),
            what,
        }),
        None => Ok(()),
    }
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
    /// with this id (and says which).
    async fn create(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        tags: &Tags,
    ) -> Result<Created, ProviderError>;

    /// Gives a live environment that lists nothing to serve its database
    /// ([`ObservedEnv::writerless`]) what it lacks, after re-checking it is `owner`'s: on AWS a
    /// writer instance. Succeeds when it has one already.
    async fn repair(&self, owner: &Owner, desired: &DesiredEnv) -> Result<(), ProviderError> {
        let _ = (owner, desired);
        Err(ProviderError::Unsupported {
            provider: self.name(),
            what: "repairs",
        })
    }

    /// Of these ids (those a plan would create), the ones a resource already holds that is not
    /// `owner`'s, with whose it is, in words: a create there would be refused. Read only when a
    /// plan creates something. Empty where nothing but envctl makes resources (the default).
    async fn occupants(
        &self,
        owner: &Owner,
        ids: &[ClusterId],
    ) -> Result<std::collections::BTreeMap<ClusterId, String>, ProviderError> {
        let _ = (owner, ids);
        Ok(Default::default())
    }

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
    /// (untagged ones carry no owner; see [`Leftover::branch`]), and what creates are at work on
    /// as they are listed ([`Leftover::at_work`]: those are nobody's leftovers). None where
    /// creates leave none (AWS creates a cluster and its tags in one call).
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

    /// Makes a data branch's environment as a copy of `source` (one of `owner`'s environments,
    /// or a cluster envctl does not manage, which it only reads), with these tags from the start,
    /// or succeeds if one of `owner`'s already exists with this id. Returns the live copy's
    /// `envctl:mask-id`: the one in `tags`, or the one another run made it with.
    async fn clone_env(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        source: &ClusterId,
        tags: &Tags,
    ) -> Result<Option<String>, ProviderError> {
        let _ = (owner, desired, source, tags);
        Err(ProviderError::Unsupported {
            provider: self.name(),
            what: "data branches",
        })
    }

    /// The status of a cluster envctl does not manage (a data branch's `from.cluster`), only
    /// read; `None` when it does not exist.
    async fn source_status(&self, id: &ClusterId) -> Result<Option<SourceStatus>, ProviderError> {
        let _ = id;
        Err(ProviderError::Unsupported {
            provider: self.name(),
            what: "data branches",
        })
    }

    /// A data branch's copy `id`, made with `mask_id`, has its masking committed: its users may
    /// connect from now on (the local provider keeps them out of a copy until then; on AWS the
    /// clone's users are the source's, and nothing can keep them out). A copy made again under
    /// the same id meanwhile (another `envctl:mask-id`) is left shut.
    async fn masking_committed(
        &self,
        owner: &Owner,
        id: &ClusterId,
        mask_id: Option<&str>,
    ) -> Result<(), ProviderError> {
        let _ = (owner, id, mask_id);
        Ok(())
    }

    /// How to connect to the environment's database as its master user (masking runs as it).
    async fn master_connection(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError> {
        self.connection(id, database).await
    }

    /// What the account offers for each of these engine versions (`None`: the default one):
    /// what scaling each allows. Empty where the provider has no such limits (local).
    async fn engine_support(
        &self,
        versions: &std::collections::BTreeSet<Option<String>>,
    ) -> Result<crate::model::EngineSupportMap, ProviderError> {
        let _ = versions;
        Ok(Default::default())
    }

    /// Whether a branch that exists only in this clone (not on `origin`) has a live environment
    /// worth keeping: true where environments serve this machine (the local provider), so prune
    /// counts local branches as live too.
    fn serves_local_branches(&self) -> bool {
        false
    }

    /// Whether an environment can be deleted and made again (a reset) within a second: one
    /// server's databases can, an AWS cluster cannot. A running proxy's masking gate keeps no
    /// earlier yes where it can.
    fn makes_again_quickly(&self) -> bool {
        false
    }

    /// A fresh IAM authentication token for `user` at the environment's endpoint (what
    /// `envctl token --branch` prints), where the provider signs them.
    async fn auth_token(&self, id: &ClusterId, user: &str) -> Result<String, ProviderError> {
        let _ = (id, user);
        Err(ProviderError::Unsupported {
            provider: self.name(),
            what: "IAM authentication tokens",
        })
    }

    /// How a plan reads the ledger, best first: the logins to try in turn while one is refused
    /// (the local server's admin, whose password no one else changes; on AWS the ledger reader,
    /// which the plan role may use, then the spec's user).
    async fn ledger_readers(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Vec<Connection>, ProviderError> {
        Ok(vec![self.connection(id, database).await?])
    }
}

/// The provider a command runs on, chosen once from `--provider`. An enum rather than a trait
/// object: the trait's async methods are not object-safe.
pub enum AnyProvider {
    Local(Box<local::LocalProvider>),
    Aws(Box<aws::AwsProvider>),
}

impl AnyProvider {
    /// The provider `kind` names, opened: the one place a provider is chosen.
    pub async fn open(
        kind: ProviderKind,
        context: &OpenContext<'_>,
    ) -> Result<AnyProvider, SetupError> {
        Ok(match kind {
            ProviderKind::Local => AnyProvider::Local(Box::new(
                local_setup::open(context.root, context.git, context.timeout, context.note).await?,
            )),
            ProviderKind::Aws => AnyProvider::Aws(Box::new(
                aws::AwsProvider::open(context.timeout, context.note).await?,
            )),
        })
    }
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
    ) -> Result<Created, ProviderError> {
        dispatch!(self, p => p.create(owner, desired, tags).await)
    }

    async fn repair(&self, owner: &Owner, desired: &DesiredEnv) -> Result<(), ProviderError> {
        dispatch!(self, p => p.repair(owner, desired).await)
    }

    async fn occupants(
        &self,
        owner: &Owner,
        ids: &[ClusterId],
    ) -> Result<std::collections::BTreeMap<ClusterId, String>, ProviderError> {
        dispatch!(self, p => p.occupants(owner, ids).await)
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

    async fn ledger_readers(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Vec<Connection>, ProviderError> {
        dispatch!(self, p => p.ledger_readers(id, database).await)
    }

    fn serves_local_branches(&self) -> bool {
        dispatch!(self, p => p.serves_local_branches())
    }

    fn makes_again_quickly(&self) -> bool {
        dispatch!(self, p => p.makes_again_quickly())
    }

    async fn clone_env(
        &self,
        owner: &Owner,
        desired: &DesiredEnv,
        source: &ClusterId,
        tags: &Tags,
    ) -> Result<Option<String>, ProviderError> {
        dispatch!(self, p => p.clone_env(owner, desired, source, tags).await)
    }

    async fn source_status(&self, id: &ClusterId) -> Result<Option<SourceStatus>, ProviderError> {
        dispatch!(self, p => p.source_status(id).await)
    }

    async fn masking_committed(
        &self,
        owner: &Owner,
        id: &ClusterId,
        mask_id: Option<&str>,
    ) -> Result<(), ProviderError> {
        dispatch!(self, p => p.masking_committed(owner, id, mask_id).await)
    }

    async fn master_connection(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<Connection, ProviderError> {
        dispatch!(self, p => p.master_connection(id, database).await)
    }

    async fn engine_support(
        &self,
        versions: &std::collections::BTreeSet<Option<String>>,
    ) -> Result<crate::model::EngineSupportMap, ProviderError> {
        dispatch!(self, p => p.engine_support(versions).await)
    }

    async fn auth_token(&self, id: &ClusterId, user: &str) -> Result<String, ProviderError> {
        dispatch!(self, p => p.auth_token(id, user).await)
    }

    async fn upstream(
        &self,
        id: &ClusterId,
        database: &DatabaseSettings,
    ) -> Result<upstream::Upstream, ProviderError> {
        dispatch!(self, p => p.upstream(id, database).await)
    }
}
