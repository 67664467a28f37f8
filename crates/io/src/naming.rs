//! Output file names as A1111 v1.10 builds them: `[token]` patterns, sanitising, sequence numbers, length
//! limits, and atomic writes (temp file in the same folder, then rename).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, io_error};
use crate::infotext::python_float;

/// A1111's default file decoration when `samples_filename_pattern` is empty (and `save_to_dirs` is off).
pub const DEFAULT_PATTERN: &str = "[seed]-[prompt_spaces]";
/// Characters A1111 replaces with `_` in name parts (control characters are replaced too).
pub const INVALID_FILENAME_CHARS: &str = "#<>:\"/\\|?*\n\r\t";
/// Longest sanitised name part, in characters.
pub const MAX_FILENAME_PART_LENGTH: usize = 128;
/// Longest file name most file systems accept, in bytes.
pub const MAX_FILENAME_BYTES: usize = 255;
/// A1111's `directories_max_prompt_words` default.
pub const DEFAULT_MAX_PROMPT_WORDS: usize = 8;
/// Attempts at a free sequence number before giving up (A1111's 500).
const SEQUENCE_ATTEMPTS: u64 = 500;

/// Everything a pattern token can refer to.
#[derive(Debug, Clone)]
pub struct NameParams {
    /// Image seed (`[seed]`); `None` prints empty.
    pub seed: Option<i64>,
    /// Prompt.
    pub prompt: String,
    /// Negative prompt.
    pub negative_prompt: String,
    /// Steps.
    pub steps: u32,
    /// CFG scale.
    pub cfg_scale: f64,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Sampler name.
    pub sampler: String,
    /// Scheduler label ("Automatic" when unset).
    pub scheduler: String,
    /// Model name.
    pub model_name: String,
    /// Model hash.
    pub model_hash: String,
    /// Images per batch.
    pub batch_size: u32,
    /// This image's index in its batch (0-based).
    pub batch_index: u32,
    /// Number of batches.
    pub n_iter: u32,
    /// This batch's index (0-based).
    pub iteration: u32,
    /// Clip skip.
    pub clip_skip: u32,
    /// Denoising strength, when used.
    pub denoising_strength: Option<f64>,
    /// Job timestamp, `%Y%m%d%H%M%S`.
    pub job_timestamp: String,
    /// Words of the prompt kept by `[prompt_words]`.
    pub max_prompt_words: usize,
    /// The time `[date]` and `[datetime]` print.
    pub now: jiff::ZonedDateTime,
}

impl Default for NameParams {
    fn default() -> Self {
        let now = jiff::ZonedDateTime::now();
        Self {
            seed: None,
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 20,
            cfg_scale: 7.0,
            width: 512,
            height: 512,
            sampler: String::new(),
            scheduler: "Automatic".into(),
            model_name: String::new(),
            model_hash: String::new(),
            batch_size: 1,
            batch_index: 0,
            n_iter: 1,
            iteration: 0,
            clip_skip: 1,
            denoising_strength: None,
            job_timestamp: jiff::fmt::strtime::format("%Y%m%d%H%M%S", &now).unwrap_or_default(),
            max_prompt_words: DEFAULT_MAX_PROMPT_WORDS,
            now,
        }
    }
}

