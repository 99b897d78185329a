//! Bad input in environment files, migrations and seeds: every case names the exact place and says
//! what is wrong and how to fix it. Each file is checked in memory; the example repository's
//! migrations and seeds stand beside the spec under test.

use envctl::spec::{self, RepoFiles};

const GOOD: &str = "\
version: 1
name: preview
branches: [\"feature/*\"]
cluster:
  engine: aurora-postgresql
  scaling: { minAcu: 0, maxAcu: 4 }
database:
  seeds: [schemas/seeds/dummy.sql]
";

fn base_files() -> RepoFiles {
    let mut files = RepoFiles::default();
    files.insert_bytes(
        "schemas/migrations/0001_create.sql",
        b"CREATE TABLE t (id int);".to_vec(),
    );
    files.insert_bytes(
        "schemas/migrations/0002_more.sql",
        b"ALTER TABLE t ADD x int;".to_vec(),
    );
    files.insert_bytes(
        "schemas/seeds/dummy.sql",
        b"INSERT INTO t VALUES (1);".to_vec(),
    );
    files
}

/// Every diagnostic of a snapshot, one line each: `file:line:col: message (hint: …)`.
fn errors_of(files: &RepoFiles) -> Vec<String> {
    match spec::load(files) {
        Ok(_) => Vec::new(),
        Err(diagnostics) => diagnostics
            .iter()
            .map(|d| {
                let mut line = format!("{}:{}:{}: {}", d.file, d.line, d.column, d.message);
                if let Some(hint) = &d.hint {
                    line.push_str(&format!(" (hint: {hint})"));
                }
                line
            })
            .collect(),
    }
}

fn errors(spec_text: &str) -> Vec<String> {
    let mut files = base_files();
    files.insert_bytes("environments/a.yaml", spec_text.as_bytes().to_vec());
    errors_of(&files)
}

#[test]
fn the_good_spec_is_valid() {
    assert_eq!(errors(GOOD), Vec::<String>::new());
}

#[test]
fn unknown_key_suggests_the_closest() {
    let text = GOOD.replace("maxAcu: 4", "maxAcus: 4");
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:6:25: unknown key `maxAcus` in `cluster.scaling` (hint: did you mean `maxAcu`?)"
        ]
    );
}

#[test]
fn every_unknown_key_is_reported_at_once() {
    let text = GOOD.replace("version: 1", "verison: 1\nversion: 1") + "lifecycle:\n  tll: 7d\n";
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:1:1: unknown key `verison` at the top level (hint: did you mean `version`?)",
            "environments/a.yaml:11:3: unknown key `tll` in `lifecycle` (hint: did you mean `ttl`?)",
        ]
    );
}

#[test]
fn wrong_type_names_the_key_and_place() {
    let text = GOOD.replace("maxAcu: 4", "maxAcu: four");
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:6:33: `cluster.scaling.maxAcu`: expected a number, found string \"four\" (hint: write a number without quotes, e.g. `4` or `0.5`)"
        ]
    );
}

#[test]
fn missing_required_key() {
    let text = GOOD.replace("name: preview\n", "");
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:1:1: the file is missing the required key `name` (hint: see `envctl schema` for the format)"
        ]
    );
}

#[test]
fn acu_range_step_and_order() {
    let text = GOOD.replace("{ minAcu: 0, maxAcu: 4 }", "{ minAcu: 0.3, maxAcu: 300 }");
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:6:22: 0.3 ACU is not a multiple of 0.5 (hint: use 0 to 256 in steps of 0.5, e.g. 0.5, 4 or 16)",
            "environments/a.yaml:6:35: 300 ACU is out of range (hint: use 0 to 256 in steps of 0.5, e.g. 0.5, 4 or 16)",
        ]
    );
    let text = GOOD.replace("{ minAcu: 0, maxAcu: 4 }", "{ minAcu: 8, maxAcu: 4 }");
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:6:22: `minAcu` 8 is greater than `maxAcu` 4 (hint: make `minAcu` at most `maxAcu`)"
        ]
    );
}

