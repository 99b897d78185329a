//! Migration lint (`spec::lint`): each rule envctl enables finds its unsafe statement and passes
//! its safe one; a `-- squawk-ignore` comment silences one statement, never the next; the
//! findings reach `validate` as warnings (errors with `--strict`, `::warning` annotations in
//! GitHub Actions); hostile nesting is refused, never a crash.

use envctl::model::LintFinding;
use envctl::spec::lint::{
    LintOf, MAX_NESTING, NO_TRANSACTION_RULES, RULES, Refused, TooComplex, read, rule_names,
};

fn lint(sql: &str, no_transaction: bool) -> Vec<LintFinding> {
    read(
        sql,
        Some(LintOf {
            name: "0002_x",
            path: "schemas/migrations/0002_x.sql",
            no_transaction,
        }),
    )
    .findings
}

fn rules(findings: &[LintFinding]) -> Vec<String> {
    findings.iter().map(|f| f.rule.clone()).collect()
}

/// (rule, unsafe statement, safe statement, whether both run outside a transaction).
const CASES: &[(&str, &str, &str, bool)] = &[
    (
        "adding-field-with-default",
        "ALTER TABLE t ADD COLUMN c uuid DEFAULT gen_random_uuid();",
        "ALTER TABLE t ADD COLUMN c bigint DEFAULT 10;",
        false,
    ),
    (
        "adding-foreign-key-constraint",
        "ALTER TABLE t ADD CONSTRAINT t_u FOREIGN KEY (u) REFERENCES u (id);",
        "ALTER TABLE t ADD CONSTRAINT t_u FOREIGN KEY (u) REFERENCES u (id) NOT VALID;",
        false,
    ),
    (
        "adding-not-nullable-field",
        "ALTER TABLE t ALTER COLUMN c SET NOT NULL;",
        "ALTER TABLE t ALTER COLUMN c DROP DEFAULT;",
        false,
    ),
    (
        "adding-required-field",
        "ALTER TABLE t ADD COLUMN c bigint NOT NULL;",
        "ALTER TABLE t ADD COLUMN c bigint NOT NULL DEFAULT 0;",
        false,
    ),
    (
        "adding-serial-primary-key-field",
        "ALTER TABLE t ADD PRIMARY KEY (id);",
        "ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY USING INDEX t_id_idx;",
        false,
    ),
    (
        "ban-concurrent-index-creation-in-transaction",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c); ANALYZE t;",
        "CREATE TABLE n (c bigint); CREATE INDEX i ON n (c);",
        false,
    ),
    (
        "ban-drop-column",
        "ALTER TABLE t DROP COLUMN c;",
        "ALTER TABLE t ADD COLUMN d text;",
        false,
    ),
    (
        "ban-drop-database",
        "DROP DATABASE d;",
        "CREATE SCHEMA d;",
        false,
    ),
    (
        "ban-drop-table",
        "DROP TABLE t;",
        "CREATE TABLE t2 (id bigint);",
        false,
    ),
    (
        "ban-truncate-cascade",
        "TRUNCATE t CASCADE;",
        "TRUNCATE t;",
        false,
    ),
    (
        "changing-column-type",
        "ALTER TABLE t ALTER COLUMN c TYPE bigint;",
        "ALTER TABLE t ALTER COLUMN c SET DEFAULT 0;",
        false,
    ),
    (
        "constraint-missing-not-valid",
        "ALTER TABLE t ADD CONSTRAINT c_positive CHECK (c > 0);",
        "ALTER TABLE t ADD CONSTRAINT c_positive CHECK (c > 0) NOT VALID;",
        false,
    ),
    (
        "disallowed-unique-constraint",
        "ALTER TABLE t ADD CONSTRAINT t_c UNIQUE (c);",
        "ALTER TABLE t ADD CONSTRAINT t_c UNIQUE USING INDEX t_c_idx;",
        false,
    ),
    (
        "renaming-column",
        "ALTER TABLE t RENAME COLUMN a TO b;",
        "ALTER TABLE t ADD COLUMN b text;",
        false,
    ),
    (
        "renaming-table",
        "ALTER TABLE t RENAME TO u;",
        "CREATE VIEW u AS SELECT * FROM t;",
        false,
    ),
    (
        "require-concurrent-index-creation",
        "CREATE INDEX i ON t (c);",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c);",
        true,
    ),
    (
        "require-concurrent-index-deletion",
        "DROP INDEX IF EXISTS i;",
        "DROP INDEX CONCURRENTLY IF EXISTS i;",
        true,
    ),
    (
        "require-concurrent-partition-detach",
        "ALTER TABLE p DETACH PARTITION c;",
        "ALTER TABLE p DETACH PARTITION c CONCURRENTLY;",
        true,
    ),
    (
        "require-concurrent-reindex",
        "REINDEX INDEX i;",
        "REINDEX INDEX CONCURRENTLY i;",
        true,
    ),
    (
        "prefer-robust-stmts",
        "CREATE INDEX CONCURRENTLY i ON t (c);",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (c);",
        true,
    ),
];

