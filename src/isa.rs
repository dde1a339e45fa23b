//! The instruction sets the kernels are written for, detected once for the whole engine.
//!
//! Every vector path (matrix products, attention, element-wise kernels, block expansion,
//! the optimizer) asks [`Isa::best`], so one switch decides them all: `NUDGE_NO_SIMD=1`
//! in the environment makes every kernel take its portable path, and `NUDGE_ISA=avx2`
//! (or `scalar`, `avx512`, `neon`) picks a unit the CPU has, to measure what a machine
//! without the wider one gets. All paths give bit-identical results, so the switches
//! change speed only.

use std::sync::OnceLock;

/// A SIMD unit. Each x86 set names everything its kernels enable, so a kernel compiled
/// for it may use any of those features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, no target features beyond the build's baseline.
    Scalar,
    /// x86_64 with AVX2, FMA and F16C.
    Avx2,
    /// x86_64 with AVX-512F and AVX-512VL (plus AVX2, FMA and F16C, which such CPUs have).
    Avx512,
    /// aarch64 Advanced SIMD (part of every aarch64 target's baseline).
    Neon,
}

impl Isa {
    /// The fastest unit of this CPU (detected once), or [`Isa::Scalar`] when the
    /// environment sets `NUDGE_NO_SIMD`, or the unit `NUDGE_ISA` names when the CPU has it
    /// (a name [`Isa::requested`] refuses is ignored here; the command line reports it).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            if std::env::var_os("NUDGE_NO_SIMD").is_some() {
                return Isa::Scalar;
            }
            if let Ok(Some(isa)) = Isa::requested() {
                return isa;
            }
            [Isa::Avx512, Isa::Avx2, Isa::Neon]
                .into_iter()
                .find(|isa| isa.is_supported())
                .unwrap_or(Isa::Scalar)
        })
    }

    /// The unit the environment's `NUDGE_ISA` names, if it is set: an error when the name
    /// is no unit's or the CPU lacks it.
    pub fn requested() -> Result<Option<Isa>, String> {
        match std::env::var("NUDGE_ISA") {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(format!("NUDGE_ISA={v:?} is not a unit's name")),
            Ok(name) => Isa::parse(&name).map(Some),
        }
    }

    /// The unit called `name` (as [`Isa::name`] spells it), if this CPU has it.
    pub fn parse(name: &str) -> Result<Isa, String> {
        let all = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];
        let Some(isa) = all
            .into_iter()
            .find(|isa| isa.name() == name.trim().to_ascii_lowercase())
        else {
            return Err(format!(
                "NUDGE_ISA={name:?} is not a unit's name (one of: {})",
                all.map(Isa::name).join(", ")
            ));
        };
        if !isa.is_supported() {
            let have: Vec<_> = Isa::supported().into_iter().map(Isa::name).collect();
            return Err(format!(
                "NUDGE_ISA={name}: this CPU lacks that unit (it has: {})",
                have.join(", ")
            ));
        }
        Ok(isa)
    }

    /// Every unit this CPU can run, slowest first (for tests that compare them).
    pub fn supported() -> Vec<Isa> {
        [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }

    /// Whether this CPU has every feature of the unit.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            Isa::Neon => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Whether the best unit is AVX-512 and the CPU also has its bf16 dot products
    /// (AVX512-BF16), which `Precision::Bf16`'s kernel is compiled for.
    pub fn has_bf16_dot() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            Isa::best() == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The lower-case name reports print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_unit_is_supported_and_listed() {
        let best = Isa::best();
        assert!(best.is_supported());
        let all = Isa::supported();
        assert_eq!(all[0], Isa::Scalar);
        assert!(all.contains(&best));
        // Without the switch, the best is the last (fastest) supported unit.
        if std::env::var_os("NUDGE_NO_SIMD").is_none() {
            assert_eq!(Some(&best), all.last());
        }
    }

    #[test]
    fn a_unit_is_named_as_it_prints_and_must_be_supported() {
        for isa in Isa::supported() {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
            assert_eq!(Isa::parse(&isa.name().to_uppercase()), Ok(isa));
        }
        let e = Isa::parse("sse9").unwrap_err();
        assert!(e.contains("sse9") && e.contains("avx2"), "{e}");
        for isa in [Isa::Avx2, Isa::Avx512, Isa::Neon] {
            if !isa.is_supported() {
                let e = Isa::parse(isa.name()).unwrap_err();
                assert!(e.contains("lacks"), "{e}");
            }
        }
    }

    #[test]
    fn a_wider_x86_unit_implies_the_narrower() {
        if Isa::Avx512.is_supported() {
            assert!(Isa::Avx2.is_supported());
        }
    }
}
