//! Reads a repository snapshot ([`RepoFiles`]) from the working tree, uncommitted changes
//! included, and owns the rule both sources follow for symbolic links ([`resolve_link`]; `git.rs`
//! applies it to a commit's tree), so a file reads the same from disk and from git.
//!
//! Only regular files inside the repository are read. A link is followed, within the repository,
//! to a regular file; links that leave it, dangle, loop or name a directory, and FIFOs, sockets
//! and devices become [`FileContent::Refused`] without being opened. Files are opened without
//! blocking, checked on the open handle, and read to at most the size limit plus one byte, so a
//! 50 MB file or an endless one costs no memory.

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::spec::migrations::{MASK_DIR, MIGRATIONS_DIR, SEEDS_DIR};
use crate::spec::{ENVIRONMENTS_DIR, FileContent, MAX_LINK_HOPS, Refusal, RepoFiles};

/// What a repository-relative path is in a source, without following a link there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File,
    Dir,
    /// A symbolic link, with its target as written.
    Link(String),
    /// Anything else: a FIFO, a socket, a device, a submodule.
    Other(&'static str),
    Missing,
}

/// Resolves the symbolic link at repository-relative `path` the way the kernel would, with the
/// repository root as the top:
/// - the target is read relative to the link's directory;
/// - `..` may not climb above the root, and an absolute target is outside;
/// - links met on the way (in the target's directories too) are followed, up to
///   [`MAX_LINK_HOPS`] in all.
///
/// `lookup` tells what a path is in the source. Returns the path of the regular file reached, or
/// why there is none.
pub fn resolve_link<E>(
    path: &str,
    mut lookup: impl FnMut(&str) -> Result<Node, E>,
) -> Result<Result<String, Refusal>, E> {
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    let mut target = String::new();
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                if resolved.pop().is_none() {
                    return Ok(Err(Refusal::LinkOutside { target }));
                }
                continue;
            }
            _ => resolved.push(part),
        }
        let here = resolved.join("/");
        let last = pending.is_empty();
        // Only what a snapshot holds, decided before looking: an ignored file such as
        // `.envctl/…` exists on disk but not in git, and `.git` holds git's own files.
        if resolved.len() == 1 && !matches!(resolved[0].as_str(), "environments" | "schemas") {
            return Ok(Err(Refusal::LinkOutsideContent { target }));
        }
        let node = lookup(&here)?;
        match node {
            Node::Dir if !last => {}
            Node::Dir => return Ok(Err(Refusal::LinkToDirectory { target })),
            Node::File if last => return Ok(Ok(here)),
            Node::Other(kind) if last => {
                return Ok(Err(Refusal::NotRegular {
                    kind: kind.to_owned(),
                    target: Some(target),
                }));
            }
            Node::File | Node::Other(_) | Node::Missing => {
                return Ok(Err(Refusal::LinkDangling { target }));
            }
            Node::Link(next) => {
                hops += 1;
                target = next;
                if hops > MAX_LINK_HOPS {
                    return Ok(Err(Refusal::LinkLoop { target }));
                }
                if target.starts_with('/') {
                    return Ok(Err(Refusal::LinkOutside { target }));
                }
                resolved.pop();
                pending.extend(target.split('/').rev().map(str::to_owned));
            }
        }
    }
    // Only directories and `..` were left: the link names a directory (perhaps the root).
    Ok(Err(Refusal::LinkToDirectory { target }))
}

/// Reads `environments/*.yaml`, `schemas/migrations/*.sql`, `schemas/seeds/**` and
/// `schemas/mask/**` under `root`.
pub fn read_working_tree(root: &Path) -> io::Result<RepoFiles> {
    let mut files = RepoFiles::default();
    read_dir(root, ENVIRONMENTS_DIR, false, &mut files)?;
    if is_real_dir(root, "schemas", &mut files)? {
        read_dir(root, MIGRATIONS_DIR, false, &mut files)?;
        read_dir(root, SEEDS_DIR, true, &mut files)?;
        read_dir(root, MASK_DIR, true, &mut files)?;
    }
    Ok(files)
}

/// Whether `relative` (no trailing `/`) is a directory to read. A link there is recorded as
/// refused: git stores the link, not the files behind it.
fn is_real_dir(root: &Path, relative: &str, files: &mut RepoFiles) -> io::Result<bool> {
    let path = root.join(relative);
    match std::fs::symlink_metadata(&path) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            let target = link_target(&path)?;
            files.insert(
                relative,
                FileContent::Refused(Refusal::DirectoryLink { target }),
            );
            Ok(false)
        }
        // A submodule's files are another repository's: git's tree holds a commit there.
        Ok(metadata) if metadata.is_dir() && path.join(".git").exists() => {
            files.insert(relative, FileContent::Refused(Refusal::Submodule));
            Ok(false)
        }
        Ok(metadata) => Ok(metadata.is_dir()),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot read `{}`: {e}", path.display()),
        )),
    }
}

