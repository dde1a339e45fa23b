//! LoRA adapters: a fresh one, one loaded from a PEFT directory, saving, describing, freeing.

use crate::handles::{self, AdapterHandle, NudgeAdapter, NudgeModel};
use crate::model::model_arg;
use crate::options::{self, versioned};
use crate::status::{Failure, FfiResult, NudgeStatus, guard, guard_void};
use crate::text::{slice_arg, str_arg};
use engine::adapter::format::{gguf_lora, merge, peft};
use engine::adapter::{Adapter, BaseCheck, LoraConfig, LoraInit, Stacked};
use engine::convert::FloatType;
use engine::model::weights::Proj;
use std::ffi::c_char;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// `NudgeAdapterOptions.targets` bit: the attention's query projection (q_proj).
pub const NUDGE_TARGET_Q_PROJ: u32 = 1 << 0;
/// Bit of k_proj.
pub const NUDGE_TARGET_K_PROJ: u32 = 1 << 1;
/// Bit of v_proj.
pub const NUDGE_TARGET_V_PROJ: u32 = 1 << 2;
/// Bit of o_proj.
pub const NUDGE_TARGET_O_PROJ: u32 = 1 << 3;
/// Bit of the MLP's gate_proj.
pub const NUDGE_TARGET_GATE_PROJ: u32 = 1 << 4;
/// Bit of up_proj.
pub const NUDGE_TARGET_UP_PROJ: u32 = 1 << 5;
/// Bit of down_proj.
pub const NUDGE_TARGET_DOWN_PROJ: u32 = 1 << 6;
/// Every projection (PEFT's "all-linear").
pub const NUDGE_TARGET_ALL: u32 = 0x7f;

/// `NudgeAdapterOptions.init`: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default).
pub const NUDGE_INIT_KAIMING_UNIFORM: u32 = 0;
/// A ~ N(0, 1/r) (PEFT's init_lora_weights="gaussian").
pub const NUDGE_INIT_GAUSSIAN: u32 = 1;

/// `dtype` of the exports: 32-bit floats.
pub const NUDGE_DTYPE_F32: u32 = 0;
/// IEEE half precision.
pub const NUDGE_DTYPE_F16: u32 = 1;
/// bfloat16.
pub const NUDGE_DTYPE_BF16: u32 = 2;

fn float_type(dtype: u32) -> FfiResult<FloatType> {
    match dtype {
        NUDGE_DTYPE_F32 => Ok(FloatType::F32),
        NUDGE_DTYPE_F16 => Ok(FloatType::F16),
        NUDGE_DTYPE_BF16 => Ok(FloatType::BF16),
        other => Err(Failure::invalid(format!("dtype {other} is not a NUDGE_DTYPE_* value"))),
    }
}

/// The shape of a new adapter. Fill with `nudge_adapter_options_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeAdapterOptions {
    /// sizeof(NudgeAdapterOptions) as the app was compiled.
    pub struct_size: u32,
    /// LoRA rank (default 8).
    pub r: u32,
    /// LoRA alpha (default 16): the update is scaled by alpha / r.
    pub alpha: f32,
    /// NUDGE_TARGET_* bits (default NUDGE_TARGET_ALL).
    pub targets: u32,
    /// Non-zero: scale by alpha / sqrt(r) (rsLoRA) instead of alpha / r (default 0).
    pub rslora: u32,
    /// Dropout on the adapter's input while training, in [0, 1) (default 0).
    pub dropout: f32,
    /// NUDGE_INIT_* (default NUDGE_INIT_KAIMING_UNIFORM); B always starts at zero.
    pub init: u32,
    /// Seed of A's initialization (default 42).
    pub seed: u64,
}

impl Default for NudgeAdapterOptions {
    fn default() -> Self {
        let c = LoraConfig::default();
        NudgeAdapterOptions {
            struct_size: size_of::<Self>() as u32,
            r: c.r as u32,
            alpha: c.lora_alpha,
            targets: targets_bits(&c.target_modules),
            rslora: c.use_rslora as u32,
            dropout: c.lora_dropout,
            init: NUDGE_INIT_KAIMING_UNIFORM,
            seed: 42,
        }
    }
}
versioned!(NudgeAdapterOptions);

/// What `nudge_adapter_info` reports. Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeAdapterInfo {
    /// sizeof(NudgeAdapterInfo) as the app was compiled; set by the app.
    pub struct_size: u32,
    pub r: u32,
    pub alpha: f32,
    /// NUDGE_TARGET_* bits.
    pub targets: u32,
    pub rslora: u32,
    pub dropout: f32,
    /// Trainable parameters (A and B of every adapted projection).
    pub n_params: u64,
}

