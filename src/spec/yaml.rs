//! A key-path → position index of a YAML document, built from saphyr-parser's events.
//!
//! serde_norway decodes the typed value but reports only its first error and keeps no spans, so
//! semantic errors are placed through this index: `cluster.scaling.maxAcu` → line 9, column 12. The
//! same pass bounds the work a hostile document can cause: nesting depth, and the number of nodes
//! aliases expand to (a "billion laughs" bomb is refused here, before anything expands it). Nodes
//! written out are bounded by the file size limit, not here. Pure: no IO.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use saphyr_parser::{Event, Parser, Span};

/// Deepest nesting accepted; spec files need four levels.
pub const MAX_DEPTH: usize = 32;
/// Most nodes the aliases of a document may expand to, all aliases together.
pub const MAX_EXPANDED_NODES: u64 = 10_000;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// Where a node sits: its key (for mapping entries) and its value.
#[derive(Clone, Copy, Debug)]
pub struct Location {
    pub key: Option<Pos>,
    pub value: Pos,
}

/// The index of one document.
#[derive(Debug, Default)]
pub struct Index {
    /// Path (`cluster.scaling.maxAcu`, `branches[0]`, `` for the root) → location.
    pub nodes: BTreeMap<String, Location>,
    /// Mapping path → its keys in document order, with their positions.
    pub keys: BTreeMap<String, Vec<(String, Pos)>>,
    /// Keys that appear twice in one mapping: (path of the key, position of the second).
    pub duplicate_keys: Vec<(String, Pos)>,
    /// True when the document has no content (empty file, only comments).
    pub empty: bool,
}

impl Index {
    /// The position of a path's value, else of the nearest ancestor that has one.
    pub fn value_pos(&self, path: &str) -> Pos {
        self.find(path).map(|l| l.value).unwrap_or(Pos::START)
    }

    /// The position of a path's key (for "unknown key" and the like), else its value's.
    pub fn key_pos(&self, path: &str) -> Pos {
        self.find(path)
            .map(|l| l.key.unwrap_or(l.value))
            .unwrap_or(Pos::START)
    }

    fn find(&self, path: &str) -> Option<&Location> {
        let mut path = path;
        loop {
            if let Some(location) = self.nodes.get(path) {
                return Some(location);
            }
            if path.is_empty() {
                return None;
            }
            path = parent_path(path);
        }
    }
}

