//! Command-line types (clap). Only types: their `///` comments are the `--help` text users read,
//! so they are written for users. Resolution into settings happens in `settings.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Per-branch PostgreSQL databases, declared in git.
///
/// envctl reads `environments/*.yaml` (which branches get a database, and how) and `schemas/`
/// (SQL migrations and seeds), compares them with the live databases it owns, and makes them
/// match. The local provider (the default) runs everything on a PostgreSQL server on this machine;
/// the aws provider creates Aurora PostgreSQL clusters with express configuration.
///
/// envctl changes only what carries its tags for this repository and this id prefix
/// (ENVCTL_PREFIX, default `envctl`): a prefix is a namespace, and environments under another one
/// are never seen or touched. One environment's problem blocks that environment only; the others
/// go on and the command exits 1.
#[derive(Debug, Parser)]
#[command(
    name = "envctl",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Work in the repository that holds DIR (envctl uses its git root).
    #[arg(
        short = 'C',
        long = "directory",
        value_name = "DIR",
        default_value = ".",
        global = true,
        help_heading = "Global options"
    )]
    pub directory: PathBuf,

    /// Where environments live.
    #[arg(
        long,
        value_enum,
        env = "ENVCTL_PROVIDER",
        default_value = "local",
        global = true,
        help_heading = "Global options"
    )]
    pub provider: ProviderKind,

    /// Repository that owns the environments [default: $GITHUB_REPOSITORY, else the `origin` remote].
    #[arg(
        long,
        value_name = "OWNER/NAME",
        env = "ENVCTL_REPO",
        global = true,
        help_heading = "Global options"
    )]
    pub repo: Option<String>,

    /// When to colour output (NO_COLOR is honoured).
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        global = true,
        help_heading = "Global options"
    )]
    pub color: ColorChoice,

    /// Say more about what is happening (observed environments, ledgers read).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    pub verbose: u8,

    /// Print only errors and requested data.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Databases on a PostgreSQL server on this machine ($ENVCTL_LOCAL_URL, else a private one).
    Local,
    /// Aurora PostgreSQL clusters with express configuration, in the account and Region of the
    /// standard AWS credential chain (AWS_ENDPOINT_URL honoured).
    Aws,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Aws => "aws",
        }
    }

    /// Whether its databases take IAM authentication tokens (`envctl token --branch`), known
    /// before the provider is opened.
    pub fn signs_iam_tokens(self) -> bool {
        matches!(self, ProviderKind::Aws)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every environment file, migration and seed, and report every problem.
    ///
    /// Errors name `file:line:column`. Migrations are also linted for what is unsafe on a live
    /// database (squawk's rules: locks held while a table is rewritten, indexes built without
    /// CONCURRENTLY, dropped or renamed columns and tables…): warnings, with the safer way.
    /// `-- squawk-ignore RULE` on the line before a statement silences RULE for that statement.
    /// In GitHub Actions both are also printed as annotations. Exits 0 when everything is valid
    /// (lint warnings included, unless --strict), 1 otherwise.
    Validate(ValidateArgs),

    /// Show what `apply` would do.
    ///
    /// Exits 0 (or 2 with --detailed-exitcode when something would change), and 1 when an
    /// environment is blocked (its reason is in the plan) or on error.
    Plan(PlanArgs),

    /// Make the live environments match the desired state.
    ///
    /// Each environment in scope is worked on by itself: one that fails or is blocked stops only
    /// itself. On a terminal it asks before deleting, replacing or resetting; without one it needs
    /// --yes. Exits 0 when every environment is done, and 1 when one failed or is blocked (its
    /// reason is printed), when the question was answered no or could not be asked, or on error.
    Apply(ApplyArgs),

    /// Show how a branch's live database schema differs from another branch's.
    ///
    /// Reads the catalogs of both environments' databases (over the data plane, as `url` would
    /// connect; one query per kind of object) and compares schemas, tables, columns, constraints,
    /// indexes, views, materialized views, sequences, enums, domains, functions, procedures,
    /// triggers, extensions and row-level-security policies by name: `+` is only in BRANCH's
    /// database, `-` only in AGAINST's, `~` in both but different. envctl's own ledger schema is
    /// left out. Exits 0 (or 2 with --detailed-exitcode when they differ), 1 on error.
    Diff(DiffArgs),

    /// Print a branch's review for its pull request: what the GitHub workflow comments and
    /// writes to the run's summary.
    ///
    /// Markdown: a blocked or failed result first, then the plan (with its migration lint), the
    /// lint of the migrations that merging would run on the default branch's database, the
    /// schema diff of the branch's database against the default branch's, and how to connect.
    /// At most --max-chars characters, cut between sections or between the items of one, with
    /// every code block closed. Exits 1 when the plan is blocked (0 with --applied).
    Review(ReviewArgs),

    /// Delete the environments of deleted and merged branches, of branches no spec covers any
    /// more, and those past their ttl.
    ///
    /// Each deletion states its reason and is re-checked on the live resource and in git right
    /// before it happens. Never deletes the default branch's environment, a protected one, or one
    /// with deletion protection on; for a reason read from git, neither one applied after this
    /// clone last fetched every branch (those are listed as kept, with what to do). Deletes
    /// nothing and exits 1 when git cannot be trusted to say which branches are gone (a shallow or
    /// single-branch clone, `origin` another repository, no `origin` branches, an unreadable ref,
    /// no default branch) or when more than --max-deletions would go. Reads `origin`'s branches as
    /// of the last fetch: the GitHub workflow runs it on a fresh full clone.
    Prune(PruneArgs),

    /// Delete one branch's environment, and what an interrupted create of it left (the local
    /// provider's `{id}-creating`).
    Destroy(DestroyArgs),

    /// Empty one branch's database and migrate and seed it from scratch.
    ///
    /// Refuses a protected environment (`lifecycle.protect: true`; set it to `false` first: reset
    /// has no --force). On a terminal it asks first; without one it needs --yes.
    Reset(ResetArgs),

    /// List the live environments of this repository.
    Status(StatusArgs),

    /// Print an IAM authentication token, like `aws rds generate-db-auth-token`.
    ///
    /// The same flags and the same token as the AWS CLI (valid 15 minutes for opening
    /// connections), signed with the credentials of the standard AWS chain. With `--branch`,
    /// the host, port and user of that branch's environment (`--provider aws`).
    Token(TokenArgs),

    /// Print a `postgres://` URL for a branch's database.
    ///
    /// The URL holds the password: the role's on the local provider, on AWS an IAM token, valid 15
    /// minutes for opening connections. In GitHub Actions the password is masked in the log first.
    /// A client that lives longer connects through `envctl proxy`, which needs no password.
    Url(BranchArg),

    /// Run a command with DATABASE_URL and the PG* variables set for a branch's database.
    ///
    /// They hold the database's password (on AWS an IAM token, valid 15 minutes for opening
    /// connections). With --proxy they point at a proxy on a free loopback port instead, which
    /// lives as long as the command and needs no password: for long-running tools such as
    /// `drizzle-kit studio`. The caller's PGHOSTADDR, PGSERVICE, PGSERVICEFILE and the other
    /// libpq variables that would take the command elsewhere are unset for it.
    ///
    /// SIGINT and SIGTERM are passed to the command. Exits with the command's status: 128 + N when
    /// signal N ended it, 127 when it is not found, 126 when it cannot run.
    Exec(ExecArgs),

    /// Serve a branch's database on loopback, with no password, to any PostgreSQL client.
    ///
    /// Prints one line on stdout before it accepts the first connection: the port, a space, and a
    /// `postgres://` URL (no password; `sslmode=disable`, since loopback is plain). Every client
    /// connection gets a connection of its own to the database, opened by the proxy as the
    /// spec's `database.user` (whatever user the client names) with a fresh credential: on AWS
    /// a newly signed IAM token over TLS, so GUIs and long sessions never see a token expire; on
    /// the local provider the role's password. The client's start-up parameters
    /// (application_name, options…) reach the server unchanged; cancel requests (Ctrl-C in psql)
    /// are passed on.
    ///
    /// With --all, one port serves every live environment of the repository: a client picks one
    /// by naming its branch (e.g. `feature/login`) or its cluster id as the database. The
    /// environments are those live when the proxy starts.
    ///
    /// SIGINT or SIGTERM stops accepting and lets open connections finish for up to --drain,
    /// then cancels their running queries and closes them (a second signal at once); exits 130
    /// or 143.
    Proxy(ProxyArgs),

    /// Print the JSON Schema of the environment file format.
    Schema,

    /// Print the least-privilege IAM policy (or trust policy) of envctl's roles on AWS.
    ///
    /// For this repository and prefix (ENVCTL_PREFIX) and the database users the specs name.
    /// `--role plan`, for pull requests, only reads. `--role apply` creates only with envctl's
    /// ownership tags, changes and deletes only what carries them, never deletes or unprotects an
    /// environment tagged `envctl:protect=true`, and connects only as those users. Put each on
    /// its role with `aws iam put-role-policy --policy-document file://policy.json` (again when a
    /// spec adds a user); `--trust` prints the role's trust policy.
    IamPolicy(IamPolicyArgs),

    /// Scaffold a repository: the GitHub workflow, a starter spec, a first migration, a seed and
    /// the JSON Schema.
    ///
    /// Writes `.github/workflows/envctl.yml`, `.github/dependabot.yml` (weekly updates of the
    /// workflow's SHA-pinned actions), `environments/preview.yaml` (every branch but Dependabot's
    /// and Renovate's), `schemas/migrations/0001_init.sql`, `schemas/seeds/dev.sql` and
    /// `schemas/environment.schema.json`, then prints the next steps (trying it locally, the plan
    /// and apply roles and their trust policies, the repository variables, `envctl doctor`).
    /// Writes nothing if any of them exists, unless --force; a Dependabot config of the
    /// repository's own is always kept. In a repository with specs or migrations of its own,
    /// writes only the workflow, Dependabot's config and the schema.
    Init(InitArgs),

    /// Check, before anything is created, that this repository, the provider and (on AWS) the
    /// account, role and Region are ready.
    ///
    /// One line per check: `✓`, `✗` with the fix, or `skipped` with why. In order: git (the
    /// repository, `origin`, the default branch, a full history, whether prune can trust this
    /// clone's view), the specs, the provider; on AWS the credentials and whom they resolve to,
    /// the Region, RDS and its DB cluster quota, each spec's engine version and scaling, the RDS
    /// CA bundle, and, when the caller may simulate its own policy, whether it allows every call
    /// envctl makes; locally the server binaries, its data directory and whether it runs. Never
    /// creates, changes or deletes anything, and never connects to a database. Exits 1 when a
    /// check fails.
    Doctor(DoctorArgs),

    /// Manage the private local PostgreSQL server.
    Local(LocalArgs),
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Branch whose database to compare [default: the current branch].
    #[arg(long, value_name = "BRANCH")]
    pub branch: Option<String>,

    /// Branch whose database to compare with [default: the default branch,
    /// ENVCTL_DEFAULT_BRANCH or `origin/HEAD`].
    #[arg(long, value_name = "BRANCH")]
    pub against: Option<String>,

    /// Print the diff as JSON (`format_version` 1).
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,

    /// Print the diff as Markdown (for a pull-request comment or $GITHUB_STEP_SUMMARY).
    #[arg(long)]
    pub markdown: bool,

    /// Exit 2 when the schemas differ, 0 when they do not, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// Branch to review [default: the current branch].
    #[arg(long, value_name = "BRANCH")]
    pub branch: Option<String>,

    /// Branch to compare with [default: the default branch, ENVCTL_DEFAULT_BRANCH or
    /// `origin/HEAD`; when neither is known, the review says so in place of the schema diff].
    #[arg(long, value_name = "BRANCH")]
    pub against: Option<String>,

    /// The commit under review, as the review names it (the workflow passes the pushed one).
    #[arg(long, value_name = "SHA")]
    pub commit: Option<String>,

    /// After an apply: how it ended (`success` or `failure`, as GitHub's step outcome says).
    #[arg(long, value_name = "OUTCOME", value_parser = ["success", "failure"])]
    pub applied: Option<String>,

    /// Most characters to print, 1000 to 1048576 (GitHub allows 65 536 in a comment).
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1_000..=1_048_576))]
    pub max_chars: u32,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Fail (exit 1) on migration lint findings too.
    #[arg(long)]
    pub strict: bool,
}