fn read_dir(root: &Path, relative: &str, recursive: bool, files: &mut RepoFiles) -> io::Result<()> {
    if !is_real_dir(root, relative.trim_end_matches('/'), files)? {
        return Ok(());
    }
    let dir = root.join(relative);
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read `{}`: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry?;
        let name = match entry.file_name().to_str() {
            Some(name) if !name.chars().any(char::is_control) => name.to_owned(),
            // Said, not skipped: a skipped spec would read as "no spec" and plan deletions.
            _ => {
                let lossy: String = entry
                    .file_name()
                    .to_string_lossy()
                    .chars()
                    .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                    .collect();
                let path = format!("{relative}{lossy}");
                if RepoFiles::wants(&path) {
                    files.insert(path, FileContent::Refused(Refusal::BadName));
                }
                continue;
            }
        };
        // Editor lock files and other dotfiles (`.#preview.yaml`) are not the user's content.
        if name.starts_with('.') {
            continue;
        }
        let path = format!("{relative}{name}");
        // The entry itself, not what a link there points to.
        let file_type = entry
            .file_type()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read `{path}`: {e}")))?;
        if file_type.is_dir() {
            if RepoFiles::refuses_directory(&path) {
                files.insert(
                    path,
                    FileContent::Refused(Refusal::NotRegular {
                        kind: kind_of(file_type).to_owned(),
                        target: None,
                    }),
                );
                continue;
            }
            // A nested repository's files are not this repository's (git stores a submodule as
            // a commit, not a tree).
            if recursive && !entry.path().join(".git").exists() {
                read_dir(root, &format!("{path}/"), true, files)?;
            }
            continue;
        }
        if !RepoFiles::wants(&path) {
            continue;
        }
        let content = if file_type.is_symlink() {
            match resolve_link(&path, |p| working_tree_node(root, p))? {
                Ok(resolved) => read_regular(&root.join(&resolved), &resolved, Some(&path))?,
                Err(refusal) => FileContent::Refused(refusal),
            }
        } else if file_type.is_file() {
            read_regular(&entry.path(), &path, None)?
        } else {
            FileContent::Refused(Refusal::NotRegular {
                kind: kind_of(file_type).to_owned(),
                target: None,
            })
        };
        files.insert(path, content);
    }
    Ok(())
}

/// What `relative` is on disk, for [`resolve_link`].
fn working_tree_node(root: &Path, relative: &str) -> io::Result<Node> {
    let path = root.join(relative);
    let metadata = match std::fs::symlink_metadata(&path) {
        Ok(metadata) => metadata,
        Err(e) if is_missing(&e) => return Ok(Node::Missing),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read `{relative}`: {e}"),
            ));
        }
    };
    let file_type = metadata.file_type();
    Ok(if file_type.is_symlink() {
        Node::Link(link_target(&path)?)
    } else if file_type.is_dir() {
        // git's tree has a submodule where the working tree has its checkout.
        if path.join(".git").exists() {
            Node::Other("a submodule")
        } else {
            Node::Dir
        }
    } else if file_type.is_file() {
        Node::File
    } else {
        Node::Other(kind_of(file_type))
    })
}

/// A link's target as written, as git stores it (bytes, read as UTF-8 with replacements).
fn link_target(path: &Path) -> io::Result<String> {
    let target = std::fs::read_link(path)?;
    Ok(String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned())
}

