//! Shared helpers for sdrt's integration tests: locating committed fixtures and checking them against
//! `tests/fixtures/MANIFEST.json` (written by `tools/fixtures/regen.sh`).

pub mod oracle;
pub mod shapes;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The committed fixture folder.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Path of a fixture file, after checking that the file matches its manifest entry.
///
/// Panics (this is test support) with the command to run when the file is missing or stale.
pub fn fixture(relative: &str) -> PathBuf {
    let path = fixtures_dir().join(relative);
    let manifest = manifest();
    let entry = &manifest["files"][relative];
    assert!(!entry.is_null(), "{relative} is not in tests/fixtures/MANIFEST.json; run tools/fixtures/regen.sh");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    let found = sha256_hex(&bytes);
    assert_eq!(
        entry["sha256"].as_str(),
        Some(found.as_str()),
        "{relative} does not match MANIFEST.json; regenerate fixtures"
    );
    path
}

/// Reads and parses a JSON fixture.
pub fn fixture_json(relative: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {relative}: {e}"))
}

/// The parsed manifest.
pub fn manifest() -> serde_json::Value {
    let path = fixtures_dir().join("MANIFEST.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing MANIFEST.json: {e}"))
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A JSON array of numbers as `f32`s.
pub fn json_f32s(value: &serde_json::Value) -> Vec<f32> {
    value.as_array().expect("a JSON array").iter().map(|v| v.as_f64().expect("a number") as f32).collect()
}

/// Copies the fixture `from` to `root/to`, creating folders (A1111 data folders laid out from fixtures).
pub fn copy_fixture(root: &Path, from: &str, to: &str) {
    let target = root.join(to);
    std::fs::create_dir_all(target.parent().expect("a file path")).expect("folder");
    std::fs::copy(fixture(from), target).expect("copy");
}
