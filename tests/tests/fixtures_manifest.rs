//! Every committed fixture file matches `tests/fixtures/MANIFEST.json`, and the repo stays small.

use sdrt_tests::{fixtures_dir, manifest, sha256_hex};

#[test]
fn every_manifest_entry_matches_its_file() {
    let manifest = manifest();
    let files = manifest["files"].as_object().expect("files map");
    assert!(!files.is_empty());
    for (relative, entry) in files {
        let bytes = std::fs::read(fixtures_dir().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
        assert_eq!(entry["sha256"].as_str(), Some(sha256_hex(&bytes).as_str()), "{relative} changed since regen");
        assert_eq!(entry["bytes"].as_u64(), Some(bytes.len() as u64), "{relative} size");
    }
}

/// The ONNX exports (tests/fixtures/models, ~15 MB) and their single-file checkpoint twins
/// (tests/fixtures/checkpoints, ~14 MB) hold the same tiny weights in two layouts; most of it is CLIP's
/// 49408-token embedding tables, which no smaller model can avoid.
#[test]
fn committed_fixtures_stay_under_35_mb() {
    let total = manifest()["total_bytes"].as_u64().expect("total_bytes");
    assert!(total <= 35_000_000, "fixtures total {total} bytes; keep them ≤ 35 MB so the repo travels");
}
