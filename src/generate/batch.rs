//! Many replies together: every live row's new token runs through one batched step
//! ([`Model::decode_batch`]); identical prompts are prefilled once and their cache copied.

use super::reply::ReplyText;
use super::*;
use crate::adapter::Adapter;
use crate::cancel::Cancel;
use crate::model::{CachedSeq, LoraCtx};
use rayon::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;

/// One reply to generate in a batch: the prompt's token ids and how to sample and stop.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
}

/// How [`generate_batch_with`] schedules its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// The most rows decoded together (0: all requests). Requests beyond it wait and take
    /// the place of rows that finish. Each live row holds its KV cache (per token
    /// `2 * layers * kv_dim * 4` bytes, 46 KB on SmolLM2-135M).
    pub max_rows: usize,
    /// The most prompt tokens prefilled in one forward pass (a longer prompt runs alone).
    pub max_prefill_tokens: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_rows: 16,
            max_prefill_tokens: 2048,
        }
    }
}

/// A token a batch step generated for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchToken<'a> {
    /// The request's index in the slice given to [`generate_batch`].
    pub request: usize,
    pub token: u32,
    /// The text the token adds to the reply (empty while a character's bytes are
    /// incomplete), as [`generate`]'s callback gets it.
    pub text: &'a str,
}

/// What one step of [`generate_batch`] did, shown to its callback.
#[derive(Debug)]
pub struct BatchProgress<'a> {
    /// The new tokens of this step, one per row that got one, in row order. A stop token
    /// is not among them (as with [`generate`]; its request is in `finished`) unless it
    /// brings text held back for a stop string that did not complete.
    pub tokens: &'a [BatchToken<'a>],
    /// The replies that ended at this step by themselves (a stop token, `max_new_tokens`,
    /// the context), with their request's index: final, as [`generate_batch`] returns
    /// them. Replies the callback stops are only in the returned list.
    pub finished: &'a [(usize, Generated)],
    /// Requests done so far (`finished` included) and in all.
    pub done: usize,
    pub total: usize,
    /// New tokens generated so far, over all requests.
    pub generated: usize,
    /// Rows decoded together at this step.
    pub rows: usize,
    stops: &'a mut Vec<usize>,
}

impl BatchProgress<'_> {
    /// Ends request `request`'s reply after this step's token ([`StopReason::Callback`]);
    /// nothing for a request that is not running or already ended.
    pub fn stop(&mut self, request: usize) {
        self.stops.push(request);
    }
}

/// [`generate_batch_with`] with the default [`BatchOptions`] (16 rows at a time).
pub fn generate_batch(
    model: &Model,
    requests: &[GenerateRequest],
    adapter: Option<&Adapter>,
    on_step: impl FnMut(&mut BatchProgress) -> ControlFlow<()>,
) -> Result<Vec<Generated>> {
    generate_batch_with(model, requests, adapter, &BatchOptions::default(), on_step)
}

/// Generates a reply to every request, decoding up to `batch.max_rows` of them together,
/// and returns the replies in request order. Each reply is bit-identical to [`generate`]
/// of its request alone (same tokens, same text, same stop reason; unless the callback
/// stops it) whatever the batch.
///
/// Every request is checked first: a bad one (empty prompt, token out of vocabulary,
/// prompt longer than the context, bad options) is an [`Error::Request`] naming its index,
/// and nothing runs. `on_step` is called after each step (on the calling thread); it may
/// stop single requests ([`BatchProgress::stop`]) or, by breaking, all of them: the
/// replies so far are returned with [`StopReason::Callback`] (empty for requests that had
/// not started). [`BatchGenerator`] runs the same steps one call at a time.
pub fn generate_batch_with(
    model: &Model,
    requests: &[GenerateRequest],
    adapter: Option<&Adapter>,
    batch: &BatchOptions,
    mut on_step: impl FnMut(&mut BatchProgress) -> ControlFlow<()>,
) -> Result<Vec<Generated>> {
    let mut g = BatchGenerator::new(model, requests, adapter, batch)?;
    let mut stops = Vec::new();
    while g.step()? {
        let tokens = g.tokens();
        let mut progress = BatchProgress {
            tokens: &tokens,
            finished: g.finished(),
            done: g.done(),
            total: requests.len(),
            generated: g.generated(),
            rows: g.rows(),
            stops: &mut stops,
        };
        let cancel = on_step(&mut progress).is_break();
        drop(tokens);
        for r in stops.drain(..) {
            g.stop(r);
        }
        if cancel {
            g.stop_all();
        }
    }
    g.into_results()
}