#[test]
fn each_enabled_rule_finds_its_unsafe_statement_and_passes_its_safe_one() {
    let mut tested: Vec<String> = CASES.iter().map(|c| c.0.to_owned()).collect();
    tested.sort();
    assert_eq!(tested, rule_names(), "every enabled rule has a case");
    assert_eq!(RULES.len() + NO_TRANSACTION_RULES.len(), CASES.len());
    for (rule, unsafe_sql, safe_sql, no_transaction) in CASES {
        let found = lint(unsafe_sql, *no_transaction);
        assert!(
            rules(&found).iter().any(|r| r == rule),
            "{rule}: `{unsafe_sql}` gives {found:#?}"
        );
        let finding = found.iter().find(|f| f.rule == *rule).unwrap();
        assert!(
            finding.line == 1 && finding.column <= unsafe_sql.len(),
            "{finding:?}"
        );
        assert!(!finding.message.is_empty() && !finding.help.is_empty());
        let found = lint(safe_sql, *no_transaction);
        assert!(
            !rules(&found).iter().any(|r| r == rule),
            "{rule}: `{safe_sql}` gives {found:#?}"
        );
    }
}

/// A migration runs in a transaction unless it says otherwise: `CREATE INDEX CONCURRENTLY`
/// cannot run there, and the advice says where it can.
#[test]
fn advice_fits_how_envctl_runs_the_migration() {
    let in_transaction = lint("CREATE INDEX i ON t (c);", false);
    let [finding] = in_transaction.as_slice() else {
        panic!("{in_transaction:?}")
    };
    assert!(
        finding.help.contains("-- envctl:no-transaction"),
        "{finding:?}"
    );
    // Robustness matters only where no transaction undoes a half-done statement.
    assert!(
        lint("CREATE INDEX CONCURRENTLY i ON t (c);", false)
            .iter()
            .all(|f| f.rule != "prefer-robust-stmts")
    );
}

#[test]
fn findings_are_placed_at_the_statement_line_and_column() {
    let sql = "-- Orders.\nCREATE TABLE orders (id bigint);\n\n  ALTER TABLE users\n      DROP COLUMN é_name;\n";
    let found = lint(sql, false);
    assert_eq!(
        found
            .iter()
            .map(|f| (f.rule.as_str(), f.line, f.column))
            .collect::<Vec<_>>(),
        [("ban-drop-column", 5, 7)],
        "{found:#?}"
    );
    assert_eq!(found[0].migration, "0002_x");
    assert_eq!(found[0].file, "schemas/migrations/0002_x.sql");
}

#[test]
fn the_silence_comment_works_for_exactly_one_statement() {
    // Before the statement: that statement, even where the finding starts lines below.
    let sql = "-- squawk-ignore ban-drop-column\nALTER TABLE a\n    DROP COLUMN x;\nALTER TABLE b DROP COLUMN y;\n";
    let found = lint(sql, false);
    assert_eq!(
        found
            .iter()
            .map(|f| (f.rule.as_str(), f.line))
            .collect::<Vec<_>>(),
        [("ban-drop-column", 4)],
        "{found:#?}"
    );
    // After a statement's `;` on its line: that statement, not the one on the next line (squawk's
    // own reading, by line, would silence both).
    let sql = "ALTER TABLE a DROP COLUMN x; -- squawk-ignore ban-drop-column\nALTER TABLE b DROP COLUMN y;\n";
    let found = lint(sql, false);
    assert_eq!(
        found.iter().map(|f| f.line).collect::<Vec<_>>(),
        [2],
        "{found:#?}"
    );
    // Only the rules it names.
    let sql = "/* squawk-ignore renaming-column */\nALTER TABLE a DROP COLUMN x;\n";
    let found = lint(sql, false);
    assert_eq!(
        rules(&found),
        ["unused-ignore", "ban-drop-column"],
        "{found:#?}"
    );
    // Several rules, and the whole file.
    let sql = "-- squawk-ignore ban-drop-column, renaming-column\nALTER TABLE a DROP COLUMN x, RENAME COLUMN y TO z;\n";
    assert_eq!(lint(sql, false), []);
    let sql = "-- squawk-ignore-file ban-drop-column\nALTER TABLE a DROP COLUMN x;\nALTER TABLE b DROP COLUMN y;\n";
    assert_eq!(lint(sql, false), []);
}

