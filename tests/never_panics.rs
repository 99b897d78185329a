//! Bad input never panics: arbitrary bytes and YAML-shaped text in environment files, arbitrary
//! migration file names and contents, and snapshots holding refused and oversized files always
//! end in `Ok` or diagnostics. The SQL statement splitter loses no code, whatever quotes,
//! comments and bodies it is given, and link resolution ends on any tree. A saved plan
//! (`apply PLANFILE`), truncated or tampered with, is refused unless what it would apply is
//! exactly what was planned. The proxy's protocol parsers take any bytes a client or server
//! sends, and a start-up message reads back as it was written.
//!
//! Each target is a counted fuzz run (`support::reliability::fuzz`): it prints how many inputs ran;
//! `scripts/reliability.sh --long` runs many more (RELIABILITY.md).

mod support;

use envctl::commands::saved_plan;
use envctl::model::{
    ClusterId, MAX_CLUSTER_ID_LEN, ObservedEnv, Owner, Plan, PlanFlags, Prefix, RepoName, Wanted,
    check_branch_name, decode_branch_tag, encode_branch_tag, is_valid_rds_identifier, tags,
};
use envctl::plan::{PlanInput, PlanOptions, render};
use envctl::source::{Node, resolve_link};
use envctl::spec::migrations::{concurrent_index_target, split_statements};
use envctl::spec::{self, FileContent, READ_DIRS, Refusal, RepoFiles};
use proptest::prelude::*;
use support::reliability::fuzz;

fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("version: 1\n".to_owned()),
        Just("name: x\n".to_owned()),
        Just("branches: [\"a/*\", main]\n".to_owned()),
        Just("cluster:\n  scaling: { minAcu: 0, maxAcu: 4 }\n".to_owned()),
        Just("database:\n  seeds: [schemas/seeds/s.sql]\n  schemaVersion: 7\n".to_owned()),
        Just("lifecycle: { ttl: 3d, protect: yes }\n".to_owned()),
        Just("&a [*a]\n".to_owned()),
        Just("? [a]\n: b\n".to_owned()),
        Just("---\n".to_owned()),
        Just("  - \n".to_owned()),
        "[a-zA-Z0-9 :,\\[\\]{}&*!|>'\"#%@`-]{0,40}\n",
    ];
    proptest::collection::vec(token, 0..12).prop_map(|parts| parts.concat())
}

/// SQL-shaped text: the pieces the splitter treats specially, in any order.
fn sqlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("CREATE ".to_owned()),
        Just("OR REPLACE ".to_owned()),
        Just("FUNCTION f() ".to_owned()),
        Just("PROCEDURE ".to_owned()),
        Just("BEGIN ".to_owned()),
        Just("ATOMIC ".to_owned()),
        Just("CASE ".to_owned()),
        Just("END".to_owned()),
        Just("COMMIT".to_owned()),
        Just("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ".to_owned()),
        Just(" ON ONLY ".to_owned()),
        Just(".".to_owned()),
        Just("U&".to_owned()),
        Just("E'".to_owned()),
        Just("e'".to_owned()),
        Just("somee'".to_owned()),
        Just("'".to_owned()),
        Just("''".to_owned()),
        Just("\\".to_owned()),
        Just("\"".to_owned()),
        Just("$$".to_owned()),
        Just("$a$".to_owned()),
        Just("x$a$".to_owned()),
        Just("$1".to_owned()),
        Just("--".to_owned()),
        Just("/*".to_owned()),
        Just("*/".to_owned()),
        Just(";".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just(" ".to_owned()),
        Just("\n".to_owned()),
        Just("é".to_owned()),
        "[a-zA-Z0-9 ;'\"$()\\/*\n-]{0,8}",
    ];
    proptest::collection::vec(token, 0..24).prop_map(|parts| parts.concat())
}

/// Every statement is a slice of the input at its offset, in order, and what lies between
/// statements holds no code: splitting it again finds nothing.
#[test]
fn split_statements_covers_the_code() {
    fuzz(
        "split_statements_covers_the_code",
        400,
        50,
        sqlish(),
        |sql| {
            let statements = split_statements(&sql);
            let mut end = 0;
            for (offset, text) in &statements {
                prop_assert!(*offset >= end, "{statements:?}");
                prop_assert!(!text.is_empty());
                prop_assert_eq!(&sql[*offset..*offset + text.len()], *text);
                prop_assert!(
                    split_statements(&sql[end..*offset]).is_empty(),
                    "code lost before {:?} in {:?}",
                    text,
                    sql
                );
                end = offset + text.len();
            }
            prop_assert!(
                split_statements(&sql[end..]).is_empty(),
                "code lost at the end of {:?}",
                sql
            );
            Ok(())
        },
    );
}

