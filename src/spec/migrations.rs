//! The migration catalogue (`schemas/migrations/NNNN_description.sql`) and seed files: names,
//! versions, checksums over LF-normalized text, the `-- envctl:no-transaction` marker, and a small
//! SQL statement splitter that knows quotes, dollar quotes and comments. Pure: no IO.

use std::collections::BTreeMap;

use crate::model::{Migration, Seed, content_checksum, normalize_line_endings};

use super::{Diagnostic, FileContent, RepoFiles};

pub const MIGRATIONS_DIR: &str = "schemas/migrations/";
pub const SEEDS_DIR: &str = "schemas/seeds/";
pub const NO_TRANSACTION_MARKER: &str = "-- envctl:no-transaction";

/// Reads every `.sql` file under `schemas/migrations/` into version order.
pub fn load_migrations(files: &RepoFiles, diagnostics: &mut Vec<Diagnostic>) -> Vec<Migration> {
    let mut by_version: BTreeMap<u64, Migration> = BTreeMap::new();
    for (path, content) in files.under(MIGRATIONS_DIR) {
        let file_name = &path[MIGRATIONS_DIR.len()..];
        if file_name.contains('/') || !file_name.ends_with(".sql") {
            continue;
        }
        let stem = &file_name[..file_name.len() - 4];
        let Some(version) = parse_migration_name(stem) else {
            diagnostics.push(Diagnostic::at_start(
                path,
                format!("`{file_name}` is not a migration file name"),
                Some("name migrations `NNNN_description.sql`, NNNN a positive integer, e.g. `0004_add_orders.sql`".into()),
            ));
            continue;
        };
        let Some(text) = text_of(path, content, diagnostics) else {
            continue;
        };
        let sql = normalize_line_endings(&text);
        let no_transaction = sql.lines().next().map(str::trim) == Some(NO_TRANSACTION_MARKER);
        if no_transaction {
            let statements = split_statements(&sql).len();
            if statements != 1 {
                diagnostics.push(Diagnostic::at_start(
                    path,
                    format!("a `{NO_TRANSACTION_MARKER}` migration must hold exactly one statement; this one has {statements}"),
                    Some("move the other statements into a migration of their own".into()),
                ));
                continue;
            }
        }
        let migration = Migration {
            version,
            name: stem.to_owned(),
            path: path.to_owned(),
            checksum: content_checksum(&sql),
            sql,
            no_transaction,
        };
        if let Some(first) = by_version.get(&version) {
            diagnostics.push(Diagnostic::at_start(
                path,
                format!(
                    "migration version {version} is used twice: by `{}` and by this file",
                    first.path
                ),
                Some("give each migration its own version number".into()),
            ));
            continue;
        }
        by_version.insert(version, migration);
    }
    by_version.into_values().collect()
}

/// `0004_add_orders` → 4; `None` unless digits, `_`, then a description.
fn parse_migration_name(stem: &str) -> Option<u64> {
    let (digits, description) = stem.split_once('_')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || description.is_empty() {
        return None;
    }
    digits.parse::<u64>().ok().filter(|v| *v > 0)
}

/// Reads the seed files under `schemas/seeds/`, by path.
pub fn load_seeds(files: &RepoFiles, diagnostics: &mut Vec<Diagnostic>) -> BTreeMap<String, Seed> {
    let mut seeds = BTreeMap::new();
    for (path, content) in files.under(SEEDS_DIR) {
        if !path.ends_with(".sql") {
            continue;
        }
        if let Some(text) = text_of(path, content, diagnostics) {
            let sql = normalize_line_endings(&text);
            seeds.insert(
                path.to_owned(),
                Seed {
                    path: path.to_owned(),
                    checksum: content_checksum(&sql),
                    sql,
                },
            );
        }
    }
    seeds
}