impl Default for NudgeAdapterInfo {
    fn default() -> Self {
        NudgeAdapterInfo {
            struct_size: size_of::<Self>() as u32,
            r: 0,
            alpha: 0.0,
            targets: 0,
            rslora: 0,
            dropout: 0.0,
            n_params: 0,
        }
    }
}
versioned!(NudgeAdapterInfo);

/// Prepares `info` for `nudge_adapter_info`: sets its `struct_size` to `struct_size` (pass
/// sizeof(NudgeAdapterInfo)) and the other fields to "unknown" (zero, -1 for an id or time that
/// may be absent, "" for a string). The app owns the struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_info_init(info: *mut NudgeAdapterInfo, struct_size: usize) -> NudgeStatus {
    guard(|| options::init(info, struct_size, "info"))
}

fn targets_bits(targets: &[Proj]) -> u32 {
    targets.iter().fold(0, |bits, &p| bits | 1 << p as u32)
}

fn targets_from_bits(bits: u32) -> FfiResult<Vec<Proj>> {
    if bits & !NUDGE_TARGET_ALL != 0 {
        return Err(Failure::invalid(format!(
            "targets {bits:#x} has bits outside NUDGE_TARGET_ALL ({NUDGE_TARGET_ALL:#x})"
        )));
    }
    Ok(Proj::ALL.into_iter().filter(|&p| bits & (1 << p as u32) != 0).collect())
}

fn lora_config(o: &NudgeAdapterOptions) -> FfiResult<LoraConfig> {
    let init = match o.init {
        NUDGE_INIT_KAIMING_UNIFORM => LoraInit::KaimingUniform,
        NUDGE_INIT_GAUSSIAN => LoraInit::Gaussian,
        other => return Err(Failure::invalid(format!("init {other} is not a NUDGE_INIT_* value"))),
    };
    let c = LoraConfig {
        r: o.r as usize,
        lora_alpha: o.alpha,
        target_modules: targets_from_bits(o.targets)?,
        use_rslora: o.rslora != 0,
        lora_dropout: o.dropout,
        init,
    };
    c.validate()?;
    Ok(c)
}

/// Fills `options` with the defaults; `struct_size` is sizeof(NudgeAdapterOptions).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_options_init(
    options: *mut NudgeAdapterOptions,
    struct_size: usize,
) -> NudgeStatus {
    guard(|| options::init(options, struct_size, "options"))
}

fn register(model: Arc<crate::handles::ModelHandle>, adapter: Adapter, out: *mut *mut NudgeAdapter) {
    let h = AdapterHandle {
        model,
        adapter: RwLock::new(Arc::new(adapter)),
    };
    handles::put(out, handles::register(Arc::new(h)));
}

/// A new adapter for `model` (B = 0, so it does not change the model until trained).
/// `options` may be NULL (defaults). The adapter keeps the model open. On failure `*out`
/// is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_new(
    model: *const NudgeModel,
    options: *const NudgeAdapterOptions,
    out: *mut *mut NudgeAdapter,
) -> NudgeStatus {
    guard(|| {
        handles::clear_out(out, "out")?;
        let m = model_arg(model)?;
        let o = options::read(options, "options")?;
        let config = lora_config(&o)?;
        let adapter = Adapter::new(&m.model.config, config, o.seed, m.model.name())?;
        register(m, adapter, out);
        Ok(())
    })
}

/// Loads an adapter made for `model`: a PEFT directory (adapter_config.json +
/// adapter_model.safetensors) or a llama.cpp LoRA .gguf file. An adapter that records the
/// fingerprint of another base model (one trained by nudge on another model, even of the
/// same shape) is refused with NUDGE_ERR_FORMAT. On failure `*out` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_load(
    model: *const NudgeModel,
    dir: *const c_char,
    out: *mut *mut NudgeAdapter,
) -> NudgeStatus {
    guard(|| {
        handles::clear_out(out, "out")?;
        let m = model_arg(model)?;
        let dir = str_arg(dir, "dir")?;
        let adapter = engine::adapter::load_for(Path::new(dir), &m.model, BaseCheck::Strict)?;
        register(m, adapter, out);
        Ok(())
    })
}

/// Writes the adapter as a PEFT directory (created if missing; files replaced
/// atomically), loadable by `nudge_adapter_load` and by Hugging Face PEFT.
/// NUDGE_ERR_BUSY while the adapter is being trained.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_save_peft(adapter: *const NudgeAdapter, dir: *const c_char) -> NudgeStatus {
    guard(|| {
        let h = handles::get::<AdapterHandle>(adapter, "adapter")?;
        let dir = str_arg(dir, "dir")?;
        let a = h.snapshot()?;
        peft::save(&a, Path::new(dir))?;
        Ok(())
    })
}

