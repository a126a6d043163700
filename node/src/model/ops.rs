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
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
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
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh()) * u;
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