/// Batched generation one step at a time (for callers that drive the loop themselves,
/// e.g. to run the steps on a thread pool and the callbacks elsewhere):
/// [`generate_batch_with`] is `new`, then [`Self::step`] until it returns false, with
/// [`Self::stop`] wherever wanted, then [`Self::into_results`].
pub struct BatchGenerator<'a> {
    model: &'a Model,
    requests: &'a [GenerateRequest],
    adapter: Option<&'a Adapter>,
    max_rows: usize,
    max_prefill_tokens: usize,
    /// Ids a token may take: the tokenizer's (embedding tables may have padding rows).
    vocab: usize,
    groups: Vec<Group<'a>>,
    group_of: Vec<usize>,
    /// Requests not yet given a row, in order.
    waiting: VecDeque<usize>,
    rows: Vec<Row>,
    results: Vec<Option<Generated>>,
    done: usize,
    generated: usize,
    step_rows: usize,
    /// This step's (request, token, text) and the replies that ended by themselves.
    step_tokens: Vec<(usize, u32, String)>,
    step_finished: Vec<(usize, Generated)>,
    /// A reply that [`Self::stop`] could not finish.
    error: Option<Error>,
    cancel: Option<Cancel<'a>>,
}

impl<'a> BatchGenerator<'a> {
    /// Checks every request (an [`Error::Request`] names a bad one) and the adapter.
    pub fn new(
        model: &'a Model,
        requests: &'a [GenerateRequest],
        adapter: Option<&'a Adapter>,
        batch: &BatchOptions,
    ) -> Result<Self> {
        let cfg = &model.config;
        if let Some(a) = adapter {
            a.check_fits(cfg, std::path::Path::new("<adapter>"))?;
        }
        for (i, r) in requests.iter().enumerate() {
            check_request(model, r).map_err(|e| e.for_request(i))?;
        }
        let max_pos = cfg.max_position_embeddings;
        let mut results: Vec<Option<Generated>> = vec![None; requests.len()];
        // Samples of one prompt share its prefill: one group per distinct prompt.
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of = vec![usize::MAX; requests.len()];
        let mut by_prompt: HashMap<&[u32], usize> = HashMap::new();
        let mut waiting = VecDeque::new();
        for (i, r) in requests.iter().enumerate() {
            // What generate() finds before its first sample.
            if r.opts.max_new_tokens == 0 {
                results[i] = Some(Generated::empty(StopReason::Length));
                continue;
            }
            if r.prompt.len() >= max_pos {
                results[i] = Some(Generated::empty(StopReason::ContextFull));
                continue;
            }
            let g = *by_prompt.entry(&r.prompt).or_insert_with(|| {
                groups.push(Group {
                    prompt: &r.prompt,
                    waiting: 0,
                    prefix: None,
                });
                groups.len() - 1
            });
            groups[g].waiting += 1;
            group_of[i] = g;
            waiting.push_back(i);
        }
        Ok(BatchGenerator {
            model,
            requests,
            adapter,
            max_rows: if batch.max_rows == 0 {
                requests.len()
            } else {
                batch.max_rows
            },
            max_prefill_tokens: batch.max_prefill_tokens,
            vocab: model.tokenizer.vocab_size().min(cfg.vocab_size),
            groups,
            group_of,
            done: requests.len() - waiting.len(),
            waiting,
            rows: Vec::new(),
            results,
            generated: 0,
            step_rows: 0,
            step_tokens: Vec::new(),
            step_finished: Vec::new(),
            error: None,
            cancel: None,
        })
    }