/// Writes the adapter as a llama.cpp LoRA GGUF file (`llama-cli --lora`), for the GGUF of
/// the adapter's base model; `dtype` is NUDGE_DTYPE_F32, NUDGE_DTYPE_F16 or
/// NUDGE_DTYPE_BF16. NUDGE_ERR_BUSY while the adapter is being trained.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_save_gguf(
    adapter: *const NudgeAdapter,
    path: *const c_char,
    dtype: u32,
) -> NudgeStatus {
    guard(|| {
        let h = handles::get::<AdapterHandle>(adapter, "adapter")?;
        let path = str_arg(path, "path")?;
        let dtype = float_type(dtype)?;
        let a = h.snapshot()?;
        gguf_lora::save(&a, &h.model.model, Path::new(path), dtype)?;
        Ok(())
    })
}

/// Writes the base model with the adapter merged into its weights as a Hugging Face
/// directory `dir` (config, tokenizer, `model.safetensors` in `dtype`), for apps that
/// cannot apply adapters; `nudge_model_open` opens it. NUDGE_ERR_BUSY while the adapter is
/// being trained.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_save_merged(
    adapter: *const NudgeAdapter,
    dir: *const c_char,
    dtype: u32,
) -> NudgeStatus {
    guard(|| {
        let h = handles::get::<AdapterHandle>(adapter, "adapter")?;
        let dir = str_arg(dir, "dir")?;
        let dtype = float_type(dtype)?;
        let a = h.snapshot()?;
        merge::export_merged(&h.model.model, &a, Path::new(dir), dtype)?;
        Ok(())
    })
}

/// Describes the adapter. Set `out->struct_size = sizeof(NudgeAdapterInfo)` first.
/// NUDGE_ERR_BUSY while the adapter is being trained.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_info(adapter: *const NudgeAdapter, out: *mut NudgeAdapterInfo) -> NudgeStatus {
    guard(|| {
        let h = handles::get::<AdapterHandle>(adapter, "adapter")?;
        let a = h.snapshot()?;
        let c = &a.config;
        let info = NudgeAdapterInfo {
            struct_size: 0,
            r: c.r as u32,
            alpha: c.lora_alpha,
            targets: targets_bits(&c.target_modules),
            rslora: c.use_rslora as u32,
            dropout: c.lora_dropout,
            n_params: a.n_params() as u64,
        };
        options::write(out, info, "out")
    })
}

/// A new handle holding a copy of `adapter` as it is now (for the same model). Train the
/// copy while the original keeps serving, then `nudge_adapter_swap` them. Copying is
/// deferred: the two share memory until one of them is trained. On failure `*out` is
/// NULL; NUDGE_ERR_BUSY while `adapter` is being trained.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_clone(adapter: *const NudgeAdapter, out: *mut *mut NudgeAdapter) -> NudgeStatus {
    guard(|| {
        handles::clear_out(out, "out")?;
        let h = handles::get::<AdapterHandle>(adapter, "adapter")?;
        let held = h.snapshot()?;
        let copy = AdapterHandle {
            model: h.model.clone(),
            adapter: RwLock::new(held),
        };
        handles::put(out, handles::register(Arc::new(copy)));
        Ok(())
    })
}

/// Exchanges what `a` and `b` hold, atomically: every call that starts after the swap sees
/// the other's weights; a generation or scoring call already running on either finishes
/// with the weights it started with, and is not waited for. Both must be for the same
/// model (the same handle, or models of one shape). NUDGE_ERR_BUSY if either is being
/// trained. Swapping a handle with itself does nothing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_swap(a: *mut NudgeAdapter, b: *mut NudgeAdapter) -> NudgeStatus {
    guard(|| {
        let ha = handles::get::<AdapterHandle>(a, "a")?;
        let hb = handles::get::<AdapterHandle>(b, "b")?;
        if Arc::ptr_eq(&ha, &hb) {
            return Ok(());
        }
        same_model(&ha, &hb, "b")?;
        // Neither lock waits, so taking them in any order cannot deadlock.
        let mut wa = handles::write(&ha.adapter, "a")?;
        let mut wb = handles::write(&hb.adapter, "b")?;
        std::mem::swap(&mut *wa, &mut *wb);
        Ok(())
    })
}

/// Adapters of one model may be exchanged or stacked: the same handle, or the same shape.
fn same_model(first: &AdapterHandle, other: &AdapterHandle, what: &str) -> FfiResult<()> {
    if Arc::ptr_eq(&first.model, &other.model) || first.model.model.config == other.model.model.config {
        return Ok(());
    }
    Err(Failure::invalid(format!(
        "{what} is an adapter for another model (`{}`) than the first (`{}`)",
        other.model.model.name(),
        first.model.model.name()
    )))
}

