//! Winograd's minimal filtering along time (Toom-Cook `F(m, r)`): `m` outputs of an
//! `r`-tap correlation from `m + r - 1` inputs with `m + r - 1` multiplications instead of
//! `m * r`. The timbral front-end's 7-frame convolutions, 81% of the model's arithmetic,
//! run this way in the shared engine (`graph::Model::winograd_time`): with `F(4, 7)` each
//! output frame costs 10/4 = 2.5 frame-products instead of 7.
//!
//! Not exact: the transforms round differently from a direct sum. [`POINTS`] are chosen
//! for the error: with them `F(4, 7)` on the real filters is off by 8-9e-6 where a direct
//! f32 sum is off by 3-4e-6 (outputs up to 6.6; a log-mel-like input, numpy, against
//! f64), and the embeddings move by at most 1.4e-6 (cosine to Essentia's unchanged to 9
//! decimals on the corpus).

/// The interpolation points, in the order they are used: `F(m, r)` takes the first
/// `m + r - 2` and the point at infinity. All are dyadic, so every entry of `BT` and `AT`
/// is exact in f32. (With +-4 or +-1/4 as the last pair, `F(4, 7)` errs 2-3x more.)
pub const POINTS: [f64; 9] = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.75, -0.75];

/// The three matrices of `F(m, r)`, row-major: `y = AT (G g . BT d)` for `d` of `n = m + r
/// - 1` inputs and `g` of `r` taps gives `y[i] = sum_k d[i + k] g[k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    pub tile: usize,
    pub taps: usize,
    /// `m x n`: back from the `n` products to `m` outputs.
    pub at: Vec<f64>,
    /// `n x r`: the taps into the `n` points.
    pub g: Vec<f64>,
    /// `n x n`: the inputs into the `n` points.
    pub bt: Vec<f64>,
}

impl Transform {
    /// `F(tile, taps)`, or `None` when [`POINTS`] has too few points for it.
    pub fn new(tile: usize, taps: usize) -> Option<Transform> {
        let n = tile + taps - 1;
        if tile == 0 || taps == 0 || n < 2 || n - 1 > POINTS.len() {
            return None;
        }
        let pts = &POINTS[..n - 1];
        let mut at = vec![0.0; tile * n];
        for i in 0..tile {
            for (j, a) in pts.iter().enumerate() {
                at[i * n + j] = a.powi(i as i32);
            }
        }
        at[(tile - 1) * n + n - 1] = 1.0;
        let mut g = vec![0.0; n * taps];
        for (j, a) in pts.iter().enumerate() {
            let f: f64 = (pts.iter().enumerate())
                .filter(|&(l, _)| l != j)
                .map(|(_, b)| a - b)
                .product();
            for k in 0..taps {
                g[j * taps + k] = a.powi(k as i32) / f;
            }
        }
        g[(n - 1) * taps + taps - 1] = 1.0;
        let mut bt = vec![0.0; n * n];
        for j in 0..n {
            // Row j: the coefficients of prod (x - a_l) over every point but j (the point
            // at infinity, j = n - 1, has none to leave out).
            let mut p = vec![1.0];
            for (l, b) in pts.iter().enumerate() {
                if l != j {
                    p = times_x_minus(&p, *b);
                }
            }
            bt[j * n..j * n + p.len()].copy_from_slice(&p);
        }
        Some(Transform {
            tile,
            taps,
            at,
            g,
            bt,
        })
    }

    /// The points used, `m + r - 1` of them counting infinity.
    pub fn points(&self) -> usize {
        self.tile + self.taps - 1
    }
}

/// `p(x) * (x - b)`, coefficients lowest power first.
fn times_x_minus(p: &[f64], b: f64) -> Vec<f64> {
    let mut r = vec![0.0; p.len() + 1];
    for (i, c) in p.iter().enumerate() {
        r[i] -= b * c;
        r[i + 1] += c;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    /// `AT (G g . BT d)`, in f64.
    fn apply(t: &Transform, d: &[f64], g: &[f64]) -> Vec<f64> {
        let n = t.points();
        let u: Vec<f64> = (0..n)
            .map(|j| (0..n).map(|k| t.bt[j * n + k] * d[k]).sum())
            .collect();
        let v: Vec<f64> = (0..n)
            .map(|j| (0..t.taps).map(|k| t.g[j * t.taps + k] * g[k]).sum())
            .collect();
        (0..t.tile)
            .map(|i| (0..n).map(|j| t.at[i * n + j] * u[j] * v[j]).sum())
            .collect()
    }

    #[test]
    fn transforms_compute_the_correlation() {
        for (tile, taps) in [(2, 3), (2, 7), (3, 7), (4, 7), (4, 3), (1, 7)] {
            let t = Transform::new(tile, taps).expect("enough points");
            for seed in 0..20 {
                let d = values(t.points(), seed);
                let g = values(taps, seed + 100);
                let got = apply(&t, &d, &g);
                for (i, y) in got.iter().enumerate() {
                    let want: f64 = (0..taps).map(|k| d[i + k] * g[k]).sum();
                    assert!(
                        (y - want).abs() < 1e-12,
                        "F({tile},{taps}) output {i}: {y} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn input_and_output_transforms_are_exact_in_f32() {
        let t = Transform::new(4, 7).expect("F(4,7)");
        for v in t.bt.iter().chain(&t.at) {
            assert_eq!(f64::from(*v as f32), *v);
        }
    }

    #[test]
    fn too_few_points_is_none() {
        assert!(Transform::new(5, 7).is_none());
        assert!(Transform::new(0, 7).is_none());
    }
}