/// Which branches a command looks at.
#[derive(Debug, Args, Clone, Default)]
pub struct ScopeArgs {
    /// Branch to work on [default: the current branch].
    #[arg(long, value_name = "BRANCH", conflicts_with = "all")]
    pub branch: Option<String>,

    /// Every branch git knows (local and `origin`'s) that a spec covers or that has a live
    /// environment. Environments of branches git no longer knows are left alone (`envctl prune`
    /// deletes them, `envctl destroy` one).
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,

    /// Print the plan as JSON.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,

    /// Print the plan as Markdown (for a pull-request comment or $GITHUB_STEP_SUMMARY).
    #[arg(long)]
    pub markdown: bool,

    /// Also save the plan as JSON to FILE, for `envctl apply FILE`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Exit 2 when the plan has changes, 0 when it has none, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// Block instead of resetting a database whose migration history diverged.
    #[arg(long, conflicts_with = "reset")]
    pub no_reset: bool,

    /// Plan a reset of every environment in scope, diverged or not.
    #[arg(long)]
    pub reset: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A plan saved with `envctl plan --out`; refused when the live state, the desired state or
    /// the `--reset`/`--no-reset` flags differ from when it was made.
    #[arg(value_name = "PLANFILE", conflicts_with_all = ["branch", "all"])]
    pub plan_file: Option<PathBuf>,

