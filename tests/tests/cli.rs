//! The `sdrt` command line as a process (built as `sdrt-under-test`): `txt2img --data-dir` on an A1111 folder,
//! whose `config.json` settings apply unless a flag says otherwise.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const SDRT: &str = env!("CARGO_BIN_EXE_sdrt-under-test");

/// An A1111 data folder with the sd15-tiny checkpoint, a LoRA and a `config.json` that sets clip skip 2, the CPU
/// random source and ENSD.
fn a1111_folder(root: &Path) {
    let copy = |from: &str, to: &str| sdrt_tests::copy_fixture(root, from, to);
    copy("checkpoints/sd15-tiny.safetensors", "models/Stable-diffusion/sd15-tiny.safetensors");
    copy("checkpoints/sd15-tiny.yaml", "models/Stable-diffusion/sd15-tiny.yaml");
    copy("loras/sd15-tiny-locon.safetensors", "models/Lora/sd15-tiny-locon.safetensors");
    std::fs::write(root.join("styles.csv"), "name,prompt,negative_prompt\nSharp,sharp focus,blurry\n").unwrap();
    let config = serde_json::json!({
        "sd_model_checkpoint": "sd15-tiny.safetensors [0123456789]",
        "CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337, "randn_source": "CPU", "sd_vae": "None",
    });
    std::fs::write(root.join("config.json"), config.to_string()).unwrap();
}