    /// From now on, every step and every prefill (between layers) first asks `cancel`,
    /// and [`Self::step`] ends with [`Error::Cancelled`] once it says so; the replies so
    /// far stay readable.
    pub fn set_cancel(&mut self, cancel: Cancel<'a>) {
        self.cancel = Some(cancel);
    }

    /// One step: the live rows' last tokens run through one batched forward pass, waiting
    /// requests take the free rows (their prompts prefilled), and every row samples its
    /// next token. False once every request has ended (nothing was done).
    pub fn step(&mut self) -> Result<bool> {
        self.keep_finished();
        self.step_tokens.clear();
        crate::cancel::check(self.cancel)?;
        self.decode()?;
        self.admit()?;
        self.step_rows = self.rows.len();
        if self.rows.is_empty() {
            return Ok(false);
        }
        let (model, vocab) = (self.model, self.vocab);
        let max_pos = model.config.max_position_embeddings;
        self.rows
            .par_iter_mut()
            .try_for_each(|row| row.sample(model, vocab, max_pos))?;
        self.generated += self.rows.len();
        self.step_tokens.extend(
            self.rows
                .iter_mut()
                .filter(|r| r.stop != Some(StopReason::Eos) || !r.delta.is_empty())
                .map(|r| {
                    let t = *r.generated.last().expect("sampled");
                    (r.request, t, std::mem::take(&mut r.delta))
                }),
        );
        // Rows that ended by themselves leave the batch (their caches are freed here).
        let ended;
        (ended, self.rows) = std::mem::take(&mut self.rows)
            .into_iter()
            .partition(|r| r.stop.is_some());
        for row in ended {
            let request = row.request;
            self.step_finished.push((request, row.finish()));
        }
        self.done += self.step_finished.len();
        Ok(true)
    }