    #[command(flatten)]
    pub scope: ScopeArgs,

    /// Do not ask; needed without a terminal when anything is deleted, replaced or reset.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// How many environments to work on at once, 1 to 65535.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Block instead of resetting a database whose migration history diverged.
    #[arg(long, conflicts_with = "reset")]
    pub no_reset: bool,

    /// Reset every environment in scope: empty it, then migrate and seed from scratch.
    #[arg(long)]
    pub reset: bool,

    /// Refuse to delete, replace or reset more than N environments in one run.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_deletions: usize,

    /// Refuse to create environments past N live ones for this repository.
    #[arg(
        long,
        value_name = "N",
        env = "ENVCTL_MAX_ENVIRONMENTS",
        default_value_t = 50
    )]
    pub max_environments: usize,

    /// How long to wait for a database to become ready, for another envctl's migrations, and
    /// for deletes, e.g. `15m`, `90s` (1s to 7d).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub wait_timeout: std::time::Duration,

    /// Print what was done as JSON (never a token or password).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show what would be deleted and why; delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Do not ask before deleting; needed without a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Refuse to delete anything when more than N environments would go (they are listed).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_deletions: usize,

    /// Print the plan (and, after a run, what happened to each) as JSON.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,

    /// Print the plan and what happened as Markdown (for $GITHUB_STEP_SUMMARY).
    #[arg(long)]
    pub markdown: bool,

    /// Exit 2 when there is (with --dry-run) or was something to delete, 0 when there is nothing.
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// How long to wait for each delete; also the age past which a leftover of an interrupted
    /// create is deleted, e.g. `15m` (1s to 7d).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub wait_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Branch whose environment to delete.
    #[arg(long, value_name = "BRANCH", required = true, value_parser = parse_branch)]
    pub branch: String,

    /// Do not ask; needed without a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Delete even a protected environment (and turn off its deletion protection first).
    #[arg(long)]
    pub force: bool,

    /// How long to wait for the provider and for the environment to be gone, e.g. `15m` (1s to
    /// 7d).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub wait_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Branch whose database to reset.
    #[arg(long, value_name = "BRANCH", required = true, value_parser = parse_branch)]
    pub branch: String,

    /// Do not ask; needed without a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// How long to wait for the database and for another envctl's migrations, e.g. `15m` (1s to
    /// 7d).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub wait_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print `{"environments": [...]}`, one object per live environment: `branch`, `env` (the
    /// spec's name), `cluster_id`, `state` (the provider's status), `min_acu`, `max_acu`,
    /// `schema_version` (the highest migration applied), `last_applied` and `expires_at` (RFC
    /// 3339; `expires_at` is when the ttl lets prune delete it, null without a ttl or when
    /// protected), `endpoint` (`host:port`), `source` (a data branch's source cluster id) and
    /// `masked` (`pending` until its masking commits, then `done`; both null for other
    /// environments), `missing_writer` (true for a cluster with no writer instance) and `refused`
    /// (why envctl will neither change nor delete it, else null). A field the provider or the
    /// tags do not give is null.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Database host name.
    #[arg(long, value_name = "HOST", required_unless_present = "branch")]
    pub hostname: Option<String>,

    /// Database port.
    #[arg(long, value_name = "PORT", default_value_t = 5432)]
    pub port: u16,

    /// Database user.
    #[arg(long, value_name = "USER", required_unless_present = "branch")]
    pub username: Option<String>,

    /// AWS Region [default: from the AWS configuration].
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Resolve host, port and user from this branch's environment instead.
    #[arg(long, value_name = "BRANCH", conflicts_with_all = ["hostname", "username"])]
    pub branch: Option<String>,
}