fn txt2img(data: &Path, extra: &[&str]) -> Value {
    let out = data.join("outputs");
    let out = out.to_str().unwrap();
    let mut args = vec!["txt2img", "--data-dir", data.to_str().unwrap(), "--outdir", out, "--json", "--threads", "1"];
    args.extend(["--prompt", "a cat <lora:sd15-tiny-locon:0.5>", "--steps", "2", "--width", "64", "--height", "64"]);
    args.extend(["--seed", "3", "--sampler", "Euler a"]);
    args.extend(extra);
    let output = Command::new(SDRT).args(&args).env("RUST_LOG", "warn").output().expect("sdrt runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "sdrt {args:?} failed:\n{stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn txt2img_reads_an_a1111_folder_and_flags_win_over_its_config() {
    let data = tempfile::tempdir().unwrap();
    a1111_folder(data.path());
    let from_config = txt2img(data.path(), &[]);
    let infotext = from_config["images"][0]["infotext"].as_str().unwrap();
    assert_eq!(from_config["model"], "sd15-tiny", "config.json's checkpoint: {from_config}");
    for expected in ["Clip skip: 2", "ENSD: 31337", "RNG: CPU", "Lora hashes: \"sd15-tiny-locon: ", "Model: sd15-tiny"]
    {
        assert!(infotext.contains(expected), "{expected} missing: {infotext}");
    }
    let flagged = txt2img(data.path(), &["--clip-skip", "1", "--rng", "gpu", "--style", "Sharp"]);
    let infotext = flagged["images"][0]["infotext"].as_str().unwrap();
    assert!(
        infotext.starts_with("a cat <lora:sd15-tiny-locon:0.5>, sharp focus\nNegative prompt: blurry\n"),
        "{infotext}"
    );
    assert!(!infotext.contains("Clip skip") && !infotext.contains("RNG:"), "the flags win: {infotext}");
    assert!(infotext.contains("ENSD: 31337"), "what no flag sets still comes from config.json: {infotext}");
}

/// `sdrt png-info --lora-dir`: a pasted `<lora:…>` tag is renamed to the local file with the infotext's hash.
#[test]
fn png_info_renames_pasted_loras_with_a_lora_dir() {
    let dir = tempfile::tempdir().unwrap();
    let hashes = sdrt_tests::fixture_json("loras/hashes.json");
    let hash = &hashes["sd15-tiny-locon.safetensors"].as_str().unwrap()[..12];
    let infotext = format!("a cat <lora:their-name:0.5>\nSteps: 4, Seed: 1, Lora hashes: \"their-name: {hash}\"");
    let png = sdrt_io::encode_png_with_infotext(&[0u8; 3 * 8 * 8], 8, 8, &infotext).unwrap();
    let image = dir.path().join("pasted.png");
    std::fs::write(&image, png).unwrap();
    let loras = sdrt_tests::fixtures_dir().join("loras");
    let output = Command::new(SDRT)
        .args(["png-info", "--json", "--lora-dir", loras.to_str().unwrap(), image.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["parameters"]["Prompt"], "a cat <lora:sd15-tiny-locon:0.5>");
    assert_eq!(answer["info"], infotext.as_str());
}

/// `sdrt grid` lays images out as A1111's `image_grid`: round(√n) rows, cells of the largest image, white where
/// no image falls, and a clear error for a file that is not an image.
#[test]
fn grid_lays_images_out_as_a1111_does() {
    let dir = tempfile::tempdir().unwrap();
    let colours = [[200u8, 10, 10], [10, 200, 10], [10, 10, 200]];
    let paths: Vec<String> = colours
        .iter()
        .enumerate()
        .map(|(i, colour)| {
            let path = dir.path().join(format!("{i}.png"));
            image::RgbImage::from_pixel(8, 6, image::Rgb(*colour)).save(&path).unwrap();
            path.display().to_string()
        })
        .collect();
    let out = dir.path().join("grid.png");
    let mut args = vec!["grid".to_owned(), "--out".to_owned(), out.display().to_string()];
    args.extend(paths.iter().cloned());
    let status = Command::new(SDRT).args(&args).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let grid = image::open(&out).unwrap().to_rgb8();
    assert_eq!(grid.dimensions(), (16, 12), "3 images: 2 rows of 2 cells");
    let at = |x, y| grid.get_pixel(x, y).0;
    assert_eq!([at(0, 0), at(8, 0), at(0, 6), at(8, 6)], [colours[0], colours[1], colours[2], [255, 255, 255]]);
    std::fs::write(dir.path().join("bad.png"), b"not an image").unwrap();
    let bad = dir.path().join("bad.png").display().to_string();
    let failed = Command::new(SDRT).args(["grid", "--out", &out.display().to_string(), &bad]).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && stderr.contains("bad.png: not an image"), "{stderr}");
}

/// `--provider cuda` either runs (a machine with the driver and every NVIDIA library) or fails before any work
/// with one message naming each missing piece and its fix, never a CPU run in its place.
#[test]
fn cuda_runs_where_everything_is_present_and_otherwise_names_what_is_missing() {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["txt2img", "--provider", "cuda", "--outdir", out.path().to_str().unwrap(), "--json"];
    args.extend(["--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64", "--threads", "1"]);
    let output = Command::new(SDRT).args(&args).env("RUST_LOG", "warn").env("RUST_BACKTRACE", "0").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let gpu_build = sdrt_models::RuntimeSearch::for_build(sdrt_models::RuntimeBuild::Gpu).locate();
    let cuda = sdrt_models::ExecutionProvider::Cuda { device_id: 0 };
    let problems = sdrt_models::CudaSearch::from_env().report(&cuda).problems();
    if gpu_build.is_err() {
        assert!(!output.status.success() && stderr.contains("cargo xtask provision-ort --gpu"), "{stderr}");
    } else if problems.is_empty() {
        assert!(output.status.success(), "this machine has everything CUDA needs, yet:\n{stderr}");
    } else {
        assert!(!output.status.success(), "CUDA cannot start here ({problems:?}), yet sdrt succeeded");
        assert!(stderr.contains("the CUDA (device 0) provider cannot run on this machine"), "{stderr}");
        for problem in &problems {
            assert!(stderr.contains(problem.as_str()), "{problem} not reported:\n{stderr}");
        }
        assert_eq!(std::fs::read_dir(out.path()).map_or(0, |entries| entries.count()), 0, "nothing was written");
    }
}
