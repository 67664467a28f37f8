//! The runtime's model provider: by name or path, cached, switched, unloaded; unknown models are errors that
//! list the registered names.

use std::sync::Arc;

use sdrt_models::SessionConfig;
use sdrt_runtime::ModelProvider;
use sdrt_tests::fixtures_dir;

fn provider() -> ModelProvider {
    sdrt_models::ensure_runtime().unwrap();
    let mut provider = ModelProvider::new(SessionConfig::default());
    let names = provider.register_folder_of_models(&fixtures_dir().join("models")).unwrap();
    assert!(names.contains(&"sd15-tiny".to_owned()) && names.contains(&"sdxl-tiny".to_owned()), "{names:?}");
    provider
}

#[test]
fn models_are_cached_switched_and_unloaded() {
    let provider = provider();
    let first = provider.get("sd15-tiny").unwrap();
    assert_eq!(first.name, "sd15-tiny");
    assert_eq!(first.hash.len(), 10);
    assert!(!first.load_time.is_zero());
    let by_path = provider.get(&fixtures_dir().join("models/sd15-tiny").display().to_string()).unwrap();
    assert_eq!(provider.loads(), 1, "the same folder by path is a cache hit");
    assert!(by_path.load_time.is_zero());
    assert!(Arc::ptr_eq(&first.model, &by_path.model));

    let other = provider.get("sd2-tiny-v").unwrap();
    assert_eq!(provider.loads(), 2);
    assert_eq!(provider.current().unwrap().file_name().unwrap(), "sd2-tiny-v", "switching replaces the resident model");
    assert!(!Arc::ptr_eq(&first.model, &other.model));

    provider.unload();
    assert!(provider.current().is_none());
    provider.get("sd2-tiny-v").unwrap();
    assert_eq!(provider.loads(), 3, "after unload the model is read again");
}

#[test]
fn unknown_models_name_the_registered_ones() {
    let provider = provider();
    let err = provider.get("no-such-model").unwrap_err().to_string();
    assert!(err.contains("no-such-model") && err.contains("sd15-tiny"), "{err}");
}

/// An A1111 data folder as it is: its models, LoRAs, VAEs, styles and the `config.json` settings sdrt honours.
#[test]
fn an_a1111_data_folder_is_read_as_a1111_lays_it_out() {
    let data = tempfile::tempdir().unwrap();
    let root = data.path();
    let copy = |from: &str, to: &str| sdrt_tests::copy_fixture(root, from, to);
    copy("checkpoints/sd15-tiny.safetensors", "models/Stable-diffusion/sub/sd15-tiny.safetensors");
    copy("checkpoints/sd15-tiny.yaml", "models/Stable-diffusion/sub/sd15-tiny.yaml");
    copy("loras/sd15-tiny-locon.safetensors", "models/Lora/sd15-tiny-locon.safetensors");
    copy("loras/sd15-inpaint-conv-in.safetensors", "models/LyCORIS/old/sd15-inpaint-conv-in.safetensors");
    copy("vaes/sd15-tiny-alt.vae.safetensors", "models/VAE/sd15-tiny-alt.vae.safetensors");
    copy("embeddings/tiny-style.safetensors", "embeddings/styles/tiny-style.safetensors");
    std::fs::write(root.join("styles.csv"), "name,prompt,negative_prompt\nSharp,sharp focus,blurry\n").unwrap();
    let config = serde_json::json!({
        "sd_model_checkpoint": "sub/sd15-tiny.safetensors [0123456789]",
        "CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337, "randn_source": "CPU",
        "emphasis": "No norm", "sd_vae": "None", "outdir_samples": "", "quicksettings_list": ["sd_model_checkpoint"],
    });
    std::fs::write(root.join("config.json"), config.to_string()).unwrap();

    let mut provider = ModelProvider::new(SessionConfig::default());
    let mut settings = sdrt_runtime::GenerationSettings::default();
    let summary = sdrt_runtime::DataDir::open(root).unwrap().apply(&mut settings, &mut provider).unwrap();
    assert_eq!(summary.models, ["sub/sd15-tiny"]);
    assert_eq!(summary.selected_model.as_deref(), Some("sub/sd15-tiny"));
    assert_eq!(settings.model.as_deref(), Some("sub/sd15-tiny"));
    assert_eq!(
        summary.settings,
        ["CLIP_stop_at_last_layers", "emphasis", "eta_noise_seed_delta", "randn_source", "sd_vae"]
    );
    assert_eq!((settings.clip_skip, settings.eta_noise_seed_delta), (2, 31337));
    assert_eq!(sdrt_runtime::randn_source_name(settings.randn_source), "CPU");
    assert_eq!(settings.emphasis.label(), "No norm");
    assert_eq!(settings.sd_vae, "None");
    let loras: Vec<String> = settings.loras.list().into_iter().map(|e| e.name).collect();
    assert_eq!(loras, ["sd15-inpaint-conv-in", "sd15-tiny-locon"], "models/Lora and models/LyCORIS");
    let vaes: Vec<String> = settings.vaes.list().into_iter().map(|e| e.name).collect();
    assert_eq!(vaes, ["sd15-tiny-alt.vae.safetensors"]);
    let embeddings: Vec<String> = settings.embeddings.list().into_iter().map(|e| e.name).collect();
    assert_eq!(embeddings, ["tiny-style"]);
    assert_eq!(settings.styles.apply("a fox", &["Sharp".to_owned()]), "a fox, sharp focus");

    std::fs::remove_file(root.join("config.json")).unwrap();
    let mut fresh = sdrt_runtime::GenerationSettings::default();
    let summary = sdrt_runtime::DataDir::open(root).unwrap().apply(&mut fresh, &mut provider).unwrap();
    assert_eq!((summary.selected_model, fresh.model.as_deref()), (None, Some("sub/sd15-tiny")), "the first model");

    let missing = sdrt_runtime::DataDir::open(&root.join("nope")).unwrap_err().to_string();
    assert!(missing.contains("nope"), "{missing}");
    std::fs::write(root.join("config.json"), "{\"CLIP_stop_at_last_layers\": 99}").unwrap();
    let error = sdrt_runtime::DataDir::open(root).unwrap().apply(&mut settings, &mut provider).unwrap_err();
    assert!(error.to_string().contains("config.json: CLIP_stop_at_last_layers"), "{error}");
}