#[test]
fn several_semantic_errors_in_one_file_are_all_reported() {
    let text = "\
version: 2
name: Preview
branches: [\"feature/[x\"]
cluster:
  engine: aurora-postgres
  express: false
  scaling: { minAcu: 0, maxAcu: 4 }
  tags: { \"envctl:owner\": me }
database:
  schemaVersion: 9
  seeds: [schemas/seeds/dumy.sql]
lifecycle:
  ttl: 7 days
";
    assert_eq!(
        errors(text),
        [
            "environments/a.yaml:1:10: unsupported `version` 2; this envctl reads version 1 (hint: set `version: 1`, or upgrade envctl)",
            "environments/a.yaml:2:7: `name` `Preview` is not a valid environment name (hint: use 1 to 63 of `a-z`, `0-9` and `-`, starting with a letter, e.g. `preview`)",
            "environments/a.yaml:3:12: `feature/[x` is not a valid glob: unclosed character class; missing ']' (hint: `*` matches within one `/` segment, `**` across segments, e.g. `feature/**`)",
            "environments/a.yaml:5:11: unsupported engine `aurora-postgres` (hint: did you mean `aurora-postgresql`?)",
            "environments/a.yaml:6:12: version 1 supports express configuration only (hint: set `express: true` or remove the key)",
            "environments/a.yaml:8:11: tag key `envctl:owner` is reserved (hint: keys starting with `envctl:`, `aws:` or `rds:` are set by envctl or AWS; choose another key)",
            "environments/a.yaml:10:18: `schemaVersion` 9 is beyond the highest migration (2) (hint: add the migration, lower the version, or use `latest`)",
            "environments/a.yaml:11:11: seed file `schemas/seeds/dumy.sql` does not exist (hint: did you mean `schemas/seeds/dummy.sql`?)",
            "environments/a.yaml:13:8: `7 days` is not a duration (hint: write a whole number of minutes, hours or days: `30m`, `12h`, `7d`)",
        ]
    );
}

#[test]
fn errors_of_every_file_are_reported_and_names_must_be_unique() {
    let mut files = base_files();
    files.insert_bytes("environments/a.yaml", GOOD.as_bytes().to_vec());
    files.insert_bytes("environments/b.yaml", GOOD.as_bytes().to_vec());
    files.insert_bytes(
        "environments/c.yaml",
        GOOD.replace("maxAcu: 4", "maxAcu: x").into_bytes(),
    );
    files.insert_bytes("environments/d.yml", b"version: 1\nname: [\n".to_vec());
    assert_eq!(
        errors_of(&files),
        [
            "environments/b.yaml:2:7: environment name `preview` is already used by `environments/a.yaml` (hint: give each environment file a unique `name`)",
            "environments/b.yaml:3:12: branch pattern `feature/*` is also in `environments/a.yaml`, so the branches it matches would be covered by both (hint: keep the pattern in one file, or make one of them more specific)",
            "environments/c.yaml:2:7: environment name `preview` is already used by `environments/a.yaml` (hint: give each environment file a unique `name`)",
            "environments/c.yaml:3:12: branch pattern `feature/*` is also in `environments/a.yaml`, so the branches it matches would be covered by both (hint: keep the pattern in one file, or make one of them more specific)",
            "environments/c.yaml:6:33: `cluster.scaling.maxAcu`: expected a number, found string \"x\" (hint: write a number without quotes, e.g. `4` or `0.5`)",
            "environments/d.yml:3:1: while parsing a node, did not find expected node content",
        ]
    );
}

#[test]
fn syntax_error_has_its_position() {
    assert_eq!(
        errors("version: 1\nname: preview\n  branches: [main]\n"),
        ["environments/a.yaml:3:11: mapping values are not allowed in this context"]
    );
}

#[test]
fn tag_limits_of_aws() {
    let long = "v".repeat(257);
    let text = GOOD.replace(
        "  engine: aurora-postgresql\n",
        &format!(
            "  engine: aurora-postgresql\n  tags: {{ \"bad#key\": x, ok: {long}, \"aws:x\": y }}\n"
        ),
    );
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:6:11: tag key `bad#key` is not allowed by AWS (hint: use 1 to 128 letters, digits, spaces and `_ . : / = + - @`)",
            "environments/a.yaml:6:29: the value of tag `ok` is not allowed by AWS (hint: use up to 256 letters, digits, spaces and `_ . : / = + - @`)",
            "environments/a.yaml:6:288: tag key `aws:x` is reserved (hint: keys starting with `envctl:`, `aws:` or `rds:` are set by envctl or AWS; choose another key)",
        ]
    );
}

/// The API model: "can't be prefixed with `aws:` or `rds:`", keys and values alike.
#[test]
fn tag_keys_and_values_may_not_start_with_aws_or_rds() {
    let text = GOOD.replace(
        "  engine: aurora-postgresql\n",
        "  engine: aurora-postgresql\n  tags: { \"RDS:x\": y, team: \"aws:web\", cost: \"rds:z\" }\n",
    );
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:6:11: tag key `RDS:x` is reserved (hint: keys starting with `envctl:`, `aws:` or `rds:` are set by envctl or AWS; choose another key)",
            "environments/a.yaml:6:29: the value of tag `team` starts with `aws:` or `rds:`, which AWS refuses (hint: choose a value that does not start with `aws:` or `rds:`)",
            "environments/a.yaml:6:46: the value of tag `cost` starts with `aws:` or `rds:`, which AWS refuses (hint: choose a value that does not start with `aws:` or `rds:`)",
        ]
    );
}

/// AWS refuses a maximum under 1 ACU on every create and modify: validate says so, once.
#[test]
fn a_maximum_under_one_acu_is_refused() {
    let text = GOOD.replace("{ minAcu: 0, maxAcu: 4 }", "{ minAcu: 0, maxAcu: 0.5 }");
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:6:33: `maxAcu` 0.5 is below 1 ACU, which AWS refuses for a maximum (hint: set `maxAcu: 1` or more (`minAcu: 0` still lets the cluster pause))"
        ]
    );
    let text = GOOD.replace("{ minAcu: 0, maxAcu: 4 }", "{ minAcu: 0, maxAcu: 1 }");
    assert_eq!(errors(&text), Vec::<String>::new());
}

/// Built-in and reserved roles are refused before apply grants them anything.
#[test]
fn reserved_database_users_are_refused() {
    for (user, why) in [
        (
            "pg_monitor",
            "a PostgreSQL built-in role name (`pg_*` is reserved)",
        ),
        (
            "rds_iam",
            "a name RDS reserves for its own roles (`rds*`: `rds_superuser`, `rdsadmin`, `rds_iam`, …)",
        ),
        (
            "rdsadmin",
            "a name RDS reserves for its own roles (`rds*`: `rds_superuser`, `rdsadmin`, `rds_iam`, …)",
        ),
        ("public", "a name SQL reserves, not a role"),
        ("envctl_reader", "envctl's own ledger reader"),
    ] {
        let text = GOOD.replace("database:\n", &format!("database:\n  user: {user}\n"));
        assert_eq!(
            errors(&text),
            [format!(
                "environments/a.yaml:8:9: `{user}` is {why} (hint: choose a name of your own for the application's user, e.g. `app`)"
            )],
            "{user}"
        );
    }
    for user in ["postgres", "app", "reporting"] {
        let text = GOOD.replace("database:\n", &format!("database:\n  user: {user}\n"));
        assert_eq!(errors(&text), Vec::<String>::new(), "{user}");
    }
}

#[test]
fn empty_file() {
    assert_eq!(
        errors(""),
        [
            "environments/a.yaml:1:1: the file is empty (hint: start from `envctl init`, or see `envctl schema` for the format)"
        ]
    );
    assert_eq!(
        errors("# nothing here\n"),
        [
            "environments/a.yaml:1:1: the file is empty (hint: start from `envctl init`, or see `envctl schema` for the format)"
        ]
    );
}

#[test]
fn not_a_mapping() {
    assert_eq!(
        errors("- a\n- b\n"),
        [
            "environments/a.yaml:1:1: an environment file must be a mapping of keys such as `version`, `name`, `branches` (hint: see `envctl schema` for the format)"
        ]
    );
}

#[test]
fn non_utf8_bytes() {
    let mut files = base_files();
    files.insert_bytes(
        "environments/a.yaml",
        b"version: 1\nname: pr\xffeview\n".to_vec(),
    );
    assert_eq!(
        errors_of(&files),
        ["environments/a.yaml:2:9: the file is not valid UTF-8 (hint: save it as UTF-8)"]
    );
}

