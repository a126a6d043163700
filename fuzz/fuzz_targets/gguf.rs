#![no_main]
//! GGUF parser: any input gives Ok with in-bounds views, or a typed error.
use libfuzzer_sys::fuzz_target;
use realizar_node::format::GgufFile;

fuzz_target!(|data: &[u8]| {
    let len = data.len();
    if let Ok(f) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) {
        for t in f.tensors() {
            assert!(t.data.len() <= len);
            assert_eq!(Some(t.data.len() as u64), t.dtype.bytes_for(t.n_elements()));
        }
        let _ = realizar_node::format::ModelSummary::of_gguf(&f, true);
    }
});
