//! Opening a base model, its description, freeing it.

use crate::handles::{self, ModelHandle, NudgeModel};
use crate::options::{self, versioned};
use crate::status::{Failure, FfiResult, NudgeStatus, guard, guard_void};
use crate::text::str_arg;
use engine::kernels::matmul::Precision;
use engine::model::{Model, ModelFormat, WeightsLoad};
use std::ffi::c_char;
use std::sync::Arc;

/// Options of `nudge_model_open`. Fill with `nudge_model_options_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeModelOptions {
    /// sizeof(NudgeModelOptions) as the app was compiled.
    pub struct_size: u32,
    /// Worker threads of the calls on this model and its adapters (0, the default: one
    /// per core). 1 runs every call on the calling thread alone: no thread is started (the
    /// thread pool library then keeps about 7 KB per calling thread, never freed).
    pub threads: u32,
    /// 1: read the weights into memory instead of memory-mapping the file. A mapped model needs its file unchanged
    /// while it is open: truncating it kills the process with SIGBUS, rewriting it changes
    /// the weights. Replace a model file by renaming a new one over it; a host that cannot
    /// promise that sets this, at the cost of the whole file in memory. Default 0.
    pub no_mmap: u32,
    /// The arithmetic of the products through the base model's weights:
    /// NUDGE_PRECISION_F32 (0, the default: exact, the same bits on every machine) or
    /// NUDGE_PRECISION_BF16 (both operands rounded to bf16, summed in f32, on CPUs with
    /// bf16 dot products, x86-64 AVX512-BF16; elsewhere opening fails with
    /// NUDGE_ERR_INVALID). Decoding steps and the adapters' products stay f32.
    pub precision: u32,
    /// 1: decode from the weights as stored, without the copy of the model's matrices
    /// that generation otherwise regroups for the decoding kernels: saves memory the size
    /// of those matrices, at about half the decoding speed, the same tokens. Default 0.
    pub no_decode_copy: u32,
}

/// `NudgeModelOptions.precision`: f32 products (exact).
pub const NUDGE_PRECISION_F32: u32 = 0;
/// `NudgeModelOptions.precision`: bf16 operands, f32 sums.
pub const NUDGE_PRECISION_BF16: u32 = 1;

impl Default for NudgeModelOptions {
    fn default() -> Self {
        NudgeModelOptions {
            struct_size: size_of::<Self>() as u32,
            threads: 0,
            no_mmap: 0,
            precision: NUDGE_PRECISION_F32,
            no_decode_copy: 0,
        }
    }
}
// The first version ended at `threads`, the second at `no_mmap`.
versioned!(NudgeModelOptions, [8, 12]);

/// `NudgeModelInfo.format`: a single GGUF file.
pub const NUDGE_MODEL_GGUF: u32 = 1;
/// `NudgeModelInfo.format`: a Hugging Face directory with safetensors weights.
pub const NUDGE_MODEL_SAFETENSORS: u32 = 2;

/// What `nudge_model_info` reports. Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeModelInfo {
    /// sizeof(NudgeModelInfo) as the app was compiled; set by the app.
    pub struct_size: u32,
    /// NUDGE_MODEL_GGUF or NUDGE_MODEL_SAFETENSORS.
    pub format: u32,
    /// "llama" or "qwen2" (static storage).
    pub architecture: *const c_char,
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub num_layers: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    pub head_dim: u32,
    /// The longest sequence (prompt + completion tokens) the model accepts.
    pub context_length: u32,
    /// 1 if the model has a chat template (needed for NUDGE_CHAT_JSON text).
    pub has_chat_template: u32,
    /// -1 when the model has none.
    pub bos_token_id: i32,
    /// -1 when the model has none.
    pub eos_token_id: i32,
    /// Worker threads of the model's calls (0: one per core).
    pub threads: u32,
    /// Bytes of the model's files mapped into memory (not copied).
    pub mapped_bytes: u64,
}

impl Default for NudgeModelInfo {
    fn default() -> Self {
        NudgeModelInfo {
            struct_size: size_of::<Self>() as u32,
            format: 0,
            architecture: c"".as_ptr(),
            vocab_size: 0,
            hidden_size: 0,
            intermediate_size: 0,
            num_layers: 0,
            num_attention_heads: 0,
            num_key_value_heads: 0,
            head_dim: 0,
            context_length: 0,
            has_chat_template: 0,
            bos_token_id: -1,
            eos_token_id: -1,
            threads: 0,
            mapped_bytes: 0,
        }
    }
}
versioned!(NudgeModelInfo);

/// Prepares `info` for `nudge_model_info`: sets its `struct_size` to `struct_size` (pass
/// sizeof(NudgeModelInfo)) and the other fields to "unknown" (zero, -1 for an id or time that
/// may be absent, "" for a string). The app owns the struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_model_info_init(info: *mut NudgeModelInfo, struct_size: usize) -> NudgeStatus {
    guard(|| options::init(info, struct_size, "info"))
}

/// Fills `options` with the defaults; `struct_size` is sizeof(NudgeModelOptions).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_model_options_init(options: *mut NudgeModelOptions, struct_size: usize) -> NudgeStatus {
    guard(|| options::init(options, struct_size, "options"))
}

