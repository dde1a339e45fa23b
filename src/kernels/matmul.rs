//! Matrix products over memory-mapped weights of any [`crate::quant::DType`].