    /// The last step's new tokens, one per row that got one, in row order (a stop token
    /// is not among them: its request is in [`Self::finished`]).
    pub fn tokens(&self) -> Vec<BatchToken<'_>> {
        self.step_tokens
            .iter()
            .map(|(request, token, text)| BatchToken {
                request: *request,
                token: *token,
                text,
            })
            .collect()
    }

    /// The replies that ended at the last step by themselves, with their request's index.
    pub fn finished(&self) -> &[(usize, Generated)] {
        &self.step_finished
    }

    /// Requests ended so far.
    pub fn done(&self) -> usize {
        self.done
    }

    /// New tokens generated so far, over all requests.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Rows decoded together at the last step.
    pub fn rows(&self) -> usize {
        self.step_rows
    }

    /// Ends request `request`'s reply after its last token ([`StopReason::Callback`]);
    /// nothing for a request that is waiting or has ended.
    pub fn stop(&mut self, request: usize) {
        if let Some(i) = self.rows.iter().position(|r| r.request == request) {
            let mut row = self.rows.remove(i);
            row.stop = Some(StopReason::Callback);
            self.retire(row);
        }
    }

    /// Ends every reply: running ones after their last token, waiting ones empty (all
    /// [`StopReason::Callback`]).
    pub fn stop_all(&mut self) {
        for mut row in std::mem::take(&mut self.rows) {
            row.stop = Some(StopReason::Callback);
            self.retire(row);
        }
        for i in std::mem::take(&mut self.waiting) {
            self.results[i] = Some(Generated::empty(StopReason::Callback));
            self.done += 1;
        }
    }

    /// Every reply, in request order; requests still running or waiting end as by
    /// [`Self::stop_all`].
    pub fn into_results(mut self) -> Result<Vec<Generated>> {
        self.stop_all();
        self.keep_finished();
        if let Some(e) = self.error {
            return Err(e);
        }
        Ok(self
            .results
            .into_iter()
            .map(|r| r.expect("every request ends"))
            .collect())
    }

    fn keep_finished(&mut self) {
        for (i, g) in self.step_finished.drain(..) {
            self.results[i] = Some(g);
        }
    }

    fn retire(&mut self, row: Row) {
        let request = row.request;
        self.results[request] = Some(row.finish());
        self.done += 1;
    }

    /// Waiting requests into free rows, prefilling the prompts not yet cached.
    fn admit(&mut self) -> Result<()> {
        let free = self.max_rows.saturating_sub(self.rows.len()).min(self.waiting.len());
        let admit: Vec<usize> = self.waiting.drain(..free).collect();
        let mut need: Vec<usize> = admit.iter().map(|&i| self.group_of[i]).collect();
        need.sort_unstable();
        need.dedup();
        need.retain(|&g| self.groups[g].prefix.is_none());
        prefill_groups(
            self.model,
            &mut self.groups,
            &need,
            LoraCtx {
                adapter: self.adapter,
                dropout: None,
                cancel: self.cancel,
            },
            self.max_prefill_tokens,
        )?;
        let max_pos = self.model.config.max_position_embeddings;
        for i in admit {
            let g = &mut self.groups[self.group_of[i]];
            g.waiting -= 1;
            let r = &self.requests[i];
            let room = (r.prompt.len() + r.opts.max_new_tokens).min(max_pos);
            let (cache, logits) = if g.waiting == 0 {
                let (mut c, l) = g.prefix.take().expect("prefilled");
                c.reserve(room - c.len())?;
                (c, l)
            } else {
                let (c, l) = g.prefix.as_ref().expect("prefilled");
                (c.fork(room)?, l.clone())
            };
            self.rows.push(Row {
                request: i,
                prompt_len: r.prompt.len(),
                cache,
                sampler: Sampler::new(&r.opts)?,
                stop_tokens: r.opts.stop_tokens_for(self.model),
                max_new_tokens: r.opts.max_new_tokens,
                logits,
                generated: Vec::new(),
                decoded: String::new(),
                reply: ReplyText::new(&r.opts.stop_strings),
                delta: String::new(),
                stop: None,
            });
        }
        Ok(())
    }

    /// One batched forward pass of every live row's last token.
    fn decode(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let tokens: Vec<u32> = self
            .rows
            .iter()
            .map(|r| *r.generated.last().expect("a live row has sampled"))
            .collect();
        let mut caches: Vec<&mut KvCache> = self.rows.iter_mut().map(|r| &mut r.cache).collect();
        let out = self
            .model
            .decode_batch(&tokens, &mut caches, self.adapter)
            .map_err(|e| match e {
                Error::Request { index, source } => Error::Request {
                    index: self.rows[index].request,
                    source,
                },
                e => e,
            })?;
        let v = self.model.config.vocab_size;
        for (row, l) in self.rows.iter_mut().zip(out.chunks_exact(v)) {
            row.logits.copy_from_slice(l);
        }
        Ok(())
    }
}

impl GenerateRequest {
    /// What [`generate`] and [`generate_batch`] check before they run: the options, a
    /// non-empty prompt of ids in the vocabulary, no longer than the context.
    pub fn check(&self, model: &Model) -> Result<()> {
        check_request(model, self)
    }
}

fn check_request(model: &Model, r: &GenerateRequest) -> Result<()> {
    r.opts.validate()?;
    if r.prompt.is_empty() {
        return Err(Error::invalid("the prompt has no tokens"));
    }
    let vocab = model.config.vocab_size;
    if let Some((position, &id)) = r.prompt.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
        return Err(Error::TokenOutOfVocabulary {
            id,
            position,
            vocab_size: vocab,
        });
    }
    let max = model.config.max_position_embeddings;
    if r.prompt.len() > max {
        return Err(Error::SequenceTooLong {
            len: r.prompt.len(),
            max,
        });
    }
    Ok(())
}