/// A1111's `sanitize_filename_part`: spaces to `_` (optionally), invalid and control characters to `_`,
/// leading spaces dropped, cut to 128 characters, trailing spaces and dots dropped.
pub fn sanitize_filename_part(text: &str, replace_spaces: bool) -> String {
    let replaced: String =
        text.chars()
            .map(|c| {
                if (replace_spaces && c == ' ') || INVALID_FILENAME_CHARS.contains(c) || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
    let cut: String = replaced.trim_start_matches(' ').chars().take(MAX_FILENAME_PART_LENGTH).collect();
    cut.trim_end_matches([' ', '.']).to_string()
}

/// What a token expands to.
enum Replacement {
    Text(String),
    /// A1111's NOTHING_AND_SKIP_PREVIOUS_TEXT: drop the token and the literal text before it.
    SkipWithPreviousText,
    /// Unknown token: kept literally.
    Unknown,
}

static PATTERN_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(.*?)(?:\[([^\[\]]+)\]|$)").expect("static regex compiles"));
static PATTERN_ARG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^(.*)<([^>]*)>$").expect("static regex compiles"));
static NON_LETTERS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r##"[\s!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]+"##).expect("static regex compiles"));

fn sha256_prefix(text: &str, args: &[String]) -> String {
    let length = args.first().and_then(|a| a.parse::<usize>().ok()).unwrap_or(8);
    let hex: String = Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    hex.chars().take(length).collect()
}

fn prompt_words(params: &NameParams) -> String {
    let words: Vec<&str> = NON_LETTERS.split(&params.prompt).filter(|w| !w.is_empty()).collect();
    let words = if words.is_empty() { vec!["empty"] } else { words };
    let kept = words.into_iter().take(params.max_prompt_words).collect::<Vec<_>>().join(" ");
    sanitize_filename_part(&kept, false)
}

fn datetime(params: &NameParams, args: &[String]) -> String {
    const DEFAULT_FORMAT: &str = "%Y%m%d%H%M%S";
    let format = args.first().filter(|f| !f.is_empty()).map_or(DEFAULT_FORMAT, String::as_str);
    let zoned = args.get(1).and_then(|tz| params.now.in_tz(tz).ok()).unwrap_or_else(|| params.now.clone());
    let text = jiff::fmt::strtime::format(format, &zoned)
        .or_else(|_| jiff::fmt::strtime::format(DEFAULT_FORMAT, &zoned))
        .unwrap_or_default();
    sanitize_filename_part(&text, false)
}

fn replacement(token: &str, args: &[String], params: &NameParams) -> Replacement {
    use Replacement::{SkipWithPreviousText as Skip, Text};
    let text = |s: String| Text(s);
    match token.to_lowercase().as_str() {
        "seed" => text(params.seed.map(|s| s.to_string()).unwrap_or_default()),
        "steps" => text(params.steps.to_string()),
        "cfg" => text(python_float(params.cfg_scale)),
        "width" => text(params.width.to_string()),
        "height" => text(params.height.to_string()),
        "sampler" => text(sanitize_filename_part(&params.sampler, false)),
        "scheduler" => text(sanitize_filename_part(&params.scheduler, false)),
        "sampler_scheduler" => {
            let both = if params.scheduler == "Automatic" || params.scheduler.is_empty() {
                params.sampler.clone()
            } else {
                format!("{} {}", params.sampler, params.scheduler)
            };
            text(sanitize_filename_part(&both, false))
        }
        "model_name" => text(sanitize_filename_part(&params.model_name, false)),
        "model_hash" => text(params.model_hash.clone()),
        "date" => text(jiff::fmt::strtime::format("%Y-%m-%d", &params.now).unwrap_or_default()),
        "datetime" => text(datetime(params, args)),
        "job_timestamp" => text(params.job_timestamp.clone()),
        "prompt_hash" => text(sha256_prefix(&params.prompt, args)),
        "negative_prompt_hash" => text(sha256_prefix(&params.negative_prompt, args)),
        "full_prompt_hash" => text(sha256_prefix(&format!("{} {}", params.prompt, params.negative_prompt), args)),
        "prompt" => text(sanitize_filename_part(&params.prompt, true)),
        "prompt_no_styles" | "prompt_spaces" => text(sanitize_filename_part(&params.prompt, false)),
        "prompt_words" => text(prompt_words(params)),
        "batch_number" if params.batch_size == 1 => Skip,
        "batch_number" => text((params.batch_index + 1).to_string()),
        "batch_size" => text(params.batch_size.to_string()),
        "generation_number" if params.n_iter == 1 && params.batch_size == 1 => Skip,
        "generation_number" => text((params.iteration * params.batch_size + params.batch_index + 1).to_string()),
        "clip_skip" => text(params.clip_skip.to_string()),
        "denoising" => match params.denoising_strength {
            Some(strength) if strength != 0.0 => text(python_float(strength)),
            _ => Skip,
        },
        "styles" => text("None".into()),
        "none" => text(String::new()),
        _ => Replacement::Unknown,
    }
}

/// Expands `[token]` / `[token<arg>…]` patterns as A1111's `FilenameGenerator.apply`; unknown tokens stay.
pub fn apply_pattern(pattern: &str, params: &NameParams) -> String {
    let mut out = String::new();
    for caps in PATTERN_PART.captures_iter(pattern) {
        let text = caps.get(1).map_or("", |m| m.as_str());
        let Some(token) = caps.get(2).map(|m| m.as_str()) else {
            out.push_str(text);
            continue;
        };
        let mut name = token.to_string();
        let mut args = Vec::new();
        while let Some(arg_caps) = PATTERN_ARG.captures(&name.clone()) {
            args.insert(0, arg_caps[2].to_string());
            name = arg_caps[1].to_string();
        }
        match replacement(&name, &args, params) {
            Replacement::Text(value) => {
                out.push_str(text);
                out.push_str(&value);
            }
            Replacement::SkipWithPreviousText => {}
            Replacement::Unknown => {
                out.push_str(text);
                out.push('[');
                out.push_str(&name);
                out.push(']');
            }
        }
    }
    out
}

/// A1111's `get_next_sequence_number`: 1 + the largest leading number among names in `dir` that start
/// with `basename-` (or any name when `basename` is empty); 0 for an empty or missing folder.
pub fn next_sequence_number(dir: &Path, basename: &str) -> Result<u64> {
    let prefix = if basename.is_empty() { String::new() } else { format!("{basename}-") };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error("listing", dir)(e)),
    };
    let mut next = 0;
    for entry in entries {
        let name = entry.map_err(io_error("listing", dir))?.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let stem = Path::new(rest).file_stem().and_then(|s| s.to_str()).unwrap_or(rest);
        if let Ok(number) = stem.split('-').next().unwrap_or_default().parse::<u64>() {
            next = next.max(number + 1);
        }
    }
    Ok(next)
}

