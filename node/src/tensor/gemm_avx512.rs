//! The AVX-512 VNNI kernels over packed weights (see [`super::pack`]): a
//! tile of up to 2 panels (32 rows) × 6 columns kept in registers — 12 float
//! sums, 12 integer sums of the current block — so each 64-byte weight vector
//! is loaded once for 6 columns and each broadcast activation word feeds
//! both panels. Per block and tile: 8 × P × N `vpdpbusd`, and per panel and
//! column a convert, a multiply by the column's scale and a multiply-add by
//! the rows' scales (one more for the offsets of asymmetric formats; Q6_K's
//! 16-element scales take the block as two halves).

#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::dequant::QK;
use super::pack::{GemmAct, GemmFn, PackKind, PANEL};

const SYM: u8 = 0;
const ASYM: u8 = 1;
const HALF: u8 = 2;

/// The kernel for `p` panels (1 or 2) × `n` columns (1..=6).
pub(super) fn kernel(kind: PackKind, p: usize, n: usize) -> GemmFn {
    macro_rules! by_n {
        ($p:literal, $a:expr) => {
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
    match (p, kind) {
        (1, PackKind::Sym(_)) => by_n!(1, SYM),
        (1, PackKind::Asym) => by_n!(1, ASYM),
        (1, PackKind::Half(_)) => by_n!(1, HALF),
        (_, PackKind::Sym(_)) => by_n!(2, SYM),
        (_, PackKind::Asym) => by_n!(2, ASYM),
        (_, PackKind::Half(_)) => by_n!(2, HALF),
    }
}

/// # Safety
/// AVX-512 F/BW/VL/VNNI; `w` holds `P` panels of `nb` blocks, `panel_bytes`
/// apart; `a` has `N` columns of at least `nb` blocks; `out` has `P × N` entries.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn tile<const P: usize, const N: usize, const K: u8>(
    w: &[u8],
    panel_bytes: usize,
    nb: usize,
    z: i32,
    a: &[&[GemmAct]],
    out: &mut [[f32; PANEL]],
) {
    debug_assert!(a.len() == N && out.len() == P * N && w.len() >= P * panel_bytes);
    let bb = if K == SYM {
        QK * PANEL + 4 * PANEL
    } else {
        QK * PANEL + 8 * PANEL
    };
    let mut acc = [[_mm512_setzero_ps(); N]; P];
    let cols: [*const GemmAct; N] = std::array::from_fn(|c| a[c].as_ptr());
    let wp = w.as_ptr();
    for b in 0..nb {
        let blk: [*const u8; P] = std::array::from_fn(|p| wp.add(p * panel_bytes + b * bb));
        // A half-scaled block (Q6_K) runs as two halves of four steps, each
        // with its own starting sums and row scales; the others as one.
        let halves = if K == HALF { 2 } else { 1 };
        for half in 0..halves {
            let mut isum = [[_mm512_setzero_si512(); N]; P];
            if K != ASYM {
                for c in 0..N {
                    let x = &*cols[c].add(b);
                    let start = -z
                        * match (K, half) {
                            (HALF, 0) => x.ihalf,
                            (HALF, _) => x.isum - x.ihalf,
                            _ => x.isum,
                        };
                    let zi = _mm512_set1_epi32(start);
                    for p in 0..P {
                        isum[p][c] = zi;
                    }
                }
            }
            let steps = QK / 4 / halves;
            for d in half * steps..(half + 1) * steps {
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
            let dw: [__m512; P] = std::array::from_fn(|p| {
                _mm512_load_ps(blk[p].add(QK * PANEL + 4 * PANEL * half) as *const f32)
            });
            for c in 0..N {
                let dx = _mm512_set1_ps((*cols[c].add(b)).d);
                for p in 0..P {
                    let t = _mm512_mul_ps(_mm512_cvtepi32_ps(isum[p][c]), dx);
                    acc[p][c] = _mm512_fmadd_ps(t, dw[p], acc[p][c]);
                }
            }
        }
        if K == ASYM {
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
