//! Element-wise and row operations of the transformer forward pass.

/// y = x / sqrt(mean(x²) + eps) * w (sum accumulated in f64, as ggml does).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    let scale = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
    for ((o, &v), &g) in y.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// (sin, cos) of `pos · f` for each frequency: computed once per token and
/// shared by every head of every layer.
pub fn rope_table(pos: usize, inv_freq: &[f32], out: &mut [(f32, f32)]) {
    for (o, &f) in out.iter_mut().zip(inv_freq) {
        *o = (pos as f32 * f).sin_cos();
    }
}

/// Rotate adjacent pairs (GGUF llama layout) of each head by the angles of `sc`.
pub fn rope_adjacent(x: &mut [f32], head_dim: usize, sc: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(s, c)) in sc.iter().enumerate() {
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * c - b * s;
            head[2 * i + 1] = a * s + b * c;
        }
    }
}

/// base^(-2i/d) for i in 0..d/2.
pub fn rope_inv_freq(head_dim: usize, base: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| base.powf(-2.0 * i as f64 / head_dim as f64) as f32)
        .collect()
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// gate ← silu(gate) · up
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if fma() {
        // SAFETY: AVX2 and FMA were just checked.
        return unsafe { swiglu_fma(gate, up) };
    }
    swiglu_impl::<false>(gate, up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_fma(gate: &mut [f32], up: &[f32]) {
    swiglu_impl::<true>(gate, up)
}

#[inline(always)]
fn swiglu_impl<const F: bool>(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_approx::<F>(-*g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
fn fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// `a·b + c`: one fused instruction where the caller enabled FMA (`F`),
/// a multiply and an add on the portable path.
#[inline(always)]
pub(super) fn madd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// e^x without a libm call, so element loops vectorise: 2^n by exponent
/// bits times a degree-5 polynomial on the remainder (the Arm
/// optimized-routines scheme ggml also uses; within 3 ulp). Inputs are
/// clamped to [−87, 88]: below, e^−87 instead of a denormal or zero; above,
/// e^88 instead of infinity.
#[inline(always)]
pub fn exp_approx<const F: bool>(x: f32) -> f32 {
    let c = f32::from_bits;
    let shift = c(0x4b40_0000); // 1.5 · 2^23
    let x = x.clamp(-87.0, 88.0);
    let z = madd::<F>(x, c(0x3fb8_aa3b), shift); // x·log2(e) + shift
    let n = z - shift;
    let b = madd::<F>(-n, c(0x35bf_be8e), madd::<F>(-n, c(0x3f31_7200), x));
    let k = f32::from_bits((z.to_bits() << 23).wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = madd::<F>(
        madd::<F>(
            madd::<F>(c(0x3c07_2010), b, c(0x3d2b_9f17)),
            u,
            madd::<F>(c(0x3e2a_af33), b, c(0x3eff_fedb)),
        ),
        u,
        c(0x3f7f_fff6) * b,
    );
    madd::<F>(j, k, k)
}

pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, &b)| *a += b);
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four partial sums: the compiler vectorises this.
    let mut acc = [0f32; 8];
    let n = a.len() / 8 * 8;
    for (ca, cb) in a[..n].chunks_exact(8).zip(b[..n].chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += ca[k] * cb[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// Rotate the halves (i, i + d/2) of each head by `pos` (NEOX layout).
pub fn rope_neox(x: &mut [f32], head_dim: usize, sc: &[(f32, f32)]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(s, c)) in sc.iter().enumerate() {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * c - b * s;
            head[i + half] = a * s + b * c;
        }
    }
}

/// gate ← gelu_tanh(gate) · up
/// (as `x · σ(2y)`, the same function as `½ x (1 + tanh y)`, so it takes
/// [`exp_approx`] and vectorises).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if fma() {
        // SAFETY: AVX2 and FMA were just checked.
        return unsafe { geglu_fma(gate, up) };
    }
    geglu_impl::<false>(gate, up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn geglu_fma(gate: &mut [f32], up: &[f32]) {
    geglu_impl::<true>(gate, up)
}

#[inline(always)]
fn geglu_impl<const F: bool>(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let y = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
        *g = x / (1.0 + exp_approx::<F>(-2.0 * y)) * u;
    }
}

/// RMSNorm of each `n`-wide row in place.
pub fn rms_norm_rows(x: &mut [f32], w: &[f32], eps: f32, tmp: &mut Vec<f32>) {
    let n = w.len();
    tmp.resize(n, 0.0);
    for row in x.chunks_exact_mut(n) {
        tmp.copy_from_slice(row);
        rms_norm(tmp, w, eps, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within 3 ulp of e^x on [−87, 88], both builds of the polynomial;
    /// outside it holds the ends.
    #[test]
    fn polynomial_exp_is_within_three_ulp() {
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            for got in [exp_approx::<true>(x), exp_approx::<false>(x)] {
                let ulp = f32::EPSILON as f64 * want;
                assert!(
                    (got as f64 - want).abs() <= 3.0 * ulp,
                    "e^{x}: {got} vs {want}"
                );
            }
            x += 0.0137;
        }
        assert_eq!(exp_approx::<false>(-200.0), exp_approx::<false>(-87.0));
        assert_eq!(exp_approx::<false>(200.0), exp_approx::<false>(88.0));
        assert!(exp_approx::<true>(88.0).is_finite());
        assert_eq!(exp_approx::<true>(0.0), 1.0);
    }

    /// The activations against their libm forms (tanh for GELU).
    #[test]
    fn gated_activations_match_their_libm_forms() {
        let xs: Vec<f32> = (0..4000).map(|i| (i as f32 - 2000.0) * 0.013).collect();
        let up: Vec<f32> = xs.iter().map(|x| 1.0 + 0.25 * x).collect();
        let mut g = xs.clone();
        geglu(&mut g, &up);
        let mut s = xs.clone();
        swiglu(&mut s, &up);
        for (i, &x) in xs.iter().enumerate() {
            let xd = x as f64;
            let gelu = 0.5 * xd * (1.0 + (0.797_884_6 * (xd + 0.044715 * xd * xd * xd)).tanh());
            let silu = xd / (1.0 + (-xd).exp());
            for (got, want) in [(g[i], gelu * up[i] as f64), (s[i], silu * up[i] as f64)] {
                assert!(
                    (got as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "x = {x}: {got} vs {want}"
                );
            }
        }
    }
}