/// The requests of a batch that share one prompt.
struct Group<'r> {
    prompt: &'r [u32],
    /// Requests not yet given a row.
    waiting: usize,
    /// The prompt's cache and next-token logits, from when the first request is admitted
    /// until the last one is.
    prefix: Option<(KvCache, Vec<f32>)>,
}

/// Prefills the prompts of `groups[need]`, several per forward pass up to `budget`
/// tokens.
fn prefill_groups(model: &Model, groups: &mut [Group], need: &[usize], lora: LoraCtx, budget: usize) -> Result<()> {
    let (hidden, vocab) = (model.config.hidden_size, model.config.vocab_size);
    let mut rest = need;
    while !rest.is_empty() {
        let mut n = 0;
        let mut tokens = 0;
        while n < rest.len() && (n == 0 || tokens + groups[rest[n]].prompt.len() <= budget) {
            tokens += groups[rest[n]].prompt.len();
            n += 1;
        }
        let (part, tail) = rest.split_at(n);
        rest = tail;
        let mut caches: Vec<KvCache> = part.iter().map(|_| KvCache::new(&model.config)).collect();
        let mut seqs: Vec<CachedSeq> = part
            .iter()
            .zip(caches.iter_mut())
            .map(|(&g, cache)| CachedSeq {
                tokens: groups[g].prompt,
                cache,
            })
            .collect();
        let h = model.extend_batch_ctx(&mut seqs, lora)?;
        // The last position of each prompt gives its next-token logits.
        let mut last = Vec::with_capacity(part.len() * hidden);
        let mut end = 0;
        for s in &seqs {
            end += s.tokens.len();
            last.extend_from_slice(&h[(end - 1) * hidden..end * hidden]);
        }
        drop(seqs);
        let l = model.logits(&last)?;
        for ((&g, cache), l) in part.iter().zip(caches).zip(l.chunks_exact(vocab)) {
            groups[g].prefix = Some((cache, l.to_vec()));
        }
    }
    Ok(())
}

/// A request being decoded.
struct Row {
    request: usize,
    prompt_len: usize,
    cache: KvCache,
    sampler: Sampler,
    stop_tokens: Vec<u32>,
    max_new_tokens: usize,
    logits: Vec<f32>, // [config vocab] of the next token
    generated: Vec<u32>,
    decoded: String, // the generated tokens decoded (the stop token left out)
    reply: ReplyText,
    delta: String, // the text the last token added
    stop: Option<StopReason>,
}

impl Row {
    /// Samples the next token and ends the row where [`Generator`] would.
    fn sample(&mut self, model: &Model, vocab: usize, max_pos: usize) -> Result<()> {
        let t = self.sampler.sample(&self.logits[..vocab]);
        self.generated.push(t);
        self.delta.clear();
        if self.stop_tokens.contains(&t) {
            self.stop = Some(StopReason::Eos);
            // Text held back for a stop string that did not complete comes with the EOS.
            let rest = self.reply.rest(&self.decoded);
            self.delta.push_str(rest);
            return Ok(());
        }
        self.decoded = model.tokenizer.decode(&self.generated, true)?;
        if self.generated.len() >= self.max_new_tokens {
            self.stop = Some(StopReason::Length);
        } else if self.prompt_len + self.generated.len() >= max_pos {
            self.stop = Some(StopReason::ContextFull);
        }
        let (delta, hit) = self.reply.advance(&self.decoded, self.stop.is_some());
        self.delta.push_str(delta);
        if hit {
            self.stop = Some(StopReason::StopString);
        }
        Ok(())
    }

    fn finish(self) -> Generated {
        let stop_reason = self.stop.expect("a finished row");
        Generated {
            text: self.reply.cut(&self.decoded).to_string(),
            ids: self.generated,
            stop_reason,
        }
    }
}
