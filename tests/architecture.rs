//! ARCHITECTURE.md's invariants that a reading of the source can check: the pure core (`spec`,
//! `model`, `plan`) imports no IO crate, the providers never import `db` (the two share
//! `sql/`, so neither depends on the other), and the proxy reaches providers only through the
//! `Upstream` values it is given.

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
    let mut files = Vec::new();
    rust_files(&src.join("model"), &mut files);
    rust_files(&src.join("spec"), &mut files);
    rust_files(&src.join("plan"), &mut files);
    assert!(files.len() >= 13, "{files:?}");
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

#[test]
fn providers_never_import_db() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("provider"), &mut files);
    assert!(files.len() >= 8, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("crate::db") && !text.contains("super::db"),
            "{} uses `crate::db`: providers and `db` share `crate::sql` and never import each other",
            file.display()
        );
    }
}

#[test]
fn db_never_imports_a_provider() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("db"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("crate::provider"),
            "{} uses `crate::provider`: `db` knows no provider (it connects through `crate::sql`)",
            file.display()
        );
    }
}

/// Adding a provider touches `cli.rs` (its `ProviderKind`), `provider/mod.rs` (`AnyProvider` and
/// its dispatch) and its own files, nothing else: no other file names a provider's variant.
#[test]
fn only_cli_and_provider_mod_name_provider_variants() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let allowed = [src.join("cli.rs"), src.join("provider").join("mod.rs")];
    let mut checked = 0;
    for file in files.iter().filter(|f| !allowed.contains(f)) {
        let text = std::fs::read_to_string(file).unwrap();
        for variant in ["AnyProvider::Local", "AnyProvider::Aws", "ProviderKind::"] {
            assert!(
                !text.contains(variant),
                "{} names `{variant}`: choose by trait methods, and providers only in `provider/mod.rs`",
                file.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 40, "{checked} files");
    // The two allowed files do name them (the check above looks at the right words).
    let provider_mod = std::fs::read_to_string(&allowed[1]).unwrap();
    assert!(provider_mod.contains("AnyProvider::Local") && provider_mod.contains("ProviderKind::"));
}

#[test]
fn the_proxy_reaches_providers_only_through_upstream_values() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("proxy"), &mut files);
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for name in [
            "crate::provider::aws",
            "crate::provider::local",
            "crate::db",
            "crate::commands",
            "sqlx::",
            "aws_sdk",
            "aws_config",
            "aws_credential_types",
        ] {
            assert!(
                !text.contains(name),
                "{} uses `{name}`: the proxy gets `provider::upstream::Upstream` values and knows no provider, driver or command",
                file.display()
            );
        }
    }
}