#[test]
fn billion_laughs_is_refused_quickly() {
    let mut text = String::from("a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    let mut prev = "a".to_owned();
    for name in ["b", "c", "d", "e", "f", "g", "h", "i"] {
        text.push_str(&format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 9].join(",")
        ));
        prev = name.to_owned();
    }
    let found = errors(&text);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("environments/a.yaml:5:8:")
            && found[0].contains("expands to more than 10000 nodes through aliases"),
        "{found:?}"
    );
}

#[test]
fn deep_nesting_is_refused() {
    let text = format!("version: 1\nname: {}\n", "[".repeat(100_000));
    let found = errors(&text);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].contains("nested deeper than 32 levels"),
        "{found:?}"
    );
    let text = format!(
        "version: 1\nname:\n{}",
        (1..200)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect::<String>()
    );
    let found = errors(&text);
    assert!(
        found[0].contains("nested deeper than 32 levels"),
        "{found:?}"
    );
}

#[test]
fn huge_file_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    let big = vec![b'#'; 50 * 1024 * 1024];
    std::fs::write(dir.path().join("environments/big.yaml"), big).unwrap();
    let files = envctl::source::read_working_tree(dir.path()).unwrap();
    assert_eq!(
        errors_of(&files),
        [
            "environments/big.yaml:1:1: the file is 52428800 bytes; envctl reads files of at most 1048576 bytes here (hint: split it into smaller files)"
        ]
    );
}

#[test]
fn duplicate_key() {
    let text = GOOD.replace("name: preview\n", "name: preview\nname: other\n");
    assert_eq!(
        errors(&text),
        ["environments/a.yaml:3:1: `name` is set twice (hint: remove one of them)"]
    );
}

#[test]
fn bad_migration_files() {
    let mut files = base_files();
    files.insert_bytes("schemas/migrations/add_orders.sql", b"SELECT 1;".to_vec());
    files.insert_bytes("schemas/migrations/1_again.sql", b"SELECT 1;".to_vec());
    files.insert_bytes(
        "schemas/migrations/0003_two.sql",
        b"-- envctl:no-transaction\nCREATE INDEX CONCURRENTLY a ON t (id);\nCREATE INDEX CONCURRENTLY b ON t (id);\n".to_vec(),
    );
    files.insert_bytes("schemas/migrations/README.md", b"not a migration".to_vec());
    assert_eq!(
        errors_of(&files),
        [
            "schemas/migrations/0003_two.sql:1:1: a `-- envctl:no-transaction` migration must hold exactly one statement; this one has 2 (hint: move the other statements into a migration of their own)",
            "schemas/migrations/1_again.sql:1:1: migration version 1 is used twice: by `schemas/migrations/0001_create.sql` and by this file (hint: give each migration its own version number)",
            "schemas/migrations/add_orders.sql:1:1: `add_orders.sql` is not a migration file name (hint: name migrations `NNNN_description.sql`, NNNN a positive integer, e.g. `0004_add_orders.sql`)",
        ]
    );
}

#[test]
fn crlf_checkout_has_the_same_checksums() {
    let mut lf = base_files();
    lf.insert_bytes(
        "schemas/migrations/0003_x.sql",
        b"CREATE TABLE a (\n  id int\n);\n".to_vec(),
    );
    let mut crlf = base_files();
    crlf.insert_bytes(
        "schemas/migrations/0003_x.sql",
        b"CREATE TABLE a (\r\n  id int\r\n);\r\n".to_vec(),
    );
    let lf = spec::load(&lf).unwrap();
    let crlf = spec::load(&crlf).unwrap();
    assert_eq!(lf.migrations[2].checksum, crlf.migrations[2].checksum);
    assert_eq!(lf.migrations[2].sql, crlf.migrations[2].sql);
}

#[test]
fn no_transaction_marker_is_recognised() {
    let mut files = base_files();
    files.insert_bytes(
        "schemas/migrations/0003_idx.sql",
        b"-- envctl:no-transaction\r\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (id);\r\n"
            .to_vec(),
    );
    let catalog = spec::load(&files).unwrap();
    assert!(catalog.migrations[2].no_transaction);
    assert!(!catalog.migrations[0].no_transaction);
}

#[test]
fn the_example_repository_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = envctl::source::read_working_tree(root).unwrap();
    let catalog = spec::load(&files).expect("the example repository is valid");
    assert_eq!(catalog.specs.len(), 2);
    assert_eq!(catalog.migrations.len(), 3);
    let preview = catalog.spec_for("feature/login").unwrap().unwrap();
    assert_eq!(preview.name, "preview");
    assert!(catalog.spec_for("fix/a/b").unwrap().is_none());
    assert_eq!(catalog.spec_for("main").unwrap().unwrap().name, "main");
}

#[test]
fn a_byte_order_mark_is_not_content() {
    assert_eq!(errors(&format!("\u{feff}{GOOD}")), Vec::<String>::new());
}

