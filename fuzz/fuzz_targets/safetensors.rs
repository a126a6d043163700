#![no_main]
//! safetensors parser: any input gives Ok with in-bounds views, or a typed error.
use libfuzzer_sys::fuzz_target;
use realizar_node::format::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    let len = data.len();
    if let Ok(f) = SafetensorsFile::from_bytes("fuzz.safetensors", data.to_vec()) {
        for t in f.tensors() {
            assert!(t.data.len() <= len);
            assert_eq!(t.data.len() as u64, t.shape.iter().product::<u64>() * t.dtype.size());
        }
    }
});
