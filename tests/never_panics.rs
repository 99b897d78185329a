//! Bad input never panics: arbitrary bytes and YAML-shaped text in environment files, and
//! arbitrary migration file names and contents, always end in `Ok` or diagnostics. The SQL
//! statement splitter loses no code, whatever quotes, comments and bodies it is given.

use envctl::spec::migrations::{concurrent_index_target, split_statements};
use envctl::spec::{self, RepoFiles};
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
