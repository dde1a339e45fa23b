//! Runtime CPU-feature dispatch for the element-wise and attention kernels.
//!
//! Kernel bodies are written once as plain Rust over fixed 16-lane accumulators, so the
//! order of every floating-point operation is fixed by the code (the same result on AVX-512,
//! AVX2, NEON or scalar); [`multiversion!`] compiles each body once per instruction set and
//! picks one at run time, so a single x86_64 binary uses AVX-512 where it exists.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Scalar,
    Avx2,
    Avx512,
}

/// The widest instruction set this CPU supports (detected once).
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("NUDGE_NO_SIMD").is_some() {
                return Level::Scalar;
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Level::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        Level::Scalar
    })
}

/// Defines `fn name(args) -> ret` whose body is compiled for AVX-512, AVX2+FMA and the
/// baseline, dispatched on [`level`]. The body must only call `#[inline(always)]` helpers
/// (such as [`dot16`]) so that they inherit the instruction set.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v512($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v256($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                match $crate::kernels::simd::level() {
                    // SAFETY: level() verified the CPU has these features.
                    $crate::kernels::simd::Level::Avx512 => return unsafe { v512($($arg),*) },
                    $crate::kernels::simd::Level::Avx2 => return unsafe { v256($($arg),*) },
                    $crate::kernels::simd::Level::Scalar => {}
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Dot product with 16 independent partial sums combined in a fixed tree.
#[inline(always)]
pub fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] += x * y;
    }
    hsum16(&acc)
}

#[inline(always)]
pub fn hsum16(acc: &[f32; 16]) -> f32 {
    let mut s8 = [0f32; 8];
    for l in 0..8 {
        s8[l] = acc[l] + acc[l + 8];
    }
    let mut s4 = [0f32; 4];
    for l in 0..4 {
        s4[l] = s8[l] + s8[l + 4];
    }
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// y += a * x
#[inline(always)]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

multiversion! {
    /// Dot product of two equal-length vectors (dispatched; for callers outside a kernel).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot16(a, b)
    }
}
