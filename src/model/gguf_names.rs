//! Tensor names and row order between GGUF (llama.cpp) and HF transformers.

/// Per-layer modules: GGUF name after `blk.N.` and HF name after `model.layers.N.`.
const LAYER_MODULES: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// Whole-model tensors (full names).
const GLOBAL_TENSORS: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Splits `prefix N . module . param` into (N, module, param), N all digits.
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (module, param) = rest.rsplit_once('.')?;
    matches!(param, "weight" | "bias").then_some((layer, module, param))
}

/// The HF `LlamaForCausalLM`-family name of a GGUF tensor, e.g. `blk.3.attn_q.weight`
/// → `model.layers.3.self_attn.q_proj.weight`; `None` for tensors HF does not have
/// (e.g. `rope_freqs.weight`) or names outside the scheme.
pub fn hf_name_for_gguf(name: &str) -> Option<String> {
    if let Some(&(_, hf)) = GLOBAL_TENSORS.iter().find(|(g, _)| *g == name) {
        return Some(hf.to_owned());
    }
    let (layer, module, param) = split_layer(name, "blk.")?;
    let &(_, hf) = LAYER_MODULES.iter().find(|(g, _)| *g == module)?;
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

/// The inverse of [`hf_name_for_gguf`], for writing adapters llama.cpp reads.
pub fn gguf_name_for_hf(name: &str) -> Option<String> {
    if let Some(&(g, _)) = GLOBAL_TENSORS.iter().find(|(_, h)| *h == name) {
        return Some(g.to_owned());
    }
    let (layer, module, param) = split_layer(name, "model.layers.")?;
    let &(g, _) = LAYER_MODULES.iter().find(|(_, h)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{param}"))
}

/// The GGUF row holding HF row `row` of a Q or K projection.
///
/// llama.cpp's converter reorders each head's rows of Q and K for Llama-architecture
/// models (interleaved rotary pairs instead of HF's two halves): HF row `(h, i)` of a
/// head of `head_dim` rows is GGUF row `h*head_dim + 2*i` for `i < head_dim/2`, else
/// `h*head_dim + 2*(i - head_dim/2) + 1`. Architectures converted without that reorder
/// (qwen2) keep HF order. `head_dim` must be even; other values return `row` unchanged.
pub fn rope_unpermute_row(row: usize, head_dim: usize) -> usize {
    if head_dim < 2 || !head_dim.is_multiple_of(2) {
        return row;
    }
    let (head, i) = (row / head_dim, row % head_dim);
    let half = head_dim / 2;
    let j = if i < half { 2 * i } else { 2 * (i - half) + 1 };
    head * head_dim + j
}

/// The HF row held by GGUF row `row`: the inverse of [`rope_unpermute_row`].
pub fn rope_permute_row(row: usize, head_dim: usize) -> usize {
    if head_dim < 2 || !head_dim.is_multiple_of(2) {
        return row;
    }
    let (head, j) = (row / head_dim, row % head_dim);
    let i = if j.is_multiple_of(2) {
        j / 2
    } else {
        head_dim / 2 + j / 2
    };
    head * head_dim + i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for g in [
            "token_embd.weight",
            "output_norm.weight",
            "output.weight",
            "blk.0.attn_q.weight",
            "blk.29.ffn_down.weight",
            "blk.7.attn_k.bias",
            "blk.12.ffn_norm.weight",
        ] {
            let hf = hf_name_for_gguf(g).unwrap();
            assert_eq!(gguf_name_for_hf(&hf).as_deref(), Some(g));
        }
        assert_eq!(
            hf_name_for_gguf("blk.3.attn_output.weight").as_deref(),
            Some("model.layers.3.self_attn.o_proj.weight")
        );
        assert_eq!(hf_name_for_gguf("rope_freqs.weight"), None);
        assert_eq!(hf_name_for_gguf("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name_for_gguf("blk.1.attn_q.scale"), None);
    }

    #[test]
    fn rope_rows_are_inverse_bijections() {
        let hd = 8;
        let map: Vec<usize> = (0..3 * hd).map(|r| rope_unpermute_row(r, hd)).collect();
        assert_eq!(&map[..hd], &[0, 2, 4, 6, 1, 3, 5, 7]);
        assert_eq!(&map[hd..2 * hd], &[8, 10, 12, 14, 9, 11, 13, 15]);
        for (r, &g) in map.iter().enumerate() {
            assert_eq!(rope_permute_row(g, hd), r);
        }
    }
}
