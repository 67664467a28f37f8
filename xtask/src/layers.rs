//! The crate layering rules, as data, checked against `cargo metadata`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The internal crates, bottom of the stack first: a crate may depend only on crates before it.
pub(crate) const STACK: &[&str] =
    &["sdrt-api-types", "sdrt-io", "sdrt-models", "sdrt-processing", "sdrt-runtime", "sdrt-server", "sdrt-cli"];

/// Workspace members outside the stack: tooling and tests, allowed to depend on any internal crate.
const TOOLS: &[&str] = &["xtask", "sdrt-tests"];

/// External crates that only some workspace members may use as direct, non-dev dependencies.
const CONFINED: &[(&str, &[&str], &str)] = &[
    ("ort", &["sdrt-models"], "ONNX Runtime is wrapped by sdrt-models; use its typed components"),
    ("ort-sys", &["sdrt-models"], "ONNX Runtime is wrapped by sdrt-models; use its typed components"),
    ("axum", &["sdrt-server", "sdrt-cli"], "HTTP lives in sdrt-server"),
    ("hyper", &["sdrt-server", "sdrt-cli"], "HTTP lives in sdrt-server"),
    ("tokio", &["sdrt-server", "sdrt-cli"], "the async runtime belongs to sdrt-server (and cli, to start it)"),
    ("clap", &["sdrt-cli"], "argument parsing belongs to the sdrt binary"),
    ("indicatif", &["sdrt-cli"], "terminal progress bars belong to the sdrt binary"),
];

/// Runs `cargo metadata` for the workspace (no dependency resolution: direct edges are what matter).
pub(crate) fn cargo_metadata(root: &Path) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Every violation of the layering rules, each naming the rule and the fix.
pub(crate) fn check(metadata: &Value) -> Result<Vec<String>> {
    let mut violations = Vec::new();
    for package in workspace_packages(metadata)? {
        let name = package["name"].as_str().unwrap_or_default();
        let position = STACK.iter().position(|layer| *layer == name);
        if position.is_none() && !TOOLS.contains(&name) {
            violations.push(format!(
                "`{name}` is not in the layer table; add it to STACK or TOOLS in xtask/src/layers.rs and ARCHITECTURE.md"
            ));
        }
        for dependency in package["dependencies"].as_array().into_iter().flatten() {
            if dependency["kind"].as_str() == Some("dev") {
                continue;
            }
            let dependency_name = dependency["name"].as_str().unwrap_or_default();
            let below = STACK.iter().position(|layer| *layer == dependency_name);
            if let (Some(own), Some(theirs)) = (position, below)
                && theirs >= own
            {
                violations.push(format!(
                    "`{name}` depends on `{dependency_name}`, which is not below it in the stack \
                     ({}); move the shared code down into a lower crate or invert the dependency with a trait",
                    STACK.join(" < ")
                ));
            }
            if let Some((_, allowed, why)) = CONFINED.iter().find(|(krate, _, _)| *krate == dependency_name)
                && !allowed.contains(&name)
            {
                violations.push(format!(
                    "`{name}` depends on `{dependency_name}`, which only {} may use ({why}); remove the dependency",
                    allowed.join(", ")
                ));
            }
        }
    }
    Ok(violations)
}

fn workspace_packages(metadata: &Value) -> Result<Vec<&Value>> {
    let members: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .context("metadata has no workspace_members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let packages = metadata["packages"].as_array().context("metadata has no packages")?;
    Ok(packages.iter().filter(|p| p["id"].as_str().is_some_and(|id| members.contains(&id))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_metadata() -> Value {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        serde_json::from_str(&cargo_metadata(root).expect("cargo metadata")).expect("valid JSON")
    }

    fn inject(metadata: &mut Value, into: &str, dependency: &str) {
        let packages = metadata["packages"].as_array_mut().expect("packages");
        let package = packages.iter_mut().find(|p| p["name"] == into).expect("package present");
        package["dependencies"]
            .as_array_mut()
            .expect("dependencies")
            .push(serde_json::json!({ "name": dependency, "kind": null, "req": "*" }));
    }

    #[test]
    fn workspace_follows_the_layering_rules() {
        assert_eq!(check(&real_metadata()).expect("check runs"), Vec::<String>::new());
    }

    #[test]
    fn an_upward_internal_edge_is_reported() {
        let mut metadata = real_metadata();
        inject(&mut metadata, "sdrt-processing", "sdrt-runtime");
        let violations = check(&metadata).expect("check runs");
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("`sdrt-processing` depends on `sdrt-runtime`"), "{violations:?}");
    }

    #[test]
    fn ort_outside_models_is_reported() {
        let mut metadata = real_metadata();
        inject(&mut metadata, "sdrt-processing", "ort");
        let violations = check(&metadata).expect("check runs");
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("only sdrt-models may use"), "{violations:?}");
    }

    #[test]
    fn a_dev_dependency_is_not_an_edge() {
        let mut metadata = real_metadata();
        inject(&mut metadata, "sdrt-io", "sdrt-cli");
        let packages = metadata["packages"].as_array_mut().expect("packages");
        let io = packages.iter_mut().find(|p| p["name"] == "sdrt-io").expect("io");
        let last = io["dependencies"].as_array_mut().and_then(|d| d.last_mut()).expect("injected");
        last["kind"] = serde_json::json!("dev");
        assert!(check(&metadata).expect("check runs").is_empty());
    }

    #[test]
    fn an_unlisted_crate_is_reported() {
        let mut metadata = real_metadata();
        let packages = metadata["packages"].as_array_mut().expect("packages");
        packages[0]["name"] = serde_json::json!("sdrt-mystery");
        let violations = check(&metadata).expect("check runs");
        assert!(violations.iter().any(|v| v.contains("`sdrt-mystery` is not in the layer table")), "{violations:?}");
    }
}
