//! `cargo xtask`: repository automation for sdrt (layering check, tidy, ONNX Runtime provisioning, CI).

mod layers;
mod provision;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  layers [--metadata FILE]  check the crate layering rules against `cargo metadata` (or a saved JSON)
  tidy                      check //! headers, stub macros and exact dependency pins
  provision-ort [--openvino|--gpu]
                            install the pinned ONNX Runtime library (or its OpenVINO or CUDA/TensorRT
                            build) into the cache folder (idempotent)
  test [ARGS…]              provision-ort (all three builds: the tests run OpenVINO, and CUDA's refusals on
                            machines without a GPU), redis-server (from apt
                            when missing: the scale-out tests start one), then `cargo test --workspace ARGS…`
  sdrt [ARGS…]              provision-ort, then run the release `sdrt` binary with ARGS
  fuzz [CASES]              generated inputs for every outside-input parser (default 1000000 each, release)
  ci                        everything CI checks: fmt, clippy, layers, tidy, provider features, tests";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = workspace_root();
    match command.as_str() {
        "layers" => run_layers(&root, &rest),
        "tidy" => run_tidy(&root),
        "provision-ort" => {
            let path = match as_strs(&rest).as_slice() {
                [] => provision::provision()?,
                ["--openvino"] => provision::provision_openvino()?,
                ["--gpu"] => provision::provision_gpu()?,
                _ => bail!("usage: cargo xtask provision-ort [--openvino|--gpu]"),
            };
            println!("ONNX Runtime ready: {}", path.display());
            Ok(())
        }
        "test" => {
            provision_for_tests()?;
            cargo(&root, &[&["test", "--workspace"][..], &as_strs(&rest)].concat())
        }
        "sdrt" => {
            provision::provision()?;
            if rest.iter().any(|arg| arg.contains("openvino")) {
                provision::provision_openvino()?;
            }
            if rest.iter().any(|arg| arg.contains("cuda") || arg.contains("tensorrt")) {
                provision::provision_gpu()?;
            }
            let args =
                [&["run", "--quiet", "--release", "--package", "sdrt-cli", "--bin", "sdrt", "--"][..], &as_strs(&rest)]
                    .concat();
            cargo(&root, &args)
        }
        "fuzz" => run_fuzz(&root, &rest),
        "ci" => run_ci(&root),
        "" | "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown xtask command `{other}`\n\n{USAGE}"),
    }
}

fn run_layers(root: &Path, args: &[String]) -> Result<()> {
    let metadata = match args {
        [flag, file] if flag == "--metadata" => {
            std::fs::read_to_string(file).with_context(|| format!("reading metadata file {file}"))?
        }
        [] => layers::cargo_metadata(root)?,
        _ => bail!("usage: cargo xtask layers [--metadata FILE]"),
    };
    let violations = layers::check(&serde_json::from_str(&metadata).context("parsing cargo metadata JSON")?)?;
    report("layers", &violations)
}

fn run_tidy(root: &Path) -> Result<()> {
    let metadata = serde_json::from_str(&layers::cargo_metadata(root)?)?;
    report("tidy", &tidy::check(root, &metadata)?)
}

fn report(check: &str, violations: &[String]) -> Result<()> {
    for violation in violations {
        eprintln!("{check}: {violation}");
    }
    if violations.is_empty() {
        println!("{check}: ok");
        Ok(())
    } else {
        bail!("{check}: {} violation(s)", violations.len())
    }
}

/// The property tests of `tests/tests/fuzz.rs` (prompt syntax, infotext, image metadata, request JSON) with
/// `CASES` inputs each; CI runs the same tests with a few thousand.
fn run_fuzz(root: &Path, args: &[String]) -> Result<()> {
    let cases: u64 = match args {
        [] => 1_000_000,
        [cases] => cases.parse().with_context(|| format!("CASES must be a number, not {cases:?}"))?,
        _ => bail!("usage: cargo xtask fuzz [CASES]"),
    };
    let args = ["test", "--release", "--package", "sdrt-tests", "--test", "fuzz", "--", "--test-threads", "4"];
    cargo_with_env(root, &args, &[("SDRT_FUZZ_CASES", &cases.to_string())])
}

fn run_ci(root: &Path) -> Result<()> {
    cargo(root, &["fmt", "--all", "--check"])?;
    cargo(root, &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    run_layers(root, &[])?;
    run_tidy(root)?;
    cargo(root, &["check", "--package", "sdrt-models", "--features", "cuda,tensorrt,coreml"])?;
    provision_for_tests()?;
    cargo(root, &["test", "--workspace"])
}

/// Everything the test suite runs against: the three ONNX Runtime builds and redis-server.
fn provision_for_tests() -> Result<()> {
    provision::provision()?;
    provision::provision_openvino()?;
    provision::provision_gpu()?;
    provision::redis_server()
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    cargo_with_env(root, args, &[])
}

fn cargo_with_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .context("starting cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}
