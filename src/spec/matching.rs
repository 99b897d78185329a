//! Which spec covers a branch: an exact name beats a glob; among globs the one with the longest
//! literal prefix wins; a tie between two specs is an error naming both files. `*` stays within one
//! `/` segment and `**` crosses them (globset with a literal separator). A pattern that starts with
//! `!` excludes: a spec covers a branch that one of its other patterns matches and none of its `!`
//! patterns does, wherever they are listed (`["**", "!dependabot/**"]`). Pure: no IO.

use globset::{GlobBuilder, GlobMatcher};

/// One entry of a spec's `branches`.
#[derive(Clone, Debug)]
pub struct BranchPattern {
    /// As written, with its `!` when it excludes.
    pub text: String,
    /// `!pattern`: the branches it matches are not covered by this spec.
    pub excludes: bool,
    kind: PatternKind,
}

#[derive(Clone, Debug)]
enum PatternKind {
    Exact,
    Glob(GlobMatcher),
}

/// How strongly a pattern matches: exact names first, then the longest literal prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MatchStrength {
    exact: bool,
    literal_prefix: usize,
}

const GLOB_CHARS: &[char] = &['*', '?', '[', '{'];

impl BranchPattern {
    /// Compiles a pattern (`!` first: one that excludes); the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<BranchPattern, String> {
        let (excludes, pattern) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if pattern.trim().is_empty() {
            return Err(if excludes {
                format!("`{text}` excludes nothing: a `!` needs a branch name or glob after it")
            } else {
                "a branch pattern may not be empty".into()
            });
        }
        if !pattern.contains(GLOB_CHARS) {
            // An exact name git can never have would silently cover nothing.
            crate::model::check_branch_name(pattern)?;
            return Ok(BranchPattern {
                text: text.to_owned(),
                excludes,
                kind: PatternKind::Exact,
            });
        }
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("`{text}` is not a valid glob: {}", e.kind()))?;
        Ok(BranchPattern {
            text: text.to_owned(),
            excludes,
            kind: PatternKind::Glob(glob.compile_matcher()),
        })
    }

    /// Whether the pattern itself (without a `!`) matches `branch`.
    fn matches(&self, branch: &str) -> bool {
        match &self.kind {
            PatternKind::Exact => self.text.trim_start_matches('!') == branch,
            PatternKind::Glob(matcher) => matcher.is_match(branch),
        }
    }

    /// How this pattern covers `branch`, if it does: never for a `!` pattern.
    pub fn strength(&self, branch: &str) -> Option<MatchStrength> {
        if self.excludes {
            return None;
        }
        match &self.kind {
            PatternKind::Exact => (self.text == branch).then_some(MatchStrength {
                exact: true,
                literal_prefix: self.text.len(),
            }),
            PatternKind::Glob(matcher) => matcher.is_match(branch).then(|| MatchStrength {
                exact: false,
                literal_prefix: self.text.find(GLOB_CHARS).unwrap_or(self.text.len()),
            }),
        }
    }
}

