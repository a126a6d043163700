//! Dequantization is bit-exact against the gguf Python package
//! (tests/golden/dequant.json: random blocks of every type plus the first
//! blocks of real tensors of both models).

use realizar_node::tensor::{dequantize, GgmlType};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_golden_case_is_bit_exact() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/dequant.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 48);
    let mut types = std::collections::BTreeSet::new();
    for (i, c) in cases.iter().enumerate() {
        let t = GgmlType::from_name(c["type"].as_str().unwrap()).unwrap();
        types.insert(t.name());
        let layout = t.layout().unwrap();
        assert_eq!(layout.block_elems as u64, c["block_size"].as_u64().unwrap());
        assert_eq!(layout.block_bytes as u64, c["type_size"].as_u64().unwrap());
        let bytes = hex(c["bytes_hex"].as_str().unwrap());
        let want: Vec<u32> = c["f32_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut got = vec![0f32; want.len()];
        dequantize(t, &bytes, &mut got).unwrap();
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                *w,
                "case {i} ({} {}), element {j}: got {g} want {}",
                c["type"],
                c["source"],
                f32::from_bits(*w)
            );
        }
    }
    assert_eq!(types.len(), 14, "{types:?}");
}
