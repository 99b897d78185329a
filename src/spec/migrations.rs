//! The migration catalogue (`schemas/migrations/NNNN_description.sql`) and seed files: names,
//! versions, checksums over LF-normalized text, the `-- envctl:no-transaction` marker, each
//! migration's lint findings, and a small lexer that reads a statement's first words (transaction
//! control, `CREATE INDEX CONCURRENTLY`'s target). Statements are split by squawk's parser
//! (`lint.rs`). Pure: no IO.

use std::collections::BTreeMap;

use crate::model::{Migration, Seed, content_checksum, normalize_line_endings};

use super::lint::{LintOf, MAX_NESTING, Reading, Refused, TooComplex, line_and_column, read};
use super::validate::MAX_MIGRATION_VERSION;
use super::{Diagnostic, FileContent, RepoFiles, has_extension, misnamed_extension};

pub const MIGRATIONS_DIR: &str = "schemas/migrations/";
pub const SEEDS_DIR: &str = "schemas/seeds/";
/// Masking SQL of data branches (`database.from.maskSql`).
pub const MASK_DIR: &str = "schemas/mask/";
pub const NO_TRANSACTION_MARKER: &str = "-- envctl:no-transaction";

/// Reads every `.sql` file under `schemas/migrations/` into version order, each linted once
/// (`lint.rs`).
pub fn load_migrations(files: &RepoFiles, diagnostics: &mut Vec<Diagnostic>) -> Vec<Migration> {
    // Read and named first, so that one thread parses every file.
    let mut read: Vec<(&str, String, u64, String, bool)> = Vec::new();
    for (path, content) in files.under(MIGRATIONS_DIR) {
        let file_name = &path[MIGRATIONS_DIR.len()..];
        if file_name.contains('/') || has_extension(file_name, &[".sql"]).is_none() {
            continue;
        }
        if let Some(misnamed) = misnamed_extension(path, ".sql", "migration", "`.sql`") {
            diagnostics.push(misnamed);
            continue;
        }
        let stem = &file_name[..file_name.len() - 4];
        let version = match parse_migration_name(stem) {
            Ok(version) => version,
            Err(MigrationNameError::NotAMigrationName) => {
                diagnostics.push(Diagnostic::at_start(
                    path,
                    format!("`{file_name}` is not a migration file name"),
                    Some("name migrations `NNNN_description.sql`, NNNN a positive integer, e.g. `0004_add_orders.sql`".into()),
                ));
                continue;
            }
            Err(MigrationNameError::TooLarge(digits)) => {
                diagnostics.push(Diagnostic::at_start(
                    path,
                    format!("migration version {digits} is too large"),
                    Some(format!("versions are 1 to {MAX_MIGRATION_VERSION}")),
                ));
                continue;
            }
        };
        let Some(text) = text_of(path, content, diagnostics) else {
            continue;
        };
        let sql = normalize_line_endings(&text);
        let no_transaction = sql.lines().next().map(str::trim) == Some(NO_TRANSACTION_MARKER);
        read.push((path, stem.to_owned(), version, sql, no_transaction));
    }
    let texts: Vec<(&str, Option<LintOf>)> = read
        .iter()
        .map(|(path, stem, _, sql, no_transaction)| {
            let lint = LintOf {
                name: stem,
                path,
                no_transaction: *no_transaction,
            };
            (sql.as_str(), Some(lint))
        })
        .collect();
    let readings = super::lint::read_all(&texts);
    drop(texts);
    let mut by_version: BTreeMap<u64, Migration> = BTreeMap::new();
    for ((path, name, version, sql, no_transaction), reading) in read.into_iter().zip(readings) {
        if !check_statements(path, &sql, &reading, "migration", diagnostics) {
            continue;
        }
        if no_transaction {
            let statements = reading.statements.len();
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
            name,
            path: path.to_owned(),
            checksum: content_checksum(&sql),
            sql,
            no_transaction,
            lint: reading.findings.into(),
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

/// Checks what envctl needs of a file's statements (see [`check_transaction_control`]), and that
/// it could be read: `false` when it nests too deep to read.
fn check_statements(
    path: &str,
    sql: &str,
    reading: &Reading,
    kind: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> bool {
    if let Some(Refused { at, why }) = reading.refused {
        let (line, column) = line_and_column(sql, at);
        let (message, hint) = match why {
            TooComplex::Nesting => (
                format!(
                    "the SQL nests parentheses or brackets more than {MAX_NESTING} levels deep here; envctl does not read it"
                ),
                "write it with less nesting",
            ),
            TooComplex::Work => (
                "the SQL up to here nests or chains expressions too deeply for the size of the file (parentheses, operators, casts or `NOT`s without a `,` between them); envctl does not read it".to_owned(),
                "split the expression or the statement: envctl bounds the work of reading a file by its size, so that no file can stall a plan",
            ),
        };
        diagnostics.push(Diagnostic {
            file: path.to_owned(),
            line,
            column,
            message,
            hint: Some(hint.into()),
        });
        return false;
    }
    let statements: Vec<(usize, &str)> = reading
        .statements
        .iter()
        .map(|(start, end)| (*start, &sql[*start..*end]))
        .collect();
    check_transaction_control(path, sql, &statements, kind, diagnostics);
    true
}

#[derive(Debug, PartialEq, Eq)]
enum MigrationNameError {
    NotAMigrationName,
    /// Above [`MAX_MIGRATION_VERSION`]: the digits as written.
    TooLarge(String),
}

/// `0004_add_orders` → 4; an error unless digits, `_`, then a description, with the version from
/// 1 to [`MAX_MIGRATION_VERSION`].
fn parse_migration_name(stem: &str) -> Result<u64, MigrationNameError> {
    let not_a_name = MigrationNameError::NotAMigrationName;
    let (digits, description) = stem.split_once('_').ok_or(not_a_name)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || description.is_empty() {
        return Err(MigrationNameError::NotAMigrationName);
    }
    match digits.parse::<u64>() {
        Ok(0) => Err(MigrationNameError::NotAMigrationName),
        Ok(version) if version <= MAX_MIGRATION_VERSION => Ok(version),
        // Only digits: the parse failed because the number is too large.
        _ => Err(MigrationNameError::TooLarge(digits.to_owned())),
    }
}

/// Reads the seed files under `schemas/seeds/`, by path.
pub fn load_seeds(files: &RepoFiles, diagnostics: &mut Vec<Diagnostic>) -> BTreeMap<String, Seed> {
    let mut seeds = BTreeMap::new();
    for (path, content) in files.under(SEEDS_DIR) {
        if has_extension(path, &[".sql"]).is_none() {
            continue;
        }
        if let Some(misnamed) = misnamed_extension(path, ".sql", "seed", "`.sql`") {
            diagnostics.push(misnamed);
            continue;
        }
        if let Some(text) = text_of(path, content, diagnostics) {
            let sql = normalize_line_endings(&text);
            if !check_statements(path, &sql, &read(&sql, None), "seed", diagnostics) {
                continue;
            }
            seeds.insert(
                path.to_owned(),
                Seed {
                    path: path.to_owned(),
                    checksum: content_checksum(&sql),
                    sql: sql.into(),
                },
            );
        }
    }
    seeds
}

/// The masking files under `schemas/mask/`, by path: SQL run on a data branch's copy, with the
/// masking rules, in one transaction.
pub fn load_mask_files(
    files: &RepoFiles,
    diagnostics: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Seed> {
    let mut found = BTreeMap::new();
    for (path, content) in files.under(MASK_DIR) {
        if has_extension(path, &[".sql"]).is_none() {
            continue;
        }
        if let Some(misnamed) = misnamed_extension(path, ".sql", "masking file", "`.sql`") {
            diagnostics.push(misnamed);
            continue;
        }
        if let Some(text) = text_of(path, content, diagnostics) {
            let sql = normalize_line_endings(&text);
            if !check_statements(path, &sql, &read(&sql, None), "masking file", diagnostics) {
                continue;
            }
            found.insert(
                path.to_owned(),
                Seed {
                    path: path.to_owned(),
                    checksum: content_checksum(&sql),
                    sql: sql.into(),
                },
            );
        }
    }
    found
}

/// Reports every statement of a migration or seed that begins, ends or rolls back a transaction:
/// envctl runs each in a transaction with its ledger row, and such a statement would commit part
/// of it, or let the rest run outside one.
fn check_transaction_control(
    path: &str,
    sql: &str,
    statements: &[(usize, &str)],
    kind: &str,
    diagnostics: &mut Vec<Diagnostic>,
) {
    for &(offset, statement) in statements {
        if let Some(name) = client_copy(statement) {
            let (line, column) = line_and_column(sql, offset);
            diagnostics.push(Diagnostic {
                file: path.to_owned(),
                line,
                column,
                message: format!(
                    "`{name}` needs a client that sends or reads the rows (psql takes them from the lines after it); envctl runs SQL only, and the server would wait for rows that never come"
                ),
                hint: Some(
                    "use `INSERT … VALUES`, or `COPY` from or to a file the server can read".into(),
                ),
            });
            continue;
        }
        if let Some((name, why)) = session_control(statement) {
            let (line, column) = line_and_column(sql, offset);
            diagnostics.push(Diagnostic {
                file: path.to_owned(),
                line,
                column,
                message: format!("`{name}` {why}"),
                hint: Some(format!(
                    "remove it: envctl resets the session after each {kind} itself"
                )),
            });
            continue;
        }
        let Some(name) = transaction_control(statement) else {
            continue;
        };
        let (line, column) = line_and_column(sql, offset);
        let hint = if kind == "migration" {
            format!(
                "remove it: each migration already runs in its own transaction, with its ledger row; for a statement that cannot run in one, use a migration whose first line is `{NO_TRANSACTION_MARKER}`"
            )
        } else if kind == "masking file" {
            "remove it: the masking rules and files already run in one transaction, with the masking record".to_owned()
        } else {
            format!(
                "remove it: each {kind} already runs in its own transaction, with its ledger row"
            )
        };
        diagnostics.push(Diagnostic {
            file: path.to_owned(),
            line,
            column,
            message: format!(
                "`{name}` controls the transaction, which envctl does for each {kind}"
            ),
            hint: Some(hint),
        });
    }
}

/// A statement that would undo what envctl holds for the whole run of migrations: its advisory
/// lock (`DISCARD ALL`, `pg_advisory_unlock…`) or its prepared statements (`DEALLOCATE`).
pub fn session_control(statement: &str) -> Option<(&'static str, &'static str)> {
    let words: Vec<String> = Lexer::new(statement)
        .filter_map(|(_, token)| match token {
            Token::Word(word) => Some(word.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    match words.first().map(String::as_str) {
        Some("discard") => {
            return Some((
                "DISCARD",
                "resets the session envctl migrates in (DISCARD ALL also releases the lock that keeps two envctls from migrating at once)",
            ));
        }
        Some("deallocate") => {
            return Some((
                "DEALLOCATE",
                "drops the prepared statements envctl's own connection uses",
            ));
        }
        _ => {}
    }
    words
        .iter()
        .any(|w| w.starts_with("pg_advisory_unlock"))
        .then_some((
            "pg_advisory_unlock",
            "can release the lock that keeps two envctls from migrating at once",
        ))
}

/// `COPY … FROM STDIN` or `COPY … TO STDOUT` (by that name), which only a client that speaks
/// COPY's sub-protocol can run: the server waits for rows, or sends them, outside the query.
pub fn client_copy(statement: &str) -> Option<&'static str> {
    let words: Vec<String> = Lexer::new(statement)
        .filter_map(|(_, token)| match token {
            Token::Word(word) => Some(word.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    if words.first().map(String::as_str) != Some("copy") {
        return None;
    }
    words
        .windows(2)
        .find_map(|pair| match (pair[0].as_str(), pair[1].as_str()) {
            ("from", "stdin") => Some("COPY … FROM STDIN"),
            ("to", "stdout") => Some("COPY … TO STDOUT"),
            _ => None,
        })
}

/// The transaction control statement `statement` is, by its canonical name (`COMMIT`,
/// `ROLLBACK TO SAVEPOINT`, …), or `None` for any other statement.
pub fn transaction_control(statement: &str) -> Option<&'static str> {
    let mut tokens = Lexer::new(statement).map(|(_, token)| token);
    let mut next_word = || match tokens.next() {
        Some(Token::Word(word)) => Some(word.to_ascii_lowercase()),
        _ => None,
    };
    let first = next_word()?;
    let second = next_word();
    let second = second.as_deref();
    Some(match first.as_str() {
        "begin" => "BEGIN",
        "start" if second == Some("transaction") => "START TRANSACTION",
        "commit" if second == Some("prepared") => "COMMIT PREPARED",
        "commit" => "COMMIT",
        "end" => "END",
        "abort" => "ABORT",
        "savepoint" => "SAVEPOINT",
        "release" => "RELEASE SAVEPOINT",
        "rollback" => {
            let third = next_word();
            match (second, third.as_deref()) {
                (Some("prepared"), _) => "ROLLBACK PREPARED",
                (Some("to"), _) | (Some("work" | "transaction"), Some("to")) => {
                    "ROLLBACK TO SAVEPOINT"
                }
                _ => "ROLLBACK",
            }
        }
        // `PREPARE name AS …` prepares a statement; `PREPARE TRANSACTION 'id'` a transaction.
        "prepare" if second == Some("transaction") => {
            let mut rest = Lexer::new(statement).map(|(_, token)| token).skip(2);
            match rest.next() {
                Some(Token::Punct(b'(')) => return None,
                Some(Token::Word(word)) if word.eq_ignore_ascii_case("as") => return None,
                _ => "PREPARE TRANSACTION",
            }
        }
        _ => return None,
    })
}

/// The file's text without a byte-order mark, or a diagnostic when it is too large, refused or
/// not UTF-8.
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
                Some("split it into smaller files".into()),
            ));
            None
        }
        FileContent::Refused(refusal) => {
            diagnostics.push(refusal.diagnostic(path));
            None
        }
        FileContent::Bytes(bytes) => match std::str::from_utf8(bytes) {
            // Editors on Windows may start a file with a byte-order mark; it is not content (and
            // would hide a `-- envctl:no-transaction` first line from envctl, then fail on the
            // server).
            Ok(text) => {
                let text = text.strip_prefix('\u{feff}').unwrap_or(text);
                // PostgreSQL takes no NUL in a query, and YAML none in a document.
                if let Some(at) = text.find('\0') {
                    let (line, column) = line_and_column(text, at);
                    diagnostics.push(Diagnostic {
                        file: path.to_owned(),
                        line,
                        column,
                        message: "the file holds a NUL byte".into(),
                        hint: Some("remove it: neither SQL nor YAML text may hold one".into()),
                    });
                    return None;
                }
                Some(text.to_owned())
            }
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

/// What a `CREATE INDEX CONCURRENTLY` statement builds: the index and its table, named as
/// PostgreSQL resolves the identifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexTarget {
    pub index: String,
    /// The table's name with its schema (and catalog) when given: `["public", "orders"]`.
    pub table: Vec<String>,
}

/// The index and table of `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON [ONLY]
/// [schema.]table …`, the single statement of a `-- envctl:no-transaction` migration; `None` for
/// any other SQL, including such a statement without an index name.
pub fn concurrent_index_target(sql: &str) -> Option<IndexTarget> {
    if split_statements(sql).len() != 1 {
        return None;
    }
    let mut tokens = Lexer::new(sql).map(|(_, token)| token).peekable();
    let keyword = |tokens: &mut std::iter::Peekable<_>, word: &str| -> bool {
        let found = matches!(tokens.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word));
        if found {
            tokens.next();
        }
        found
    };
    if !keyword(&mut tokens, "create") {
        return None;
    }
    keyword(&mut tokens, "unique");
    if !keyword(&mut tokens, "index") || !keyword(&mut tokens, "concurrently") {
        return None;
    }
    // `IF` is the start of `IF NOT EXISTS` only when `NOT` follows; otherwise it names the index.
    let mut ahead = tokens.clone();
    let if_not_exists = matches!(ahead.next(), Some(Token::Word(w)) if w.eq_ignore_ascii_case("if"))
        && matches!(ahead.next(), Some(Token::Word(w)) if w.eq_ignore_ascii_case("not"));
    if if_not_exists {
        tokens.next();
        tokens.next();
        if !keyword(&mut tokens, "exists") {
            return None;
        }
    }
    // Without a name, `ON` follows at once (`ON` is reserved: it cannot be a name).
    if keyword(&mut tokens, "on") {
        return None;
    }
    let index = identifier(tokens.next()?)?;
    if !keyword(&mut tokens, "on") {
        return None;
    }
    keyword(&mut tokens, "only");
    let mut table = vec![identifier(tokens.next()?)?];
    while tokens.peek() == Some(&Token::Punct(b'.')) {
        tokens.next();
        table.push(identifier(tokens.next()?)?);
    }
    // At most `catalog.schema.table`; the server refuses more dotted names.
    if table.len() > 3 {
        return None;
    }
    match tokens.next()? {
        Token::Punct(b'(') => {}
        Token::Word(w) if w.eq_ignore_ascii_case("using") => {}
        _ => return None,
    }
    Some(IndexTarget { index, table })
}

/// An identifier as PostgreSQL resolves it: unquoted ones with ASCII letters lower-cased, quoted
/// ones exactly with `""` unescaped; both cut to 63 bytes (NAMEDATALEN - 1) on a character
/// boundary. `None` for any other token, an empty or unterminated quoted one.
fn identifier(token: Token) -> Option<String> {
    let name = match token {
        Token::Word(word) => word.to_ascii_lowercase(),
        Token::QuotedIdent(quoted) => {
            let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
            if inner.is_empty() {
                return None;
            }
            inner.replace("\"\"", "\"")
        }
        _ => return None,
    };
    const MAX_IDENTIFIER_BYTES: usize = 63;
    let mut end = name.len().min(MAX_IDENTIFIER_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Some(name[..end].to_owned())
}

/// Splits SQL into statements as PostgreSQL's grammar does, with squawk's parser: a `;` inside
/// quotes, escape strings (`E'…\\'…'`), dollar quotes, comments, a SQL-standard routine body
/// (`BEGIN ATOMIC … END`) or a rule's actions ends no statement. Returns each statement's text,
/// from its first token to its last, with the 0-based byte offset where it starts. Statements that
/// are only whitespace and comments are dropped. Text nested deeper than
/// [`MAX_NESTING`](super::lint::MAX_NESTING) is one statement (the loaders refuse it).
pub fn split_statements(sql: &str) -> Vec<(usize, &str)> {
    read(sql, None)
        .statements
        .into_iter()
        .map(|(start, end)| (start, &sql[start..end]))
        .collect()
}

/// One token of SQL as PostgreSQL's lexer sees it, as far as splitting and reading the first
/// words of a statement need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token<'a> {
    /// An unquoted keyword or identifier, as written.
    Word(&'a str),
    /// A `"quoted"` identifier, quotes included (`U&"…"` is a word `U`, `&` and this).
    QuotedIdent(&'a str),
    /// A string constant of any kind or a dollar-quoted string.
    Literal,
    /// A number or a parameter (`$1`).
    Number,
    Semicolon,
    /// Any other single ASCII character: `(`, `)`, `.`, operators.
    Punct(u8),
}

/// Bytes that continue an identifier: letters, digits, `_`, `$`, and every byte of a non-ASCII
/// character (PostgreSQL treats all of them as letters).
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Tokens of SQL with their byte offsets; whitespace and comments are skipped. Every token starts
/// and ends at an ASCII byte or at the end, so offsets are always character boundaries.
#[derive(Clone)]
struct Lexer<'a> {
    sql: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Lexer<'a> {
        Lexer { sql, pos: 0 }
    }

    fn skip_space_and_comments(&mut self) {
        let bytes = self.sql.as_bytes();
        while self.pos < bytes.len() {
            let rest = &bytes[self.pos..];
            if rest[0].is_ascii_whitespace() || rest[0] == 0x0b {
                self.pos += 1;
            } else if rest.starts_with(b"--") {
                // PostgreSQL ends a line comment at a line feed or a carriage return.
                self.pos = self.sql[self.pos..]
                    .find(['\n', '\r'])
                    .map_or(bytes.len(), |n| self.pos + n + 1);
            } else if rest.starts_with(b"/*") {
                // Block comments nest in PostgreSQL.
                let mut depth = 0usize;
                while self.pos < bytes.len() {
                    if bytes[self.pos..].starts_with(b"/*") {
                        depth += 1;
                        self.pos += 2;
                    } else if bytes[self.pos..].starts_with(b"*/") {
                        depth -= 1;
                        self.pos += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        self.pos += 1;
                    }
                }
            } else {
                break;
            }
        }
    }

    /// Moves past a quoted run that started at `self.pos` (a `'` or `"`); `backslash` for escape
    /// strings, where `\` escapes the next character. Unterminated runs end at the end.
    fn skip_quoted(&mut self, quote: u8, backslash: bool) {
        let bytes = self.sql.as_bytes();
        let mut i = self.pos + 1;
        while i < bytes.len() {
            if backslash && bytes[i] == b'\\' {
                i += 2;
                continue;
            }
            if bytes[i] == quote {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                    continue;
                }
                self.pos = i + 1;
                return;
            }
            i += 1;
        }
        self.pos = bytes.len();
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = (usize, Token<'a>);

    fn next(&mut self) -> Option<(usize, Token<'a>)> {
        self.skip_space_and_comments();
        let bytes = self.sql.as_bytes();
        let start = self.pos;
        let b = *bytes.get(start)?;
        let token = match b {
            b'\'' => {
                self.skip_quoted(b'\'', false);
                Token::Literal
            }
            b'"' => {
                self.skip_quoted(b'"', false);
                Token::QuotedIdent(&self.sql[start..self.pos])
            }
            b';' => {
                self.pos += 1;
                Token::Semicolon
            }
            b'$' => {
                if let Some(tag_len) = dollar_tag_len(&bytes[start..]) {
                    let tag = &self.sql[start..start + tag_len];
                    let body = start + tag_len;
                    self.pos = self.sql[body..]
                        .find(tag)
                        .map_or(bytes.len(), |n| body + n + tag_len);
                    Token::Literal
                } else {
                    self.pos += 1;
                    while self.pos < bytes.len() && bytes[self.pos].is_ascii_digit() {
                        self.pos += 1;
                    }
                    Token::Number
                }
            }
            b if b.is_ascii_digit() => {
                while self.pos < bytes.len()
                    && (is_ident_byte(bytes[self.pos]) || bytes[self.pos] == b'.')
                {
                    self.pos += 1;
                }
                Token::Number
            }
            b if is_ident_start(b) => {
                while self.pos < bytes.len() && is_ident_byte(bytes[self.pos]) {
                    self.pos += 1;
                }
                let word = &self.sql[start..self.pos];
                // `E'…'` (not `somee'…'`: a whole word is read first) is an escape string.
                if word.eq_ignore_ascii_case("e") && bytes.get(self.pos) == Some(&b'\'') {
                    self.skip_quoted(b'\'', true);
                    Token::Literal
                } else {
                    Token::Word(word)
                }
            }
            b => {
                self.pos += 1;
                Token::Punct(b)
            }
        };
        Some((start, token))
    }
}

/// Length of a dollar-quote opening tag (`$$`, `$body$`) at the start of `s`: the tag is a letter,
/// `_` or non-ASCII character, then those or digits.
fn dollar_tag_len(s: &[u8]) -> Option<usize> {
    let rest = s.get(1..)?;
    let end = rest.iter().position(|b| *b == b'$')?;
    let tag = &rest[..end];
    let valid = tag
        .iter()
        .enumerate()
        .all(|(n, b)| is_ident_start(*b) || (n > 0 && b.is_ascii_digit()));
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

    fn texts(sql: &str) -> Vec<&str> {
        split_statements(sql).into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn escape_strings_hide_their_semicolons() {
        assert_eq!(
            texts("SELECT E'it\\'s; here'; SELECT 2"),
            ["SELECT E'it\\'s; here'", "SELECT 2"]
        );
        assert_eq!(
            texts("SELECT e'a\\\\'; SELECT 2"),
            ["SELECT e'a\\\\'", "SELECT 2"]
        );
        assert_eq!(
            texts("SELECT E'a''b; c\\\\'; SELECT 2"),
            ["SELECT E'a''b; c\\\\'", "SELECT 2"]
        );
        // `somee` is an identifier: the string after it is a standard one, where `\` is a character.
        assert_eq!(
            texts("SELECT somee'a\\'; SELECT 2; -- '"),
            ["SELECT somee'a\\'", "SELECT 2"]
        );
    }

    #[test]
    fn a_dollar_inside_an_identifier_opens_no_dollar_quote() {
        assert_eq!(
            texts("SELECT a$b$c; SELECT 2; SELECT $b$"),
            ["SELECT a$b$c", "SELECT 2", "SELECT $b$"]
        );
    }

    #[test]
    fn begin_atomic_bodies_are_one_statement() {
        let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SELECT 3";
        assert_eq!(
            texts(sql),
            [
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END",
                "SELECT 3"
            ]
        );
        let sql = "create or replace procedure p() language sql\nbegin /* c */ atomic\n  select case when true then 1 else 2 end;\n  insert into t values ((case 1 when 1 then 2 end));\nend;\nselect 3;";
        assert_eq!(
            texts(sql),
            [
                "create or replace procedure p() language sql\nbegin /* c */ atomic\n  select case when true then 1 else 2 end;\n  insert into t values ((case 1 when 1 then 2 end));\nend",
                "select 3"
            ]
        );
    }

    #[test]
    fn begin_opens_a_body_only_in_a_routine_and_only_with_atomic() {
        // A function named `begin`: psql's heuristic would swallow the `COMMIT`; the server would not.
        assert_eq!(
            texts("CREATE FUNCTION begin() RETURNS int LANGUAGE sql RETURN 1; COMMIT"),
            [
                "CREATE FUNCTION begin() RETURNS int LANGUAGE sql RETURN 1",
                "COMMIT"
            ]
        );
        assert_eq!(texts("BEGIN; SELECT 1; END;"), ["BEGIN", "SELECT 1", "END"]);
        assert_eq!(
            texts("CREATE TABLE t (case_ int); CASE; END"),
            ["CREATE TABLE t (case_ int)", "CASE", "END"]
        );
    }

    /// The hand-written splitter this one replaced split a rule's actions at their `;`, where
    /// PostgreSQL's grammar reads one statement.
    #[test]
    fn a_rules_actions_in_parentheses_are_one_statement() {
        assert_eq!(
            texts(
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); SELECT 1"
            ),
            [
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))",
                "SELECT 1"
            ]
        );
    }

    #[test]
    fn text_nested_too_deep_is_refused_where_it_nests() {
        let mut files = RepoFiles::default();
        // Padding raises the files' parse budget past what the nesting needs.
        let padding = format!("-- {}\n", "x".repeat(900_000));
        let deep = format!(
            "CREATE TABLE t (id int);\nSELECT {}1{};\n{padding}",
            "(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        );
        files.insert_bytes("schemas/migrations/0001_deep.sql", deep.into_bytes());
        files.insert_bytes(
            "schemas/seeds/deep.sql",
            format!("SELECT {}\n{padding}", "[".repeat(9_000)).into_bytes(),
        );
        files.insert_bytes(
            "schemas/seeds/long.sql",
            format!("SELECT 1;\nSELECT 1{};\n", "+1".repeat(5_000)).into_bytes(),
        );
        let mut diagnostics = Vec::new();
        assert!(load_migrations(&files, &mut diagnostics).is_empty());
        load_seeds(&files, &mut diagnostics);
        let places: Vec<String> = diagnostics
            .iter()
            .map(|d| format!("{}:{}:{}", d.file, d.line, d.column))
            .collect();
        assert_eq!(
            places,
            [
                format!("schemas/migrations/0001_deep.sql:2:{}", 8 + MAX_NESTING),
                format!("schemas/seeds/deep.sql:1:{}", 8 + MAX_NESTING),
                "schemas/seeds/long.sql:2:2834".to_owned(),
            ]
        );
        assert!(
            diagnostics[0].message.contains("more than 5000 levels"),
            "{diagnostics:?}"
        );
        assert!(
            diagnostics[2]
                .message
                .contains("too deeply for the size of the file"),
            "{diagnostics:?}"
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

    fn target(index: &str, table: &[&str]) -> Option<IndexTarget> {
        Some(IndexTarget {
            index: index.to_owned(),
            table: table.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn concurrent_index_targets_resolve_identifiers_as_postgresql_does() {
        assert_eq!(
            concurrent_index_target("CREATE INDEX CONCURRENTLY orders_idx ON orders (id);"),
            target("orders_idx", &["orders"])
        );
        assert_eq!(
            concurrent_index_target(
                "-- envctl:no-transaction\ncreate unique index concurrently if not exists \"My\"\"Idx\"\n  on only Public.\"Orders\" using btree (id);\n"
            ),
            target("My\"Idx", &["public", "Orders"])
        );
        assert_eq!(
            concurrent_index_target(
                "CREATE/*a*/INDEX -- b\n CONCURRENTLY\tIdx_A /* c /* nested */ */ ON Sales . Orders(Old_Idx)"
            ),
            target("idx_a", &["sales", "orders"])
        );
        assert_eq!(
            concurrent_index_target("CREATE INDEX CONCURRENTLY i ON db.s.t USING gin (x)"),
            target("i", &["db", "s", "t"])
        );
        // `if` is an index name unless `NOT EXISTS` follows; only ASCII letters are lower-cased.
        assert_eq!(
            concurrent_index_target("CREATE INDEX CONCURRENTLY if ON ÄRGER (x)"),
            target("if", &["Ärger"])
        );
        // Identifiers longer than 63 bytes are truncated, as the server does.
        let long = "a".repeat(70);
        assert_eq!(
            concurrent_index_target(&format!("CREATE INDEX CONCURRENTLY {long} ON t (x)")),
            target(&long[..63], &["t"])
        );
    }

    #[test]
    fn other_statements_have_no_concurrent_index_target() {
        for sql in [
            "CREATE INDEX CONCURRENTLY ON t (id)",
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ON t (id)",
            "CREATE INDEX i ON t (id)",
            "CREATE INDEX CONCURRENTLY i ON t",
            "CREATE INDEX CONCURRENTLY i t (id)",
            "CREATE INDEX CONCURRENTLY \"\" ON t (id)",
            "CREATE INDEX CONCURRENTLY U&\"i\" ON t (id)",
            "CREATE INDEX CONCURRENTLY s.i ON t (id)",
            "CREATE INDEX CONCURRENTLY i ON a.b.c.d (id)",
            "CREATE INDEX CONCURRENTLY i ON t (id); DROP INDEX j",
            "DROP INDEX CONCURRENTLY i",
            "SELECT 'CREATE INDEX CONCURRENTLY i ON t (id)'",
            "",
        ] {
            assert_eq!(concurrent_index_target(sql), None, "{sql}");
        }
    }

    #[test]
    fn migration_names() {
        assert_eq!(parse_migration_name("0004_add_orders"), Ok(4));
        assert_eq!(parse_migration_name("12_x"), Ok(12));
        for bad in ["0000_zero", "add_orders", "0004", "0004_", "-1_x", "+1_x"] {
            assert_eq!(
                parse_migration_name(bad),
                Err(MigrationNameError::NotAMigrationName),
                "{bad}"
            );
        }
    }
}
