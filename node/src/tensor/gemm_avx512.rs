//! The AVX-512 VNNI kernels over packed weights (see [`super::pack`]): a
//! tile of up to 2 panels (32 rows) × 6 columns kept in registers — 12 float
//! sums, 12 integer sums of the current block — so each 64-byte weight vector
//! is loaded once for 6 columns and each broadcast activation word feeds
//! both panels. Per block and tile: 8 × P × N `vpdpbusd`, and per panel and
//! column a convert, a multiply by the column's scale and a multiply-add by
//! the rows' scales (and one more for the offsets of asymmetric formats).

#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::dequant::QK;
use super::pack::{GemmAct, GemmFn, PANEL};

/// The kernel for `p` panels (1 or 2) × `n` columns (1..=6).
pub(super) fn kernel(asym: bool, p: usize, n: usize) -> GemmFn {
    macro_rules! by_n {
        ($p:literal, $a:literal) => {
            match n {
                1 => tile::<$p, 1, $a>,
                2 => tile::<$p, 2, $a>,
                3 => tile::<$p, 3, $a>,
                4 => tile::<$p, 4, $a>,
                5 => tile::<$p, 5, $a>,
                _ => tile::<$p, 6, $a>,
            }
        };
    }
    match (p, asym) {
        (1, false) => by_n!(1, false),
        (1, true) => by_n!(1, true),
        (_, false) => by_n!(2, false),
        (_, true) => by_n!(2, true),
    }
}

/// # Safety
/// AVX-512 F/BW/VL/VNNI; `w` holds `P` panels of `nb` blocks, `panel_bytes`
/// apart; `a` has `N` columns of at least `nb` blocks; `out` has `P × N` entries.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn tile<const P: usize, const N: usize, const ASYM: bool>(
    w: &[u8],
    panel_bytes: usize,
    nb: usize,
    a: &[&[GemmAct]],
    out: &mut [[f32; PANEL]],
) {
    debug_assert!(a.len() == N && out.len() == P * N && w.len() >= P * panel_bytes);
    let bb = if ASYM {
        QK * PANEL + 8 * PANEL
    } else {
        QK * PANEL + 4 * PANEL
    };
    let mut acc = [[_mm512_setzero_ps(); N]; P];
    let cols: [*const GemmAct; N] = std::array::from_fn(|c| a[c].as_ptr());
    let wp = w.as_ptr();
    for b in 0..nb {
        let blk: [*const u8; P] = std::array::from_fn(|p| wp.add(p * panel_bytes + b * bb));
        let mut isum = [[_mm512_setzero_si512(); N]; P];
        if !ASYM {
            for c in 0..N {
                let zi = _mm512_set1_epi32((*cols[c].add(b)).zi);
                for p in 0..P {
                    isum[p][c] = zi;
                }
            }
        }
        for d in 0..QK / 4 {
            let wv: [__m512i; P] =
                std::array::from_fn(|p| _mm512_load_si512(blk[p].add(64 * d) as *const _));
            for c in 0..N {
                let xq = (*cols[c].add(b)).qs.as_ptr().add(4 * d) as *const i32;
                let xb = _mm512_set1_epi32(xq.read_unaligned());
                for p in 0..P {
                    isum[p][c] = _mm512_dpbusd_epi32(isum[p][c], wv[p], xb);
                }
            }
        }
        let dw: [__m512; P] =
            std::array::from_fn(|p| _mm512_load_ps(blk[p].add(QK * PANEL) as *const f32));
        for c in 0..N {
            let dx = _mm512_set1_ps((*cols[c].add(b)).d);
            for p in 0..P {
                let t = _mm512_mul_ps(_mm512_cvtepi32_ps(isum[p][c]), dx);
                acc[p][c] = _mm512_fmadd_ps(t, dw[p], acc[p][c]);
            }
        }
        if ASYM {
            let mw: [__m512; P] = std::array::from_fn(|p| {
                _mm512_load_ps(blk[p].add(QK * PANEL + 4 * PANEL) as *const f32)
            });
            for c in 0..N {
                let sx = _mm512_set1_ps((*cols[c].add(b)).sx);
                for p in 0..P {
                    acc[p][c] = _mm512_fmadd_ps(mw[p], sx, acc[p][c]);
                }
            }
        }
    }
    for p in 0..P {
        for c in 0..N {
            _mm512_storeu_ps(out[p * N + c].as_mut_ptr(), acc[p][c]);
        }
    }
}
