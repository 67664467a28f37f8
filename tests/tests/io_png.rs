//! PNG metadata against PNGs written by PIL (tests/fixtures/io, from tools/fixtures/gen_io.py): sdrt must read
//! PIL's tEXt and iTXt `parameters` chunks and write the same chunk kinds PIL chooses.

use sdrt_io::{decode_png, encode_png_rgb8, read_image_info};
use sdrt_tests::{fixture, fixture_json, sha256_hex};

const FILES: [&str; 3] = ["latin1.png", "unicode.png", "two_chunks.png"];

fn chunk_kinds(bytes: &[u8]) -> Vec<(String, String)> {
    let mut kinds = Vec::new();
    let mut pos = 8;
    while pos + 8 <= bytes.len() {
        let length = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = std::str::from_utf8(&bytes[pos + 4..pos + 8]).unwrap().to_string();
        if ["tEXt", "iTXt", "zTXt"].contains(&kind.as_str()) {
            let data = &bytes[pos + 8..pos + 8 + length];
            let key = data.split(|&b| b == 0).next().unwrap();
            kinds.push((String::from_utf8_lossy(key).into_owned(), kind));
        }
        pos += 12 + length;
    }
    kinds
}

fn expected_chunks(entry: &serde_json::Value) -> Vec<(String, String)> {
    entry["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| (pair[0].as_str().unwrap().to_string(), pair[1].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn reads_pil_written_text_chunks_and_pixels() {
    let expected = fixture_json("io/expected.json");
    for name in FILES {
        let entry = &expected[name];
        let bytes = std::fs::read(fixture(&format!("io/{name}"))).unwrap();
        let image = decode_png(&bytes).unwrap();
        assert_eq!((image.width, image.height), (8, 8), "{name}");
        assert_eq!(sha256_hex(&image.pixels), entry["pixels_sha256"].as_str().unwrap(), "{name}");
        for (key, value) in entry["texts"].as_object().unwrap() {
            let found = image.texts.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            assert_eq!(found, value.as_str(), "{name}: {key}");
        }
        let info = read_image_info(&bytes).unwrap();
        assert_eq!(info.infotext.as_deref(), entry["texts"]["parameters"].as_str(), "{name}");
    }
}

#[test]
fn writes_the_same_chunk_kinds_as_pil() {
    let expected = fixture_json("io/expected.json");
    for name in FILES {
        let entry = &expected[name];
        let owned: Vec<(String, String)> = expected_chunks(entry)
            .into_iter()
            .map(|(key, _)| {
                let value = entry["texts"][&key].as_str().unwrap().to_string();
                (key, value)
            })
            .collect();
        let texts: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let pixels = vec![0u8; 8 * 8 * 3];
        let ours = encode_png_rgb8(&pixels, 8, 8, &texts).unwrap();
        assert_eq!(chunk_kinds(&ours), expected_chunks(entry), "{name}");
        let pil = std::fs::read(fixture(&format!("io/{name}"))).unwrap();
        assert_eq!(chunk_kinds(&pil), expected_chunks(entry), "{name}: fixture chunk list");
        assert_eq!(decode_png(&ours).unwrap().texts.len(), texts.len());
    }
}