/// `a.b[2]` → `a.b`; `a.b` → `a`; `a` → ``.
pub fn parent_path(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// A problem found while indexing.
#[derive(Debug, PartialEq, Eq)]
pub struct IndexError {
    pub pos: Pos,
    pub message: String,
}

enum Frame {
    Map {
        path: String,
        /// The key whose value comes next, when we are between key and value.
        pending_key: Option<(String, Pos)>,
        nodes: u64,
        anchor: usize,
    },
    Seq {
        path: String,
        next: usize,
        nodes: u64,
        anchor: usize,
    },
}

/// Indexes `text`. Fails on syntax errors, several documents, complex keys, nesting deeper than
/// [`MAX_DEPTH`] and aliases that expand to more than [`MAX_EXPANDED_NODES`] nodes.
pub fn index(text: &str) -> Result<Index, IndexError> {
    let mut parser = Parser::new_from_str(text);
    let mut index = Index {
        empty: true,
        ..Index::default()
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchor_sizes: BTreeMap<usize, u64> = BTreeMap::new();
    let mut expanded: u64 = 0;
    let mut documents = 0;
    // Keys seen per mapping and keys set twice, as sets: a mapping of 200 000 keys must not
    // cost 200 000² comparisons.
    let mut seen_keys: HashSet<(String, String)> = HashSet::new();
    let mut duplicated: BTreeSet<String> = BTreeSet::new();

    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| IndexError {
            pos: Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: if e.info().contains("recursion limit") {
                format!("the document is nested deeper than {MAX_DEPTH} levels")
            } else {
                e.info().to_owned()
            },
        })?;
        let pos = Pos::of(&span);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(IndexError {
                        pos,
                        message: "a spec file holds one YAML document; this is a second one".into(),
                    });
                }
            }
            Event::Scalar(value, _, anchor, _) => {
                index.empty = false;
                // A scalar in key position of a mapping is a key, not a value.
                if let Some(Frame::Map {
                    path, pending_key, ..
                }) = stack.last_mut()
                    && pending_key.is_none()
                {
                    let key_path = join_key(path, &value);
                    let keys = index.keys.entry(path.clone()).or_default();
                    // Keys under a key that is itself set twice are reported with it, not again.
                    let under_duplicate = under_duplicate(&duplicated, path);
                    let first = seen_keys.insert((path.clone(), value.to_string()));
                    if !first && !under_duplicate {
                        duplicated.insert(key_path.clone());
                        index.duplicate_keys.push((key_path, pos));
                    }
                    keys.push((value.to_string(), pos));
                    *pending_key = Some((value.to_string(), pos));
                    continue;
                }
                if anchor > 0 {
                    anchor_sizes.insert(anchor, 1);
                }
                add_value(&mut stack, &mut index, pos, 1);
            }
            Event::Alias(anchor) => {
                index.empty = false;
                if let Some(Frame::Map {
                    pending_key: None, ..
                }) = stack.last()
                {
                    return Err(IndexError {
                        pos,
                        message: "an alias cannot be a mapping key here".into(),
                    });
                }
                let size = anchor_sizes.get(&anchor).copied().unwrap_or(1);
                expanded = expanded.saturating_add(size);
                if expanded > MAX_EXPANDED_NODES {
                    return Err(IndexError {
                        pos,
                        message: format!(
                            "the document expands to more than {MAX_EXPANDED_NODES} nodes through aliases; a spec file needs no such aliases (is this a \"billion laughs\" document?)"
                        ),
                    });
                }
                add_value(&mut stack, &mut index, pos, size);
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                index.empty = false;
                let map = matches!(event, Event::MappingStart(..));
                open_container(&mut stack, &mut index, map, anchor, pos)?;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (size, anchor) = match stack.pop() {
                    Some(Frame::Map { nodes, anchor, .. } | Frame::Seq { nodes, anchor, .. }) => {
                        (nodes, anchor)
                    }
                    None => (1, 0),
                };
                if anchor > 0 {
                    anchor_sizes.insert(anchor, size);
                }
                // The container was registered in its parent when it started; count its size now.
                finish_child(&mut stack, size);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    Ok(index)
}

/// Whether `path` or one of its ancestors is a key set twice.
fn under_duplicate(duplicated: &BTreeSet<String>, path: &str) -> bool {
    let mut ancestor = path;
    loop {
        if duplicated.contains(ancestor) {
            return true;
        }
        if ancestor.is_empty() {
            return false;
        }
        ancestor = parent_path(ancestor);
    }
}