#[test]
fn split_statements_of_arbitrary_text_gives_a_result() {
    fuzz(
        "split_statements_of_arbitrary_text",
        400,
        250,
        "\\PC{0,300}",
        |sql| {
            let _ = split_statements(&sql);
            Ok(())
        },
    );
}

/// Whatever the text, a concurrent index target names an index and a table the server could
/// have: 1 to 63 bytes each, at most three dotted parts.
#[test]
fn concurrent_index_target_of_arbitrary_text_is_a_valid_name_or_none() {
    let text = prop_oneof![
        sqlish(),
        "\\PC{0,200}",
        sqlish().prop_map(|s| format!("CREATE INDEX CONCURRENTLY {s}"))
    ];
    fuzz("concurrent_index_target", 400, 100, text, |sql| {
        if let Some(target) = concurrent_index_target(&sql) {
            prop_assert!((1..=63).contains(&target.index.len()), "{target:?}");
            prop_assert!((1..=3).contains(&target.table.len()), "{target:?}");
            prop_assert!(
                target.table.iter().all(|t| (1..=63).contains(&t.len())),
                "{target:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn arbitrary_spec_text_gives_a_result() {
    fuzz("spec_yamlish_text", 400, 150, yamlish(), |text| {
        let mut files = RepoFiles::default();
        files.insert_bytes("schemas/seeds/s.sql", b"SELECT 1;".to_vec());
        files.insert_bytes("environments/a.yaml", text.into_bytes());
        if let Err(diagnostics) = spec::load(&files) {
            prop_assert!(diagnostics.iter().all(|d| d.line >= 1 && d.column >= 1));
        }
        Ok(())
    });
}

#[test]
fn arbitrary_bytes_give_a_result() {
    let bytes = proptest::collection::vec(any::<u8>(), 0..300);
    fuzz("spec_and_migration_bytes", 400, 500, bytes, |bytes| {
        let mut files = RepoFiles::default();
        files.insert_bytes("environments/a.yaml", bytes.clone());
        files.insert_bytes("schemas/migrations/0001_x.sql", bytes);
        if let Err(diagnostics) = spec::load(&files) {
            prop_assert!(diagnostics.iter().all(|d| d.line >= 1 && d.column >= 1));
        }
        Ok(())
    });
}

#[test]
fn arbitrary_migration_names_give_a_result() {
    let input = ("[0-9a-z_.-]{0,20}", ".{0,200}");
    fuzz("migration_names", 400, 150, input, |(name, sql)| {
        let mut files = RepoFiles::default();
        let path = format!("schemas/migrations/{name}.sql");
        files.insert_bytes(
            path.clone(),
            format!("-- envctl:no-transaction\n{sql}").into_bytes(),
        );
        match spec::load(&files) {
            // A name that loads is `NNNN_description.sql` with a positive version.
            Ok(catalog) => {
                for migration in catalog.migrations.iter() {
                    prop_assert!(migration.version >= 1, "{path}");
                    prop_assert!(
                        name.starts_with(|c: char| c.is_ascii_digit()),
                        "{path} loaded"
                    );
                }
            }
            Err(diagnostics) => {
                prop_assert!(diagnostics.iter().all(|d| d.line >= 1 && d.column >= 1));
            }
        }
        Ok(())
    });
}

/// Any refusal, with targets from a small alphabet of path pieces.
fn refusal() -> impl Strategy<Value = Refusal> {
    let target = "[a./]{0,6}";
    prop_oneof![
        target.prop_map(|target| Refusal::LinkOutside { target }),
        target.prop_map(|target| Refusal::LinkDangling { target }),
        target.prop_map(|target| Refusal::LinkLoop { target }),
        target.prop_map(|target| Refusal::LinkToDirectory { target }),
        target.prop_map(|target| Refusal::DirectoryLink { target }),
        ("[a-z ()]{0,12}", proptest::option::of(target))
            .prop_map(|(kind, target)| Refusal::NotRegular { kind, target }),
    ]
}

fn content() -> impl Strategy<Value = FileContent> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(FileContent::Bytes),
        Just(FileContent::Bytes(b"version: 1\nname: a\nbranches: [main]\ncluster:\n  scaling: { minAcu: 0, maxAcu: 1 }\ndatabase:\n  seeds: [schemas/seeds/s.sql]\n".to_vec())),
        (any::<u64>(), any::<u64>()).prop_map(|(size, limit)| FileContent::TooLarge { size, limit }),
        refusal().prop_map(FileContent::Refused),
    ]
}

fn snapshot_path() -> impl Strategy<Value = String> {
    prop_oneof![
        "environments/[a-z]{1,3}\\.(yaml|yml|YAML)",
        "schemas/migrations/[0-9]{0,3}_?[a-z]{0,2}\\.(sql|SQL)",
        "schemas/seeds/([a-z]/)?[a-z]{1,2}\\.(sql|Sql)",
        Just("schemas/seeds/s.sql".to_owned()),
        proptest::sample::select(READ_DIRS.to_vec()).prop_map(str::to_owned),
    ]
}

/// A small tree of directories, files, links and pipes over the names `a`, `b`, `c.sql`.
fn tree() -> impl Strategy<Value = Vec<(String, Node)>> {
    let path = "(a|b|c\\.sql)(/(a|b|c\\.sql)){0,2}";
    let node = prop_oneof![
        Just(Node::File),
        Just(Node::Dir),
        Just(Node::Other("a named pipe (FIFO)")),
        "(/|\\.\\./|\\./|a/|b/|c\\.sql|\\.\\.|a|b){0,5}".prop_map(Node::Link),
    ];
    proptest::collection::vec((path, node), 0..12)
}

/// Refused and oversized files anywhere in a snapshot, read directories included, give
/// diagnostics at real places; a refused file never loads.
#[test]
fn snapshots_with_refused_files_give_a_result() {
    let entries = proptest::collection::vec((snapshot_path(), content()), 0..10);
    fuzz(
        "snapshots_with_refused_files",
        300,
        200,
        entries,
        |entries| {
            let mut files = RepoFiles::default();
            for (path, content) in &entries {
                files.insert(path.clone(), content.clone());
            }
            // The last content inserted at a path is the one the snapshot holds.
            let last: std::collections::BTreeMap<_, _> = entries.iter().cloned().collect();
            match spec::load(&files) {
                Ok(catalog) => {
                    for (path, content) in &last {
                        if matches!(content, FileContent::Refused(_)) {
                            prop_assert!(!catalog.seeds.contains_key(path));
                            prop_assert!(catalog.migrations.iter().all(|m| m.path != *path));
                            prop_assert!(catalog.specs.iter().all(|s| s.file != *path));
                        }
                    }
                }
                Err(diagnostics) => {
                    prop_assert!(diagnostics.iter().all(|d| d.line >= 1 && d.column >= 1));
                }
            }
            Ok(())
        },
    );
}

/// Whatever links a tree holds, resolution ends, and what it reaches is a file of the tree.
#[test]
fn link_resolution_ends_on_a_file_or_a_refusal() {
    let input = (tree(), "(a|b|c\\.sql)(/(a|b|c\\.sql)){0,2}");
    fuzz("link_resolution", 300, 100, input, |(tree, start)| {
        let lookup = |path: &str| -> Result<Node, ()> {
            Ok(tree
                .iter()
                .find(|(p, _)| p == path)
                .map_or(Node::Missing, |(_, n)| n.clone()))
        };
        if let Ok(Ok(resolved)) = resolve_link(&start, lookup) {
            prop_assert_eq!(lookup(&resolved), Ok(Node::File));
        }
        Ok(())
    });
}

/// A value for one field of a spec: well-typed, ill-typed, out of range, or strange.
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("0.25".to_owned()),
        Just("256.5".to_owned()),
        Just("1e309".to_owned()),
        Just("9223372036854775808".to_owned()),
        Just("latest".to_owned()),
        Just("true".to_owned()),
        Just("null".to_owned()),
        Just("~".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("\"feature/**\"".to_owned()),
        Just("[\"a/*\", \"a/*\", \"[\"]".to_owned()),
        Just("{ team: web, \"envctl:x\": y }".to_owned()),
        Just("7d".to_owned()),
        Just("0s".to_owned()),
        Just("99999999999d".to_owned()),
        "-?[0-9]{1,22}(\\.[0-9]{1,4})?",
        "[a-zA-Z0-9/*_.:-]{0,12}",
        "\"\\PC{0,12}\"",
    ]
}

/// A spec with every key in place and each value drawn from [`field_value`], sometimes a key
/// misspelt: the semantic checks, not the YAML parser, see most of these.
fn spec_with_values() -> impl Strategy<Value = String> {
    let keys = [
        "version",
        "name",
        "branches",
        "engine",
        "engineVersion",
        "express",
        "minAcu",
        "maxAcu",
        "deletionProtection",
        "tags",
        "dbname",
        "user",
        "schemaVersion",
        "seeds",
        "ttl",
        "protect",
    ];
    (
        proptest::collection::vec(field_value(), keys.len()),
        proptest::option::of(0..keys.len()),
    )
        .prop_map(move |(values, misspelt)| {
            let v = |key: &str| {
                let i = keys.iter().position(|k| *k == key).unwrap();
                values[i].clone()
            };
            let k = |key: &'static str| -> String {
                let i = keys.iter().position(|k| *k == key).unwrap();
                match misspelt == Some(i) {
                    true => format!("{key}x"),
                    false => key.to_owned(),
                }
            };
            format!(
                "{}: {}\n{}: {}\n{}: {}\ncluster:\n  {}: {}\n  {}: {}\n  {}: {}\n  scaling: {{ {}: {}, {}: {} }}\n  {}: {}\n  {}: {}\ndatabase:\n  name: {}\n  {}: {}\n  {}: {}\n  {}: {}\nlifecycle:\n  {}: {}\n  {}: {}\n",
                k("version"), v("version"), k("name"), v("name"), k("branches"), v("branches"),
                k("engine"), v("engine"), k("engineVersion"), v("engineVersion"), k("express"), v("express"),
                k("minAcu"), v("minAcu"), k("maxAcu"), v("maxAcu"),
                k("deletionProtection"), v("deletionProtection"), k("tags"), v("tags"),
                v("dbname"), k("user"), v("user"), k("schemaVersion"), v("schemaVersion"), k("seeds"), v("seeds"),
                k("ttl"), v("ttl"), k("protect"), v("protect"),
            )
        })
}

