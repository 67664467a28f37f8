//! Generated inputs for every parser that takes outside input (prompt syntax, infotext, PNG/JPEG/WebP metadata,
//! request JSON, torch pickle embeddings): none may panic. CI runs a few thousand cases per parser; `cargo xtask fuzz` runs 10⁶ each.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use sdrt_api_types::{Img2ImgRequest, RequestLimits, Txt2ImgRequest};
use sdrt_io::{DecodeLimits, ParsedInfotext};
use sdrt_processing::{
    LoraCall, ScheduleSteps, multicond_prompt_list, parse_attention, parse_extra_networks, prompt_schedules, split_and,
};

/// Cases per parser: `SDRT_FUZZ_CASES` (set by `cargo xtask fuzz`), else a CI-sized count.
fn config() -> Config {
    let cases = std::env::var("SDRT_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2_000);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        max_shrink_iters: 4_096,
        ..Config::default()
    }
}

/// Text built from the pieces a parser treats specially, with some arbitrary characters between them.
fn text_of(pieces: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(pieces).prop_map(str::to_owned),
        1 => "\\PC{1,3}",
        1 => "[0-9.eE+-]{1,6}",
    ];
    proptest::collection::vec(piece, 0..max).prop_map(|parts| parts.concat())
}

const PROMPT_PIECES: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ":",
    "|",
    "\\",
    " AND ",
    "AND",
    " BREAK ",
    "BREAK",
    ",",
    " ",
    "a",
    "cat",
    "0.5",
    "1e400",
    "-1",
    "1.",
    "::",
    "<lora:x:1>",
    "<",
    ">",
    "\n",
    ":1.2)",
    "[a:b:",
    "|]",
    "\u{3000}",
    "é",
];

const INFOTEXT_PIECES: &[&str] = &[
    "\n",
    "Negative prompt: ",
    "Steps: ",
    "20",
    ", ",
    "Sampler: ",
    "Euler a",
    "Size: ",
    "512x",
    "x",
    "Seed: ",
    "-1",
    "\"",
    "\\\"",
    "Hires upscale: ",
    "2",
    "Template: ",
    ": ",
    ":",
    "Model hash: ",
    "abc",
    "{",
    "}",
    "[",
    "]",
    "Schedule type: ",
    "Karras",
    "Lora hashes: ",
    "TI hashes: ",
    "a: b",
    "1e400",
    "NaN",
    "Clip skip: ",
    " ",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prompt_syntax_never_panics(prompt in prop_oneof![text_of(PROMPT_PIECES, 48), "\\PC{0,160}"], steps in 0usize..200) {
        if let Ok(schedule) = prompt_schedules(&prompt, ScheduleSteps::new(steps)) {
            prop_assert_eq!(schedule.last().map(|(end, _)| *end), Some(steps as i64));
        }
        let _ = parse_attention(&prompt);
        prop_assert!(!split_and(&prompt).is_empty());
        let _ = multicond_prompt_list(&[prompt.as_str()]);
        let (text, calls) = parse_extra_networks(&prompt);
        prop_assert!(text.len() <= prompt.len());
        calls.iter().filter_map(LoraCall::from_call).for_each(drop);
    }

    #[test]
    fn infotext_parsing_never_panics(text in prop_oneof![text_of(INFOTEXT_PIECES, 48), "\\PC{0,200}"]) {
        let parsed = ParsedInfotext::parse(&text);
        let _ = parsed.to_a1111_parameters();
    }

    #[test]
    fn image_metadata_never_panics(
        base in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = valid_images()[base].clone();
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let limits = DecodeLimits { max_side: 256, max_bytes: 1 << 20, max_text_bytes: 4096 };
        let _ = limits.read_image_info(&bytes);
        let _ = limits.load_image(&bytes);
        let _ = sdrt_io::decode_png_within(&bytes, &limits);
    }

    #[test]
    fn torch_pickle_reader_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        inner in any::<bool>(),
    ) {
        // Mutations of the zip as a whole, or of data.pkl inside a valid zip (the pickle machine itself).
        let mut bytes = if inner { pickle_bytes().to_vec() } else { valid_pt().to_vec() };
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        let file = tempfile::Builder::new().suffix(".pt").tempfile().expect("temp file");
        let contents = if inner { zip_with_pickle(&bytes) } else { bytes };
        std::fs::write(file.path(), contents).expect("writes");
        let _ = sdrt_models::read_tensors(file.path());
    }

    #[test]
    fn request_json_never_panics(body in request_json(), img2img in any::<bool>()) {
        let limits = RequestLimits::default();
        if img2img {
            if let Ok(request) = Img2ImgRequest::from_json(&body) {
                let _ = request.validate(&limits);
                let _ = serde_json::to_string(&request);
            }
        } else if let Ok(request) = Txt2ImgRequest::from_json(&body) {
            let _ = request.validate(&limits);
            let _ = request.hires_size();
            let _ = serde_json::to_string(&request);
        }
    }
}