#[derive(Debug, Args)]
pub struct IamPolicyArgs {
    /// Which role: `plan` (pull requests: read-only, reads ledgers as `envctl_reader`) or
    /// `apply` (pushes, branch deletes and prune: creates, changes and deletes this repository's
    /// environments, never a protected one's cluster or writer).
    #[arg(long, value_enum, default_value = "apply")]
    pub role: RoleKind,

    /// Print the role's trust policy for GitHub Actions' OIDC provider instead: `plan` is
    /// assumed only by pull requests of the repository, `apply` only by runs on its branches.
    #[arg(long)]
    pub trust: bool,

    /// Scope the ARNs to this Region, in its partition (`cn-north-1` gives `arn:aws-cn:`,
    /// `us-gov-west-1` `arn:aws-us-gov:`) [default: every Region of the `aws` partition].
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Scope the ARNs to this AWS account [default: any].
    #[arg(long, value_name = "ACCOUNT_ID", value_parser = parse_account)]
    pub account: Option<String>,

    /// Print the document on one line (the default is indented).
    #[arg(long)]
    pub json: bool,
}

/// One of envctl's two IAM roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleKind {
    Plan,
    Apply,
}

/// A `--branch` that names a branch git could have (`git check-ref-format --branch`).
fn parse_branch(text: &str) -> Result<String, String> {
    crate::model::check_branch_name(text)?;
    Ok(text.to_owned())
}