/// Specs whose values are anything give a catalog or diagnostics at real places, and a catalog
/// only holds what validation promises (scaling in range and ordered, a positive version).
#[test]
fn specs_with_arbitrary_values_validate_or_say_where() {
    fuzz("spec_values", 400, 50, spec_with_values(), |text| {
        let mut files = RepoFiles::default();
        files.insert_bytes("schemas/seeds/s.sql", b"SELECT 1;".to_vec());
        files.insert_bytes("schemas/migrations/0001_a.sql", b"SELECT 1;".to_vec());
        files.insert_bytes("environments/a.yaml", text.clone().into_bytes());
        match spec::load(&files) {
            Ok(catalog) => {
                for spec in &catalog.specs {
                    let scaling = spec.cluster.scaling;
                    prop_assert!(scaling.min_acu <= scaling.max_acu, "{text}");
                    prop_assert!(scaling.max_acu.as_f64() <= 256.0, "{text}");
                }
            }
            Err(diagnostics) => {
                prop_assert!(!diagnostics.is_empty());
                prop_assert!(diagnostics.iter().all(|d| d.line >= 1 && d.column >= 1));
            }
        }
        Ok(())
    });
}

/// Any text as a branch: an id is always a valid RDS identifier of at most 52 characters (the
/// branch names git accepts are `tests/identity.rs`'s), and the tag encoding round-trips or
/// refuses.
#[test]
fn branch_to_id_and_tag_of_arbitrary_text() {
    let branch = prop_oneof!["\\PC{0,80}", ".{0,300}", "[=0-9A-Fa-f/_.-]{0,40}"];
    fuzz("branch_id_and_tag", 500, 200, branch, |branch| {
        let repo = RepoName::parse("Acme/Shop").unwrap();
        let id = ClusterId::derive(&Prefix::default(), &repo, &branch);
        prop_assert!(is_valid_rds_identifier(id.as_str()), "{id} for {branch:?}");
        prop_assert!(id.as_str().len() <= MAX_CLUSTER_ID_LEN);
        match encode_branch_tag(&branch) {
            Ok(encoded) => prop_assert_eq!(decode_branch_tag(&encoded), Some(branch.clone())),
            Err(message) => prop_assert!(message.contains("too long"), "{message}"),
        }
        let _ = check_branch_name(&branch);
        Ok(())
    });
}

