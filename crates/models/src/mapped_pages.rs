//! Hands back the resident pages of weight files ONNX Runtime mapped, once a provider holds its own copy.
//!
//! ONNX Runtime maps a model's external data (an export's `model.onnx_data`, or the checkpoint a built graph
//! reads its initializers from) and reads every initializer while the OpenVINO provider compiles the graph into
//! OpenVINO's own (bf16 or fp32) weights. The mapping stays, and every page read stays counted in the process's
//! resident memory: 3.3 GiB of an SD1.5-shaped UNet's 8.0 GiB peak. Those pages are clean, read-only file pages,
//! so dropping them from this process's page table loses nothing: a later read faults the same bytes back in from
//! the file. Only mappings without copied-on-write pages qualify.

use std::path::Path;

/// One read-only mapping of a file, from `/proc/self/smaps`.
#[derive(Debug, PartialEq, Eq)]
struct FileMapping<'a> {
    start: usize,
    end: usize,
    path: &'a Path,
}

/// The clean read-only file mappings in a `/proc/PID/smaps` listing. Left out: writable mappings, and read-only
/// ones holding any anonymous page (a shared library's relocated data is read-only after the loader wrote it:
/// dropping those pages would bring back the file's unrelocated bytes).
fn clean_read_only_file_mappings(smaps: &str) -> Vec<FileMapping<'_>> {
    let mut found = Vec::new();
    let mut current: Option<FileMapping<'_>> = None;
    for line in smaps.lines() {
        if let Some(anonymous) = line.strip_prefix("Anonymous:") {
            let clean = anonymous.trim().trim_end_matches("kB").trim() == "0";
            found.extend(current.take().filter(|_| clean));
        } else if let Some(header) = mapping_header(line) {
            current = header;
        }
    }
    found
}

/// `Some(mapping)` for a smaps header line of a read-only file mapping, `Some(None)` for any other header line,
/// `None` for a field line.
fn mapping_header(line: &str) -> Option<Option<FileMapping<'_>>> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms) = (fields.next()?, fields.next()?);
    let (start, end) = range.split_once('-')?;
    let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
        return None;
    };
    let path = fields.nth(3).unwrap_or("").trim_start();
    let read_only = perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-');
    Some((read_only && path.starts_with('/')).then(|| FileMapping { start, end, path: Path::new(path) }))
}

/// Drops this process's resident pages of every clean read-only mapping of `root` (a file, or a folder and what is
/// in it); returns the bytes of address space advised. Nothing to do (0) where `/proc/self/smaps` cannot be read.
pub(crate) fn release_file_pages(root: &Path) -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for mapping in clean_read_only_file_mappings(&smaps).into_iter().filter(|m| m.path.starts_with(root)) {
        if drop_resident_pages(mapping.start, mapping.end - mapping.start) {
            released += mapping.end - mapping.start;
        }
    }
    released
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn drop_resident_pages(start: usize, len: usize) -> bool {
    // SAFETY: the range is one whole mapping the kernel listed as read-only, file-backed and without anonymous
    // (copied-on-write) pages. MADV_DONTNEED on such a mapping only removes this process's page-table entries; no
    // byte any pointer into it reads changes, because the next access maps the same unmodified file page again.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn drop_resident_pages(_start: usize, _len: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_file_mappings_are_listed() {
        let block = |header: &str, anonymous: u32| {
            format!("{header}\nSize: 2048 kB\nRss: 8 kB\nAnonymous: {anonymous:>10} kB\nVmFlags: rd mr\n")
        };
        let smaps = [
            block("7f00a0000000-7f00a0200000 r--p 00000000 fd:01 123      /models/unet/model.onnx_data", 0),
            block("7f00a0200000-7f00a0300000 rw-p 00000000 fd:01 124      /models/unet/scratch.bin", 0),
            block("7f00a0300000-7f00a0400000 r--s 00001000 fd:01 125      /models/v1.safetensors", 0),
            block("7f00a0400000-7f00a0500000 rw-p 00000000 00:00 0 ", 0),
            block("7f00a0500000-7f00a0600000 r-xp 00000000 fd:01 126      /models/unet/libcustom.so", 0),
            block("7f00a0600000-7f00a0700000 r--p 00100000 fd:01 126      /models/unet/libcustom.so", 12),
            block("7f00a0700000-7f00a0800000 r--p 00000000 00:00 0                          [vvar]", 0),
        ]
        .concat();
        let found = clean_read_only_file_mappings(&smaps);
        let paths: Vec<&str> = found.iter().map(|m| m.path.to_str().unwrap()).collect();
        assert_eq!(paths, ["/models/unet/model.onnx_data", "/models/v1.safetensors", "/models/unet/libcustom.so"]);
        assert_eq!((found[0].start, found[0].end), (0x7f00_a000_0000, 0x7f00_a020_0000));
        assert_eq!(found[2].start, 0x7f00_a050_0000, "the library's relocated (anonymous) part is not listed");
    }

    /// Resident bytes of the mapping starting at `start`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn resident_bytes(start: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let header = format!("{start:x}-");
        let block = smaps.split_once(&format!("\n{header}")).map(|(_, rest)| rest).unwrap();
        let rss = block.lines().find(|l| l.starts_with("Rss:")).unwrap();
        rss.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_pages_leave_the_resident_set_and_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        let bytes: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY (test): the file is private to this test and not modified while mapped.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let checksum = |m: &[u8]| m.iter().map(|&b| u64::from(b)).sum::<u64>();
        let expected = checksum(&bytes);
        assert_eq!(checksum(&map), expected);
        let start = map.as_ptr() as usize;
        assert!(resident_bytes(start) >= 8 << 20, "every page was read, so every page is resident");

        assert_eq!(release_file_pages(dir.path()), 8 << 20);
        assert!(resident_bytes(start) < 1 << 20, "the pages left the resident set");
        assert_eq!(checksum(&map), expected, "and read back the same bytes");
    }
}