/// A 12-digit AWS account id.
fn parse_account(text: &str) -> Result<String, String> {
    if text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text.to_owned())
    } else {
        Err(format!("`{text}` is not an AWS account id (12 digits)"))
    }
}

#[derive(Debug, Args)]
pub struct BranchArg {
    /// Branch [default: the current branch].
    #[arg(long, value_name = "BRANCH")]
    pub branch: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Branch [default: the current branch].
    #[arg(long, value_name = "BRANCH")]
    pub branch: Option<String>,

    /// Point the command at a proxy on a free loopback port that runs as long as it does (as
    /// `envctl proxy`), instead of handing it a password or token that expires.
    #[arg(long)]
    pub proxy: bool,

    /// The command and its arguments, after `--`.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Branch whose database to serve [default: the current branch].
    #[arg(long, value_name = "BRANCH", conflicts_with = "all")]
    pub branch: Option<String>,

    /// Serve every live environment of this repository; a client names the branch (or the
    /// cluster id) as its database.
    #[arg(long)]
    pub all: bool,

    /// Port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long, value_name = "PORT", default_value_t = 5432, value_parser = parse_port)]
    pub port: u16,

    /// IP address to listen on. Any other than loopback lets whoever reaches it use the
    /// database as its user, with no password (envctl warns).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1", value_parser = parse_listen_address)]
    pub address: std::net::IpAddr,

    /// Print the listening line as JSON: address, port, url and the environments served (never
    /// a password or token).
    #[arg(long)]
    pub json: bool,

