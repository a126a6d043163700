//! Malformed GGUF images, written byte by byte, each rejected with the
//! expected typed error, never a panic.

use realizar_node::format::gguf::parse_header;
use realizar_node::format::{
    ErrorKind, FormatError, GgufFile, GgufWriter, MetaArray, MetaValue, TensorToWrite,
};
use realizar_node::tensor::GgmlType;
use std::path::Path;

/// Little-endian byte builder for hand-made GGUF images.
#[derive(Clone, Default)]
struct B(Vec<u8>);

impl B {
    fn head(version: u32, n_tensors: u64, n_kv: u64) -> B {
        B::default()
            .raw(b"GGUF")
            .u32(version)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn raw(mut self, b: &[u8]) -> B {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(self, v: u8) -> B {
        self.raw(&[v])
    }
    fn u32(self, v: u32) -> B {
        self.raw(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> B {
        self.raw(&v.to_le_bytes())
    }
    fn str(self, s: &[u8]) -> B {
        self.u64(s.len() as u64).raw(s)
    }
    fn kv_u32(self, k: &str, v: u32) -> B {
        self.str(k.as_bytes()).u32(4).u32(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> B {
        let mut b = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            b = b.u64(d);
        }
        b.u32(ty).u64(offset)
    }
    fn align(mut self, a: usize) -> B {
        while !self.0.len().is_multiple_of(a) {
            self.0.push(0);
        }
        self
    }
    fn zeros(mut self, n: usize) -> B {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

fn parse(b: &B) -> Result<(), FormatError> {
    parse_header(Path::new("test.gguf"), &b.0).map(|_| ())
}

#[track_caller]
fn rejects(b: &B, field_part: &str, want: impl Fn(&ErrorKind) -> bool) -> FormatError {
    let e = parse(b).expect_err("malformed image was accepted");
    assert!(want(&e.kind), "unexpected error kind: {e}");
    assert!(
        e.field.contains(field_part),
        "field {:?} does not name {field_part:?}: {e}",
        e.field
    );
    assert!(
        e.to_string().contains("test.gguf"),
        "error does not name the file: {e}"
    );
    assert!(
        e.offset <= b.0.len() as u64,
        "offset {} beyond the image: {e}",
        e.offset
    );
    e
}

/// A valid image: one u32 key, two F32 tensors of 8 elements.
fn valid() -> B {
    B::head(3, 2, 1)
        .kv_u32("general.alignment", 32)
        .tensor("a", &[8], 0, 0)
        .tensor("b", &[8], 0, 32)
        .align(32)
        .zeros(64)
}

#[test]
fn the_valid_template_parses() {
    let h = parse_header(Path::new("t"), &valid().0).unwrap();
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensors[1].offset, 32);
    assert_eq!(h.data_offset % 32, 0);
}

#[test]
fn empty_file() {
    rejects(&B::default(), "magic", |k| {
        matches!(
            k,
            ErrorKind::Truncated {
                needed: 4,
                available: 0
            }
        )
    });
}

#[test]
fn short_magic() {
    rejects(&B::default().raw(b"GG"), "magic", |k| {
        matches!(k, ErrorKind::Truncated { .. })
    });
}

#[test]
fn bad_magic() {
    let e = rejects(&B::default().raw(b"GGML").u32(3), "magic", |k| {
        matches!(k, ErrorKind::BadMagic { .. })
    });
    assert_eq!(e.offset, 0);
}

#[test]
fn version_1_is_unsupported() {
    rejects(&B::head(1, 0, 0), "version", |k| {
        matches!(k, ErrorKind::UnsupportedVersion { version: 1, .. })
    });
}

#[test]
fn future_version_is_unsupported() {
    rejects(&B::head(4, 0, 0), "version", |k| {
        matches!(k, ErrorKind::UnsupportedVersion { version: 4, .. })
    });
}

#[test]
fn big_endian_file() {
    rejects(&B::head(3u32.swap_bytes(), 0, 0), "version", |k| {
        matches!(k, ErrorKind::BigEndian)
    });
}

#[test]
fn truncated_counts() {
    rejects(
        &B::default().raw(b"GGUF").u32(3).u32(0),
        "tensor_count",
        |k| matches!(k, ErrorKind::Truncated { .. }),
    );
}

#[test]
fn tensor_count_beyond_file() {
    rejects(&B::head(3, u64::MAX, 0), "tensor_count", |k| {
        matches!(k, ErrorKind::CountTooLarge { .. })
    });
}

#[test]
fn kv_count_beyond_file() {
    rejects(&B::head(3, 0, 1 << 40), "metadata_kv_count", |k| {
        matches!(k, ErrorKind::CountTooLarge { .. })
    });
}

#[test]
fn key_length_beyond_file() {
    let b = B::head(3, 0, 1).u64(1 << 50).raw(b"abcdefghijklmnop");
    rejects(
        &b,
        "metadata[0].key",
        |k| matches!(k, ErrorKind::LengthBeyondFile { length, .. } if *length == 1 << 50),
    );
}

#[test]
fn key_invalid_utf8() {
    let b = B::head(3, 0, 1).str(&[0xff, 0xfe]).u32(4).u32(1);
    rejects(&b, "metadata[0].key", |k| {
        matches!(k, ErrorKind::InvalidUtf8)
    });
}

#[test]
fn unknown_value_type() {
    let b = B::head(3, 0, 1).str(b"k").u32(13).u32(0);
    rejects(&b, "metadata[0].type (k)", |k| {
        matches!(k, ErrorKind::UnknownValueType(13))
    });
}

#[test]
fn bool_not_0_or_1() {
    let b = B::head(3, 0, 1).str(b"flag").u32(7).u8(2);
    rejects(&b, "metadata[0].value (flag)", |k| {
        matches!(k, ErrorKind::InvalidBool(2))
    });
}

#[test]
fn string_value_beyond_file() {
    let b = B::head(3, 0, 1).str(b"s").u32(8).u64(1000).raw(b"short");
    rejects(&b, "metadata[0].value (s)", |k| {
        matches!(k, ErrorKind::LengthBeyondFile { length: 1000, .. })
    });
}

#[test]
fn array_count_beyond_file() {
    // 2^61 u64 elements would be 16 EiB: refused before any allocation.
    let b = B::head(3, 0, 1).str(b"arr").u32(9).u32(10).u64(1 << 61);
    rejects(&b, "metadata[0].value (arr)", |k| {
        matches!(k, ErrorKind::CountTooLarge { .. })
    });
}

#[test]
fn string_array_count_beyond_file() {
    let b = B::head(3, 0, 1)
        .str(b"tokens")
        .u32(9)
        .u32(8)
        .u64(1_000_000)
        .str(b"a");
    rejects(&b, "metadata[0].value (tokens)", |k| {
        matches!(k, ErrorKind::CountTooLarge { .. })
    });
}

#[test]
fn arrays_nested_too_deep() {
    let mut b = B::head(3, 0, 1).str(b"deep").u32(9);
    for _ in 0..20 {
        b = b.u32(9).u64(1);
    }
    b = b.u32(4).u64(0);
    rejects(&b, "metadata[0].value (deep)", |k| {
        matches!(k, ErrorKind::NestingTooDeep { .. })
    });
}

#[test]
fn array_of_unknown_type() {
    let b = B::head(3, 0, 1).str(b"arr").u32(9).u32(77).u64(0);
    rejects(&b, "metadata[0].value (arr)", |k| {
        matches!(k, ErrorKind::UnknownValueType(77))
    });
}

#[test]
fn duplicate_key() {
    let b = B::head(3, 0, 2).kv_u32("x", 1).kv_u32("x", 2);
    rejects(
        &b,
        "metadata[1].key",
        |k| matches!(k, ErrorKind::DuplicateKey(key) if key == "x"),
    );
}

#[test]
fn alignment_zero() {
    rejects(
        &B::head(3, 0, 1).kv_u32("general.alignment", 0),
        "general.alignment",
        |k| matches!(k, ErrorKind::BadAlignment(0)),
    );
}

#[test]
fn alignment_not_power_of_two() {
    rejects(
        &B::head(3, 0, 1).kv_u32("general.alignment", 48),
        "general.alignment",
        |k| matches!(k, ErrorKind::BadAlignment(48)),
    );
}

#[test]
fn alignment_of_wrong_type() {
    let b = B::head(3, 0, 1).str(b"general.alignment").u32(8).str(b"32");
    rejects(&b, "general.alignment", |k| {
        matches!(
            k,
            ErrorKind::WrongValueType {
                found: "string",
                ..
            }
        )
    });
}

#[test]
fn too_many_dims() {
    let b = B::head(3, 1, 0)
        .tensor("t", &[1, 1, 1, 1, 1], 0, 0)
        .align(32)
        .zeros(4);
    rejects(&b, "tensors[0].n_dims (t)", |k| {
        matches!(k, ErrorKind::TooManyDims { n_dims: 5, max: 4 })
    });
}

#[test]
fn unknown_ggml_type_names_id_and_tensor() {
    let b = B::head(3, 1, 0)
        .tensor("blk.0.ffn_up.weight", &[32], 99, 0)
        .align(32)
        .zeros(128);
    let e = rejects(&b, "blk.0.ffn_up.weight", |k| {
        matches!(k, ErrorKind::UnknownGgmlType { id: 99 })
    });
    assert!(e.to_string().contains("99") && e.to_string().contains("blk.0.ffn_up.weight"));
}

#[test]
fn removed_ggml_type_is_named() {
    let b = B::head(3, 1, 0)
        .tensor("w", &[32], 4, 0)
        .align(32)
        .zeros(64);
    let e = rejects(&b, "tensors[0].type (w)", |k| {
        matches!(
            k,
            ErrorKind::UnsupportedGgmlType {
                id: 4,
                name: "Q4_2"
            }
        )
    });
    assert!(e.to_string().contains("Q4_2"));
}

#[test]
fn dims_product_overflows() {
    let b = B::head(3, 1, 0)
        .tensor("big", &[1 << 40, 1 << 40], 0, 0)
        .align(32);
    rejects(&b, "tensors[0].dims (big)", |k| {
        matches!(k, ErrorKind::ShapeOverflow { .. })
    });
}

#[test]
fn byte_size_overflows() {
    // 2^62 F32 elements fit in i64, their byte size does not fit in u64.
    let b = B::head(3, 1, 0)
        .tensor("huge", &[1 << 31, 1 << 31], 0, 0)
        .align(32);
    let e = parse(&b).expect_err("accepted");
    assert!(
        matches!(
            e.kind,
            ErrorKind::OutOfBounds { .. } | ErrorKind::ShapeOverflow { .. }
        ),
        "{e}"
    );
    let b = B::head(3, 1, 0)
        .tensor("huge", &[1 << 62, 4], 0, 0)
        .align(32);
    rejects(&b, "tensors[0].dims (huge)", |k| {
        matches!(k, ErrorKind::ShapeOverflow { .. })
    });
}

#[test]
fn row_not_whole_blocks() {
    let b = B::head(3, 1, 0)
        .tensor("q", &[33, 2], GgmlType::Q8_0.id(), 0)
        .align(32)
        .zeros(128);
    rejects(&b, "tensors[0].dims (q)", |k| {
        matches!(k, ErrorKind::NotWholeBlocks { ne0: 33, block: 32 })
    });
}

#[test]
fn misaligned_offset() {
    let b = B::head(3, 1, 0).tensor("t", &[4], 0, 4).align(32).zeros(64);
    rejects(&b, "tensors[0].offset (t)", |k| {
        matches!(
            k,
            ErrorKind::Misaligned {
                offset: 4,
                alignment: 32
            }
        )
    });
}

#[test]
fn tensor_past_end_of_file() {
    let mut b = valid();
    b.0.truncate(b.0.len() - 1);
    rejects(&b, "tensors[1].offset (b)", |k| {
        matches!(
            k,
            ErrorKind::OutOfBounds {
                start: 32,
                end: 64,
                limit: 63
            }
        )
    });
}

#[test]
fn tensor_offset_near_u64_max() {
    let b = B::head(3, 1, 0)
        .tensor("t", &[8], 0, u64::MAX - 31)
        .align(32)
        .zeros(32);
    rejects(&b, "tensors[0].offset (t)", |k| {
        matches!(k, ErrorKind::OutOfBounds { .. })
    });
}

#[test]
fn empty_tensor_in_a_file_that_ends_before_the_data_section() {
    // Found by cargo-fuzz: a zero-element tensor and no alignment padding.
    let b = B::head(3, 1, 0).tensor("e", &[0], 0, 0).raw(b"x");
    assert_ne!(b.0.len() % 32, 0);
    rejects(&b, "data section", |k| {
        matches!(k, ErrorKind::Truncated { .. })
    });
}

#[test]
fn overlapping_tensors() {
    let b = B::head(3, 2, 0)
        .tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .align(32)
        .zeros(128);
    rejects(
        &b,
        "tensors[1].offset (b)",
        |k| matches!(k, ErrorKind::Overlap { other } if other == "a"),
    );
}

#[test]
fn duplicate_tensor_name() {
    let b = B::head(3, 2, 0)
        .tensor("w", &[8], 0, 0)
        .tensor("w", &[8], 0, 32)
        .align(32)
        .zeros(64);
    rejects(
        &b,
        "tensors[1].name",
        |k| matches!(k, ErrorKind::DuplicateTensor(n) if n == "w"),
    );
}

#[test]
fn truncated_inside_tensor_info() {
    let mut b = B::head(3, 1, 0).tensor("t", &[8], 0, 0);
    b.0.truncate(b.0.len() - 5);
    rejects(&b, "tensors[0].offset (t)", |k| {
        matches!(k, ErrorKind::Truncated { .. })
    });
}

#[test]
fn tensor_name_invalid_utf8() {
    let b = B::head(3, 1, 0)
        .str(&[b'a', 0xc3])
        .u32(1)
        .u64(8)
        .u32(0)
        .u64(0)
        .align(32)
        .zeros(32);
    rejects(&b, "tensors[0].name", |k| {
        matches!(k, ErrorKind::InvalidUtf8)
    });
}

#[test]
fn every_prefix_of_a_valid_file_is_an_error_and_never_panics() {
    let full = valid();
    // Prefixes that cut the header or a tensor's bytes must all be rejected.
    let data_end = full.0.len();
    for n in 0..data_end {
        let mut b = full.clone();
        b.0.truncate(n);
        assert!(parse(&b).is_err(), "prefix of {n} bytes accepted");
    }
}

#[test]
fn every_metadata_type_round_trips_through_the_writer() {
    let mut w = GgufWriter::new();
    let values = vec![
        ("u8", MetaValue::U8(200)),
        ("i8", MetaValue::I8(-5)),
        ("u16", MetaValue::U16(60000)),
        ("i16", MetaValue::I16(-30000)),
        ("u32", MetaValue::U32(4_000_000_000)),
        ("i32", MetaValue::I32(-2_000_000_000)),
        ("f32", MetaValue::F32(1.5e-5)),
        ("bool", MetaValue::Bool(true)),
        ("str", MetaValue::String("héllo ▁world".into())),
        ("u64", MetaValue::U64(u64::MAX)),
        ("i64", MetaValue::I64(i64::MIN)),
        ("f64", MetaValue::F64(-2.25)),
        (
            "arr.str",
            MetaValue::Array(MetaArray::String(vec![
                "a".into(),
                "".into(),
                "<|im_end|>".into(),
            ])),
        ),
        ("arr.f32", MetaValue::Array(MetaArray::F32(vec![0.5, -1.0]))),
        (
            "arr.bool",
            MetaValue::Array(MetaArray::Bool(vec![true, false])),
        ),
        ("arr.i8", MetaValue::Array(MetaArray::I8(vec![-1, 2]))),
        (
            "arr.nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::U32(vec![1, 2, 3]),
                MetaArray::String(vec!["x".into()]),
            ])),
        ),
        ("arr.empty", MetaValue::Array(MetaArray::U64(vec![]))),
    ];
    for (k, v) in &values {
        w.meta(*k, v.clone());
    }
    w.tensor(TensorToWrite {
        name: "q".into(),
        dims: vec![32, 2],
        dtype: GgmlType::Q8_0,
        data: (0..68u8).collect(),
    });
    w.tensor(TensorToWrite {
        name: "f".into(),
        dims: vec![3],
        dtype: GgmlType::F32,
        data: vec![1; 12],
    });
    let f = GgufFile::from_bytes("mem.gguf", w.to_bytes()).unwrap();
    for (k, v) in &values {
        assert_eq!(f.metadata().get(k), Some(v), "key {k}");
    }
    let q = f.tensor("q").unwrap();
    assert_eq!(q.dtype, GgmlType::Q8_0);
    assert_eq!(q.dims, &[32, 2]);
    assert_eq!(q.data, (0..68u8).collect::<Vec<_>>().as_slice());
    assert_eq!(f.tensor("f").unwrap().data, &[1; 12]);
    assert_eq!(
        f.tensor("f").unwrap().data.as_ptr() as usize % 32,
        (f.tensor("q").unwrap().data.as_ptr() as usize) % 32
    );
}

#[test]
fn version_2_files_parse() {
    let b = B::head(2, 1, 1)
        .kv_u32("x", 7)
        .tensor("t", &[8], 0, 0)
        .align(32)
        .zeros(32);
    let h = parse_header(Path::new("v2"), &b.0).unwrap();
    assert_eq!(h.version, 2);
    assert_eq!(h.metadata.get_u64("x"), Some(7));
}

#[test]
fn open_reports_missing_file_as_io_error() {
    let e = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Io(_)));
    assert!(e.to_string().contains("/nonexistent/model.gguf"));
}
