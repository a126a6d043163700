//! Diagnostic: scalar vs SIMD on every weight of a model, full size.
use realizar_node::format::GgufFile;
use realizar_node::tensor::{matmul, Matrix, Scratch, Simd, ThreadPool};

fn main() {
    let f = GgufFile::open(std::env::args().nth(1).unwrap()).unwrap();
    let pool = ThreadPool::new(2);
    let mut s = 12345u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    for t in f.tensors().filter(|t| t.dims.len() == 2).take(12) {
        let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let m = Matrix::new(t.dtype, rows, cols, t.data).unwrap();
        for n in [1usize, 5] {
            let x: Vec<f32> = (0..cols * n)
                .map(|i| {
                    let v = rnd();
                    if i % 97 == 0 {
                        v * 200.0
                    } else {
                        v
                    }
                })
                .collect();
            let mut a = vec![0f32; rows * n];
            let mut b = vec![0f32; rows * n];
            matmul(
                &pool,
                Simd::SCALAR,
                &m,
                &x,
                n,
                &mut a,
                &mut Scratch::default(),
            )
            .unwrap();
            matmul(
                &pool,
                Simd::detect(),
                &m,
                &x,
                n,
                &mut b,
                &mut Scratch::default(),
            )
            .unwrap();
            let (mut worst, mut at) = (0f32, 0);
            for i in 0..a.len() {
                let d = (a[i] - b[i]).abs() / (a[i].abs() + 1e-3);
                if d > worst {
                    worst = d;
                    at = i;
                }
            }
            println!(
                "{:28} {:5} n={n} worst rel diff {worst:.2e} at {at} ({} vs {})",
                t.name,
                t.dtype.name(),
                a[at],
                b[at]
            );
        }
    }
}