#[test]
fn a_type_error_does_not_hide_the_other_errors_of_the_file() {
    let text = "\
version: 1
name: Bad_Name
branches: [\"feature/*\"]
cluster:
  engineVersion: 16.6
  scaling: { minAcu: 0, maxAcus: 4 }
  deletionProtection: yes
  tags: { cost: 5 }
database:
  seeds: [schemas/seeds/missing.sql]
lifecycle:
  ttl: 7 d
";
    assert_eq!(
        errors(text),
        [
            "environments/a.yaml:2:7: `name` `Bad_Name` is not a valid environment name (hint: use 1 to 63 of `a-z`, `0-9` and `-`, starting with a letter, e.g. `preview`)",
            "environments/a.yaml:5:18: `cluster.engineVersion`: expected text, found the number `16.6` (hint: quote it: `\"16.6\"`)",
            "environments/a.yaml:6:25: unknown key `maxAcus` in `cluster.scaling` (hint: did you mean `maxAcu`?)",
            "environments/a.yaml:7:23: `cluster.deletionProtection`: expected `true` or `false`, found string \"yes\" (hint: write `true` or `false` (YAML 1.2 reads `yes` and `on` as text))",
            "environments/a.yaml:8:17: `cluster.tags.cost`: expected text, found the number `5` (hint: quote it: `\"5\"`)",
            "environments/a.yaml:10:11: seed file `schemas/seeds/missing.sql` does not exist (hint: create the file or remove it from `seeds`)",
            "environments/a.yaml:12:8: `7 d` is not a duration (hint: write a whole number of minutes, hours or days: `30m`, `12h`, `7d`)",
        ]
    );
}

#[test]
fn the_same_pattern_in_two_files_is_an_error_at_validate_time() {
    let mut files = base_files();
    files.insert_bytes("environments/a.yaml", GOOD.as_bytes().to_vec());
    files.insert_bytes(
        "environments/b.yaml",
        GOOD.replace("name: preview", "name: other")
            .replace("[\"feature/*\"]", "[main, \"feature/*\"]")
            .into_bytes(),
    );
    assert_eq!(
        errors_of(&files),
        [
            "environments/b.yaml:3:18: branch pattern `feature/*` is also in `environments/a.yaml`, so the branches it matches would be covered by both (hint: keep the pattern in one file, or make one of them more specific)"
        ]
    );
}

/// `!` patterns take branches away from a spec's others: the same one in two files is no clash,
/// and a spec of only `!` patterns covers nothing, which validate says.
#[test]
fn bang_patterns_exclude_and_never_clash() {
    let mut files = base_files();
    files.insert_bytes(
        "environments/a.yaml",
        GOOD.replace("[\"feature/*\"]", "[\"feature/*\", \"!dependabot/**\"]")
            .into_bytes(),
    );
    files.insert_bytes(
        "environments/b.yaml",
        GOOD.replace("name: preview", "name: other")
            .replace("[\"feature/*\"]", "[\"fix/**\", \"!dependabot/**\"]")
            .into_bytes(),
    );
    assert_eq!(errors_of(&files), Vec::<String>::new());

    let text = GOOD.replace("[\"feature/*\"]", "[\"!dependabot/**\", \"!\"]");
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:3:11: every pattern in `branches` starts with `!`, so this spec covers no branch (hint: a `!` pattern only takes branches away from the others: add the branches to cover, e.g. `[\"**\", \"!dependabot/**\"]`)",
            "environments/a.yaml:3:30: `!` excludes nothing: a `!` needs a branch name or glob after it (hint: `*` matches within one `/` segment, `**` across segments, e.g. `feature/**`)",
        ]
    );
}

#[test]
fn exact_patterns_must_be_branch_names_git_allows_and_listed_once() {
    let text = GOOD.replace("[\"feature/*\"]", "[\"feature /x\", main, main, \"x..y\"]");
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:3:12: `feature /x` is not a valid git branch name: it may not contain ' ' (hint: `*` matches within one `/` segment, `**` across segments, e.g. `feature/**`)",
            "environments/a.yaml:3:32: branch pattern `main` is listed twice (hint: remove one of them)",
            "environments/a.yaml:3:38: `x..y` is not a valid git branch name: it may not end with `.` or contain `..` or `@{` (hint: `*` matches within one `/` segment, `**` across segments, e.g. `feature/**`)",
        ]
    );
}

#[test]
fn a_section_set_twice_is_reported_once_and_merge_keys_are_named() {
    let text = GOOD.replace(
        "  scaling: { minAcu: 0, maxAcu: 4 }\n",
        "  scaling: { minAcu: 0, maxAcu: 4 }\n  scaling: { minAcu: 0, maxAcu: 4 }\n",
    );
    assert_eq!(
        errors(&text),
        ["environments/a.yaml:7:3: `cluster.scaling` is set twice (hint: remove one of them)"]
    );
    let text = format!(
        "base: &base {{ minAcu: 0, maxAcu: 4 }}\n{}",
        GOOD.replace(
            "  scaling: { minAcu: 0, maxAcu: 4 }",
            "  scaling:\n    <<: *base"
        )
    );
    let found = errors(&text);
    assert!(
        found.contains(&"environments/a.yaml:8:5: YAML merge keys (`<<`) are not supported in environment files (hint: write the keys out in full)".to_owned()),
        "{found:?}"
    );
}

#[test]
fn transaction_control_in_a_migration_or_seed_is_refused_where_it_starts() {
    let mut files = base_files();
    files.insert_bytes(
        "schemas/migrations/0003_escape.sql",
        b"CREATE TABLE a (id int);
  -- done
  /* now */ commit;
BEGIN TRANSACTION; begin work;
START
 TRANSACTION;
END;
ROLLBACK;
ABORT;
SAVEPOINT s;
RELEASE SAVEPOINT s;
RELEASE s;
ROLLBACK TO s;
rollback work to savepoint s;
PREPARE TRANSACTION 'x';
COMMIT PREPARED 'x';
ROLLBACK PREPARED 'x';
"
        .to_vec(),
    );
    files.insert_bytes(
        "schemas/migrations/0004_alone.sql",
        b"-- envctl:no-transaction\r\nCOMMIT\r\n".to_vec(),
    );
    files.insert_bytes(
        "schemas/seeds/dummy.sql",
        b"INSERT INTO t VALUES (1);\nCommit;\n".to_vec(),
    );
    let hint = "(hint: remove it: each migration already runs in its own transaction, with its ledger row; for a statement that cannot run in one, use a migration whose first line is `-- envctl:no-transaction`)";
    let at = |place: &str, name: &str| {
        format!(
            "schemas/migrations/0003_escape.sql:{place}: `{name}` controls the transaction, which envctl does for each migration {hint}"
        )
    };
    assert_eq!(
        errors_of(&files),
        [
            at("3:13", "COMMIT"),
            at("4:1", "BEGIN"),
            at("4:20", "BEGIN"),
            at("5:1", "START TRANSACTION"),
            at("7:1", "END"),
            at("8:1", "ROLLBACK"),
            at("9:1", "ABORT"),
            at("10:1", "SAVEPOINT"),
            at("11:1", "RELEASE SAVEPOINT"),
            at("12:1", "RELEASE SAVEPOINT"),
            at("13:1", "ROLLBACK TO SAVEPOINT"),
            at("14:1", "ROLLBACK TO SAVEPOINT"),
            at("15:1", "PREPARE TRANSACTION"),
            at("16:1", "COMMIT PREPARED"),
            at("17:1", "ROLLBACK PREPARED"),
            at("2:1", "COMMIT").replace("0003_escape", "0004_alone"),
            "schemas/seeds/dummy.sql:2:1: `COMMIT` controls the transaction, which envctl does for each seed (hint: remove it: each seed already runs in its own transaction, with its ledger row)".to_owned(),
        ]
    );
}

