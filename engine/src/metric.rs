//! Distances, and the only module that calls simsimd.
//!
//! Every distance is "smaller is closer":
//!
//! | metric | distance |
//! |---|---|
//! | [`Metric::L2`] | squared Euclidean distance, `Σ (a-b)²` |
//! | [`Metric::InnerProduct`] | negated inner product, `-Σ a·b` |
//! | [`Metric::Cosine`] | `1 - cos(a, b)` |
//!
//! simsimd's safe Rust API covers `i8` and `f32` but not `u8`, although its C
//! library ships (and dynamically dispatches) `u8` kernels. We declare those
//! three symbols ourselves; they live in the static library the `simsimd`
//! crate builds and links. The [`scalar`] module is the reference the tests
//! compare every kernel against.
#![allow(unsafe_code)]

use crate::element::ElemType;

/// How closeness is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Squared Euclidean distance.
    L2,
    /// Maximum inner product search; distance is `-⟨a, b⟩`.
    #[serde(rename = "ip")]
    InnerProduct,
    /// Cosine distance `1 - cos`.
    Cosine,
}

impl Metric {
    /// Distance between two vectors of the same length.
    #[inline]
    pub fn distance<T: Element>(self, a: &[T], b: &[T]) -> f32 {
        match self {
            Metric::L2 => T::l2sq(a, b),
            Metric::InnerProduct => -T::dot(a, b),
            Metric::Cosine => T::cos(a, b),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
        }
    }

    pub const fn code(self) -> u8 {
        match self {
            Metric::L2 => 0,
            Metric::InnerProduct => 1,
            Metric::Cosine => 2,
        }
    }

    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Metric::L2),
            1 => Some(Metric::InnerProduct),
            2 => Some(Metric::Cosine),
            _ => None,
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "l2" | "euclidean" => Ok(Metric::L2),
            "ip" | "mips" | "inner_product" | "dot" => Ok(Metric::InnerProduct),
            "cosine" | "cos" => Ok(Metric::Cosine),
            _ => Err(format!("unknown metric {s:?}: expected l2, ip or cosine")),
        }
    }
}

/// A vector element type the engine can index: `u8`, `i8` or `f32`.
pub trait Element: bytemuck::Pod + Send + Sync + std::fmt::Debug + PartialEq + 'static {
    const TYPE: ElemType;
    fn to_f32(self) -> f32;
    /// Squared Euclidean distance. Both slices have the same length.
    fn l2sq(a: &[Self], b: &[Self]) -> f32;
    /// Inner product.
    fn dot(a: &[Self], b: &[Self]) -> f32;
    /// Cosine distance `1 - cos(a, b)`: 0 when both vectors are zero, 1 when
    /// exactly one is.
    fn cos(a: &[Self], b: &[Self]) -> f32;
}

// The u8 kernels of simsimd's C library (see the module doc).
extern "C" {
    fn simsimd_l2sq_u8(a: *const u8, b: *const u8, n: u64, d: *mut f64);
    fn simsimd_dot_u8(a: *const u8, b: *const u8, n: u64, d: *mut f64);
    fn simsimd_cos_u8(a: *const u8, b: *const u8, n: u64, d: *mut f64);
}

macro_rules! u8_kernel {
    ($name:ident, $ffi:ident, $mismatch:expr) => {
        /// Slices of different lengths give `$mismatch`, as simsimd's safe
        /// API does for `i8` and `f32` (it returns `None`): never a distance
        /// over the shorter prefix.
        #[inline]
        fn $name(a: &[u8], b: &[u8]) -> f32 {
            if a.len() != b.len() {
                return $mismatch;
            }
            let mut out = 0f64;
            // SAFETY: both pointers are valid for `a.len()` bytes (the
            // lengths are equal), `out` is a valid f64, and the kernel only
            // reads a and b.
            unsafe { $ffi(a.as_ptr(), b.as_ptr(), a.len() as u64, &mut out) };
            out as f32
        }
    };
}
u8_kernel!(u8_l2sq, simsimd_l2sq_u8, f32::INFINITY);
u8_kernel!(u8_dot, simsimd_dot_u8, 0.0);
u8_kernel!(u8_cos, simsimd_cos_u8, 1.0);

impl Element for u8 {
    const TYPE: ElemType = ElemType::U8;
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline]
    fn l2sq(a: &[u8], b: &[u8]) -> f32 {
        u8_l2sq(a, b)
    }
    #[inline]
    fn dot(a: &[u8], b: &[u8]) -> f32 {
        u8_dot(a, b)
    }
    #[inline]
    fn cos(a: &[u8], b: &[u8]) -> f32 {
        u8_cos(a, b)
    }
}

use simsimd::SpatialSimilarity;

