//! Repository hygiene: `//!` headers, no stub or debug macros outside tests, exact dependency pins.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

/// Built with `concat!` so that this file does not flag itself.
const FORBIDDEN_MACROS: &[&str] = &[concat!("todo", "!("), concat!("unimplemented", "!("), concat!("dbg", "!(")];
const SOURCE_ROOTS: &[&str] = &["crates", "xtask", "tests"];

/// Every tidy violation in the repository at `root`.
pub(crate) fn check(root: &Path, metadata: &Value) -> Result<Vec<String>> {
    let mut violations = Vec::new();
    for file in rust_files(root)? {
        let text = std::fs::read_to_string(&file)?;
        let shown = file.strip_prefix(root).unwrap_or(&file).display().to_string();
        violations.extend(check_source(&shown, &text));
    }
    violations.extend(check_pins(metadata));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    if manifest.lines().any(|line| line.trim_start().starts_with("[patch")) {
        violations.push("Cargo.toml: remove the [patch] section; depend on published, pinned versions".to_owned());
    }
    Ok(violations)
}

/// Header and stub-macro rules for one source file.
pub(crate) fn check_source(path: &str, text: &str) -> Vec<String> {
    let mut violations = Vec::new();
    let first = text.lines().find(|line| !line.trim().is_empty()).unwrap_or_default();
    if !first.starts_with("//!") {
        violations.push(format!("{path}: must open with a `//!` line saying what the file is for"));
    }
    let is_test_file = path.contains("/tests/") || path.starts_with("tests/") || path.contains("/benches/");
    if !is_test_file {
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            if let Some(found) = FORBIDDEN_MACROS.iter().find(|m| line.contains(*m)) {
                violations.push(format!(
                    "{path}:{}: `{found}` outside tests; finish the code or return an error",
                    number + 1
                ));
            }
        }
    }
    violations
}

/// Registry dependencies must be exact (`=x.y.z`); git dependencies are not allowed.
pub(crate) fn check_pins(metadata: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or_default();
        for dependency in package["dependencies"].as_array().into_iter().flatten() {
            let dependency_name = dependency["name"].as_str().unwrap_or_default();
            let source = dependency["source"].as_str().unwrap_or_default();
            let requirement = dependency["req"].as_str().unwrap_or_default();
            if source.starts_with("git+") {
                violations.push(format!("{name}: `{dependency_name}` is a git dependency; use a crates.io release"));
            } else if source.starts_with("registry+") && !is_exact(requirement) {
                violations.push(format!(
                    "{name}: `{dependency_name} {requirement}` is not pinned; use `=x.y.z` in [workspace.dependencies]"
                ));
            }
        }
    }
    violations
}

fn is_exact(requirement: &str) -> bool {
    requirement.starts_with('=') && !requirement.contains(',') && !requirement.contains('*')
}

fn rust_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = SOURCE_ROOTS.iter().map(|dir| root.join(dir)).collect();
    while let Some(dir) = pending.pop() {
        if !dir.is_dir() || dir.ends_with("fixtures") || dir.ends_with("target") {
            continue;
        }
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_is_tidy() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        let metadata = serde_json::from_str(&crate::layers::cargo_metadata(root).expect("metadata")).expect("json");
        assert_eq!(check(root, &metadata).expect("tidy runs"), Vec::<String>::new());
    }

    #[test]
    fn a_missing_header_and_a_stub_are_reported() {
        let stub = format!("fn f() {{ {}) }}\n", FORBIDDEN_MACROS[0]);
        let violations = check_source("crates/x/src/a.rs", &stub);
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(check_source("crates/x/tests/a.rs", &format!("//! t\n{stub}")).is_empty());
        assert!(check_source("crates/x/src/a.rs", &format!("//! t\n#[cfg(test)]\n{stub}")).is_empty());
    }

    #[test]
    fn loose_and_git_requirements_are_reported() {
        let metadata = serde_json::json!({ "packages": [{ "name": "p", "dependencies": [
            { "name": "a", "source": "registry+https://example", "req": "^1.0" },
            { "name": "b", "source": "git+https://example", "req": "*" },
            { "name": "c", "source": "registry+https://example", "req": "=1.2.3" },
            { "name": "d", "source": null, "req": "*" },
        ]}]});
        let violations = check_pins(&metadata);
        assert_eq!(violations.len(), 2, "{violations:?}");
    }
}