/// A small PNG with text chunks, a JPEG and a WebP with an EXIF comment: mutations of these reach the deep
/// parts of each reader, where random bytes would stop at the signature.
fn valid_images() -> &'static [Vec<u8>; 3] {
    static IMAGES: std::sync::OnceLock<[Vec<u8>; 3]> = std::sync::OnceLock::new();
    IMAGES.get_or_init(|| {
        let pixels: Vec<u8> = (0..8 * 8 * 3).map(|i| (i * 37 % 251) as u8).collect();
        let infotext = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 8x8";
        let mut png = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut png, 8, 8);
            encoder.set_color(png::ColorType::Rgb);
            encoder.add_ztxt_chunk("parameters".to_owned(), infotext.to_owned()).expect("zTXt");
            encoder.add_itxt_chunk("Software".to_owned(), "sdrt ✓".to_owned()).expect("iTXt");
            encoder.write_header().expect("header").write_image_data(&pixels).expect("pixels");
        }
        let jpeg = sdrt_io::encode_jpeg_with_infotext(&pixels, 8, 8, 90, Some(infotext)).expect("jpeg");
        let webp = sdrt_io::encode_webp_with_infotext(&pixels, 8, 8, Some(infotext)).expect("webp");
        [png, jpeg, webp]
    })
}

fn valid_pt() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(sdrt_tests::fixture("embeddings/tiny-pt.pt")).expect("fixture"))
}

/// The fixture's `data.pkl`.
fn pickle_bytes() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(valid_pt())).expect("zip");
        let mut entry = archive.by_name("tiny-pt/data.pkl").expect("data.pkl");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).expect("reads");
        bytes
    })
}

/// The fixture's archive with `pickle` as its `data.pkl`.
fn zip_with_pickle(pickle: &[u8]) -> Vec<u8> {
    let mut source = zip::ZipArchive::new(std::io::Cursor::new(valid_pt())).expect("zip");
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for index in 0..source.len() {
        let mut entry = source.by_index(index).expect("entry");
        let name = entry.name().expect("entry name").into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).expect("reads");
        out.start_file(name.as_str(), options).expect("starts");
        let data = if name.ends_with("data.pkl") { pickle } else { &bytes };
        std::io::Write::write_all(&mut out, data).expect("writes");
    }
    out.finish().expect("finishes").into_inner()
}

const REQUEST_KEYS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "seed",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "sampler_name",
    "sampler_index",
    "scheduler",
    "batch_size",
    "n_iter",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "eta",
    "s_churn",
    "s_noise",
    "override_settings",
    "enable_hr",
    "hr_scale",
    "hr_resize_x",
    "hr_resize_y",
    "hr_second_pass_steps",
    "hr_upscaler",
    "hr_sampler_name",
    "hr_prompt",
    "denoising_strength",
    "init_images",
    "mask",
    "mask_blur",
    "mask_blur_x",
    "inpainting_fill",
    "resize_mode",
    "image_cfg_scale",
    "styles",
    "alwayson_scripts",
    "script_args",
    "include_init_images",
    "restore_faces",
    "tiling",
    "other",
];

/// JSON text (not a `serde_json::Value`, which cannot hold 1e400) with A1111's keys and hostile values.
fn request_json() -> impl Strategy<Value = String> {
    let raw_value = prop_oneof![
        proptest::sample::select(
            &[
                "null",
                "true",
                "false",
                "0",
                "-1",
                "1e400",
                "-1e400",
                "4294967296",
                "18446744073709551616",
                "1.5",
                "\"2\"",
                "\"-1\"",
                "\"true\"",
                "\"Euler a\"",
                "\"DPM++ 2M Karras\"",
                "[]",
                "[\"AAAA\"]",
                "{}",
                "{\"CLIP_stop_at_last_layers\": \"x\"}",
                "{\"sd_model_checkpoint\": \"/etc\"}",
                "\"\"",
                "[1, [2]]",
            ][..]
        )
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(|x| format!("{x:e}")),
        "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
    ];
    let key = prop_oneof![4 => proptest::sample::select(REQUEST_KEYS).prop_map(str::to_owned), 1 => "[a-z_]{1,8}"];
    let object = proptest::collection::vec((key, raw_value), 0..12).prop_map(|fields| {
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k:?}: {v}")).collect();
        format!("{{{}}}", fields.join(", "))
    });
    prop_oneof![8 => object, 1 => "\\PC{0,40}", 1 => Just("[".repeat(100_000))]
}