    /// Client connections served at once, 1 to 10000; more are refused with SQLSTATE 53300 (a
    /// cancel request is always let through).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_connections: u32,

    /// After SIGINT or SIGTERM, how long open connections may go on before their queries are
    /// cancelled and they are closed, e.g. `10s` (at most `1h`); `0s` does that at once.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_drain)]
    pub drain: std::time::Duration,

    /// Close a connection after this long with no traffic either way, e.g. `30m` (1s to 7d),
    /// telling the client why and cancelling a query still running on the server [default:
    /// never].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<std::time::Duration>,

    /// How long opening a connection to the database may take, login included (1s to 7d): a
    /// paused cluster (0 ACU) takes some seconds to resume.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub connect_timeout: std::time::Duration,
}

/// A port number alone: an address given with it is refused, so that listening anywhere but
/// loopback always takes `--address`.
pub fn parse_port(text: &str) -> Result<u16, String> {
    if let Some((host, _)) = text.rsplit_once(':') {
        return Err(format!(
            "`{text}` is not a port number; to listen on `{}` rather than loopback, pass it as `--address` (anyone who reaches it gets the database)",
            host.trim_start_matches('[').trim_end_matches(']')
        ));
    }
    text.parse::<u16>()
        .map_err(|_| format!("`{text}` is not a port number (0 to 65535; 0 picks a free one)"))
}

/// An IP address to listen on; `localhost` is 127.0.0.1.
pub fn parse_listen_address(text: &str) -> Result<std::net::IpAddr, String> {
    if text.eq_ignore_ascii_case("localhost") {
        return Ok(std::net::Ipv4Addr::LOCALHOST.into());
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address, e.g. `127.0.0.1` or `::1`"))
}

/// `0s` to `1h`.
pub fn parse_drain(text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. `10s`, `2m`"))?;
    if duration > std::time::Duration::from_secs(3600) {
        return Err(format!("`{text}` is longer than the longest drain, `1h`"));
    }
    Ok(duration)
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite those of the files that already exist (never through a symbolic link).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print `{"format_version": 1, "ok": …, "checks": [{"check", "status", "detail", "fix"}]}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    #[command(subcommand)]
    pub command: LocalCommand,
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Stop the private PostgreSQL server.
    ///
    /// Its data stays under `.envctl/postgres/` (or `$TMPDIR/envctl-postgres-{hash}` when envctl
    /// runs as root and the `postgres` user cannot enter the repository's directory); the next
    /// command that needs the server starts it again.
    Stop,
    /// Print the private server's admin URL (holds its password), starting it if needed: for
    /// `psql` as the admin, or as ENVCTL_DATA_PLANE_OVERRIDE to try the aws provider offline.
    Url,
}

/// `90s`, `15m`, `1h`: from one second to seven days (a longer wait is a hang, and far ones
/// overflow the clock).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. `90s`, `15m`, `1h`"))?;
    if duration < std::time::Duration::from_secs(1) {
        return Err(format!("`{text}` is shorter than one second"));
    }
    if duration > std::time::Duration::from_secs(7 * 86_400) {
        return Err(format!("`{text}` is longer than the longest wait, `7d`"));
    }
    Ok(duration)
}

/// The flags whose value a variable can give, and the variable: an error about such a value names
/// the variable when the flag was not on the command line.
pub const ENV_FLAGS: &[(&str, &str)] = &[
    ("--provider", "ENVCTL_PROVIDER"),
    ("--repo", "ENVCTL_REPO"),
    ("--max-environments", "ENVCTL_MAX_ENVIRONMENTS"),
];

#[cfg(test)]
mod env_flag_tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_a_variable_gives_is_listed() {
        fn walk(command: &clap::Command, found: &mut std::collections::BTreeSet<(String, String)>) {
            for arg in command.get_arguments() {
                if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
                    found.insert((format!("--{long}"), env.to_string_lossy().into_owned()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, found);
            }
        }
        let mut found = std::collections::BTreeSet::new();
        walk(&super::Cli::command(), &mut found);
        let listed = super::ENV_FLAGS
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect();
        assert_eq!(found, listed);
    }
}
