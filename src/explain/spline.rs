//! Cubic B-spline interpolation of a 3D map (Unser, Aldroubi & Eden 1991; the same maths as
//! SciPy's `map_coordinates(order=3, mode="mirror")`). A recursive prefilter turns samples into
//! spline coefficients so the spline passes through every sample; evaluation weighs four
//! coefficients per axis. Separable, so upsampling costs four taps per output voxel and axis.

use ndarray::{Array3, ArrayView1, ArrayView3, Axis};

/// Pole of the cubic B-spline prefilter: √3 − 2.
const POLE: f64 = -0.267_949_192_431_122_7;

/// Values of the cubic spline through `map` at `positions[a]` along axis `a` (sample
/// coordinates, 0 = first sample). Positions outside `[0, n − 1]` take the edge value.
pub fn upsample(map: ArrayView3<f32>, positions: [Vec<f64>; 3]) -> Array3<f32> {
    let mut coefficients = map.mapv(f64::from);
    for axis in 0..3 {
        for mut lane in coefficients.lanes_mut(Axis(axis)) {
            let mut line = lane.to_vec();
            prefilter(&mut line);
            lane.assign(&ArrayView1::from(&line));
        }
    }
    let mut values = coefficients;
    for (axis, positions) in positions.iter().enumerate() {
        values = evaluate_axis(&values, axis, positions);
    }
    values.mapv(|v| v as f32)
}

/// In-place prefilter of one line (mirror boundary: the line continues as c[1], c[0] | c[0] …).
fn prefilter(c: &mut [f64]) {
    let n = c.len();
    if n < 2 {
        return;
    }
    let z = POLE;
    let gain = (1.0 - z) * (1.0 - 1.0 / z);
    c.iter_mut().for_each(|v| *v *= gain);
    // Causal start: the mirrored line's infinite sum, in closed form.
    let zn = z.powi(n as i32 - 1);
    let z2n = zn * zn;
    let mut zk = z;
    let mut sum = c[0] + zn * c[n - 1];
    for &v in &c[1..n - 1] {
        sum += (zk + z2n / zk) * v;
        zk *= z;
    }
    c[0] = sum / (1.0 - z2n);
    for k in 1..n {
        c[k] += z * c[k - 1];
    }
    c[n - 1] = z / (z * z - 1.0) * (c[n - 1] + z * c[n - 2]);
    for k in (0..n - 1).rev() {
        c[k] = z * (c[k + 1] - c[k]);
    }
}

/// Index of coefficient `i` in a line of `n` under mirror extension.
fn mirror(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * n as isize - 2;
    let i = i.rem_euclid(period);
    (if i >= n as isize { period - i } else { i }) as usize
}

/// Coefficient indices and cubic B-spline weights for a position on a line of `n`.
fn taps(x: f64, n: usize) -> [(usize, f64); 4] {
    let x = x.clamp(0.0, (n - 1) as f64);
    let i = x.floor();
    let t = x - i;
    let i = i as isize;
    let w = [
        (1.0 - t).powi(3) / 6.0,
        (4.0 - 6.0 * t * t + 3.0 * t.powi(3)) / 6.0,
        (1.0 + 3.0 * t + 3.0 * t * t - 3.0 * t.powi(3)) / 6.0,
        t.powi(3) / 6.0,
    ];
    std::array::from_fn(|k| (mirror(i + k as isize - 1, n), w[k]))
}

/// The spline along `axis` at `positions`: each output slab is four weighted coefficient slabs.
fn evaluate_axis(coefficients: &Array3<f64>, axis: usize, positions: &[f64]) -> Array3<f64> {
    let n = coefficients.len_of(Axis(axis));
    let mut shape = coefficients.raw_dim();
    shape[axis] = positions.len();
    let mut out = Array3::zeros(shape);
    for (mut slab, &x) in out.axis_iter_mut(Axis(axis)).zip(positions) {
        for (i, w) in taps(x, n) {
            slab.scaled_add(w, &coefficients.index_axis(Axis(axis), i));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_samples(n: usize) -> Vec<f64> {
        (0..n).map(|i| i as f64).collect()
    }

    /// The spline passes through every sample.
    #[test]
    fn interpolates_the_samples() {
        let map = Array3::from_shape_fn((4, 5, 6), |(a, b, c)| ((a * 31 + b * 17 + c * 7) % 11) as f32);
        let up = upsample(map.view(), [on_samples(4), on_samples(5), on_samples(6)]);
        for (x, y) in map.iter().zip(up.iter()) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    /// Between samples the values are SciPy's: `scipy.ndimage.map_coordinates(2 * arange(9.) + 1,
    /// [[3.25, 4.5, 5.75, 0.5, 7.5]], order=3, mode="mirror")` (SciPy 1.17.1). Outside the line
    /// the edge value holds.
    #[test]
    fn matches_scipy_between_samples_and_clamps_outside() {
        let map = Array3::from_shape_fn((1, 1, 9), |(_, _, c)| 2.0 * c as f32 + 1.0);
        let cases = [
            (3.25, 7.506_765_46),
            (4.5, 9.992_268_04),
            (5.75, 12.522_229_38),
            (0.5, 1.682_989_69),
            (7.5, 16.317_010_31),
            (-4.0, 1.0),
            (20.0, 17.0),
        ];
        let up = upsample(map.view(), [vec![0.0], vec![0.0], cases.iter().map(|c| c.0).collect()]);
        for (k, (x, expected)) in cases.iter().enumerate() {
            let got = f64::from(up[[0, 0, k]]);
            assert!((got - expected).abs() < 1e-5, "at {x}: {got} vs {expected}");
        }
    }

    /// A peak sampled off the sample lattice is found between samples: the point of the
    /// upsampling (trilinear interpolation would put it on the nearest sample).
    #[test]
    fn finds_a_peak_between_samples() {
        let centre = [2.3, 3.6, 1.8];
        let map = Array3::from_shape_fn((6, 7, 5), |(a, b, c)| {
            let r2 = (a as f64 - centre[0]).powi(2) + (b as f64 - centre[1]).powi(2) + (c as f64 - centre[2]).powi(2);
            (-r2 / 2.0).exp() as f32
        });
        let fine = |n: usize| (0..=(n - 1) * 10).map(|m| m as f64 / 10.0).collect::<Vec<_>>();
        let up = upsample(map.view(), [fine(6), fine(7), fine(5)]);
        let (best, _) = up.indexed_iter().fold(
            ((0, 0, 0), f32::MIN),
            |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
        );
        let found = [best.0, best.1, best.2].map(|m| m as f64 / 10.0);
        for a in 0..3 {
            assert!(
                (found[a] - centre[a]).abs() <= 0.15,
                "axis {a}: {found:?} vs {centre:?}"
            );
        }
    }

    #[test]
    fn single_sample_axes_are_constant() {
        let map = Array3::from_elem((1, 1, 1), 3.5f32);
        let up = upsample(map.view(), [vec![-1.0, 0.0, 0.5], vec![0.0], vec![2.0]]);
        assert!(up.iter().all(|&v| (v - 3.5).abs() < 1e-6));
    }
}
