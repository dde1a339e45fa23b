//! Incremental forward for generation: new tokens run against the keys and values of the
//! past ones, kept in a [`KvCache`], instead of recomputing the whole sequence. One call
//! may carry several sequences (a batch of replies), each with its own cache: their rows
//! share the projections' matrix products, attention reads each sequence's own cache
//! ([`Attend::Cached`]). The kernels are batch-invariant, so a sequence gets the same bits
//! alone or in a batch, and the same as in the full forward.

use super::{Attend, LayerActs, LoraCtx};
use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::kernels::rmsnorm::rmsnorm_forward;
use crate::kernels::rope::RopeTable;
use crate::model::{KvCache, Model};

/// One sequence of a batched cached forward ([`Model::extend_batch`]): `tokens` run at
/// positions `cache.len()..` of `cache`.
pub struct CachedSeq<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

impl Model {
    /// Runs `tokens` after the `cache.len()` tokens already in `cache` (positions
    /// `cache.len()..`), appends their keys and values, and returns their final hidden
    /// states (after the last RMSNorm): `[n, hidden]`. An adapter must stay the same for
    /// every call on one cache. On error the cache is unchanged.
    pub fn extend(&self, tokens: &[u32], cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Vec<f32>> {
        self.extend_ctx(
            tokens,
            cache,
            LoraCtx {
                adapter,
                ..LoraCtx::default()
            },
        )
    }

    fn extend_ctx(&self, tokens: &[u32], cache: &mut KvCache, lora: LoraCtx) -> Result<Vec<f32>> {
        self.check_adapter(&lora)?;
        let start = self.check_cached(tokens, cache)?;
        self.forward_cached(&mut [CachedSeq { tokens, cache }], &[start], &lora)
    }

    /// [`Self::extend`] for several sequences at once, each with its own cache (distinct
    /// caches, possibly of different lengths): the hidden states of every sequence's new
    /// tokens, one after the other: [Σ n, hidden]. Each sequence's rows are bit-identical
    /// to what [`Self::extend`] gives it alone. An error names the sequence
    /// ([`Error::Request`]) and leaves every cache unchanged.
    pub fn extend_batch(&self, seqs: &mut [CachedSeq<'_>], adapter: Option<&Adapter>) -> Result<Vec<f32>> {
        self.extend_batch_ctx(
            seqs,
            LoraCtx {
                adapter,
                ..LoraCtx::default()
            },
        )
    }

    /// [`Self::extend_batch`] with the adapter, and a flag to stop it, in `lora`.
    pub(crate) fn extend_batch_ctx(&self, seqs: &mut [CachedSeq<'_>], lora: LoraCtx) -> Result<Vec<f32>> {
        self.check_adapter(&lora)?;
        let starts = seqs
            .iter()
            .enumerate()
            .map(|(i, s)| self.check_cached(s.tokens, s.cache).map_err(|e| e.for_request(i)))
            .collect::<Result<Vec<_>>>()?;
        self.forward_cached(seqs, &starts, &lora)
    }

    /// Logits of the next token after `tokens` (appended to `cache`): `[vocab]`.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Vec<f32>> {
        self.prefill_ctx(
            tokens,
            cache,
            LoraCtx {
                adapter,
                ..LoraCtx::default()
            },
        )
    }

    /// [`Self::prefill`] with the adapter, and a flag to stop it, in `lora`.
    pub(crate) fn prefill_ctx(&self, tokens: &[u32], cache: &mut KvCache, lora: LoraCtx) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::invalid("prefill needs at least one token"));
        }
        let h = self.extend_ctx(tokens, cache, lora)?;
        let hidden = self.config.hidden_size;
        self.logits(&h[h.len() - hidden..])
    }

    /// Logits of the token after `token`, which is appended to `cache`: `[vocab]`.
    pub fn decode_step(&self, token: u32, cache: &mut KvCache, adapter: Option<&Adapter>) -> Result<Vec<f32>> {
        self.prefill(&[token], cache, adapter)
    }

    /// One decode step of a batch: `tokens[i]` is appended to `caches[i]`; returns the
    /// logits of each row's next token: `[B, vocab]`, row `i` bit-identical to
    /// [`Self::decode_step`] of `tokens[i]` on `caches[i]` alone. An error names the row
    /// ([`Error::Request`]) and leaves every cache unchanged.
    pub fn decode_batch(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        adapter: Option<&Adapter>,
    ) -> Result<Vec<f32>> {
        if tokens.len() != caches.len() {
            return Err(Error::invalid(format!(
                "decode_batch: {} tokens for {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        let mut seqs: Vec<CachedSeq> = tokens
            .iter()
            .zip(caches.iter_mut())
            .map(|(t, c)| CachedSeq {
                tokens: std::slice::from_ref(t),
                cache: c,
            })
            .collect();
        let h = self.extend_batch(&mut seqs, adapter)?;
        self.logits(&h)
    }

    /// Checks `tokens` can run after `cache`; returns their first position.
    fn check_cached(&self, tokens: &[u32], cache: &KvCache) -> Result<usize> {
        cache.check_fits(&self.config)?;
        let start = cache.len();
        let vocab = self.config.vocab_size;
        if let Some((i, &id)) = tokens.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
            return Err(Error::TokenOutOfVocabulary {
                id,
                position: start + i,
                vocab_size: vocab,
            });
        }
        let end = start
            .checked_add(tokens.len())
            .ok_or_else(|| Error::invalid("sequence length overflows"))?;
        let max = self.config.max_position_embeddings;
        if end > max {
            return Err(Error::SequenceTooLong { len: end, max });
        }
        u32::try_from(end).map_err(|_| Error::invalid("position overflows u32"))?;
        Ok(start)
    }

    /// The cached forward of checked sequences (`starts[i]` = `seqs[i].cache.len()`).
    fn forward_cached(&self, seqs: &mut [CachedSeq<'_>], starts: &[usize], lora: &LoraCtx) -> Result<Vec<f32>> {
        self.prepare_decoding();
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        for (seq, &start) in seqs.iter_mut().zip(starts) {
            let n = seq.tokens.len();
            tokens.extend_from_slice(seq.tokens);
            positions.extend((start..start + n).map(|p| p as u32));
            seq.cache.reserve(n)?;
        }
        let n = tokens.len();
        let table = RopeTable::new(&self.inv_freq, &positions);
        let mut x = self.embed(&tokens)?;
        let mut s = LayerActs::sized(self, n, self.mlp_chunk_rows())?;
        let mut attend = Attend::Cached {
            seqs: &mut *seqs,
            starts,
        };
        for li in 0..self.config.num_hidden_layers {
            crate::cancel::check(lora.cancel)?;
            self.layer_forward(li, &mut x, &mut attend, &table, lora, &mut s);
        }
        for (seq, &start) in seqs.iter_mut().zip(starts) {
            seq.cache.set_len(start + seq.tokens.len());
        }
        let mut out = crate::buffers::zeros::<f32>(n * self.config.hidden_size, "the final hidden states")?;
        rmsnorm_forward(&x, &self.weights.norm, self.config.rms_norm_eps, &mut out, &mut s.inv1);
        Ok(out)
    }
}