/// A silence comment that names no known rule, or silences nothing, is said: a typo or a
/// misplaced comment would otherwise hide nothing and look as if it did.
#[test]
fn a_silence_comment_that_silences_nothing_is_a_finding() {
    let found = lint(
        "-- squawk-ignore ban-drop-colum\nALTER TABLE a DROP COLUMN x;\n",
        false,
    );
    assert_eq!(
        rules(&found),
        ["unused-ignore", "ban-drop-column"],
        "{found:#?}"
    );
    assert!(
        found[0].message.contains("`ban-drop-colum` is not a rule"),
        "{found:#?}"
    );
    let found = lint(
        "-- squawk-ignore ban-drop-column\nALTER TABLE a ADD COLUMN x text;\n",
        false,
    );
    assert_eq!(rules(&found), ["unused-ignore"], "{found:#?}");
    assert!(found[0].message.contains("silences nothing"), "{found:#?}");
    let found = lint("SELECT 1;\n-- squawk-ignore ban-drop-column\n", false);
    assert_eq!(rules(&found), ["unused-ignore"], "{found:#?}");
}

/// A comment of `bytes` bytes: text that raises a file's parse budget without parsing work.
fn padding(bytes: usize) -> String {
    format!("-- {}\n", "x".repeat(bytes))
}

/// squawk's parser recurses: text nested deeper than envctl reads is refused by the loader (see
/// `never_panics`), never parsed, so it cannot overflow a stack, even in a file large enough that
/// its parse budget would allow the nesting.
#[test]
fn hostile_nesting_is_not_parsed() {
    let pad = padding(900_000);
    let deep = format!(
        "{pad}SELECT {}1{};",
        "(".repeat(200_000),
        ")".repeat(200_000)
    );
    let reading = read(&deep, None);
    assert_eq!(
        reading.refused,
        Some(Refused {
            at: pad.len() + 7 + MAX_NESTING,
            why: TooComplex::Nesting
        })
    );
    assert_eq!(reading.statements, [(0, deep.len())]);
    // Chains as long as a large file's budget allows are read on the parser's own large stack.
    let long = format!("{pad}SELECT 1{};", " + 1".repeat(3_000));
    let reading = read(&long, None);
    assert_eq!(reading.refused, None);
    assert_eq!(reading.statements.len(), 1);
    // Prefix operators recurse too.
    let unary = format!("{pad}SELECT {}1;", "- ".repeat(3_000));
    assert_eq!(read(&unary, None).refused, None);
    let nested = format!("{pad}SELECT {}1{};", "(".repeat(4_000), ")".repeat(4_000));
    assert_eq!(read(&nested, None).refused, None);
}

/// squawk's parse time grows with the square of an expression's depth: 10 000 chained
/// operators took seconds, and a file of them minutes. Every such shape is refused before it is
/// parsed, where its work passes the file's budget; text people write, however large, is not.
#[test]
fn hostile_chains_are_refused_before_they_are_parsed() {
    let hostile = [
        format!("SELECT 1{};", "+1".repeat(10_000)),
        format!("SELECT 1{};", "::int".repeat(5_000)),
        format!("SELECT 'a'{};", "||'a'".repeat(5_000)),
        format!("SELECT {}true;", "NOT ".repeat(10_000)),
        format!("SELECT {}1;", "- ".repeat(10_000)),
        format!("SELECT {}1{};", "(1+".repeat(3_000), ")".repeat(3_000)),
        format!("SELECT {}1{};", "(".repeat(4_000), ")".repeat(4_000)),
        format!("SELECT 1{};", "@@1".repeat(5_000)),
        // A budget raised by padding still bounds the chain.
        format!("{}SELECT 1{};", padding(100_000), "+1".repeat(5_000)),
    ];
    for sql in &hostile {
        let reading = read(sql, None);
        let Some(Refused { at, why }) = reading.refused else {
            panic!("not refused: {}…", &sql[..60.min(sql.len())]);
        };
        assert_eq!(why, TooComplex::Work, "{}…", &sql[..60]);
        assert!(at < sql.len(), "{at}");
        assert_eq!(reading.statements.len(), 1);
        assert!(reading.findings.is_empty());
    }
    // Chains a person writes: a thousand terms in one expression, or a file near the size limit
    // of rows with signed numbers, casts and sums, one statement or thousands.
    let terms = format!("SELECT {};", vec!["a"; 1_000].join(" + "));
    let row = "(-1, -2.5::numeric, 'x' || 'y', now() - interval '1 day', 3 * 4 + 5)";
    let one_insert = format!("INSERT INTO t VALUES {};", vec![row; 12_000].join(",\n"));
    let updates =
        "UPDATE t SET total = a + b * c - d::int WHERE id = 5 AND NOT done;\n".repeat(14_000);
    for sql in [&terms, &one_insert, &updates] {
        let reading = read(sql, None);
        assert_eq!(reading.refused, None, "{}…", &sql[..60]);
    }
    assert_eq!(read(&updates, None).statements.len(), 14_000);
}