impl Element for i8 {
    const TYPE: ElemType = ElemType::I8;
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline]
    fn l2sq(a: &[i8], b: &[i8]) -> f32 {
        <i8 as SpatialSimilarity>::l2sq(a, b).unwrap_or(f64::INFINITY) as f32
    }
    #[inline]
    fn dot(a: &[i8], b: &[i8]) -> f32 {
        <i8 as SpatialSimilarity>::dot(a, b).unwrap_or(0.0) as f32
    }
    #[inline]
    fn cos(a: &[i8], b: &[i8]) -> f32 {
        <i8 as SpatialSimilarity>::cos(a, b).unwrap_or(1.0) as f32
    }
}

impl Element for f32 {
    const TYPE: ElemType = ElemType::F32;
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn l2sq(a: &[f32], b: &[f32]) -> f32 {
        <f32 as SpatialSimilarity>::l2sq(a, b).unwrap_or(f64::INFINITY) as f32
    }
    #[inline]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        <f32 as SpatialSimilarity>::dot(a, b).unwrap_or(0.0) as f32
    }
    #[inline]
    fn cos(a: &[f32], b: &[f32]) -> f32 {
        <f32 as SpatialSimilarity>::cos(a, b).unwrap_or(1.0) as f32
    }
}

/// Squared L2 between two f32 slices without going through simsimd's f64
/// return path; used by k-means where the call count is enormous.
#[inline]
pub fn l2sq_f32(a: &[f32], b: &[f32]) -> f32 {
    <f32 as SpatialSimilarity>::l2sq(a, b).unwrap_or(f64::INFINITY) as f32
}

/// Scales `v` to unit length in place (no-op on the zero vector).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Straightforward f64 implementations: the oracle for tests.
pub mod scalar {
    use super::Element;

    pub fn l2sq<T: Element>(a: &[T], b: &[T]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                let d = x.to_f32() as f64 - y.to_f32() as f64;
                d * d
            })
            .sum()
    }

    pub fn dot<T: Element>(a: &[T], b: &[T]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.to_f32() as f64 * y.to_f32() as f64)
            .sum()
    }

    pub fn cos<T: Element>(a: &[T], b: &[T]) -> f64 {
        let ab = dot(a, b);
        let aa = dot(a, a);
        let bb = dot(b, b);
        if aa == 0.0 || bb == 0.0 {
            return if aa == 0.0 && bb == 0.0 { 0.0 } else { 1.0 };
        }
        1.0 - ab / (aa.sqrt() * bb.sqrt())
    }

    pub fn distance<T: Element>(metric: super::Metric, a: &[T], b: &[T]) -> f64 {
        match metric {
            super::Metric::L2 => l2sq(a, b),
            super::Metric::InnerProduct => -dot(a, b),
            super::Metric::Cosine => cos(a, b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check<T: Element>(a: &[T], b: &[T]) {
        for m in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            let fast = m.distance(a, b) as f64;
            let slow = scalar::distance(m, a, b);
            // simsimd may use lower-precision reciprocal square roots for
            // cosine; integer L2/dot are exact.
            let tol = match m {
                Metric::Cosine => 2e-2,
                _ => 1e-4 * slow.abs().max(1.0),
            };
            assert!(
                (fast - slow).abs() <= tol,
                "{m} {:?}: simsimd {fast} vs scalar {slow}",
                T::TYPE
            );
        }
    }

    proptest! {
        #[test]
        fn u8_matches_scalar(v in prop::collection::vec((any::<u8>(), any::<u8>()), 1..300)) {
            let (a, b): (Vec<u8>, Vec<u8>) = v.into_iter().unzip();
            check(&a, &b);
        }

        #[test]
        fn i8_matches_scalar(v in prop::collection::vec((any::<i8>(), any::<i8>()), 1..300)) {
            let (a, b): (Vec<i8>, Vec<i8>) = v.into_iter().unzip();
            check(&a, &b);
        }

        #[test]
        fn f32_matches_scalar(v in prop::collection::vec((-10f32..10.0, -10f32..10.0), 1..300)) {
            let (a, b): (Vec<f32>, Vec<f32>) = v.into_iter().unzip();
            check(&a, &b);
        }
    }

    /// Issue 9: the u8 kernel summed over the shorter slice where the i8 and
    /// f32 kernels refuse a length mismatch; all three now agree.
    #[test]
    fn length_mismatch_is_refused_alike_for_every_type() {
        fn all<T: Element>(a: &[T], b: &[T]) -> [f32; 3] {
            [T::l2sq(a, b), T::dot(a, b), T::cos(a, b)]
        }
        let want = [f32::INFINITY, 0.0, 1.0];
        assert_eq!(all::<u8>(&[1, 2, 3], &[1, 2]), want);
        assert_eq!(all::<i8>(&[1, 2, 3], &[1, 2]), want);
        assert_eq!(all::<f32>(&[1.0, 2.0, 3.0], &[1.0, 2.0]), want);
    }

    #[test]
    fn metric_names_round_trip() {
        for m in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            assert_eq!(m.name().parse::<Metric>().unwrap(), m);
            assert_eq!(Metric::from_code(m.code()), Some(m));
        }
        assert!("hamming".parse::<Metric>().is_err());
    }
}
