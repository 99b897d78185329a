//! ARCHITECTURE.md's invariant, checked: the pure core (`spec`, `model`, `plan`) imports no IO
//! crate.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_pure_core_imports_no_io_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join("model.rs")];
    rust_files(&src.join("spec"), &mut files);
    rust_files(&src.join("plan"), &mut files);
    assert!(files.len() >= 8, "{files:?}");
    let forbidden = [
        "tokio",
        "sqlx",
        "git2",
        "aws_sdk",
        "aws_config",
        "std::fs",
        "std::net",
        "std::process",
        "crate::db",
        "crate::provider",
        "crate::git",
        "crate::source",
    ];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for name in forbidden {
            assert!(
                !text.contains(&format!("{name}::")) && !text.contains(&format!("use {name}")),
                "{} uses `{name}`: the pure core does no IO",
                file.display()
            );
        }
    }
}
