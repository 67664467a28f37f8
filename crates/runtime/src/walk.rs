//! Files under a folder as A1111's model lists find them: subfolders included (a bounded depth), in name order.

use std::path::{Path, PathBuf};

/// Deepest subfolder searched.
const MAX_DEPTH: usize = 8;

/// Every file under `dir` whose file name `wanted` accepts, sorted by path within each folder.
pub(crate) fn files_under(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> crate::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    walk(dir, wanted, &mut found, 0)?;
    Ok(found)
}

fn walk(dir: &Path, wanted: &dyn Fn(&str) -> bool, found: &mut Vec<PathBuf>, depth: usize) -> crate::Result<()> {
    let error = |source| crate::Error::ModelDirectory { path: dir.to_owned(), source };
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(error)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if path.is_dir() && depth < MAX_DEPTH {
            walk(&path, wanted, found, depth + 1)?;
        } else if wanted(&name) {
            found.push(path);
        }
    }
    Ok(())
}