/// Opens a model: a `.gguf` file or a Hugging Face directory (config.json, safetensors,
/// tokenizer.json). The weights are memory-mapped, never copied, unless
/// `options->no_mmap` is 1: while a mapped model is open its file must not be truncated
/// (the process would die of SIGBUS) or rewritten; replace it by renaming a new file over
/// it. `options` may be NULL (defaults). On success `*out` is a new handle to free with
/// `nudge_model_free`; on failure it is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_model_open(
    path: *const c_char,
    options: *const NudgeModelOptions,
    out: *mut *mut NudgeModel,
) -> NudgeStatus {
    guard(|| {
        handles::clear_out(out, "out")?;
        let path = str_arg(path, "path")?;
        let o = options::read(options, "options")?;
        if o.threads != 0 {
            engine::threads::check_threads(o.threads as usize, "options.threads")?;
        }
        let how = match o.no_mmap {
            0 => WeightsLoad::Map,
            1 => WeightsLoad::Read,
            n => return Err(Failure::invalid(format!("options.no_mmap {n}: give 0 or 1"))),
        };
        let precision = match o.precision {
            NUDGE_PRECISION_F32 => Precision::F32,
            NUDGE_PRECISION_BF16 => Precision::Bf16,
            n => {
                return Err(Failure::invalid(format!(
                    "options.precision {n}: give NUDGE_PRECISION_F32 (0) or NUDGE_PRECISION_BF16 (1)"
                )));
            }
        };
        let decode_copy = match o.no_decode_copy {
            0 => true,
            1 => false,
            n => return Err(Failure::invalid(format!("options.no_decode_copy {n}: give 0 or 1"))),
        };
        precision.check()?;
        let model = Model::open_with(path, how)?.with_precision(precision)?;
        let model = if decode_copy {
            model
        } else {
            model.without_decode_copy()
        };
        let h = ModelHandle {
            model,
            threads: o.threads as usize,
            interrupts: Default::default(),
        };
        handles::put(out, handles::register(Arc::new(h)));
        Ok(())
    })
}

/// Releases the caller's handle. Adapters made from the model keep it open until they are
/// freed too. NULL, or a handle already freed, is a no-op. May run while other threads use
/// the handle: their calls finish on their own reference.
#[unsafe(no_mangle)]
pub extern "C" fn nudge_model_free(model: *mut NudgeModel) {
    guard_void(|| {
        handles::release::<ModelHandle>(model);
    })
}

/// Stops the scoring and generation calls running on `model` (with any of its adapters),
/// from any thread: each returns NUDGE_ERR_CANCELLED at its next check (between the
/// model's layers, and before each generated token), with no output. Calls that begin
/// after this one returns are not affected; training is stopped by its progress callback
/// instead. For a long prompt or a long text, the wait is at most one layer's work.
#[unsafe(no_mangle)]
pub extern "C" fn nudge_model_interrupt(model: *const NudgeModel) -> NudgeStatus {
    guard(|| {
        let m = model_arg(model)?;
        m.interrupts.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    })
}

fn info(h: &ModelHandle) -> NudgeModelInfo {
    let m = &h.model;
    let c = &m.config;
    let id = |t: Option<u32>| t.map_or(-1, |t| t as i32);
    let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    NudgeModelInfo {
        struct_size: 0,
        format: match m.format {
            ModelFormat::Gguf => NUDGE_MODEL_GGUF,
            ModelFormat::Safetensors => NUDGE_MODEL_SAFETENSORS,
        },
        architecture: match c.architecture {
            engine::model::config::Architecture::Llama => c"llama".as_ptr(),
            engine::model::config::Architecture::Qwen2 => c"qwen2".as_ptr(),
        },
        vocab_size: u(c.vocab_size),
        hidden_size: u(c.hidden_size),
        intermediate_size: u(c.intermediate_size),
        num_layers: u(c.num_hidden_layers),
        num_attention_heads: u(c.num_attention_heads),
        num_key_value_heads: u(c.num_key_value_heads),
        head_dim: u(c.head_dim),
        context_length: u(c.max_position_embeddings),
        has_chat_template: m.tokenizer.has_chat_template() as u32,
        bos_token_id: id(m.tokenizer.bos_id()),
        eos_token_id: id(m.tokenizer.eos_id()),
        threads: u(h.threads),
        mapped_bytes: m.weights.mapped_bytes() as u64,
    }
}

/// Describes the model. Set `out->struct_size = sizeof(NudgeModelInfo)` first.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_model_info(model: *const NudgeModel, out: *mut NudgeModelInfo) -> NudgeStatus {
    guard(|| {
        let h = handles::get::<ModelHandle>(model, "model")?;
        options::write(out, info(&h), "out")
    })
}

/// The model handle's worker threads as a pool size.
pub(crate) fn threads(h: &ModelHandle, override_threads: u32) -> usize {
    match override_threads {
        0 => h.threads,
        n => n as usize,
    }
}

pub(crate) fn model_arg(model: *const NudgeModel) -> FfiResult<Arc<ModelHandle>> {
    handles::get::<ModelHandle>(model, "model")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_end_without_padding() {
        crate::assert_packed_end!(NudgeModelOptions, no_decode_copy, u32);
        crate::assert_packed_end!(NudgeModelInfo, mapped_bytes, u64);
    }

    #[test]
    fn options_of_an_unknown_size_are_refused() {
        let mut o = NudgeModelOptions::default();
        assert_eq!(
            unsafe { nudge_model_options_init(&mut o, size_of::<NudgeModelOptions>()) },
            NudgeStatus::NUDGE_OK
        );
        assert_eq!(o.struct_size as usize, size_of::<NudgeModelOptions>());
        for bad in [0, 3, size_of::<NudgeModelOptions>() + 8] {
            assert_eq!(
                unsafe { nudge_model_options_init(&mut o, bad) },
                NudgeStatus::NUDGE_ERR_INVALID
            );
            let mut big = o;
            big.struct_size = bad as u32;
            let mut out = std::ptr::null_mut();
            assert_eq!(
                unsafe { nudge_model_open(c"/nonexistent".as_ptr(), &big, &mut out) },
                NudgeStatus::NUDGE_ERR_INVALID
            );
            assert!(out.is_null());
        }
    }
}