/// A mapping or sequence starts at `pos`: registered in its parent (or as the root) and pushed.
fn open_container(
    stack: &mut Vec<Frame>,
    index: &mut Index,
    map: bool,
    anchor: usize,
    pos: Pos,
) -> Result<(), IndexError> {
    if stack.len() >= MAX_DEPTH {
        return Err(IndexError {
            pos,
            message: format!("the document is nested deeper than {MAX_DEPTH} levels"),
        });
    }
    let path = match stack.last_mut() {
        None => String::new(),
        Some(Frame::Map {
            path,
            pending_key: Some((key, key_pos)),
            ..
        }) => {
            let child = join_key(path, key);
            index.nodes.insert(
                child.clone(),
                Location {
                    key: Some(*key_pos),
                    value: pos,
                },
            );
            child
        }
        Some(Frame::Map {
            pending_key: None, ..
        }) => {
            return Err(IndexError {
                pos,
                message: "mapping keys must be plain strings".into(),
            });
        }
        Some(Frame::Seq { path, next, .. }) => {
            let child = format!("{path}[{next}]");
            index.nodes.insert(
                child.clone(),
                Location {
                    key: None,
                    value: pos,
                },
            );
            child
        }
    };
    if stack.is_empty() {
        index.nodes.insert(
            String::new(),
            Location {
                key: None,
                value: pos,
            },
        );
    }
    stack.push(match map {
        true => Frame::Map {
            path,
            pending_key: None,
            nodes: 1,
            anchor,
        },
        false => Frame::Seq {
            path,
            next: 0,
            nodes: 1,
            anchor,
        },
    });
    Ok(())
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn add_value(stack: &mut [Frame], index: &mut Index, pos: Pos, size: u64) {
    match stack.last_mut() {
        None => {
            index.nodes.insert(
                String::new(),
                Location {
                    key: None,
                    value: pos,
                },
            );
        }
        Some(Frame::Map {
            path, pending_key, ..
        }) => {
            if let Some((key, key_pos)) = pending_key.as_ref() {
                index.nodes.insert(
                    join_key(path, key),
                    Location {
                        key: Some(*key_pos),
                        value: pos,
                    },
                );
            }
        }
        Some(Frame::Seq { path, next, .. }) => {
            index.nodes.insert(
                format!("{path}[{next}]"),
                Location {
                    key: None,
                    value: pos,
                },
            );
        }
    }
    finish_child(stack, size)
}

/// Records that a child value of `size` expanded nodes (what an alias to it would cost) is
/// complete in the frame on top.
fn finish_child(stack: &mut [Frame], size: u64) {
    match stack.last_mut() {
        Some(Frame::Map {
            pending_key, nodes, ..
        }) => {
            *pending_key = None;
            *nodes = nodes.saturating_add(size);
        }
        Some(Frame::Seq { next, nodes, .. }) => {
            *next += 1;
            *nodes = nodes.saturating_add(size);
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_keys_and_sequences() {
        let text = "version: 1\ncluster:\n  scaling: { minAcu: 0, maxAcu: 4 }\nbranches:\n  - main\n  - \"feature/*\"\n";
        let index = index(text).unwrap();
        assert_eq!(
            index.nodes["cluster.scaling.maxAcu"].value,
            Pos {
                line: 3,
                column: 33
            }
        );
        assert_eq!(
            index.nodes["cluster.scaling.maxAcu"].key,
            Some(Pos {
                line: 3,
                column: 25
            })
        );
        assert_eq!(index.nodes["branches[1]"].value, Pos { line: 6, column: 5 });
        assert_eq!(
            index.keys["cluster.scaling"]
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["minAcu", "maxAcu"]
        );
        assert_eq!(
            index.value_pos("cluster.scaling.missing"),
            index.value_pos("cluster.scaling")
        );
    }

    #[test]
    fn reports_duplicate_keys() {
        let index = index("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(
            index.duplicate_keys,
            vec![("a".to_owned(), Pos { line: 3, column: 1 })]
        );
    }

    #[test]
    fn refuses_billion_laughs() {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut prev = "a";
        for name in names {
            text.push_str(&format!(
                "{name}: &{name} [{}]\n",
                vec![format!("*{prev}"); 9].join(",")
            ));
            prev = name;
        }
        let err = index(&text).unwrap_err();
        assert!(err.message.contains("billion laughs"), "{err:?}");
    }

    #[test]
    fn refuses_deep_nesting() {
        let text = "[".repeat(10_000);
        let err = index(&text).unwrap_err();
        assert!(err.message.contains("nested deeper"), "{err:?}");
    }

    #[test]
    fn empty_document_is_empty() {
        assert!(index("# only a comment\n").unwrap().empty);
        assert!(index("").unwrap().empty);
    }
}
