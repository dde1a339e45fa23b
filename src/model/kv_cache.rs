//! The KV cache of generation: keys (after rope) and values of every past position, per
//! layer, which the cached forward ([`crate::model::Model::extend`]) reads and extends.

use crate::error::{Error, Result};
use crate::model::config::Config;

/// Keys (after rope) and values of every past position, per layer: what a new token's
/// attention needs from the tokens before it.
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Vec<Vec<f32>>, // per layer: [len, kv_dim]
    v: Vec<Vec<f32>>, // per layer: [len, kv_dim]
    kv_dim: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of this configuration.
    pub fn new(config: &Config) -> Self {
        let n = config.num_hidden_layers;
        KvCache {
            k: vec![Vec::new(); n],
            v: vec![Vec::new(); n],
            kv_dim: config.kv_dim(),
            len: 0,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position (keeps the memory).
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Forgets the positions from `len` on, e.g. to reuse a shared prompt prefix.
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.truncate(len * self.kv_dim);
        }
        self.len = len;
    }

    /// Layer `layer`'s cached keys and values: each `[len, kv_dim]`.
    pub fn layer(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        Some((self.k.get(layer)?.as_slice(), self.v.get(layer)?.as_slice()))
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.len * self.kv_dim * size_of::<f32>()
    }

    /// A cache made for another model shape would be read out of its rows.
    pub(crate) fn check_fits(&self, config: &Config) -> Result<()> {
        if self.k.len() != config.num_hidden_layers || self.kv_dim != config.kv_dim() {
            return Err(Error::invalid(format!(
                "KV cache of {} layers x {} key width does not fit a model of {} layers x {}",
                self.k.len(),
                self.kv_dim,
                config.num_hidden_layers,
                config.kv_dim()
            )));
        }
        Ok(())
    }

    pub(crate) fn reserve(&mut self, tokens: usize) -> crate::error::Result<()> {
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            crate::buffers::reserve(layer, tokens * self.kv_dim, "the KV cache")?;
        }
        Ok(())
    }

    /// Writes rows `start..` of one layer (k, v: `[n, kv_dim]`) and returns that layer's
    /// keys and values through them. The length counts only once every layer has them
    /// ([`Self::set_len`]).
    pub(crate) fn append(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) -> (&[f32], &[f32]) {
        let (kc, vc) = (&mut self.k[layer], &mut self.v[layer]);
        kc.truncate(start * self.kv_dim);
        vc.truncate(start * self.kv_dim);
        kc.extend_from_slice(k);
        vc.extend_from_slice(v);
        (kc, vc)
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// A copy holding room for `tokens` positions in all (no reallocation while it grows
    /// to that length).
    pub(crate) fn fork(&self, tokens: usize) -> crate::error::Result<KvCache> {
        let copy = |layers: &[Vec<f32>]| {
            layers
                .iter()
                .map(|l| {
                    let mut c = Vec::new();
                    crate::buffers::reserve(&mut c, l.len().max(tokens * self.kv_dim), "the KV cache")?;
                    c.extend_from_slice(l);
                    Ok(c)
                })
                .collect::<crate::error::Result<_>>()
        };
        Ok(KvCache {
            k: copy(&self.k)?,
            v: copy(&self.v)?,
            kv_dim: self.kv_dim,
            len: self.len,
        })
    }
}