#[test]
fn transaction_words_inside_bodies_and_strings_are_not_transaction_control() {
    let mut files = base_files();
    files.insert_bytes(
        "schemas/migrations/0003_bodies.sql",
        b"DO $$ BEGIN PERFORM 1; END $$;
CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$
BEGIN
  RETURN 1;
END
$body$;
CREATE FUNCTION g() RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT 1;
  SELECT CASE WHEN true THEN 1 ELSE 2 END;
END;
CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END;
SELECT E'it\\'s; COMMIT; here', 'begin; end';
PREPARE stmt AS SELECT 1;
CREATE TABLE savepoints (\"commit\" int);
"
        .to_vec(),
    );
    assert_eq!(errors_of(&files), Vec::<String>::new());
}

#[test]
fn files_whose_extension_differs_only_in_case_are_named_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in [
        ("environments/a.yaml", GOOD),
        ("environments/b.YAML", GOOD),
        ("environments/c.Yml", GOOD),
        (
            "schemas/migrations/0001_create.sql",
            "CREATE TABLE t (id int);",
        ),
        (
            "schemas/migrations/0002_more.SQL",
            "ALTER TABLE t ADD x int;",
        ),
        ("schemas/seeds/dummy.sql", "INSERT INTO t VALUES (1);"),
        ("schemas/seeds/more/extra.Sql", "INSERT INTO t VALUES (2);"),
    ] {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let files = envctl::source::read_working_tree(dir.path()).unwrap();
    assert_eq!(
        errors_of(&files),
        [
            "environments/b.YAML:1:1: `b.YAML` is not read: environment files end in `.yaml` or `.yml` (hint: rename it to `b.yaml`)",
            "environments/c.Yml:1:1: `c.Yml` is not read: environment files end in `.yaml` or `.yml` (hint: rename it to `c.yml`)",
            "schemas/migrations/0002_more.SQL:1:1: `0002_more.SQL` is not read: migration files end in `.sql` (hint: rename it to `0002_more.sql`)",
            "schemas/seeds/more/extra.Sql:1:1: `extra.Sql` is not read: seed files end in `.sql` (hint: rename it to `extra.sql`)",
        ]
    );
}

#[test]
fn a_byte_order_mark_does_not_hide_the_no_transaction_marker() {
    let mut plain = base_files();
    plain.insert_bytes(
        "schemas/migrations/0003_idx.sql",
        b"-- envctl:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (id);\n"
            .to_vec(),
    );
    plain.insert_bytes("schemas/seeds/s.sql", b"SELECT 1;\n".to_vec());
    let mut marked = base_files();
    marked.insert_bytes(
        "schemas/migrations/0003_idx.sql",
        b"\xef\xbb\xbf-- envctl:no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (id);\n"
            .to_vec(),
    );
    marked.insert_bytes("schemas/seeds/s.sql", b"\xef\xbb\xbfSELECT 1;\n".to_vec());
    let plain = spec::load(&plain).unwrap();
    let marked = spec::load(&marked).unwrap();
    assert!(marked.migrations[2].no_transaction);
    assert_eq!(marked.migrations[2], plain.migrations[2]);
    assert_eq!(marked.seeds, plain.seeds);
}

#[test]
fn a_ttl_longer_than_a_year_is_refused() {
    let with_ttl = |ttl: &str| format!("{GOOD}lifecycle:\n  ttl: {ttl}\n");
    for ttl in ["365d", "8760h", "525600m"] {
        assert_eq!(errors(&with_ttl(ttl)), Vec::<String>::new(), "{ttl}");
    }
    for ttl in ["366d", "8761h", "3000000d", "99999999999999999999d"] {
        assert_eq!(
            errors(&with_ttl(ttl)),
            [format!(
                "environments/a.yaml:10:8: `lifecycle.ttl` `{ttl}` is longer than the maximum of 365 days (hint: write at most `365d`, e.g. `30d`)"
            )],
        );
    }
}

#[test]
fn a_zero_ttl_is_refused_as_zero() {
    let with_ttl = |ttl: &str| format!("{GOOD}lifecycle:\n  ttl: {ttl}\n");
    for ttl in ["0m", "00h", "0d"] {
        assert_eq!(
            errors(&with_ttl(ttl)),
            [format!(
                "environments/a.yaml:10:8: `lifecycle.ttl` `{ttl}` is zero (hint: write at least `1m`, or leave `ttl` out to keep the environment until its branch goes)"
            )],
        );
    }
}

#[test]
fn migration_versions_must_fit_the_ledger() {
    let mut files = base_files();
    files.insert_bytes(
        "schemas/migrations/9223372036854775807_last.sql",
        b"SELECT 1;".to_vec(),
    );
    assert_eq!(errors_of(&files), Vec::<String>::new());
    files.insert_bytes(
        "schemas/migrations/9223372036854775808_wraps.sql",
        b"SELECT 1;".to_vec(),
    );
    files.insert_bytes(
        "schemas/migrations/123456789012345678901234567890_huge.sql",
        b"SELECT 1;".to_vec(),
    );
    assert_eq!(
        errors_of(&files),
        [
            "schemas/migrations/123456789012345678901234567890_huge.sql:1:1: migration version 123456789012345678901234567890 is too large (hint: versions are 1 to 9223372036854775807)",
            "schemas/migrations/9223372036854775808_wraps.sql:1:1: migration version 9223372036854775808 is too large (hint: versions are 1 to 9223372036854775807)",
        ]
    );
}

#[test]
fn a_schema_version_beyond_the_range_says_what_is_allowed() {
    for version in [
        "9223372036854775808",
        "18446744073709551616",
        "99999999999999999999999",
    ] {
        let text = GOOD.replace(
            "database:\n",
            &format!("database:\n  schemaVersion: {version}\n"),
        );
        assert_eq!(
            errors(&text),
            [format!(
                "environments/a.yaml:8:18: `database.schemaVersion` {version} is out of range (hint: use `latest` or a migration version from 1 to 9223372036854775807)"
            )],
        );
    }
    let text = GOOD.replace("version: 1", "version: 99999999999999999999999");
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:1:10: `version` 99999999999999999999999 is out of range (hint: see `envctl schema` for the values it allows)"
        ]
    );
}

