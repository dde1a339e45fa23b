//! Global L2-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`, norm_type 2).

use rayon::prelude::*;

/// torch's total norm: the L2 norm of the per-tensor L2 norms, each a float32 value.
/// Squares are summed in f64, so the result is the exact norm rounded to f32 (torch's own
/// float32 reduction lands within a few ulps of it).
pub fn grad_norm(grads: &[&[f32]]) -> f32 {
    let norms: Vec<f32> = grads
        .par_iter()
        .map(|g| g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() as f32)
        .collect();
    norms.iter().map(|&n| f64::from(n) * f64::from(n)).sum::<f64>().sqrt() as f32
}

/// Scales every gradient by min(max_norm / (total_norm + 1e-6), 1) in f32, as torch does
/// (also multiplying by exactly 1 when under the limit), and returns the total norm measured
/// before clipping. A non-finite norm (an inf or NaN gradient) is returned with the
/// gradients left untouched, where torch would zero or poison them: the caller skips the step.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let total = {
        let views: Vec<&[f32]> = grads.iter().map(|g| &**g).collect();
        grad_norm(&views)
    };
    if !total.is_finite() {
        return total;
    }
    let coef = (max_norm / (total + 1e-6f32)).min(1.0);
    grads.par_iter_mut().for_each(|g| g.iter_mut().for_each(|x| *x *= coef));
    total
}