/// Cuts `stem` so that `stem.extension` fits in [`MAX_FILENAME_BYTES`] (A1111 keeps `max(4, len(ext))`
/// bytes for the extension), at a character boundary.
pub fn limit_stem(stem: &str, extension: &str) -> String {
    let budget = MAX_FILENAME_BYTES - (extension.len() + 1).max(4);
    let mut end = stem.len().min(budget);
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    stem[..end].to_string()
}

/// The path A1111 would save the next image to: `NNNNN-<decoration>.<ext>` in `dir`, where the decoration
/// is `pattern` (default [`DEFAULT_PATTERN`]) expanded, and NNNNN the next free sequence number.
pub fn next_image_path(dir: &Path, pattern: Option<&str>, params: &NameParams, extension: &str) -> Result<PathBuf> {
    let extension = extension.trim_start_matches('.');
    if extension.is_empty() || extension.contains(['/', '\\']) {
        return Err(Error::Invalid {
            field: "extension",
            message: format!("{extension:?} is not a file extension; use png, jpg or webp"),
        });
    }
    let decoration = apply_pattern(pattern.filter(|p| !p.is_empty()).unwrap_or(DEFAULT_PATTERN), params);
    let start = next_sequence_number(dir, "")?;
    for number in start..start + SEQUENCE_ATTEMPTS {
        let stem = if decoration.is_empty() { format!("{number:05}") } else { format!("{number:05}-{decoration}") };
        let path = dir.join(format!("{}.{extension}", limit_stem(&stem, extension)));
        if !path.exists() {
            return Ok(path);
        }
    }
    Err(Error::Invalid {
        field: "dir",
        message: format!("no free file name in {} after {SEQUENCE_ATTEMPTS} tries; clean the folder", dir.display()),
    })
}