/// Any text as a tag value: decoding never panics, and what decodes encodes back to a value that
/// decodes the same (`=41` and `A` both mean `A`).
#[test]
fn branch_tag_decoding_of_arbitrary_text() {
    let value = prop_oneof!["\\PC{0,60}", "(=[0-9A-Fa-f+-]{0,2}|[a-z/._:@+-]){0,30}"];
    fuzz("branch_tag_decode", 500, 400, value, |value| {
        if let Some(branch) = decode_branch_tag(&value)
            && let Ok(encoded) = encode_branch_tag(&branch)
        {
            prop_assert_eq!(decode_branch_tag(&encoded), Some(branch));
        }
        Ok(())
    });
}

/// Prefixes and repository names from any text: parsed or refused, never a panic; a prefix that
/// parses makes valid ids.
#[test]
fn prefixes_and_repository_names_of_arbitrary_text() {
    let input = (
        prop_oneof!["\\PC{0,30}", "[a-z][a-z0-9-]{0,22}"],
        prop_oneof!["\\PC{0,40}", "[A-Za-z0-9_.-]{1,12}/[A-Za-z0-9_.-]{1,12}"],
    );
    fuzz(
        "prefix_and_repo_names",
        500,
        200,
        input,
        |(prefix, repo)| {
            let parsed_repo = RepoName::parse(&repo);
            if let Ok(prefix) = Prefix::parse(&prefix) {
                let repo = parsed_repo.unwrap_or_else(|_| RepoName::parse("a/b").unwrap());
                let id = ClusterId::derive(&prefix, &repo, "feature/x");
                prop_assert!(is_valid_rds_identifier(id.as_str()), "{id}");
            }
            Ok(())
        },
    );
}