/// Not there, or a file where a directory was expected.
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn kind_of(file_type: FileType) -> &'static str {
    if file_type.is_fifo() {
        "a named pipe (FIFO)"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Reads a file found to be regular, checking again on the open handle: opened without
/// blocking (a FIFO swapped in would otherwise wait for a writer) and without following a link,
/// then at most the limit plus one byte, whatever the size says (`/dev/zero` says 0).
/// `path` names it in the snapshot; `link` is the link it was reached through, if any.
fn read_regular(full: &Path, path: &str, link: Option<&str>) -> io::Result<FileContent> {
    let cannot_read = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot read `{}`: {e}", link.unwrap_or(path)),
        )
    };
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
        .open(full)
        .map_err(cannot_read)?;
    let metadata = file.metadata().map_err(cannot_read)?;
    if !metadata.file_type().is_file() {
        return Ok(FileContent::Refused(Refusal::NotRegular {
            kind: kind_of(metadata.file_type()).to_owned(),
            target: link.map(|_| path.to_owned()),
        }));
    }
    let limit = RepoFiles::limit_for(path);
    if metadata.len() > limit {
        return Ok(FileContent::TooLarge {
            size: metadata.len(),
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    if bytes.len() as u64 > limit {
        return Ok(FileContent::TooLarge {
            size: metadata.len().max(bytes.len() as u64),
            limit,
        });
    }
    Ok(FileContent::Bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree as a list of (path, node).
    fn lookup_in<'a>(tree: &'a [(&str, Node)]) -> impl FnMut(&str) -> Result<Node, ()> + 'a {
        move |path| {
            Ok(tree
                .iter()
                .find(|(p, _)| *p == path)
                .map_or(Node::Missing, |(_, n)| n.clone()))
        }
    }

    fn link(target: &str) -> Node {
        Node::Link(target.to_owned())
    }

    #[test]
    fn only_regular_files_are_read_and_never_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.sql");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        // Opened without blocking and refused on the handle: no writer is waited for.
        assert_eq!(
            read_regular(&fifo, "schemas/seeds/pipe.sql", None).unwrap(),
            FileContent::Refused(Refusal::NotRegular {
                kind: "a named pipe (FIFO)".into(),
                target: None
            })
        );
        // A device whose size says 0 is not read at all.
        assert_eq!(
            read_regular(Path::new("/dev/zero"), "schemas/seeds/zero.sql", None).unwrap(),
            FileContent::Refused(Refusal::NotRegular {
                kind: "a character device".into(),
                target: None
            })
        );
        let big = dir.path().join("big.sql");
        std::fs::write(&big, vec![b'-'; 3 << 20]).unwrap();
        assert_eq!(
            read_regular(&big, "schemas/seeds/big.sql", None).unwrap(),
            FileContent::TooLarge {
                size: 3 << 20,
                limit: 1 << 20
            }
        );
    }

    #[test]
    fn links_resolve_inside_the_root_only() {
        let tree = [
            ("schemas", Node::Dir),
            ("schemas/a", Node::Dir),
            ("schemas/a/x.sql", link("../b/y.sql")),
            ("schemas/b", Node::Dir),
            ("schemas/b/y.sql", Node::File),
            ("schemas/a/up.sql", link("../../../y.sql")),
            ("schemas/a/abs.sql", link("/etc/passwd")),
            ("schemas/a/dir.sql", link(".")),
            ("schemas/a/self.sql", link("self.sql")),
            ("schemas/a/via.sql", link("../c/y.sql")),
            ("schemas/c", link("b")),
            ("schemas/a/pipe.sql", link("p")),
            ("schemas/a/p", Node::Other("a named pipe (FIFO)")),
            ("schemas/a/through.sql", link("../b/y.sql/z")),
            ("schemas/a/readme.sql", link("../../README.md")),
            ("README.md", Node::File),
        ];
        let resolve =
            |path: &str| resolve_link(&format!("schemas/{path}"), lookup_in(&tree)).unwrap();
        assert_eq!(resolve("a/x.sql"), Ok("schemas/b/y.sql".to_owned()));
        assert_eq!(resolve("a/via.sql"), Ok("schemas/b/y.sql".to_owned()));
        assert_eq!(
            resolve("a/up.sql"),
            Err(Refusal::LinkOutside {
                target: "../../../y.sql".into()
            })
        );
        assert_eq!(
            resolve("a/readme.sql"),
            Err(Refusal::LinkOutsideContent {
                target: "../../README.md".into()
            })
        );
        assert_eq!(
            resolve("a/abs.sql"),
            Err(Refusal::LinkOutside {
                target: "/etc/passwd".into()
            })
        );
        assert_eq!(
            resolve("a/dir.sql"),
            Err(Refusal::LinkToDirectory { target: ".".into() })
        );
        assert_eq!(
            resolve("a/self.sql"),
            Err(Refusal::LinkLoop {
                target: "self.sql".into()
            })
        );
        assert_eq!(
            resolve("a/pipe.sql"),
            Err(Refusal::NotRegular {
                kind: "a named pipe (FIFO)".into(),
                target: Some("p".into())
            })
        );
        assert_eq!(
            resolve("a/through.sql"),
            Err(Refusal::LinkDangling {
                target: "../b/y.sql/z".into()
            })
        );
    }
}