#[test]
fn a_long_branches_list_is_refused_by_its_own_limit() {
    let with_branches = |patterns: Vec<String>| {
        GOOD.replace("[\"feature/*\"]", &format!("[{}]", patterns.join(",")))
    };
    let distinct = |n: usize| (0..n).map(|i| format!("b{i}")).collect::<Vec<_>>();
    assert_eq!(errors(&with_branches(distinct(1000))), Vec::<String>::new());
    assert_eq!(
        errors(&with_branches(distinct(1001))),
        [
            "environments/a.yaml:3:11: `branches` lists 1001 patterns; at most 1000 are allowed (hint: cover many branches with one glob, e.g. `feature/**`)"
        ]
    );
    // 200 000 patterns fit in a 1 MiB file: refused for their number, not as an alias bomb.
    let text = with_branches(vec!["a".to_owned(); 200_000]);
    assert!(text.len() < 1 << 20);
    assert_eq!(
        errors(&text),
        [
            "environments/a.yaml:3:11: `branches` lists 200000 patterns; at most 1000 are allowed (hint: cover many branches with one glob, e.g. `feature/**`)"
        ]
    );
}

#[test]
fn tags_leave_room_for_envctls_own_eighteen() {
    let with_tags = |tags: Vec<String>| {
        GOOD.replace(
            "  engine: aurora-postgresql\n",
            &format!(
                "  engine: aurora-postgresql\n  tags: {{ {} }}\n",
                tags.join(", ")
            ),
        )
    };
    let numbered = |n: usize| (0..n).map(|i| format!("t{i}: v")).collect::<Vec<_>>();
    assert_eq!(errors(&with_tags(numbered(32))), Vec::<String>::new());
    assert_eq!(
        errors(&with_tags(numbered(33))),
        [
            "environments/a.yaml:6:9: 33 tags; at most 32 fit beside envctl's own 18 (AWS allows 50 per resource) (hint: remove some tags)"
        ]
    );
    // Their keys are listed in one tag of at most 256 characters.
    let long = |i: usize| format!("{}{i:02}: v", "k".repeat(60));
    assert_eq!(
        errors(&with_tags((0..4).map(long).collect())),
        Vec::<String>::new()
    );
    assert_eq!(
        errors(&with_tags((0..5).map(long).collect())),
        [
            "environments/a.yaml:6:9: the tag keys are too long together: envctl records them in `envctl:spec-tags`, a tag value of at most 256 characters (hint: use fewer or shorter tag keys)"
        ]
    );
}

#[test]
fn clashes_between_files_are_reported_even_when_a_file_has_other_errors() {
    let mut files = base_files();
    files.insert_bytes(
        "environments/a.yaml",
        GOOD.replace("minAcu: 0", "minAcu: 5").into_bytes(),
    );
    files.insert_bytes(
        "environments/b.yaml",
        GOOD.replace("maxAcu: 4", "maxAcu: 8").into_bytes(),
    );
    assert_eq!(
        errors_of(&files),
        [
            "environments/a.yaml:6:22: `minAcu` 5 is greater than `maxAcu` 4 (hint: make `minAcu` at most `maxAcu`)",
            "environments/b.yaml:2:7: environment name `preview` is already used by `environments/a.yaml` (hint: give each environment file a unique `name`)",
            "environments/b.yaml:3:12: branch pattern `feature/*` is also in `environments/a.yaml`, so the branches it matches would be covered by both (hint: keep the pattern in one file, or make one of them more specific)",
        ]
    );
}

#[test]
fn a_carriage_return_ends_a_line_comment_as_postgresql_reads_it() {
    let mut files = base_files();
    files.insert_bytes("environments/a.yaml", GOOD.as_bytes().to_vec());
    files.insert_bytes(
        "schemas/migrations/0003_cr.sql",
        b"CREATE TABLE a (id int);\nSELECT 1; -- x\rCOMMIT;\nSELECT 1/0;\n".to_vec(),
    );
    assert_eq!(
        errors_of(&files),
        [
            "schemas/migrations/0003_cr.sql:2:16: `COMMIT` controls the transaction, which envctl does for each migration (hint: remove it: each migration already runs in its own transaction, with its ledger row; for a statement that cannot run in one, use a migration whose first line is `-- envctl:no-transaction`)"
        ]
    );
}

#[test]
fn statements_that_undo_envctls_session_are_refused() {
    for (sql, name) in [
        ("DISCARD ALL;", "DISCARD"),
        ("discard plans;", "DISCARD"),
        ("DEALLOCATE ALL;", "DEALLOCATE"),
        ("SELECT pg_advisory_unlock_all();", "pg_advisory_unlock"),
        (
            "SELECT 1 FROM t WHERE pg_advisory_unlock(1);",
            "pg_advisory_unlock",
        ),
    ] {
        let mut files = base_files();
        files.insert_bytes("environments/a.yaml", GOOD.as_bytes().to_vec());
        files.insert_bytes("schemas/migrations/0003_s.sql", sql.as_bytes().to_vec());
        let found = errors_of(&files);
        assert_eq!(found.len(), 1, "{sql}: {found:?}");
        assert!(
            found[0].starts_with(&format!("schemas/migrations/0003_s.sql:1:1: `{name}` ")),
            "{sql}: {found:?}"
        );
    }
    // Inside a function body, a string or a comment it is not a statement.
    let mut files = base_files();
    files.insert_bytes("environments/a.yaml", GOOD.as_bytes().to_vec());
    files.insert_bytes(
        "schemas/migrations/0003_s.sql",
        b"-- DISCARD ALL;\nSELECT 'DEALLOCATE ALL';\n".to_vec(),
    );
    assert_eq!(errors_of(&files), Vec::<String>::new());
}