/// The best match among `candidates` (index, patterns, file), or a tie error naming both files.
pub fn best_match<'a>(
    branch: &str,
    candidates: impl Iterator<Item = (usize, &'a [BranchPattern], &'a str)>,
) -> Result<Option<usize>, String> {
    let mut best: Option<(MatchStrength, usize, &str, &str)> = None;
    let mut tie: Option<(&str, &str, &str, &str)> = None;
    for (index, patterns, file) in candidates {
        if patterns.iter().any(|p| p.excludes && p.matches(branch)) {
            continue;
        }
        let Some((strength, pattern)) = patterns
            .iter()
            .filter_map(|p| p.strength(branch).map(|s| (s, p.text.as_str())))
            .max_by_key(|(s, _)| *s)
        else {
            continue;
        };
        match &best {
            Some((best_strength, _, _, _)) if strength < *best_strength => {}
            Some((best_strength, _, best_file, best_pattern)) if strength == *best_strength => {
                tie = Some((best_file, best_pattern, file, pattern));
            }
            _ => {
                best = Some((strength, index, file, pattern));
                tie = None;
            }
        }
    }
    if let Some((file_a, pattern_a, file_b, pattern_b)) = tie {
        return Err(format!(
            "branch `{branch}` is covered equally well by `{pattern_a}` in `{file_a}` and `{pattern_b}` in `{file_b}`; make one pattern more specific or remove one"
        ));
    }
    Ok(best.map(|(_, index, _, _)| index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(texts: &[&str]) -> Vec<BranchPattern> {
        texts
            .iter()
            .map(|t| BranchPattern::parse(t).unwrap())
            .collect()
    }

    fn pick(branch: &str, specs: &[(&str, Vec<BranchPattern>)]) -> Result<Option<usize>, String> {
        best_match(
            branch,
            specs
                .iter()
                .enumerate()
                .map(|(i, (file, p))| (i, p.as_slice(), *file)),
        )
    }

    #[test]
    fn star_stays_in_one_segment_and_double_star_crosses() {
        let star = BranchPattern::parse("feature/*").unwrap();
        assert!(star.strength("feature/login").is_some());
        assert!(star.strength("feature/a/b").is_none());
        let double = BranchPattern::parse("fix/**").unwrap();
        assert!(double.strength("fix/a/b/c").is_some());
        assert!(double.strength("fix/a").is_some());
        assert!(double.strength("fixes/a").is_none());
    }

    #[test]
    fn exact_beats_glob() {
        let specs = [
            ("a.yaml", patterns(&["feature/**"])),
            ("b.yaml", patterns(&["feature/login"])),
        ];
        assert_eq!(pick("feature/login", &specs), Ok(Some(1)));
        assert_eq!(pick("feature/other", &specs), Ok(Some(0)));
    }

    #[test]
    fn longest_literal_prefix_wins() {
        let specs = [
            ("a.yaml", patterns(&["feature/*"])),
            ("b.yaml", patterns(&["feature/db-*"])),
        ];
        assert_eq!(pick("feature/db-x", &specs), Ok(Some(1)));
        assert_eq!(pick("feature/x", &specs), Ok(Some(0)));
    }

    #[test]
    fn tie_names_both_files() {
        let specs = [
            ("environments/a.yaml", patterns(&["feature/*"])),
            ("environments/b.yaml", patterns(&["feature/?*"])),
        ];
        let err = pick("feature/x", &specs).unwrap_err();
        assert!(
            err.contains("environments/a.yaml") && err.contains("environments/b.yaml"),
            "{err}"
        );
    }

    #[test]
    fn uncovered_branch_has_no_spec() {
        let specs = [("a.yaml", patterns(&["feature/*"]))];
        assert_eq!(pick("main", &specs), Ok(None));
    }

    #[test]
    fn a_bang_pattern_excludes_wherever_it_is_listed() {
        for listed in [
            &["**", "!dependabot/**", "!renovate/**"][..],
            &["!dependabot/**", "**", "!renovate/**"][..],
        ] {
            let specs = [("preview.yaml", patterns(listed))];
            assert_eq!(pick("feature/login", &specs), Ok(Some(0)), "{listed:?}");
            assert_eq!(pick("dependabot/npm/left-pad-1.0", &specs), Ok(None));
            assert_eq!(pick("renovate/tokio", &specs), Ok(None));
            // A branch that only starts like a bot's is covered.
            assert_eq!(pick("dependabots", &specs), Ok(Some(0)));
        }
        // Excluded by one spec, a branch can still be covered by another; an exact `!` too.
        let specs = [
            ("preview.yaml", patterns(&["**", "!dependabot/**", "!main"])),
            ("bots.yaml", patterns(&["dependabot/**"])),
        ];
        assert_eq!(pick("dependabot/x", &specs), Ok(Some(1)));
        assert_eq!(pick("main", &specs), Ok(None));
        // An exclusion never ties with, or beats, another spec's pattern.
        let specs = [
            ("a.yaml", patterns(&["feature/*", "!feature/x"])),
            ("b.yaml", patterns(&["feature/?"])),
        ];
        assert_eq!(pick("feature/x", &specs), Ok(Some(1)));
    }

    #[test]
    fn a_bare_bang_is_an_error() {
        let err = BranchPattern::parse("!").unwrap_err();
        assert!(err.contains("excludes nothing"), "{err}");
        let err = BranchPattern::parse("!feature/[a").unwrap_err();
        assert!(err.contains("`!feature/[a` is not a valid glob"), "{err}");
        assert!(BranchPattern::parse("!bad..name").is_err());
    }

    #[test]
    fn invalid_glob_is_an_error() {
        let err = BranchPattern::parse("feature/[a").unwrap_err();
        assert!(err.contains("not a valid glob"), "{err}");
    }
}
