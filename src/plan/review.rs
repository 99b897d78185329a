//! The review of a branch for its pull request: the Markdown that the GitHub workflow posts as
//! the pull request's sticky comment and writes to the run's summary. A result that blocks or
//! failed comes first, then sections (the plan, the migration lint, the schema diff, how to
//! connect), all within a size: GitHub refuses a comment over 65 536 characters. Sections are
//! cut whole, or a code block at one of its items; every fence and `<details>` that opens also
//! closes, and a cut is said at the end. Pure: it returns a `String`.

/// GitHub's limit for a comment's body, in characters.
pub const GITHUB_COMMENT_LIMIT: usize = 65_536;

/// A block of a section that may be cut between its items (each one or more lines): fenced code,
/// or a Markdown table's rows under its header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Code {
    /// A fenced block with this info string (e.g. `diff`); `None` for table rows.
    pub fence: Option<String>,
    /// Lines before the items (a table's header), never cut.
    pub header: String,
    pub items: Vec<String>,
    /// Folded into `<details>` with this summary.
    pub fold: Option<String>,
    /// What the items are, for the cut note: `objects`.
    pub noun: String,
}

/// One section: a `####` heading, Markdown text, and maybe a code block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub title: String,
    pub text: String,
    pub code: Option<Code>,
    /// Where to read what a cut leaves out, e.g. "`envctl diff --branch b`".
    pub elsewhere: String,
}

/// What the comment says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Review {
    /// The first line (a `###` heading).
    pub title: String,
    /// A blocked or failed result: said before any section, never cut.
    pub result: Option<String>,
    pub sections: Vec<Section>,
}

/// The length GitHub counts: UTF-16 code units (never fewer than characters).
pub fn length(text: &str) -> usize {
    text.encode_utf16().count()
}

/// A fence longer than any run of backticks in `items`.
fn fence(items: &[String]) -> String {
    let longest = items
        .iter()
        .flat_map(|item| item.split(|c| c != '`').map(str::len))
        .max()
        .unwrap_or(0);
    "`".repeat((longest + 1).max(3))
}

/// A section with the first `shown` items of its code block; `limit` is the comment's.
fn render_section(section: &Section, shown: usize, limit: usize) -> String {
    let mut out = format!("#### {}\n\n", section.title);
    if !section.text.is_empty() {
        out.push_str(section.text.trim_end_matches('\n'));
        out.push_str("\n\n");
    }
    if let Some(code) = &section.code
        && !code.items.is_empty()
    {
        let items = &code.items[..shown.min(code.items.len())];
        let block = match &code.fence {
            Some(language) => {
                let fence = fence(items);
                format!("{fence}{language}\n{}\n{fence}\n", items.join("\n"))
            }
            None => format!(
                "{}\n{}\n",
                code.header.trim_end_matches('\n'),
                items.join("\n")
            ),
        };
        match &code.fold {
            Some(summary) => out.push_str(&format!(
                "<details><summary>{summary}</summary>\n\n{block}\n</details>\n\n"
            )),
            None => {
                out.push_str(&block);
                out.push('\n');
            }
        }
        let left = code.items.len() - items.len();
        if left > 0 {
            out.push_str(&format!(
                "_{left} more {} not shown here (this comment holds at most {limit} characters): {}._\n\n",
                code.noun, section.elsewhere
            ));
        }
    }
    out
}

/// The note that names the sections left out (none: empty).
fn cut_note(sections: &[&Section], limit: usize) -> String {
    if sections.is_empty() {
        return String::new();
    }
    let names: Vec<String> = sections
        .iter()
        .map(|s| format!("{} ({})", s.title, s.elsewhere))
        .collect();
    format!(
        "_Not shown here, to keep within {limit} characters: {}._\n",
        names.join("; ")
    )
}

/// The comment in at most `limit` characters (as GitHub counts them): title and result, then the
/// sections in their order, each whole, or with as many of its code block's items as fit, or
/// named at the end as not shown. Which are placed whole is decided for the sections that
/// cannot be cut first (how to connect must not go for a diff), then the others smallest first;
/// what room is left then goes to the first sections not placed, cut at an item.
pub fn render(review: &Review, limit: usize) -> String {
    let mut out = format!("{}\n\n", review.title);
    if let Some(result) = &review.result {
        out.push_str(result.trim_end_matches('\n'));
        out.push_str("\n\n");
    }
    let items_of = |s: &Section| s.code.as_ref().map_or(0, |c| c.items.len());
    let wholes: Vec<String> = review
        .sections
        .iter()
        .map(|s| render_section(s, items_of(s), limit))
        .collect();
    if length(&out) + wholes.iter().map(|w| length(w)).sum::<usize>() <= limit {
        return out + &wholes.concat();
    }
    // Items shown per section (`None`: left out). Room is kept for the note naming every
    // section not placed yet: placing more only shortens it.
    let mut shown: Vec<Option<usize>> = vec![None; review.sections.len()];
    let mut used = length(&out);
    let note_without = |shown: &[Option<usize>], also: usize| {
        let left: Vec<&Section> = review
            .sections
            .iter()
            .enumerate()
            .filter(|(i, _)| shown[*i].is_none() && *i != also)
            .map(|(_, s)| s)
            .collect();
        length(&cut_note(&left, limit))
    };
    // Sections that cannot be cut first (a plan, how to connect), then the others smallest
    // first: the biggest, a long diff, is the one cut.
    let mut order: Vec<usize> = (0..review.sections.len()).collect();
    order.sort_by_key(|&i| (items_of(&review.sections[i]) > 0, length(&wholes[i]), i));
    for i in order {
        if used + length(&wholes[i]) + note_without(&shown, i) <= limit {
            shown[i] = Some(items_of(&review.sections[i]));
            used += length(&wholes[i]);
        }
    }
    for (i, section) in review.sections.iter().enumerate() {
        let items = items_of(section);
        if shown[i].is_some() || items == 0 {
            continue;
        }
        let room = limit.saturating_sub(used + note_without(&shown, i));
        // The most items that fit (rendering grows with the items shown).
        let (mut low, mut high) = (0usize, items);
        while low < high {
            let middle = (low + high).div_ceil(2);
            if length(&render_section(section, middle, limit)) <= room {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        if low > 0 {
            shown[i] = Some(low);
            used += length(&render_section(section, low, limit));
        }
    }
    let mut left_out = Vec::new();
    for (section, shown) in review.sections.iter().zip(&shown) {
        match shown {
            Some(items) => out.push_str(&render_section(section, *items, limit)),
            None => left_out.push(section),
        }
    }
    let note = cut_note(&left_out, limit);
    if length(&out) + length(&note) <= limit {
        out.push_str(&note);
    }
    if length(&out) > limit {
        // Only a title and result longer than the limit get here: cut them at a character.
        let mut cut = String::new();
        for c in out.chars() {
            if length(&cut) + c.len_utf16() > limit {
                break;
            }
            cut.push(c);
        }
        return cut;
    }
    out
}