#[test]
fn copy_from_stdin_and_to_stdout_are_refused_where_they_are() {
    // Only a client speaking COPY's sub-protocol can run them: through envctl the server waited
    // for rows without end (a no-transaction migration hung past --wait-timeout and a signal).
    for (path, sql, name) in [
        (
            "schemas/migrations/0003_c.sql",
            "-- envctl:no-transaction\nCOPY dummy.t (id, name) FROM STDIN;\n",
            "COPY … FROM STDIN",
        ),
        (
            "schemas/migrations/0003_c.sql",
            "CREATE TABLE t (id int);\ncopy t to stdout with (format csv);\n",
            "COPY … TO STDOUT",
        ),
        (
            "schemas/seeds/s.sql",
            "COPY t FROM stdin;\n1\n\\.\n",
            "COPY … FROM STDIN",
        ),
    ] {
        let mut files = base_files();
        files.insert_bytes("environments/a.yaml", GOOD.as_bytes().to_vec());
        files.insert_bytes(path, sql.as_bytes().to_vec());
        let found = errors_of(&files);
        assert!(
            found.iter().any(|e| e.starts_with(&format!("{path}:"))
                && e.contains(&format!("`{name}` needs a client"))),
            "{sql}: {found:?}"
        );
    }
    // From or to a file the server reads, or in a string, it is not refused.
    let mut files = base_files();
    files.insert_bytes("environments/a.yaml", GOOD.as_bytes().to_vec());
    files.insert_bytes(
        "schemas/migrations/0003_c.sql",
        b"COPY t FROM '/tmp/stdin';\nSELECT 'COPY t FROM STDIN';\n".to_vec(),
    );
    assert_eq!(errors_of(&files), Vec::<String>::new());
}

#[test]
fn a_nul_byte_is_refused_where_it_is() {
    let mut files = base_files();
    files.insert_bytes("environments/a.yaml", GOOD.as_bytes().to_vec());
    files.insert_bytes(
        "schemas/migrations/0003_nul.sql",
        b"SELECT 1;\nSELECT '\0';\n".to_vec(),
    );
    assert_eq!(
        errors_of(&files),
        [
            "schemas/migrations/0003_nul.sql:2:9: the file holds a NUL byte (hint: remove it: neither SQL nor YAML text may hold one)"
        ]
    );
}

const MAIN: &str = "\
version: 1
name: main
branches: [main]
cluster:
  scaling: { minAcu: 0.5, maxAcu: 4 }
";

fn with_main(preview: &str) -> Vec<String> {
    let mut files = base_files();
    files.insert_bytes("environments/a.yaml", preview.as_bytes().to_vec());
    files.insert_bytes("environments/main.yaml", MAIN.as_bytes().to_vec());
    files.insert_bytes(
        "schemas/mask/extra.sql",
        b"UPDATE t SET id = id;\n".to_vec(),
    );
    errors_of(&files)
}

/// A data branch: its source, its masking rules and files, all checked where they are written.
#[test]
fn data_branch_sources_and_masking_rules_are_checked_in_place() {
    let good = GOOD.replace(
        "  seeds: [schemas/seeds/dummy.sql]\n",
        "  seeds: [schemas/seeds/dummy.sql]\n  from:\n    branch: main\n    mask:\n      app.users.email: email\n      app.users.phone: null\n      '\"My Schema\".\"t;drop\".\"naïve\"': hash\n      app.cards.last4: fixed:0000\n    maskSql: [schemas/mask/extra.sql]\n",
    );
    assert_eq!(with_main(&good), Vec::<String>::new());
    let bad = GOOD.replace(
        "  seeds: [schemas/seeds/dummy.sql]\n",
        "  seeds: [schemas/seeds/dummy.sql]\n  from:\n    branch: main\n    cluster: staging\n    mask:\n      app.users: email\n      app.users.email: emial\n      app.users.ssn: redact\n      a.b;c.d: null\n    maskSql: [schemas/mask/missing.sql, schemas/seeds/dummy.sql]\n",
    );
    assert_eq!(
        with_main(&bad),
        [
            "environments/a.yaml:11:14: `from` names both a `branch` and a `cluster` (hint: keep one: `branch` for another environment of this repository, `cluster` for a database envctl does not manage)",
            "environments/a.yaml:13:7: masking rule `app.users` names 2 parts; write `schema.table.column` (hint: name the column as `schema.table.column`, e.g. `app.users.email` (double-quote a name with other characters))",
            "environments/a.yaml:14:24: `emial` is not a masking strategy (hint: did you mean `email`?)",
            "environments/a.yaml:15:22: `redact` is not a masking strategy (hint: use `null`, `email`, `name`, `hash` or `fixed:<literal>`)",
            "environments/a.yaml:16:7: masking rule `a.b;c.d`: `;` cannot be in an unquoted name; put that name in double quotes (hint: name the column as `schema.table.column`, e.g. `app.users.email` (double-quote a name with other characters))",
            "environments/a.yaml:17:15: masking file `schemas/mask/missing.sql` does not exist (hint: create the file or remove it from `maskSql`)",
            "environments/a.yaml:17:41: masking file `schemas/seeds/dummy.sql` is not a `.sql` file under `schemas/mask/` (hint: give the repository-relative path, e.g. `schemas/mask/extra.sql`)",
        ]
    );
}

/// `from.masterUser`: a user name, and only beside a `from.cluster`.
#[test]
fn a_source_s_master_user_is_checked_in_place() {
    let with = |from: &str| {
        GOOD.replace(
            "  seeds: [schemas/seeds/dummy.sql]\n",
            &format!("  seeds: [schemas/seeds/dummy.sql]\n  from:\n{from}"),
        )
    };
    assert_eq!(
        with_main(&with("    cluster: staging\n    masterUser: dbadmin\n")),
        Vec::<String>::new()
    );
    assert_eq!(
        with_main(&with(
            "    cluster: staging\n    masterUser: \"db admin\"\n"
        )),
        [
            "environments/a.yaml:11:17: `db admin` is not a valid user name (hint: use 1 to 63 letters, digits and `_`, starting with a letter (the cluster's `MasterUsername`))"
        ]
    );
    assert_eq!(
        with_main(&with("    branch: main\n    masterUser: dbadmin\n")),
        [
            "environments/a.yaml:11:17: `masterUser` is for a `from.cluster` source: envctl's own environments' master user is `postgres` (hint: remove it, or name the cluster with `cluster`)"
        ]
    );
    assert_eq!(
        with_main(&with("    cluster: staging\n    masterUsr: dbadmin\n")),
        [
            "environments/a.yaml:11:5: unknown key `masterUsr` in `database.from` (hint: did you mean `masterUser`?)"
        ]
    );
}

