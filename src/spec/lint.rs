//! Reading SQL with squawk (the `squawk-linter` crate and its PostgreSQL parser): where each
//! statement is, and what in a migration is unsafe on a live database.
//!
//! One parse per file gives both. Statements are the parse tree's top-level statements, split at
//! their terminating `;` as PostgreSQL's grammar does (a `;` inside quotes, comments, a
//! `BEGIN ATOMIC … END` body or a rule's `( … ; … )` actions ends nothing). Lint runs
//! [`RULES`] (squawk's own rules about locks, table rewrites and breaking readers) over the same
//! tree, knowing whether the migration runs in a transaction. `-- squawk-ignore RULE[, RULE]`
//! before a statement (or after its `;` on its last line) silences those rules for that statement
//! alone; `-- squawk-ignore-file RULE` for the whole file. envctl applies these comments itself,
//! by statement: squawk's own reading of them goes by line.
//!
//! squawk's parser recurses, so a hostile file nested deep enough would overflow a stack: text
//! nested more than [`MAX_NESTING`] levels is not parsed (the loaders refuse it), and parsing
//! runs on threads of its own with [`PARSE_STACK`] of stack. Its time also grows with the square
//! of an expression's depth (nested parentheses, chained operators, prefix operators), so before
//! parsing, [`scan`] estimates that work and refuses a text whose estimate passes
//! [`PARSE_WORK_PER_BYTE`] per byte (at least [`PARSE_WORK_FLOOR`]): the time to read any file
//! stays in proportion to its size. Pure: no IO.

use std::collections::BTreeSet;

use squawk_lexer::TokenKind;
use squawk_linter::{Linter, Rule};
use squawk_syntax::{SourceFile, SyntaxKind};

use crate::model::LintFinding;

/// Deepest nesting of parentheses and brackets read (measured: PostgreSQL 15 runs 5 000 and
/// refuses 10 000, "memory exhausted").
pub const MAX_NESTING: usize = 5_000;
/// Parse work (see [`Work`]) allowed per byte of a text. Measured here: a text at the budget
/// parses in about the time of a dense file of ordinary statements of the same size (a debug
/// build: 4 s per MiB either way); statements people write estimate under 5 per byte.
pub const PARSE_WORK_PER_BYTE: u64 = 32;
/// Parse work allowed for any text, however short: a single expression some 2 000 levels deep.
pub const PARSE_WORK_FLOOR: u64 = 4_000_000;
/// Stack of the thread that parses: reserved, and touched only as deep as a parse goes.
const PARSE_STACK: usize = 1 << 30;

/// The rules envctl runs, with what each guards against: locks held while a table is rewritten or
/// scanned, index builds that block writes, and changes that break code still reading the old
/// schema (the default branch's, until it is deployed).
pub const RULES: &[Rule] = &[
    Rule::AddingFieldWithDefault,
    Rule::AddingForeignKeyConstraint,
    Rule::AddingNotNullableField,
    Rule::AddingRequiredField,
    Rule::AddingSerialPrimaryKeyField,
    Rule::BanConcurrentIndexCreationInTransaction,
    Rule::BanDropColumn,
    Rule::BanDropDatabase,
    Rule::BanDropTable,
    Rule::BanTruncateCascade,
    Rule::ChangingColumnType,
    Rule::ConstraintMissingNotValid,
    Rule::DisallowedUniqueConstraint,
    Rule::RenamingColumn,
    Rule::RenamingTable,
    Rule::RequireConcurrentIndexCreation,
    Rule::RequireConcurrentIndexDeletion,
    Rule::RequireConcurrentPartitionDetach,
    Rule::RequireConcurrentReindex,
];

/// Run only in `-- envctl:no-transaction` migrations, which must be safe to run again.
pub const NO_TRANSACTION_RULES: &[Rule] = &[Rule::PreferRobustStmts];

