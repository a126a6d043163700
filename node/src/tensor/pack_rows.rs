//! A weight row of each packed format unpacked into what the panels hold
//! (see [`super::pack`]): its values as unsigned bytes, its scales and
//! offsets, and for the sub-scale forms the sub-scales and their
//! super-blocks' factors.

// Block formats are index arithmetic; explicit index loops read closest to the layouts.
#![allow(clippy::needless_range_loop)]

use super::dequant::{f16_at, iq4xs_scale, k_scales_mins, IQ4NL_VALUES, QK};
use super::pack::SUPER;
use super::GgmlType;

/// A sub-scale form's row ([`super::pack::PackForm::sub`]): per block the sub-scales
/// of its scale vectors, per super-block their factors, such that
/// `sub · factor` is [`int_row`]'s `dw` (and `mw`, or the second half's `dw`).
pub(super) fn sub_scales(
    dtype: GgmlType,
    row: &[u8],
    sub: &mut [[i8; 2]],
    factor: &mut [[f32; 2]],
) {
    use GgmlType::*;
    let (bytes, at) = match dtype {
        Q4_K => (144, 0),
        Q5_K => (176, 0),
        Q6_K => (210, 208),
        IQ4_XS => (136, 0),
        _ => unreachable!("PackForm::sub admits only the formats above"),
    };
    for (sb, blk) in row.chunks_exact(bytes).enumerate() {
        let d = f16_at(blk, at);
        let subs = &mut sub[sb * SUPER..(sb + 1) * SUPER];
        match dtype {
            Q4_K | Q5_K => {
                let (sc, mn) = k_scales_mins(&blk[4..16]);
                factor[sb] = [d, -f16_at(blk, 2)];
                for (j, s) in subs.iter_mut().enumerate() {
                    *s = [sc[j] as i8, mn[j] as i8];
                }
            }
            Q6_K => {
                factor[sb] = [d, d];
                for (j, s) in subs.iter_mut().enumerate() {
                    *s = [blk[192 + 2 * j] as i8, blk[192 + 2 * j + 1] as i8];
                }
            }
            _ => {
                factor[sb] = [d, 0.0];
                for (ib, s) in subs.iter_mut().enumerate() {
                    *s = [iq4xs_scale(blk, ib), 0];
                }
            }
        }
    }
}

/// One row of `dtype` as unsigned bytes with a scale per 16-element half
/// block (`dw[2b]`, `dw[2b + 1]`; the same for all but Q6_K) and an offset
/// per 32-element block (see [`super::pack::PackKind`]).
pub(super) fn int_row(dtype: GgmlType, row: &[u8], u: &mut [u8], dw: &mut [f32], mw: &mut [f32]) {
    use GgmlType::*;
    let nb = u.len() / QK;
    if dtype == Q6_K {
        for sb in 0..nb / 8 {
            let blk = &row[sb * 210..(sb + 1) * 210];
            let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
            let d = f16_at(blk, 208);
            for i in 0..256 {
                let (h, rest) = (i / 128, i % 128);
                let low = (ql[h * 64 + rest % 64] >> (4 * (rest / 64))) & 0x0f;
                let high = (qh[h * 32 + rest % 32] >> (2 * (rest / 32))) & 3;
                u[sb * 256 + i] = low | (high << 4);
            }
            for j in 0..16 {
                dw[sb * 16 + j] = d * (sc[j] as i8) as f32;
            }
        }
        return;
    }
    let mut dw1 = vec![0f32; nb];
    int_row_blocks(dtype, row, u, &mut dw1, mw);
    for (b, &v) in dw1.iter().enumerate() {
        dw[2 * b] = v;
        dw[2 * b + 1] = v;
    }
}

/// [`int_row`] for the formats with one scale per 32-element block.
fn int_row_blocks(dtype: GgmlType, row: &[u8], u: &mut [u8], dw: &mut [f32], mw: &mut [f32]) {
    use GgmlType::*;
    let nb = u.len() / QK;
    let iq4 = |q: u8| (IQ4NL_VALUES[q as usize] as i32 + 128) as u8;
    match dtype {
        Q4_0 | Q4_1 | IQ4_NL => {
            let bs = match dtype {
                Q4_1 => 20,
                _ => 18,
            };
            let qs0 = if dtype == Q4_1 { 4 } else { 2 };
            for b in 0..nb {
                let blk = &row[b * bs..(b + 1) * bs];
                dw[b] = f16_at(blk, 0);
                mw[b] = if dtype == Q4_1 { f16_at(blk, 2) } else { 0.0 };
                for j in 0..16 {
                    let q = blk[qs0 + j];
                    let (lo, hi) = (q & 0x0f, q >> 4);
                    let (lo, hi) = if dtype == IQ4_NL {
                        (iq4(lo), iq4(hi))
                    } else {
                        (lo, hi)
                    };
                    u[b * QK + j] = lo;
                    u[b * QK + j + 16] = hi;
                }
            }
        }
        Q5_0 | Q5_1 => {
            let (bs, qh0) = if dtype == Q5_1 { (24, 4) } else { (22, 2) };
            for b in 0..nb {
                let blk = &row[b * bs..(b + 1) * bs];
                dw[b] = f16_at(blk, 0);
                mw[b] = if dtype == Q5_1 { f16_at(blk, 2) } else { 0.0 };
                let qh = u32::from_le_bytes([blk[qh0], blk[qh0 + 1], blk[qh0 + 2], blk[qh0 + 3]]);
                for j in 0..16 {
                    let q = blk[qh0 + 4 + j];
                    u[b * QK + j] = (q & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
                    u[b * QK + j + 16] = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                }
            }
        }
        Q8_0 => {
            for b in 0..nb {
                let blk = &row[b * 34..(b + 1) * 34];
                dw[b] = f16_at(blk, 0);
                for j in 0..QK {
                    u[b * QK + j] = (blk[2 + j] as i8 as i32 + 128) as u8;
                }
            }
        }
        Q4_K | Q5_K => {
            let bs = if dtype == Q5_K { 176 } else { 144 };
            for sb in 0..nb / 8 {
                let blk = &row[sb * bs..(sb + 1) * bs];
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (sc, mn) = k_scales_mins(&blk[4..16]);
                let (qh, qs) = if dtype == Q5_K {
                    (&blk[16..48], &blk[48..176])
                } else {
                    (&blk[0..0], &blk[16..144])
                };
                for sub in 0..8 {
                    let b = sb * 8 + sub;
                    dw[b] = d * sc[sub] as f32;
                    mw[b] = -(dmin * mn[sub] as f32);
                    let (j, s) = (sub / 2, sub % 2);
                    for l in 0..QK {
                        let mut q = (qs[j * 32 + l] >> (4 * s)) & 0x0f;
                        if dtype == Q5_K {
                            q |= ((qh[l] >> sub) & 1) << 4;
                        }
                        u[b * QK + l] = q;
                    }
                }
            }
        }
        IQ4_XS => {
            for sb in 0..nb / 8 {
                let blk = &row[sb * 136..(sb + 1) * 136];
                let d = f16_at(blk, 0);
                let qs = &blk[8..136];
                for ib in 0..8 {
                    let b = sb * 8 + ib;
                    dw[b] = d * iq4xs_scale(blk, ib) as f32;
                    for l in 0..16 {
                        let q = qs[ib * 16 + l];
                        u[b * QK + l] = iq4(q & 0x0f);
                        u[b * QK + l + 16] = iq4(q >> 4);
                    }
                }
            }
        }
        _ => unreachable!("PackKind::of admits only the formats above"),
    }
}