/// A rule may not name PostgreSQL's catalogs or envctl's records: masking runs as the master user,
/// and an UPDATE of `pg_catalog.pg_authid` would clear every password on the server.
#[test]
fn masking_rules_on_catalogs_or_envctl_s_records_are_refused() {
    let spec = GOOD.replace(
        "  seeds: [schemas/seeds/dummy.sql]\n",
        "  seeds: [schemas/seeds/dummy.sql]\n  from:\n    branch: main\n    mask:\n      pg_catalog.pg_authid.rolpassword: null\n      information_schema.tables.table_name: hash\n      PG_TOAST.x.y: null\n      envctl.masking.digest: null\n      '\"pg_temp_3\".t.c': null\n      pgapp.users.email: email\n",
    );
    let found = with_main(&spec);
    assert_eq!(found.len(), 5, "{found:?}");
    for (error, (line, column, schema)) in found.iter().zip([
        (12, 7, "pg_catalog.pg_authid.rolpassword"),
        (13, 7, "information_schema.tables.table_name"),
        (14, 7, "pg_toast.x.y"),
        (15, 7, "envctl.masking.digest"),
        (16, 7, "pg_temp_3.t.c"),
    ]) {
        assert!(
            error.starts_with(&format!(
                "environments/a.yaml:{line}:{column}: masking rule `{schema}` names a table in `"
            )),
            "{error}"
        );
        assert!(error.contains("not data to mask"), "{error}");
    }
}

/// `from.branch` must be another spec's branch, and `from`s may not go round in a cycle.
#[test]
fn a_data_branch_copies_from_another_specs_branch_never_itself_nor_in_a_cycle() {
    let from = |branch: &str| {
        GOOD.replace(
            "  seeds: [schemas/seeds/dummy.sql]\n",
            &format!("  seeds: [schemas/seeds/dummy.sql]\n  from: {{ branch: {branch} }}\n"),
        )
    };
    assert_eq!(
        with_main(&from("feature/x")),
        [
            "environments/a.yaml:9:19: `from.branch` `feature/x` is covered by this spec itself, so its environment would be a copy of itself (hint: copy from a branch another spec covers (e.g. `main`))"
        ]
    );
    assert_eq!(
        with_main(&from("release/1")),
        [
            "environments/a.yaml:9:19: `from.branch` `release/1` is covered by no spec, so it has no environment to copy (hint: name a branch a spec covers, or add a spec for it)"
        ]
    );
    let mut files = base_files();
    files.insert_bytes("environments/a.yaml", from("main").as_bytes().to_vec());
    files.insert_bytes(
        "environments/main.yaml",
        format!("{MAIN}database:\n  from: {{ branch: feature/y }}\n")
            .as_bytes()
            .to_vec(),
    );
    let found = errors_of(&files);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with(
            "environments/a.yaml:9:19: `from` makes a cycle: preview → main → preview"
        ),
        "{found:?}"
    );
    assert!(
        found[1].starts_with(
            "environments/main.yaml:7:19: `from` makes a cycle: main → preview → main"
        ),
        "{found:?}"
    );
}

#[test]
fn a_named_file_that_cannot_be_used_is_not_called_missing() {
    // Both files are there, but not UTF-8: each has its own error, and the spec naming them says
    // they cannot be used (not that they do not exist, which would send the user looking).
    let mut files = base_files();
    files.insert_bytes("schemas/seeds/bad.sql", vec![0xff, 0xfe, b'x']);
    files.insert_bytes("schemas/mask/bad.sql", vec![0xff, 0xfe, b'y']);
    files.insert_bytes(
        "environments/a.yaml",
        GOOD.replace("schemas/seeds/dummy.sql", "schemas/seeds/bad.sql")
            .replace(
                "database:\n",
                "database:\n  from:\n    maskSql: [schemas/mask/bad.sql]\n",
            )
            .into_bytes(),
    );
    let errors = errors_of(&files);
    let all = errors.join("\n");
    assert!(!all.contains("does not exist"), "{all}");
    assert!(
        errors.iter().any(|e| e.starts_with("environments/a.yaml:")
            && e.contains("seed file `schemas/seeds/bad.sql` cannot be used")),
        "{all}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("environments/a.yaml:")
            && e.contains("masking file `schemas/mask/bad.sql` cannot be used")),
        "{all}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("schemas/seeds/bad.sql:")),
        "the file's own error: {all}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("schemas/mask/bad.sql:")),
        "the file's own error: {all}"
    );
}

#[test]
fn a_seed_or_masking_file_that_is_a_directory_says_so() {
    let mut files = base_files();
    files.insert_bytes(
        "schemas/seeds/users.sql/one.sql",
        b"INSERT INTO t VALUES (2);".to_vec(),
    );
    files.insert_bytes("schemas/mask/extra.sql/a.sql", b"SELECT 1;".to_vec());
    files.insert_bytes("schemas/mask/extra.sqlx.sql", b"SELECT 1;".to_vec());
    let spec = GOOD.replace(
        "  seeds: [schemas/seeds/dummy.sql]\n",
        "  seeds: [schemas/seeds/users.sql]\n  from:\n    branch: main\n    maskSql: [schemas/mask/extra.sql]\n",
    );
    files.insert_bytes("environments/a.yaml", spec.into_bytes());
    files.insert_bytes(
        "environments/main.yaml",
        b"version: 1\nname: main\nbranches: [main]\ncluster:\n  engine: aurora-postgresql\n  express: true\n  scaling: { minAcu: 0, maxAcu: 4 }\ndatabase:\n  name: postgres\n  user: postgres\n".to_vec(),
    );
    assert_eq!(
        errors_of(&files),
        [
            "environments/a.yaml:8:11: seed `schemas/seeds/users.sql` is a directory, not a file (hint: list the files in it, e.g. `schemas/seeds/users.sql/one.sql`)",
            "environments/a.yaml:11:15: masking file `schemas/mask/extra.sql` is a directory, not a file (hint: list the files in it, e.g. `schemas/mask/extra.sql/a.sql`)",
        ]
    );
}
