//! Quantizers: byte-identical to the gguf package where it has one
//! (tests/golden/quantize_gguf.json), and round trips within the error
//! ggml's reference quantizers reach.

use realizar_node::tensor::{dequantize_to_vec, quantize_to_vec, GgmlType};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn same_bytes_as_the_gguf_package() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/golden/quantize_gguf.json"
    );
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 54);
    for c in cases {
        let t = GgmlType::from_name(c["type"].as_str().unwrap()).unwrap();
        let x: Vec<f32> = c["f32_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| f32::from_bits(v.as_u64().unwrap() as u32))
            .collect();
        let got = quantize_to_vec(t, &x).unwrap();
        let want = hex(c["bytes_hex"].as_str().unwrap());
        assert_eq!(got, want, "{} on input {}", c["type"], c["input"]);
    }
}

/// Deterministic N(0, 1) samples (Box-Muller over xorshift).
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next(), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

fn rmse(a: &[f32], b: &[f32]) -> f64 {
    (a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64)
        .sqrt()
}

/// RMSE of quantize → dequantize on 64k N(0,1) values (figures also in
/// BENCHMARKS.md; F16/BF16 are plain roundings).
#[test]
fn round_trip_error_per_format() {
    let x = gaussian(1 << 16, 7);
    // Measured on this data (RMSE): F16 0.000209, BF16 0.001649, Q8_0 0.005394,
    // Q8_K 0.007026, Q6_K 0.017871, Q5_0 0.042944, Q5_1 0.037975,
    // Q5_K 0.036222, Q4_0 0.086447, Q4_1 0.078442, Q4_K 0.071748. The
    // 32-element formats are byte-identical to ggml's reference quantizers
    // (test above), so these are the reference's figures; the bounds sit 5%
    // above them to catch regressions.
    let bounds = [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 0.000220),
        (GgmlType::BF16, 0.001732),
        (GgmlType::Q8_0, 0.005664),
        (GgmlType::Q8_K, 0.007378),
        (GgmlType::Q6_K, 0.018765),
        (GgmlType::Q5_0, 0.045092),
        (GgmlType::Q5_1, 0.039874),
        (GgmlType::Q5_K, 0.038034),
        (GgmlType::Q4_0, 0.090770),
        (GgmlType::Q4_1, 0.082365),
        (GgmlType::Q4_K, 0.075336),
    ];
    for (t, bound) in bounds {
        let q = quantize_to_vec(t, &x).unwrap();
        let y = dequantize_to_vec(t, &q).unwrap();
        let e = rmse(&x, &y);
        println!("{t}: rmse {e:.6}");
        assert!(e <= bound, "{t}: rmse {e} above {bound}");
    }
}

#[test]
fn k_quants_keep_zero_and_constant_blocks_exact_enough() {
    for t in [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        let zeros = vec![0f32; 256];
        assert_eq!(
            dequantize_to_vec(t, &quantize_to_vec(t, &zeros).unwrap()).unwrap(),
            zeros,
            "{t}"
        );
        let c = vec![0.25f32; 512];
        let y = dequantize_to_vec(t, &quantize_to_vec(t, &c).unwrap()).unwrap();
        assert!(rmse(&c, &y) < 0.01, "{t}: {}", rmse(&c, &y));
    }
}

#[test]
fn q8_k_block_sums_match_its_values() {
    let x = gaussian(512, 3);
    let q = quantize_to_vec(GgmlType::Q8_K, &x).unwrap();
    for b in q.chunks_exact(292) {
        for j in 0..16 {
            let s: i32 = (0..16).map(|i| b[4 + 16 * j + i] as i8 as i32).sum();
            assert_eq!(
                i16::from_le_bytes([b[260 + 2 * j], b[261 + 2 * j]]) as i32,
                s
            );
        }
    }
}

#[test]
fn wrong_lengths_are_errors() {
    assert!(quantize_to_vec(GgmlType::Q4_0, &[0.0; 33]).is_err());
    let mut out = vec![0u8; 17];
    assert!(realizar_node::tensor::quantize(GgmlType::Q4_0, &[0.0; 32], &mut out).is_err());
    assert!(quantize_to_vec(GgmlType::IQ2_XXS, &[0.0; 256]).is_err());
}
