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