/// The file's text, or a diagnostic when it is too large or not UTF-8.
pub fn text_of(
    path: &str,
    content: &FileContent,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<String> {
    match content {
        FileContent::TooLarge { size, limit } => {
            diagnostics.push(Diagnostic::at_start(
                path,
                format!(
                    "the file is {size} bytes; envctl reads files of at most {limit} bytes here"
                ),
                None,
            ));
            None
        }
        FileContent::Bytes(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Some(text.to_owned()),
            Err(e) => {
                let valid = &bytes[..e.valid_up_to()];
                let valid = std::str::from_utf8(valid).unwrap_or_default();
                let line = valid.matches('\n').count() + 1;
                let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                diagnostics.push(Diagnostic {
                    file: path.to_owned(),
                    line,
                    column,
                    message: "the file is not valid UTF-8".into(),
                    hint: Some("save it as UTF-8".into()),
                });
                None
            }
        },
    }
}

/// Splits SQL into statements on `;`, ignoring those inside quotes, dollar quotes and comments.
/// Returns each statement's text (trimmed) with the 0-based byte offset where it starts. Statements
/// that are only whitespace and comments are dropped.
pub fn split_statements(sql: &str) -> Vec<(usize, &str)> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut has_code = false;
    let mut code_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Block comments nest in PostgreSQL.
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'\'' | b'"' => {
                if !has_code {
                    has_code = true;
                    code_start = i;
                }
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b {
                        if bytes.get(i + 1) == Some(&b) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            b'$' => {
                if let Some(tag_len) = dollar_tag_len(&sql[i..]) {
                    if !has_code {
                        has_code = true;
                        code_start = i;
                    }
                    let tag = &sql[i..i + tag_len];
                    let body = i + tag_len;
                    i = sql[body..]
                        .find(tag)
                        .map_or(bytes.len(), |n| body + n + tag_len);
                    continue;
                }
            }
            b';' => {
                if has_code {
                    statements.push((code_start, sql[code_start..i].trim()));
                }
                has_code = false;
                start = i + 1;
                i += 1;
                continue;
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() && !has_code {
            has_code = true;
            code_start = i;
        }
        i += 1;
    }
    let _ = start;
    if has_code {
        statements.push((code_start, sql[code_start..].trim()));
    }
    statements
}

/// Length of a dollar-quote opening tag (`$$`, `$body$`) at the start of `s`.
fn dollar_tag_len(s: &str) -> Option<usize> {
    let rest = &s[1..];
    let end = rest.find('$')?;
    let tag = &rest[..end];
    let valid = tag
        .chars()
        .enumerate()
        .all(|(n, c)| c == '_' || c.is_alphabetic() || (n > 0 && c.is_ascii_digit()));
    valid.then_some(end + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_around_quotes_and_comments() {
        let sql = "-- a comment; not a statement\nCREATE TABLE t (s text DEFAULT ';');\n/* ; /* nested ; */ */\nCREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\nSELECT 'it''s; fine'";
        let statements: Vec<&str> = split_statements(sql).into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            statements,
            [
                "CREATE TABLE t (s text DEFAULT ';')",
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
                "SELECT 'it''s; fine'"
            ]
        );
    }

    #[test]
    fn comment_only_sql_has_no_statements() {
        assert!(split_statements("-- nothing\n  \n/* here */").is_empty());
    }

    #[test]
    fn statement_offsets_point_at_code() {
        let sql = "-- x\n\nSELECT 1;\n  SELECT 2;";
        let offsets: Vec<usize> = split_statements(sql).into_iter().map(|(o, _)| o).collect();
        assert_eq!(offsets, [6, 18]);
    }

    #[test]
    fn migration_names() {
        assert_eq!(parse_migration_name("0004_add_orders"), Some(4));
        assert_eq!(parse_migration_name("12_x"), Some(12));
        assert_eq!(parse_migration_name("0000_zero"), None);
        assert_eq!(parse_migration_name("add_orders"), None);
        assert_eq!(parse_migration_name("0004"), None);
        assert_eq!(parse_migration_name("0004_"), None);
    }
}
