//! The bundled demo model (models/demo, trained by tools/demo/train.sh) draws what the prompt says: pictures
//! generated as `sdrt txt2img` makes them (DPM++ 2M, Automatic schedule, 20 steps, CFG 7, 64×64) are read back
//! by `sdrt_tests::shapes::measure` (shape colour, background colour, position, blob count) and compared with
//! their prompts; emphasis, negative prompts and `AND` must move the picture the way they say.

use std::process::Command;
use std::sync::{Arc, OnceLock};

use sdrt_api_types::Txt2ImgRequest;
use sdrt_models::SessionConfig;
use sdrt_processing::RgbImage;
use sdrt_runtime::{GenerationJob, GenerationSettings, ModelProvider, ProcessingRequest, ProcessingRunner};
use sdrt_tests::shapes::{COLOURS, Reading, measure};

const SDRT: &str = env!("CARGO_BIN_EXE_sdrt-under-test");
const SHAPES: [&str; 4] = ["circle", "square", "triangle", "star"];
const POSITIONS: [&str; 5] = ["left", "right", "top", "bottom", "centre"];

fn provider() -> Arc<ModelProvider> {
    static PROVIDER: OnceLock<Arc<ModelProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        sdrt_models::ensure_runtime().expect("ONNX Runtime");
        Arc::new(ModelProvider::new(SessionConfig { intra_op_threads: Some(1), ..SessionConfig::default() }))
    }))
}

fn generate(prompt: &str, negative_prompt: &str, seed: u64) -> RgbImage {
    let settings = GenerationSettings {
        model: Some(sdrt_cli::demo_model().display().to_string()),
        ..GenerationSettings::default()
    };
    let request = serde_json::json!({
        "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "steps": 20, "cfg_scale": 7.0,
        "sampler_name": "DPM++ 2M", "scheduler": "Automatic", "width": 64, "height": 64,
    });
    let request = Txt2ImgRequest::from_json(&request.to_string()).expect("request");
    let job = GenerationJob::new(ProcessingRequest::Txt2Img(request), settings, provider());
    ProcessingRunner::new().run(job).expect("generation").0.images.remove(0).image
}

/// What a prompt asks for; a `None` position is "anywhere".
struct Expected {
    colour: &'static str,
    background: &'static str,
    position: Option<&'static str>,
    count: usize,
}

impl Expected {
    fn agrees(&self, got: &Reading) -> bool {
        got.shape_colour == self.colour
            && got.background == self.background
            && self.position.is_none_or(|p| p == got.position)
            && got.count == self.count
    }
}

/// 32 prompts over every colour, shape and position, one and two shapes, plain and A1111-weighted phrasing.
fn prompt_table() -> Vec<(String, Expected)> {
    (0..32)
        .map(|i| {
            let colour = COLOURS[i % 8].0;
            let background = COLOURS[(i % 8 + 1 + (i / 8) % 7) % 8].0;
            let shape = SHAPES[(i / 2) % 4];
            let position = POSITIONS[i % 5];
            let one = |position| Expected { colour, background, position, count: 1 };
            match i % 4 {
                0 => (format!("a {colour} {shape} on a {background} background"), one(None)),
                1 => (format!("a {colour} {shape} on a {background} background, {position}"), one(Some(position))),
                2 => {
                    (format!("two {colour} {shape}s on a {background} background"), Expected { count: 2, ..one(None) })
                }
                _ => {
                    (format!("(large:1.2) {colour} {shape}, {background} background, {position}"), one(Some(position)))
                }
            }
        })
        .collect()
}

#[test]
fn pictures_follow_the_prompt() {
    let table = prompt_table();
    let mut misses = Vec::new();
    for (prompt, expected) in &table {
        for seed in [1, 2] {
            let got = measure(&generate(prompt, "", seed));
            if !expected.agrees(&got) {
                misses.push(format!("seed {seed} {prompt:?}: {got:?}"));
            }
        }
    }
    let total = table.len() * 2;
    let agreed = total - misses.len();
    println!("{agreed}/{total} pictures agree with their prompt; misses:\n{}", misses.join("\n"));
    assert!(agreed * 10 >= total * 9, "{agreed}/{total} agree (need 90 %); misses:\n{}", misses.join("\n"));
}

/// R − (G + B)/2 of the shape's mean colour.
fn redness(image: &RgbImage) -> f64 {
    let rgb = measure(image).shape_rgb;
    rgb[0] - (rgb[1] + rgb[2]) / 2.0
}

fn mean_over_seeds(f: impl Fn(u64) -> f64) -> f64 {
    (1..=4).map(&f).sum::<f64>() / 4.0
}

#[test]
fn emphasis_moves_the_colour_the_way_it_says() {
    // A plain `(red:0.6) circle` is already as red as this model draws; a competing colour word leaves room.
    let strong = mean_over_seeds(|seed| redness(&generate("a (red:1.6) blue circle on a white background", "", seed)));
    let weak = mean_over_seeds(|seed| redness(&generate("a (red:0.4) blue circle on a white background", "", seed)));
    println!("redness: (red:1.6) {strong:.1}, (red:0.4) {weak:.1}");
    assert!(strong > weak + 20.0, "(red:1.6) {strong:.1} is not redder than (red:0.4) {weak:.1}");
}

#[test]
fn the_negative_prompt_pushes_its_words_away() {
    let plain = mean_over_seeds(|seed| redness(&generate("a red circle on a white background", "", seed)));
    let negative = mean_over_seeds(|seed| redness(&generate("a red circle on a white background", "red", seed)));
    println!("redness: no negative {plain:.1}, negative \"red\" {negative:.1}");
    assert!(negative + 20.0 < plain, "negative \"red\" {negative:.1} is not less red than {plain:.1}");
}

/// A1111 adds each `AND` part's guidance at its weight; unweighted halves would double CFG, which this tiny
/// model turns into saturated noise, so the halves are weighted to sum to one.
#[test]
fn and_combines_two_descriptions() {
    const PROMPT: &str = "a shape on a blue background :0.5 AND a red circle :0.5";
    let mut agreed = 0;
    for seed in 1..=4 {
        let got = measure(&generate(PROMPT, "", seed));
        agreed += usize::from(got.shape_colour == "red" && got.background == "blue");
    }
    assert!(agreed >= 3, "{agreed}/4 pictures of `{PROMPT}` show both");
}

/// The README's first command, as a process: no model and no size given.
#[test]
fn the_readme_command_draws_a_red_circle_on_blue() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut agreed = 0;
    for seed in ["1", "2", "3"] {
        let output = Command::new(SDRT)
            .args(["txt2img", "--prompt", "a red circle on a blue background", "--seed", seed, "--threads", "1"])
            .args(["--json", "--outdir", out.path().to_str().expect("utf-8 path")])
            .output()
            .expect("sdrt runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "sdrt failed:\n{stderr}");
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        let path = result["images"][0]["path"].as_str().expect("a saved image");
        let png = sdrt_io::decode_png(&std::fs::read(path).expect("the image")).expect("a png");
        assert_eq!((png.width, png.height), (64, 64), "the demo model's own size");
        let image = RgbImage { width: png.width, height: png.height, pixels: png.pixels };
        let got = measure(&image);
        agreed += usize::from(got.shape_colour == "red" && got.background == "blue" && got.count == 1);
    }
    assert!(agreed >= 2, "{agreed}/3 pictures of the README's prompt show a red circle on blue");
}