/// A new adapter that applies `adapters[0..n]` together: its update is the sum of theirs,
/// each multiplied by `weights[i]` (`weights` may be NULL: 1 each). One adapter with a
/// weight is that adapter at another strength (0.5: half; 0: off). The result is exact (its
/// rank is the sum of theirs; no approximation), a copy made now (training an input later
/// does not change it), and an adapter like any other: generate, score, save (PEFT loads
/// it too) or train it. All must be for the same model. On failure `*out` is NULL;
/// NUDGE_ERR_BUSY while an input is being trained.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_adapter_stack(
    adapters: *const *const NudgeAdapter,
    weights: *const f32,
    n: usize,
    out: *mut *mut NudgeAdapter,
) -> NudgeStatus {
    guard(|| {
        handles::clear_out(out, "out")?;
        if n == 0 {
            return Err(Failure::invalid("n is 0: a stack needs at least one adapter"));
        }
        let list = slice_arg(adapters, n, "adapters")?;
        let weights = match weights.is_null() {
            true => vec![1.0; n],
            false => slice_arg(weights, n, "weights")?.to_vec(),
        };
        let handles = list
            .iter()
            .enumerate()
            .map(|(i, &a)| handles::get::<AdapterHandle>(a, &format!("adapters[{i}]")))
            .collect::<FfiResult<Vec<_>>>()?;
        for (i, h) in handles.iter().enumerate().skip(1) {
            same_model(&handles[0], h, &format!("adapters[{i}]"))?;
        }
        let held = handles.iter().map(|h| h.snapshot()).collect::<FfiResult<Vec<_>>>()?;
        let parts: Vec<Stacked> = held
            .iter()
            .zip(&weights)
            .map(|(adapter, &weight)| Stacked { adapter, weight })
            .collect();
        let stacked = engine::adapter::stack(&parts)?;
        register(handles[0].model.clone(), stacked, out);
        Ok(())
    })
}

/// Releases the caller's handle (and its reference to the model). NULL, or a handle
/// already freed, is a no-op. Freeing an adapter that another thread is training lets that
/// run finish on its own reference; its result is then unreachable.
#[unsafe(no_mangle)]
pub extern "C" fn nudge_adapter_free(adapter: *mut NudgeAdapter) {
    guard_void(|| {
        handles::release::<AdapterHandle>(adapter);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_end_without_padding() {
        crate::assert_packed_end!(NudgeAdapterOptions, seed, u64);
        crate::assert_packed_end!(NudgeAdapterInfo, n_params, u64);
    }

    #[test]
    fn target_bits_follow_the_projection_order() {
        assert_eq!(targets_bits(&Proj::ALL), NUDGE_TARGET_ALL);
        assert_eq!(targets_from_bits(NUDGE_TARGET_Q_PROJ).unwrap(), vec![Proj::Q]);
        assert_eq!(targets_from_bits(NUDGE_TARGET_K_PROJ).unwrap(), vec![Proj::K]);
        assert_eq!(targets_from_bits(NUDGE_TARGET_V_PROJ).unwrap(), vec![Proj::V]);
        assert_eq!(targets_from_bits(NUDGE_TARGET_O_PROJ).unwrap(), vec![Proj::O]);
        assert_eq!(targets_from_bits(NUDGE_TARGET_GATE_PROJ).unwrap(), vec![Proj::Gate]);
        assert_eq!(targets_from_bits(NUDGE_TARGET_UP_PROJ).unwrap(), vec![Proj::Up]);
        assert_eq!(targets_from_bits(NUDGE_TARGET_DOWN_PROJ).unwrap(), vec![Proj::Down]);
        assert!(targets_from_bits(0x80).is_err());
    }

    #[test]
    fn bad_options_are_refused_with_their_name() {
        let bad = [
            NudgeAdapterOptions {
                r: 0,
                ..Default::default()
            },
            NudgeAdapterOptions {
                targets: 0,
                ..Default::default()
            },
            NudgeAdapterOptions {
                dropout: 1.0,
                ..Default::default()
            },
            NudgeAdapterOptions {
                alpha: f32::NAN,
                ..Default::default()
            },
            NudgeAdapterOptions {
                init: 2,
                ..Default::default()
            },
        ];
        for o in bad {
            let e = lora_config(&o).err().unwrap();
            assert_eq!(e.status, NudgeStatus::NUDGE_ERR_INVALID, "{o:?}");
        }
        let c = lora_config(&NudgeAdapterOptions::default()).unwrap();
        assert_eq!(c, LoraConfig::default());
    }
}
