//! Reads a repository snapshot ([`RepoFiles`]) from the working tree, uncommitted changes
//! included. Files over their size limit are recorded as too large without being read, so a
//! 50 MB file costs no memory. (Snapshots of other branches come from `git.rs`.)

use std::io;
use std::path::Path;

use crate::spec::migrations::{MIGRATIONS_DIR, SEEDS_DIR};
use crate::spec::{ENVIRONMENTS_DIR, FileContent, RepoFiles};

/// Reads `environments/*.yaml`, `schemas/migrations/*.sql` and `schemas/seeds/**` under `root`.
pub fn read_working_tree(root: &Path) -> io::Result<RepoFiles> {
    let mut files = RepoFiles::default();
    read_dir(root, ENVIRONMENTS_DIR, false, &mut files)?;
    read_dir(root, MIGRATIONS_DIR, false, &mut files)?;
    read_dir(root, SEEDS_DIR, true, &mut files)?;
    Ok(files)
}

fn read_dir(root: &Path, relative: &str, recursive: bool, files: &mut RepoFiles) -> io::Result<()> {
    let dir = root.join(relative);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read `{}`: {e}", dir.display()),
            ));
        }
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Editor lock files and other dotfiles (`.#preview.yaml`) are not the user's content.
        if name.starts_with('.') {
            continue;
        }
        let path = format!("{relative}{name}");
        let metadata = std::fs::metadata(entry.path()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read `{path}` (a broken symbolic link?): {e}"),
            )
        })?;
        if metadata.is_dir() {
            if recursive {
                read_dir(root, &format!("{path}/"), true, files)?;
            }
            continue;
        }
        if !RepoFiles::wants(&path) {
            continue;
        }
        let limit = RepoFiles::limit_for(&path);
        if metadata.len() > limit {
            files.insert(
                path,
                FileContent::TooLarge {
                    size: metadata.len(),
                    limit,
                },
            );
            continue;
        }
        let bytes = std::fs::read(entry.path())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read `{path}`: {e}")))?;
        files.insert_bytes(path, bytes);
    }
    Ok(())
}