/// The world a saved plan is made in and applied to: this repository's own specs and
/// migrations, one live environment to update, one no spec covers any more.
struct World {
    catalog: envctl::spec::Catalog,
    owner: Owner,
    observed: Vec<ObservedEnv>,
}

impl World {
    fn new() -> World {
        let files =
            envctl::source::read_working_tree(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        let catalog = spec::load(&files).unwrap();
        let owner = Owner {
            repo: RepoName::parse("acme/shop").unwrap(),
            prefix: Prefix::default(),
        };
        let mut world = World {
            catalog,
            owner,
            observed: Vec::new(),
        };
        // feature/b is live with other scaling (an update); old/x is live with no spec (a delete).
        let Wanted::Env(b) = world.wanted("feature/b") else {
            panic!("feature/b is covered")
        };
        let mut live_b = world.live(&b);
        live_b.scaling = Some(envctl::model::Scaling {
            min_acu: envctl::model::Acu::from_f64(1.0).unwrap(),
            max_acu: envctl::model::Acu::from_f64(2.0).unwrap(),
        });
        let mut old = b.clone();
        old.branch = "old/x".to_owned();
        old.cluster_id = ClusterId::derive(&world.owner.prefix, &world.owner.repo, "old/x");
        let live_old = world.live(&old);
        world.observed = vec![live_b, live_old];
        world
    }

    /// What a branch wants, as apply decides it for a branch of a saved plan's scope.
    fn wanted(&self, branch: &str) -> Wanted {
        match self
            .catalog
            .desired_for(branch, &self.owner.repo, &self.owner.prefix)
        {
            Ok(None) => Wanted::Nothing,
            Ok(Some(desired)) => match encode_branch_tag(branch) {
                Ok(_) => Wanted::Env(Box::new(desired)),
                Err(reason) => Wanted::Unknown { reason },
            },
            Err(reason) => Wanted::Unknown { reason },
        }
    }

    /// A live, converged environment of `desired`.
    fn live(&self, desired: &envctl::model::DesiredEnv) -> ObservedEnv {
        let mut tags = envctl::apply::initial_tags(desired, &self.owner, None).unwrap();
        tags.insert(tags::LEDGER_DIGEST.to_owned(), desired.ledger_digest());
        ObservedEnv {
            cluster_id: desired.cluster_id.clone(),
            tags,
            status: "available".to_owned(),
            status_hint: None,
            scaling: Some(desired.cluster.scaling),
            deletion_protection: desired.cluster.deletion_protection,
            engine_version: None,
            database_name: None,
            database_user: None,
            created_at: None,
            endpoint: None,
            arn: None,
            writerless: false,
            refused: None,
            ledger: Default::default(),
        }
    }

    /// The plan of these branches with these flags, as `plan` and `apply` make it.
    fn plan(&self, branches: &[String], flags: PlanFlags) -> Plan {
        let scope = branches
            .iter()
            .map(|b| (b.clone(), self.wanted(b)))
            .collect();
        let input = PlanInput {
            provider: "local",
            owner: &self.owner,
            scope: &scope,
            observed: &self.observed,
            engines: &Default::default(),
            default_branch: None,
            sources: &Default::default(),
            occupied: &Default::default(),
        };
        let options = PlanOptions {
            flags,
            ..PlanOptions::default()
        };
        envctl::plan::plan(&input, &options).unwrap()
    }
}

/// One change to a saved plan's text.
#[derive(Clone, Debug)]
enum Tamper {
    /// Cut at this fraction of its length.
    Truncate(f64),
    /// Overwrite the byte at this fraction with this byte.
    Byte(f64, u8),
    /// Delete the bytes from this fraction, this many.
    Remove(f64, usize),
    /// Replace the `n`th JSON value (in document order) with this JSON text.
    Value(usize, String),
}

fn tamper() -> impl Strategy<Value = Tamper> {
    let json_value = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("2".to_owned()),
        Just("1.0".to_owned()),
        Just("\"\"".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("\"feature/a\"".to_owned()),
        Just("\"main\"".to_owned()),
        Just("[\"main\"]".to_owned()),
        Just("[\"feature/a\",\"feature/a\"]".to_owned()),
        Just("\"delete\"".to_owned()),
        Just("{\"reset\":true,\"no_reset\":false}".to_owned()),
        "\"[a-z0-9/ -]{0,12}\"",
        "-?[1-9][0-9]{0,4}",
    ];
    prop_oneof![
        (0.0..1.0f64).prop_map(Tamper::Truncate),
        (0.0..1.0f64, any::<u8>()).prop_map(|(at, b)| Tamper::Byte(at, b)),
        (0.0..1.0f64, 1..40usize).prop_map(|(at, n)| Tamper::Remove(at, n)),
        (0..400usize, json_value).prop_map(|(n, v)| Tamper::Value(n, v)),
    ]
}

/// Replaces the `n`th value of `value` (pre-order, modulo the count) with `with`.
fn replace_nth(value: &mut serde_json::Value, n: usize, with: serde_json::Value) {
    fn count(v: &serde_json::Value) -> usize {
        1 + match v {
            serde_json::Value::Array(a) => a.iter().map(count).sum(),
            serde_json::Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn walk(v: &mut serde_json::Value, n: &mut usize, with: &serde_json::Value) -> bool {
        if *n == 0 {
            *v = with.clone();
            return true;
        }
        *n -= 1;
        match v {
            serde_json::Value::Array(a) => a.iter_mut().any(|c| walk(c, n, with)),
            serde_json::Value::Object(o) => o.values_mut().any(|c| walk(c, n, with)),
            _ => false,
        }
    }
    let mut n = n % count(value);
    walk(value, &mut n, &with);
}

fn tampered(original: &str, change: &Tamper) -> Vec<u8> {
    let bytes = original.as_bytes();
    let at = |f: f64| ((bytes.len() as f64) * f) as usize % bytes.len();
    match change {
        Tamper::Truncate(f) => bytes[..at(*f)].to_vec(),
        Tamper::Byte(f, b) => {
            let mut out = bytes.to_vec();
            out[at(*f)] = *b;
            out
        }
        Tamper::Remove(f, n) => {
            let start = at(*f);
            let end = (start + n).min(bytes.len());
            [&bytes[..start], &bytes[end..]].concat()
        }
        Tamper::Value(n, with) => {
            let mut value: serde_json::Value = serde_json::from_str(original).unwrap();
            replace_nth(&mut value, *n, serde_json::from_str(with).unwrap());
            serde_json::to_vec_pretty(&value).unwrap()
        }
    }
}

/// `apply PLANFILE` through its real parser and staleness check, with the plan made again from
/// the file's own scope and flags as apply makes it: a truncated or tampered plan is refused,
/// unless what apply would then do is exactly what was planned; the plan as written is accepted.
#[test]
fn tampered_or_truncated_saved_plans_are_refused() {
    let world = World::new();
    let branches: Vec<String> = ["feature/a", "feature/b", "main", "old/x"]
        .map(str::to_owned)
        .to_vec();
    let planned = world.plan(&branches, PlanFlags::default());
    let kinds: std::collections::BTreeSet<&str> = planned
        .actions
        .iter()
        .map(|a| match a.kind {
            envctl::model::ActionKind::Create { .. } => "create",
            envctl::model::ActionKind::Update { .. } => "update",
            envctl::model::ActionKind::Delete { .. } => "delete",
            _ => "other",
        })
        .collect();
    assert!(
        ["create", "update", "delete"]
            .iter()
            .all(|k| kinds.contains(k)),
        "the plan under test creates, updates and deletes: {:?}",
        planned.actions
    );
    let text = render::json(&planned);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    // Through the file, as `apply PLANFILE` reads it (bounded, UTF-8 checked).
    let accept = |bytes: &[u8]| -> Result<Plan, String> {
        std::fs::write(&path, bytes).unwrap();
        let saved = saved_plan::read(&path).map_err(|e| format!("{e:#}"))?;
        let now = world.plan(&saved.scope, saved.options);
        saved_plan::check(&saved, &now).map_err(|e| e.to_string())?;
        Ok(now)
    };
    assert_eq!(accept(text.as_bytes()).as_ref(), Ok(&planned));
    let refused = std::sync::atomic::AtomicU64::new(0);
    fuzz("saved_plans", 1000, 50, tamper(), |change| {
        let bytes = tampered(&text, &change);
        match accept(&bytes) {
            Ok(now) => {
                prop_assert_eq!(
                    &now.actions,
                    &planned.actions,
                    "{:?} applied another plan",
                    change
                );
                prop_assert_eq!(&now.observed_fingerprint, &planned.observed_fingerprint);
            }
            Err(message) => {
                prop_assert!(
                    message.contains("is not an envctl plan")
                        || message.contains("cannot read the plan")
                        || message.contains("stale plan")
                        || message.contains("the plan was made"),
                    "{message}"
                );
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    });
    let refused = refused.into_inner();
    eprintln!("fuzz saved_plans: {refused} tampered or truncated plans refused");
    assert!(refused > 0);
}

#[test]
fn the_proxys_parsers_take_any_bytes() {
    use envctl::proxy::wire;
    let bytes = proptest::collection::vec(any::<u8>(), 0..600);
    fuzz("proxy_wire_bytes", 2_000, 500, bytes, |bytes| {
        if let Ok(wire::FirstMessage::Startup(startup)) = wire::parse_first(&bytes) {
            // What parsed re-encodes to the same packet.
            let encoded = startup.encode();
            prop_assert_eq!(&encoded[4..], &bytes[..]);
        }
        if bytes.len() >= 4 {
            let header: [u8; 4] = bytes[..4].try_into().unwrap();
            if let Ok(len) = wire::startup_body_len(header) {
                prop_assert!((4..=wire::MAX_STARTUP_LEN).contains(&len));
            }
        }
        if let Ok(Some(len)) = wire::message_len(&bytes) {
            prop_assert!(len <= bytes.len() && len >= 5);
        }
        let _ = wire::parse_auth(&bytes);
        let _ = wire::describe_error(&bytes);
        if let Ok(key) = wire::CancelKey::from_backend_key_data(&bytes) {
            prop_assert_eq!(&key.backend_key_data()[5..], &bytes[..]);
        }
        Ok(())
    });
}

#[test]
fn start_up_messages_read_back_as_written() {
    use envctl::proxy::wire;
    let params = proptest::collection::vec(
        (
            proptest::collection::vec(1u8..=255, 1..20),
            proptest::collection::vec(1u8..=255, 0..40),
        ),
        0..12,
    );
    fuzz(
        "proxy_startup_round_trip",
        500,
        200,
        (0u32..=0xffff, params),
        |(minor, params)| {
            let startup = wire::StartupMessage {
                version: (3 << 16) | minor,
                params,
            };
            let packet = startup.encode();
            let len = wire::startup_body_len(packet[..4].try_into().unwrap());
            if packet.len() > wire::MAX_STARTUP_LEN {
                prop_assert!(len.is_err());
                return Ok(());
            }
            prop_assert_eq!(len.unwrap(), packet.len() - 4);
            prop_assert_eq!(
                wire::parse_first(&packet[4..]).unwrap(),
                wire::FirstMessage::Startup(startup)
            );
            Ok(())
        },
    );
}