/// The rule named in findings about the silence comments themselves.
pub const UNUSED_IGNORE: &str = "unused-ignore";

/// What one parse of a file gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Each statement's byte range, from its first token to its last (the `;` excluded).
    pub statements: Vec<(usize, usize)>,
    /// Lint findings, sorted by place (empty unless asked for).
    pub findings: Vec<LintFinding>,
    /// Where and why the text was not parsed; the whole text then stands as one statement.
    pub refused: Option<Refused>,
}

/// A text envctl does not parse, and where it stopped reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The byte offset of the token that went past the limit.
    pub at: usize,
    pub why: TooComplex,
}

/// Which limit a text went past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TooComplex {
    /// Parentheses or brackets nested more than [`MAX_NESTING`] levels.
    Nesting,
    /// Expressions so deep or so long that parsing them would take more than
    /// [`PARSE_WORK_PER_BYTE`] per byte of the text.
    Work,
}

/// How to lint a migration.
#[derive(Clone, Copy, Debug)]
pub struct LintOf<'a> {
    /// The migration's name and path, for the findings.
    pub name: &'a str,
    pub path: &'a str,
    /// `-- envctl:no-transaction`: runs outside a transaction.
    pub no_transaction: bool,
}

/// Reads each text, linting those with a [`LintOf`], on threads with a large stack: one per CPU
/// (at most 4), each taking its share of the texts in order.
pub fn read_all(texts: &[(&str, Option<LintOf<'_>>)]) -> Vec<Reading> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4)
        .min(texts.len().div_ceil(8))
        .max(1);
    let share = texts.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = texts
            .chunks(share)
            .map(|chunk| spawn_reader(scope, chunk))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// A thread reading `chunk`, with the largest stack the machine reserves (strict overcommit may
/// refuse 1 GiB).
fn spawn_reader<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    chunk: &'scope [(&'scope str, Option<LintOf<'scope>>)],
) -> std::thread::ScopedJoinHandle<'scope, Vec<Reading>> {
    let mut sizes = [PARSE_STACK, PARSE_STACK / 4, PARSE_STACK / 16].into_iter();
    loop {
        let size = sizes.next().expect("a size to try");
        let spawned = std::thread::Builder::new()
            .name("envctl-sql".into())
            .stack_size(size)
            .spawn_scoped(scope, move || {
                chunk
                    .iter()
                    .map(|(sql, lint)| read_one(sql, *lint))
                    .collect()
            });
        match spawned {
            Ok(thread) => return thread,
            Err(e) if size == PARSE_STACK / 16 => panic!("cannot start a thread: {e}"),
            Err(_) => continue,
        }
    }
}

/// [`read_all`] of one text.
pub fn read(sql: &str, lint: Option<LintOf<'_>>) -> Reading {
    read_all(&[(sql, lint)]).pop().unwrap_or_default()
}

/// A silence comment: `-- squawk-ignore a, b` or `-- squawk-ignore-file a`.
struct Ignore {
    /// Where the comment is.
    offset: usize,
    whole_file: bool,
    /// The rules it names, as written.
    names: Vec<String>,
}

/// An upper estimate of the work squawk's parser does, token by token, in time linear in the
/// tokens. The parser spends on each token time in proportion to the depth of the expression
/// around it; that depth is at most the open parentheses plus, at each open level, the tokens
/// since its last `,` or `;` (a chain of operators, `NOT`s or casts deepens the tree by one per
/// link). The work is the sum of that depth over the tokens.
#[derive(Default)]
struct Work {
    /// Tokens since the last `,` or `;`, per open level (the outermost first).
    chains: Vec<u64>,
    /// The open levels beyond the outermost plus every chain: the depth estimate.
    depth: u64,
    total: u64,
}

impl Work {
    /// Counts one token that is not whitespace or a comment.
    fn token(&mut self, kind: TokenKind) {
        if self.chains.is_empty() {
            self.chains.push(0);
        }
        match kind {
            TokenKind::OpenParen | TokenKind::OpenBracket => {
                self.chains.push(0);
                self.depth += 1;
            }
            TokenKind::CloseParen | TokenKind::CloseBracket if self.chains.len() > 1 => {
                let chain = self.chains.pop().unwrap_or(0);
                self.depth -= 1 + chain;
            }
            TokenKind::Comma | TokenKind::Semi => {
                let chain = self.chains.last_mut().expect("a level");
                self.depth -= *chain;
                *chain = 0;
            }
            _ => {
                *self.chains.last_mut().expect("a level") += 1;
                self.depth += 1;
            }
        }
        self.total = self.total.saturating_add(self.depth);
    }
}

/// Finds the silence comments, the deepest nesting and the parse work (see [`Work`]), with
/// squawk's lexer (no recursion). The returned text has each comment's `squawk-ignore` made
/// inert for squawk (same length), so that envctl alone applies them.
fn scan(sql: &str) -> (String, Vec<Ignore>, Option<Refused>) {
    let mut masked = sql.to_owned();
    let mut ignores = Vec::new();
    let (mut depth, mut offset) = (0usize, 0usize);
    let mut work = Work::default();
    let budget = (sql.len() as u64)
        .saturating_mul(PARSE_WORK_PER_BYTE)
        .max(PARSE_WORK_FLOOR);
    for token in squawk_lexer::tokenize(sql) {
        let len = token.len as usize;
        let refused = |why| Some(Refused { at: offset, why });
        if !matches!(
            token.kind,
            TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment { .. }
        ) {
            work.token(token.kind);
            if work.total > budget {
                return (masked, ignores, refused(TooComplex::Work));
            }
        }
        match token.kind {
            TokenKind::OpenParen | TokenKind::OpenBracket => {
                depth += 1;
                if depth > MAX_NESTING {
                    return (masked, ignores, refused(TooComplex::Nesting));
                }
            }
            TokenKind::CloseParen | TokenKind::CloseBracket => depth = depth.saturating_sub(1),
            TokenKind::LineComment | TokenKind::BlockComment { .. } => {
                let text = &sql[offset..offset + len];
                let body = text
                    .strip_prefix("--")
                    .or_else(|| text.strip_prefix("/*"))
                    .unwrap_or(text);
                let body = body.strip_suffix("*/").unwrap_or(body).trim_start();
                let (whole_file, rest) = if let Some(rest) = body.strip_prefix("squawk-ignore-file")
                {
                    (true, rest)
                } else if let Some(rest) = body.strip_prefix("squawk-ignore") {
                    (false, rest)
                } else {
                    offset += len;
                    continue;
                };
                // As squawk: names separated by commas, a `--` ends them.
                let rest = rest.split("--").next().unwrap_or("");
                ignores.push(Ignore {
                    offset,
                    whole_file,
                    names: rest
                        .split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect(),
                });
                let at = offset + text.find("squawk-ignore").unwrap_or(0) + "squawk-ignor".len();
                masked.replace_range(at..at + 1, "E");
            }
            _ => {}
        }
        offset += len;
    }
    (masked, ignores, None)
}

fn read_one(sql: &str, lint: Option<LintOf<'_>>) -> Reading {
    let (masked, ignores, refused) = scan(sql);
    if refused.is_some() {
        let start = sql.len() - sql.trim_start().len();
        let end = sql.trim_end().len();
        return Reading {
            statements: if start < end {
                vec![(start, end)]
            } else {
                Vec::new()
            },
            findings: Vec::new(),
            refused,
        };
    }
    let parse = SourceFile::parse(&masked);
    let statements = statement_ranges(&parse);
    let findings = match lint {
        Some(lint) => findings(sql, &masked, &parse, &statements, &ignores, lint),
        None => Vec::new(),
    };
    Reading {
        statements,
        findings,
        refused: None,
    }
}

/// The top-level statements: code between terminating semicolons (a `;` whose parent is a
/// top-level statement), from first token to last.
fn statement_ranges(parse: &squawk_syntax::Parse<SourceFile>) -> Vec<(usize, usize)> {
    let root = parse.syntax_node();
    let mut statements = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for token in root
        .descendants_with_tokens()
        .filter_map(|element| element.into_token())
    {
        if token.kind().is_trivia() {
            continue;
        }
        let range = token.text_range();
        let (start, end) = (usize::from(range.start()), usize::from(range.end()));
        let terminates = token.kind() == SyntaxKind::SEMICOLON
            && token
                .parent()
                .is_none_or(|parent| parent == root || parent.parent().as_ref() == Some(&root));
        if terminates {
            statements.extend(current.take());
        } else {
            current = Some((current.map_or(start, |(from, _)| from), end));
        }
    }
    statements.extend(current);
    statements
}

/// The 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// The statement a silence comment at `offset` is about: the one it sits in, else the one whose
/// end it follows on the same line (`ALTER …; -- squawk-ignore …`), else the next one.
fn silenced_statement(sql: &str, statements: &[(usize, usize)], offset: usize) -> Option<usize> {
    if let Some(inside) = statements
        .iter()
        .position(|(start, end)| *start < offset && offset < *end)
    {
        return Some(inside);
    }
    if let Some(before) = statements.iter().rposition(|(_, end)| *end <= offset) {
        let between = &sql[statements[before].1..offset];
        if between
            .chars()
            .all(|c| c == ';' || (c.is_whitespace() && c != '\n'))
        {
            return Some(before);
        }
    }
    statements.iter().position(|(start, _)| *start >= offset)
}

fn rule_named(name: &str) -> Option<Rule> {
    name.parse::<Rule>().ok()
}

fn findings(
    sql: &str,
    masked: &str,
    parse: &squawk_syntax::Parse<SourceFile>,
    statements: &[(usize, usize)],
    ignores: &[Ignore],
    lint: LintOf<'_>,
) -> Vec<LintFinding> {
    let mut rules: Vec<Rule> = RULES.to_vec();
    if lint.no_transaction {
        rules.extend_from_slice(NO_TRANSACTION_RULES);
    }
    let mut linter = Linter::from(rules);
    linter.settings.assume_in_transaction = !lint.no_transaction;
    let violations = linter.lint(parse, masked);
    let finding = |offset: usize, rule: String, message: String, help: String| {
        let (line, column) = line_and_column(sql, offset);
        LintFinding {
            migration: lint.name.to_owned(),
            file: lint.path.to_owned(),
            line,
            column,
            rule,
            message,
            help,
        }
    };
    let statement_of = |offset: usize| {
        statements
            .iter()
            .position(|(start, end)| offset >= *start && offset < (*end).max(start + 1))
    };
    // (statement or None for the file, rule) → silenced, and whether it silenced anything.
    let mut silences: Vec<(Option<usize>, Rule, usize)> = Vec::new();
    let mut out = Vec::new();
    for (n, ignore) in ignores.iter().enumerate() {
        let target = if ignore.whole_file {
            None
        } else {
            match silenced_statement(sql, statements, ignore.offset) {
                Some(statement) => Some(statement),
                None => {
                    out.push(finding(
                        ignore.offset,
                        UNUSED_IGNORE.into(),
                        "this `squawk-ignore` comment is followed by no statement".into(),
                        "put it on the line before the statement it silences".into(),
                    ));
                    continue;
                }
            }
        };
        if ignore.names.is_empty() {
            out.push(finding(
                ignore.offset,
                UNUSED_IGNORE.into(),
                "this `squawk-ignore` comment names no rule".into(),
                "name the rules it silences: `-- squawk-ignore ban-drop-column`".into(),
            ));
        }
        for name in &ignore.names {
            match rule_named(name) {
                Some(rule) => silences.push((target, rule, n)),
                None => out.push(finding(
                    ignore.offset,
                    UNUSED_IGNORE.into(),
                    format!("`{name}` is not a rule envctl knows"),
                    format!("name one of: {}", rule_names().join(", ")),
                )),
            }
        }
    }
    let mut used: BTreeSet<(usize, String)> = BTreeSet::new();
    for violation in violations {
        if violation.code == Rule::UnusedIgnore {
            continue;
        }
        let offset = usize::from(violation.text_range.start());
        let statement = statement_of(offset);
        if let Some((_, _, n)) = silences.iter().find(|(target, rule, _)| {
            *rule == violation.code && (target.is_none() || *target == statement)
        }) {
            used.insert((*n, violation.code.to_string()));
            continue;
        }
        let help = envctl_help(violation.code, lint.no_transaction)
            .map(str::to_owned)
            .or(violation.help)
            .or_else(|| safer_way(violation.code).map(str::to_owned))
            .unwrap_or_else(|| format!("see https://squawkhq.com/docs/{}", violation.code));
        out.push(finding(
            offset,
            violation.code.to_string(),
            violation.message,
            help,
        ));
    }
    for (_, rule, n) in &silences {
        if !used.contains(&(*n, rule.to_string())) {
            out.push(finding(
                ignores[*n].offset,
                UNUSED_IGNORE.into(),
                format!("`squawk-ignore {rule}` silences nothing: the statement it is about does not break `{rule}`"),
                "remove it, or move it to the line before the statement it is for".into(),
            ));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The names of [`RULES`] and [`NO_TRANSACTION_RULES`], sorted.
pub fn rule_names() -> Vec<String> {
    let mut names: Vec<String> = RULES
        .iter()
        .chain(NO_TRANSACTION_RULES)
        .map(Rule::to_string)
        .collect();
    names.sort();
    names
}

/// The safer way, for the rules whose findings squawk gives no help with.
fn safer_way(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::BanDropColumn => {
            "first deploy code that no longer reads the column (the default branch's code still does), then drop it in a later migration"
        }
        Rule::BanDropTable => {
            "first deploy code that no longer reads the table (the default branch's code still does), then drop it in a later migration"
        }
        Rule::RenamingColumn => {
            "add the new column, deploy code that uses it, then drop the old one in a later migration"
        }
        Rule::RenamingTable => {
            "add the table under its new name (or a view), deploy code that uses it, then drop the old one in a later migration"
        }
        Rule::BanDropDatabase => "drop databases outside migrations",
        Rule::BanTruncateCascade => "truncate each table by name, without `CASCADE`",
        _ => return None,
    })
}

/// Where envctl's way differs from squawk's advice: what cannot run in a transaction goes in a
/// `-- envctl:no-transaction` migration of its own.
fn envctl_help(rule: Rule, no_transaction: bool) -> Option<&'static str> {
    if no_transaction {
        return None;
    }
    Some(match rule {
        Rule::RequireConcurrentIndexCreation => {
            "build it with `CREATE INDEX CONCURRENTLY … IF NOT EXISTS` in a migration of its own whose first line is `-- envctl:no-transaction`"
        }
        Rule::RequireConcurrentIndexDeletion => {
            "drop it with `DROP INDEX CONCURRENTLY IF EXISTS` in a migration of its own whose first line is `-- envctl:no-transaction`"
        }
        Rule::RequireConcurrentReindex => {
            "use `REINDEX … CONCURRENTLY` in a migration of its own whose first line is `-- envctl:no-transaction`"
        }
        Rule::RequireConcurrentPartitionDetach => {
            "use `DETACH PARTITION … CONCURRENTLY` in a migration of its own whose first line is `-- envctl:no-transaction`"
        }
        Rule::BanConcurrentIndexCreationInTransaction => {
            "envctl runs each migration in a transaction: put this statement in a migration of its own whose first line is `-- envctl:no-transaction`"
        }
        _ => return None,
    })
}
