//! Bad input never panics: arbitrary bytes and YAML-shaped text in environment files, arbitrary
//! migration file names and contents, and snapshots holding refused and oversized files always
//! end in `Ok` or diagnostics. The SQL statement splitter loses no code, whatever quotes,
//! comments and bodies it is given, and link resolution ends on any tree.

use envctl::source::{Node, resolve_link};
use envctl::spec::migrations::{concurrent_index_target, split_statements};
use envctl::spec::{self, FileContent, READ_DIRS, Refusal, RepoFiles};
use proptest::prelude::*;

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Every statement is a slice of the input at its offset, in order, and what lies between
    /// statements holds no code: splitting it again finds nothing.
    #[test]
    fn split_statements_covers_the_code(sql in sqlish()) {
        let statements = split_statements(&sql);
        let mut end = 0;
        for (offset, text) in &statements {
            prop_assert!(*offset >= end, "{statements:?}");
            prop_assert!(!text.is_empty());
            prop_assert_eq!(&sql[*offset..*offset + text.len()], *text);
            prop_assert!(split_statements(&sql[end..*offset]).is_empty(), "code lost before {:?} in {:?}", text, sql);
            end = offset + text.len();
        }
        prop_assert!(split_statements(&sql[end..]).is_empty(), "code lost at the end of {:?}", sql);
    }

    #[test]
    fn split_statements_of_arbitrary_text_gives_a_result(sql in "\\PC{0,300}") {
        let _ = split_statements(&sql);
    }

    /// Whatever the text, a concurrent index target names an index and a table the server could
    /// have: 1 to 63 bytes each, at most three dotted parts.
    #[test]
    fn concurrent_index_target_of_arbitrary_text_is_a_valid_name_or_none(
        sql in prop_oneof![sqlish(), "\\PC{0,200}", sqlish().prop_map(|s| format!("CREATE INDEX CONCURRENTLY {s}"))]
    ) {
        if let Some(target) = concurrent_index_target(&sql) {
            prop_assert!((1..=63).contains(&target.index.len()), "{target:?}");
            prop_assert!((1..=3).contains(&target.table.len()), "{target:?}");
            prop_assert!(target.table.iter().all(|t| (1..=63).contains(&t.len())), "{target:?}");
        }
    }

    #[test]
    fn arbitrary_spec_text_gives_a_result(text in yamlish()) {
        let mut files = RepoFiles::default();
        files.insert_bytes("schemas/seeds/s.sql", b"SELECT 1;".to_vec());
        files.insert_bytes("environments/a.yaml", text.into_bytes());
        let _ = spec::load(&files);
    }

    #[test]
    fn arbitrary_bytes_give_a_result(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut files = RepoFiles::default();
        files.insert_bytes("environments/a.yaml", bytes.clone());
        files.insert_bytes("schemas/migrations/0001_x.sql", bytes);
        if let Err(diagnostics) = spec::load(&files) {
            prop_assert!(diagnostics.iter().all(|d| d.line >= 1 && d.column >= 1));
        }
    }

    #[test]
    fn arbitrary_migration_names_give_a_result(name in "[0-9a-z_.-]{0,20}", sql in ".{0,200}") {
        let mut files = RepoFiles::default();
        files.insert_bytes(format!("schemas/migrations/{name}.sql"), format!("-- envctl:no-transaction\n{sql}").into_bytes());
        let _ = spec::load(&files);
    }
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Refused and oversized files anywhere in a snapshot, read directories included, give
    /// diagnostics at real places; a refused file never loads.
    #[test]
    fn snapshots_with_refused_files_give_a_result(
        entries in proptest::collection::vec((snapshot_path(), content()), 0..10)
    ) {
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
    }

    /// Whatever links a tree holds, resolution ends, and what it reaches is a file of the tree.
    #[test]
    fn link_resolution_ends_on_a_file_or_a_refusal(tree in tree(), start in "(a|b|c\\.sql)(/(a|b|c\\.sql)){0,2}") {
        let lookup = |path: &str| -> Result<Node, ()> {
            Ok(tree.iter().find(|(p, _)| p == path).map_or(Node::Missing, |(_, n)| n.clone()))
        };
        if let Ok(Ok(resolved)) = resolve_link(&start, lookup) {
            prop_assert_eq!(lookup(&resolved), Ok(Node::File));
        }
    }
}
