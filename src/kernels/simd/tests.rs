//! Every instruction set against the portable code, bit for bit, and against f64.

use super::*;

/// Distance in units in the last place of `want` (rounded to f32) from `got`.
fn ulps(got: f32, want: f64) -> f64 {
    let w = want as f32;
    if w.is_infinite() {
        return if got == w { 0.0 } else { f64::INFINITY };
    }
    let ulp = if w == 0.0 {
        f32::from_bits(1) as f64
    } else {
        let next = f32::from_bits(w.abs().to_bits() + 1) as f64;
        next - w.abs() as f64
    };
    (got as f64 - want).abs() / ulp
}

#[test]
fn exp_is_within_two_ulp_over_the_float_range() {
    // Every 127th bit pattern from -104 up to 89 (both signs), about 17 million inputs,
    // through the dispatched (vectorized) path. (An exhaustive sweep finds 1.02 ulp.)
    let mut xs: Vec<f32> = (0..=EXP_MIN_IN.to_bits())
        .step_by(127)
        .map(f32::from_bits)
        .filter(|x| x.abs() <= -EXP_MIN_IN)
        .collect();
    xs.extend((0..=EXP_MAX_IN.to_bits()).step_by(127).map(f32::from_bits));
    xs.extend([
        EXP_MAX_IN,
        88.72283,
        88.722_84,
        -87.33654,
        -87.336_55,
        -103.97,
        -103.972_08,
        1e-30,
        -1e-30,
    ]);
    let mut ys = xs.clone();
    exp_in_place(&mut ys);
    let mut worst = (0.0, 0f32);
    for (&x, &y) in xs.iter().zip(&ys) {
        let e = ulps(y, (x as f64).exp());
        if e > worst.0 {
            worst = (e, x);
        }
        assert_eq!(y.to_bits(), exp(x).to_bits(), "vector and scalar paths differ at {x}");
    }
    assert!(worst.0 <= 1.5, "max error {} ulp at x = {}", worst.0, worst.1);
}

#[test]
fn exp_special_values() {
    assert_eq!(exp(f32::NEG_INFINITY).to_bits(), 0f32.to_bits());
    assert_eq!(exp(-1000.0).to_bits(), 0f32.to_bits());
    assert_eq!(exp(-104.0).to_bits(), 0f32.to_bits());
    assert_eq!(exp(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp(88.8), f32::INFINITY);
    assert_eq!(exp(1e30), f32::INFINITY);
    assert!(exp(f32::NAN).is_nan());
    assert!(exp(-f32::NAN).is_nan());
    assert_eq!(exp(0.0), 1.0);
    assert_eq!(exp(-0.0), 1.0);
    // The largest finite and smallest nonzero results.
    assert!(exp(88.72283).is_finite() && exp(88.72283) > 3.4e38);
    assert_eq!(exp(-103.9), f32::from_bits(1));
    assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
    assert_eq!(sigmoid(f32::INFINITY), 1.0);
    assert_eq!(sigmoid(0.0), 0.5);
    assert!(sigmoid(f32::NAN).is_nan());
    let mut v = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, 0.0, 1.0];
    exp_in_place(&mut v);
    assert!(v[0].is_nan());
    assert_eq!(&v[1..], &[0.0, f32::INFINITY, 1.0, std::f32::consts::E]);
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let u = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(97))
                >> 8;
            u as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// `tile` computed in f64 (the sums are short enough for a tight bound): [r, nc].
fn tile_f64(r: usize, nc: usize, k: usize, a: Strided, b: Rows, alpha: f32) -> Vec<f64> {
    let mut out = vec![0f64; r * nc];
    for i in 0..r {
        for j in 0..nc {
            let s: f64 = (0..k)
                .map(|p| a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.ld + j] as f64)
                .sum();
            out[i * nc + j] = alpha as f64 * s;
        }
    }
    out
}

/// Output stride of the tile tests: rows of 80 computed columns and 10 untouched.
const LDC: usize = 90;

fn run_tile<const ISA: u8>(k: usize, a: Strided, b: Rows, c0: &[f32], add: bool) -> Vec<f32> {
    let mut c = c0.to_vec();
    let mut c = RowsMut::new(&mut c, LDC);
    tile::<ISA, 4, 4>(k, a, b, c.from_col(0), 0.375, add);
    tile::<ISA, 4, 1>(k, a, b.from_col(64), c.from_col(64), 0.375, add);
    let a4 = Strided {
        data: &a.data[4 * a.rs..],
        ..a
    };
    tile::<ISA, 2, 2>(k, a4, b, c.from_col(4 * LDC), 0.375, add);
    c.data.to_vec()
}

#[test]
fn tiles_agree_bit_for_bit_across_instruction_sets_and_with_f64() {
    for (k, ars, acs) in [(0, 1, 1), (1, 3, 1), (37, 1, 9), (64, 67, 1)] {
        let a = values(6 * ars + k * acs + 1, 1);
        let ldb = 83;
        let b = values(k.max(1) * ldb, 2);
        let c0 = values(6 * LDC, 3);
        for add in [false, true] {
            let (sa, sb) = (
                Strided {
                    data: &a,
                    rs: ars,
                    cs: acs,
                },
                Rows::new(&b, ldb),
            );
            let want = run_tile::<PORTABLE>(k, sa, sb, &c0, add);
            assert_eq!(want, run_tile::<AVX2>(k, sa, sb, &c0, add), "AVX2, k = {k}");
            assert_eq!(want, run_tile::<AVX512>(k, sa, sb, &c0, add), "AVX-512, k = {k}");
            let reference = tile_f64(6, 80, k, sa, sb, 0.375);
            for i in 0..6 {
                for j in 0..LDC {
                    let (got, old) = (want[i * LDC + j] as f64, c0[i * LDC + j] as f64);
                    if j >= 80 || (i >= 4 && j >= 32) {
                        assert_eq!(got, old, "k = {k}: ({i}, {j}) is outside the tiles");
                        continue;
                    }
                    let expect = if add { old } else { 0.0 } + reference[i * 80 + j];
                    assert!(
                        (got - expect).abs() < 1e-5 * (1.0 + expect.abs()),
                        "k = {k} ({i}, {j}): {got} vs {expect}"
                    );
                }
            }
        }
    }
}

#[test]
fn vector_reductions_agree_across_instruction_sets() {
    for n in [16, 48, 1024] {
        let x = values(n, 5);
        let sum = sum_vectors::<PORTABLE>(&x);
        assert_eq!(sum.to_bits(), sum_vectors::<AVX2>(&x).to_bits(), "n = {n}");
        assert_eq!(sum.to_bits(), sum_vectors::<AVX512>(&x).to_bits(), "n = {n}");
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((sum as f64 - want).abs() < 1e-4, "n = {n}: {sum} vs {want}");
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for got in [
            max_vectors::<PORTABLE>(&x),
            max_vectors::<AVX2>(&x),
            max_vectors::<AVX512>(&x),
        ] {
            assert_eq!(got, max, "n = {n}");
        }
    }
}

#[test]
fn dot_handles_ragged_lengths() {
    for n in [0, 1, 15, 16, 17, 64, 100] {
        let (a, b) = (values(n, 7), values(n, 8));
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let got = dot(&a, &b);
        assert!(
            (got as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
            "n = {n}: {got} vs {want}"
        );
    }
}

#[test]
fn hmax16_finds_the_largest_lane() {
    for hot in 0..16 {
        let mut m = [-3.0f32; 16];
        m[hot] = 7.5;
        m[(hot + 5) % 16] = f32::NEG_INFINITY;
        assert_eq!(hmax16(&m), 7.5);
    }
}