/// Held shared by every write in progress, exclusively by a process about to exit on a signal.
static SAVES: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Blocks new writes and waits for those in progress, so a process that exits while holding the guard (on
/// Ctrl-C) leaves no temporary file behind.
pub fn pause_saves() -> std::sync::RwLockWriteGuard<'static, ()> {
    SAVES.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed, then renamed over
/// `path` (A1111 replaces an existing file too). The folder is created when missing; the file's permissions
/// follow the umask, as a plain `open` would give them.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let _span = tracing::info_span!("io::write_atomically", path = %path.display()).entered();
    let _saving = SAVES.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io_error("creating folder", dir))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".sdrt-").suffix(".tmp");
    // tempfile's own default (0600) would make every saved image private to the server's user.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut temp = builder.tempfile_in(dir).map_err(io_error("creating a temporary file in", dir))?;
    temp.write_all(bytes).map_err(io_error("writing", temp.path()))?;
    temp.as_file().sync_all().map_err(io_error("syncing", temp.path()))?;
    temp.persist(path).map_err(|e| Error::Io {
        action: "renaming into place",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> NameParams {
        NameParams {
            seed: Some(1234),
            prompt: "a (photo) of: a cat, 4k?".into(),
            sampler: "DPM++ 2M".into(),
            scheduler: "Karras".into(),
            now: "2024-07-27T13:45:06+02:00[Europe/Paris]".parse().unwrap(),
            ..NameParams::default()
        }
    }

    #[test]
    fn tokens_expand_and_unknown_ones_stay() {
        let p = params();
        assert_eq!(apply_pattern("[seed]-[prompt_spaces]", &p), "1234-a (photo) of_ a cat, 4k_");
        assert_eq!(apply_pattern("[prompt_words]", &p), "a photo of a cat 4k");
        assert_eq!(apply_pattern("[steps]_[cfg]_[width]x[height]", &p), "20_7.0_512x512");
        assert_eq!(apply_pattern("[sampler_scheduler]-[nope]-[SEED]", &p), "DPM++ 2M Karras-[nope]-1234");
        assert_eq!(apply_pattern("[date] [datetime<%H-%M>]", &p), "2024-07-27 13-45");
        assert_eq!(apply_pattern("[datetime<%H><UTC>]", &p), "11");
        assert_eq!(apply_pattern("[prompt_hash<4>]", &p).len(), 4);
        assert_eq!(apply_pattern("x-[batch_number]-y", &p), "-y");
    }

    #[test]
    fn sanitising_matches_a1111() {
        assert_eq!(sanitize_filename_part(" a/b:c #1 ..", true), "_a_b_c__1_");
        assert_eq!(sanitize_filename_part("  a b ..", false), "a b");
        assert_eq!(sanitize_filename_part("tab\there\u{1}", false), "tab_here_");
        assert_eq!(sanitize_filename_part(&"x".repeat(300), false).len(), 128);
    }

    #[test]
    fn next_number_follows_the_highest_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_sequence_number(dir.path(), "").unwrap(), 0);
        for name in ["00003-1-a.png", "00010-2-b.png", "notes.txt", "grid-0005.png"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(next_sequence_number(dir.path(), "").unwrap(), 11);
        assert_eq!(next_sequence_number(dir.path(), "grid").unwrap(), 6);
        let path = next_image_path(dir.path(), None, &params(), "png").unwrap();
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), "00011-1234-a (photo) of_ a cat, 4k_.png");
    }

    #[test]
    fn long_names_are_cut_to_fit_the_file_system() {
        let stem = "é".repeat(200);
        let cut = limit_stem(&stem, "png");
        assert!(cut.len() <= 251 && cut.len().is_multiple_of(2), "{}", cut.len());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.png");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn atomic_writes_get_the_permissions_a_plain_write_gets() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (atomic, plain) = (dir.path().join("a.png"), dir.path().join("b.png"));
        write_atomically(&atomic, b"x").unwrap();
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
    }

    #[test]
    fn paused_saves_wait_and_leave_nothing_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.png");
        let guard = pause_saves();
        let writer = std::thread::spawn({
            let path = path.clone();
            move || write_atomically(&path, b"done")
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file, not even a temporary one");
        drop(guard);
        writer.join().unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"done");
    }
}
