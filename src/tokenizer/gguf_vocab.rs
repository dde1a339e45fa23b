//! A GGUF file's vocabulary (`tokenizer.ggml.*`) and the byte-level BPE tokenizer rebuilt
//! from it.
//!
//! GGUF stores the tokens, their types and the merges but not the pre-tokenizer: it names
//! one (`tokenizer.ggml.pre`) that llama.cpp implements in code. Each name is mapped here to
//! the pre-tokenizer of the model's HF `tokenizer.json` that the name stands for.

use std::collections::BTreeMap;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};
use crate::gguf::GgufValue;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The tokenizer part of a GGUF file's metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` for byte-level BPE.
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer's name.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (empty when the file has none).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"`, highest priority first.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (llama.cpp's default for the pre-tokenizer when absent).
    pub add_bos: bool,
    pub add_eos: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// Typed reads of `tokenizer.*` keys; every error names the key.
struct Metadata<'a> {
    meta: &'a BTreeMap<String, GgufValue>,
    file: &'a Path,
}

impl Metadata<'_> {
    fn wrong(&self, key: &str, expected: &str) -> Error {
        Error::field(self.file, key, format!("expected {expected}"))
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        self.meta
            .get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.wrong(key, "a string"))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.meta
            .get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong(key, "a bool")))
            .transpose()
    }

    fn int<T: TryFrom<i128>>(&self, key: &str, expected: &str) -> Result<Option<T>> {
        self.meta
            .get(key)
            .map(|v| {
                v.as_i128()
                    .and_then(|i| T::try_from(i).ok())
                    .ok_or_else(|| self.wrong(key, expected))
            })
            .transpose()
    }

    fn array<T>(&self, key: &str, expected: &str, item: impl Fn(&GgufValue) -> Option<T>) -> Result<Option<Vec<T>>> {
        let Some(value) = self.meta.get(key) else {
            return Ok(None);
        };
        let list = value
            .as_array()
            .ok_or_else(|| self.wrong(key, &format!("an array of {expected}")))?;
        list.iter()
            .enumerate()
            .map(|(row, v)| {
                item(v).ok_or_else(|| Error::field(self.file, key, format!("element {row}: expected {expected}")))
            })
            .collect::<Result<Vec<T>>>()
            .map(Some)
    }
}

impl GgufVocab {
    /// Reads the vocabulary from a GGUF file's metadata (`file` is named in errors).
    pub fn from_metadata(meta: &BTreeMap<String, GgufValue>, file: &Path) -> Result<GgufVocab> {
        let m = Metadata { meta, file };
        let model = m
            .string("tokenizer.ggml.model")?
            .ok_or_else(|| Error::field(file, "tokenizer.ggml.model", "missing"))?;
        let pre = m.string("tokenizer.ggml.pre")?;
        let tokens = m
            .array("tokenizer.ggml.tokens", "strings", |v| v.as_str().map(str::to_string))?
            .ok_or_else(|| Error::field(file, "tokenizer.ggml.tokens", "missing"))?;
        let token_types = m
            .array("tokenizer.ggml.token_type", "32-bit integers", |v| {
                v.as_i128().and_then(|i| i32::try_from(i).ok())
            })?
            .unwrap_or_default();
        let merges = m
            .array("tokenizer.ggml.merges", "strings", |v| v.as_str().map(str::to_string))?
            .unwrap_or_default();
        let id = |key: &str| m.int::<u32>(key, "a 32-bit token id");
        // llama.cpp's defaults when the file does not say: SentencePiece and Llama 3
        // vocabularies start with BOS.
        let default_bos = match model.as_str() {
            "llama" => true,
            "gpt2" => PreTokenizer::from_name(pre.as_deref(), file).is_ok_and(PreTokenizer::adds_bos_by_default),
            _ => false,
        };
        Ok(GgufVocab {
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: m.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_bos),
            add_eos: m.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            chat_template: m.string("tokenizer.chat_template")?,
            model,
            pre,
            tokens,
            token_types,
            merges,
        })
    }
}

/// The pre-tokenizer families llama.cpp implements for byte-level BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreTokenizer {
    /// GPT-2's regex (HF `ByteLevel(use_regex=true)`).
    Gpt2,
    /// Every digit alone, then GPT-2's regex (StarCoder, SmolLM).
    DigitsThenGpt2,
    /// Llama 3's regex: numbers in groups of up to three, case-insensitive contractions;
    /// words already in the vocabulary skip the merges.
    Llama3,
    /// Qwen2's regex: Llama 3's with single digits, after NFC normalization.
    Qwen2,
}

// The regexes of the models' own tokenizer.json files.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` names accepted, by family (llama.cpp's spellings).
const PRE_NAMES: &[(&str, PreTokenizer)] = &[
    ("default", PreTokenizer::Gpt2),
    ("gpt2", PreTokenizer::Gpt2),
    ("gpt-2", PreTokenizer::Gpt2),
    ("mpt", PreTokenizer::Gpt2),
    ("olmo", PreTokenizer::Gpt2),
    ("phi-2", PreTokenizer::Gpt2),
    ("roberta-bpe", PreTokenizer::Gpt2),
    ("smollm", PreTokenizer::DigitsThenGpt2),
    ("starcoder", PreTokenizer::DigitsThenGpt2),
    ("refact", PreTokenizer::DigitsThenGpt2),
    ("codeshell", PreTokenizer::DigitsThenGpt2),
    ("llama-bpe", PreTokenizer::Llama3),
    ("llama3", PreTokenizer::Llama3),
    ("llama-v3", PreTokenizer::Llama3),
    ("qwen2", PreTokenizer::Qwen2),
    ("deepseek-r1-qwen", PreTokenizer::Qwen2),
];

const PRE_FIELD: &str = "tokenizer.ggml.pre";

impl PreTokenizer {
    /// The family for a `tokenizer.ggml.pre` value; a file without one gets llama.cpp's
    /// fallback, GPT-2's regex.
    pub(crate) fn from_name(pre: Option<&str>, file: &Path) -> Result<Self> {
        let Some(name) = pre else {
            return Ok(PreTokenizer::Gpt2);
        };
        PRE_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| {
                let known: Vec<&str> = PRE_NAMES.iter().map(|(n, _)| *n).collect();
                Error::field(
                    file,
                    PRE_FIELD,
                    format!("unknown pre-tokenizer `{name}` (known: {})", known.join(", ")),
                )
            })
    }

    /// llama.cpp's default for `add_bos_token` when the file does not say.
    pub(crate) fn adds_bos_by_default(self) -> bool {
        self == PreTokenizer::Llama3
    }

    fn ignore_merges(self) -> bool {
        self == PreTokenizer::Llama3
    }

    fn build(self, file: &Path) -> Result<PreTokenizerWrapper> {
        let split = |regex: &str| -> Result<PreTokenizerWrapper> {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::field(file, PRE_FIELD, format!("regex: {e}")))?;
            Ok(split.into())
        };
        // The regex already isolated the words: byte-level only maps bytes to characters.
        let bytes_only = |trim_offsets: bool| ByteLevel::new(false, trim_offsets, false).into();
        Ok(match self {
            PreTokenizer::Gpt2 => ByteLevel::new(false, true, true).into(),
            PreTokenizer::DigitsThenGpt2 => {
                Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
            }
            PreTokenizer::Llama3 => Sequence::new(vec![split(LLAMA3_REGEX)?, bytes_only(true)]).into(),
            PreTokenizer::Qwen2 => Sequence::new(vec![split(QWEN2_REGEX)?, bytes_only(false)]).into(),
        })
    }
}

/// Splits a GGUF merge `"left right"`. The separator is searched after the first character,
/// as llama.cpp does, so that a left part may itself start with a space.
fn split_merge(merge: &str) -> Option<(String, String)> {
    let first_len = merge.chars().next()?.len_utf8();
    let at = merge.get(first_len..)?.find(' ')? + first_len;
    let right = merge.get(at + 1..)?;
    if right.is_empty() {
        return None;
    }
    Some((merge[..at].to_string(), right.to_string()))
}

impl GgufVocab {
    fn token_field_checks(&self, file: &Path) -> Result<()> {
        if self.model != "gpt2" {
            return Err(Error::field(
                file,
                "tokenizer.ggml.model",
                format!(
                    "`{}` is not supported: only byte-level BPE vocabularies (`gpt2`) can be rebuilt",
                    self.model
                ),
            ));
        }
        if self.tokens.is_empty() {
            return Err(Error::field(file, "tokenizer.ggml.tokens", "no tokens"));
        }
        if u32::try_from(self.tokens.len()).is_err() {
            return Err(Error::field(
                file,
                "tokenizer.ggml.tokens",
                format!("{} tokens do not fit 32-bit ids", self.tokens.len()),
            ));
        }
        if !self.token_types.is_empty() && self.token_types.len() != self.tokens.len() {
            return Err(Error::field(
                file,
                "tokenizer.ggml.token_type",
                format!("{} types for {} tokens", self.token_types.len(), self.tokens.len()),
            ));
        }
        let ids = [
            ("tokenizer.ggml.bos_token_id", self.bos_id),
            ("tokenizer.ggml.eos_token_id", self.eos_id),
            ("tokenizer.ggml.unknown_token_id", self.unk_id),
            ("tokenizer.ggml.padding_token_id", self.pad_id),
        ];
        for (field, id) in ids {
            if let Some(id) = id
                && id as usize >= self.tokens.len()
            {
                return Err(Error::field(
                    file,
                    field,
                    format!("id {id} is outside the {} tokens", self.tokens.len()),
                ));
            }
        }
        Ok(())
    }

    /// The text of token `id` (llama.cpp names empty tokens `[EMPTY_<id>]`).
    pub fn token_text(&self, id: u32) -> Option<String> {
        let token = self.tokens.get(id as usize)?;
        Some(if token.is_empty() {
            format!("[EMPTY_{id}]")
        } else {
            token.clone()
        })
    }

    fn special_token(&self, id: Option<u32>) -> Option<(String, u32)> {
        let id = id?;
        Some((self.token_text(id)?, id))
    }

    /// Builds the HF tokenizer equivalent to llama.cpp's for this vocabulary.
    pub(crate) fn build_tokenizer(&self, file: &Path) -> Result<Tokenizer> {
        self.token_field_checks(file)?;
        let pre = PreTokenizer::from_name(self.pre.as_deref(), file)?;

        // A repeated token text keeps its last id, as both llama.cpp and transformers do.
        let vocab: Vocab = (0..self.tokens.len() as u32)
            .filter_map(|id| Some((self.token_text(id)?, id)))
            .collect();
        let merges: Merges = self
            .merges
            .iter()
            .enumerate()
            .map(|(row, merge)| {
                split_merge(merge).ok_or_else(|| {
                    Error::field(
                        file,
                        "tokenizer.ggml.merges",
                        format!("row {row}: `{merge}` is not two tokens separated by a space"),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges())
            .build()
            .map_err(|e| Error::field(file, "tokenizer.ggml.merges", e.to_string()))?;

        let mut tokenizer = Tokenizer::new(bpe);
        if pre == PreTokenizer::Qwen2 {
            tokenizer.with_normalizer(Some(NFC));
        }
        tokenizer.with_pre_tokenizer(Some(pre.build(file)?));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        tokenizer.with_post_processor(Some(self.post_processor(file)?));

        // Tokens the model treats as indivisible are matched in the raw text before the
        // pre-tokenizer runs, like llama.cpp's special-token partition.
        let mut special = Vec::new();
        let mut user_defined = Vec::new();
        for (id, &kind) in self.token_types.iter().enumerate() {
            let Some(text) = self.token_text(id as u32) else {
                continue;
            };
            match kind {
                token_type::CONTROL | token_type::UNKNOWN => {
                    special.push(AddedToken::from(text, true).normalized(false))
                }
                token_type::USER_DEFINED => user_defined.push(AddedToken::from(text, false).normalized(false)),
                _ => {}
            }
        }
        tokenizer.add_special_tokens(&special);
        tokenizer.add_tokens(&user_defined);
        Ok(tokenizer)
    }

    /// `[BOS] $A [EOS]` as the vocabulary asks; built from its serialized form because the
    /// template's token names are the token texts, which may hold any character.
    fn post_processor(&self, file: &Path) -> Result<TemplateProcessing> {
        let bos = if self.add_bos {
            Some(self.special_token(self.bos_id).ok_or_else(|| {
                Error::field(
                    file,
                    "tokenizer.ggml.bos_token_id",
                    "missing, but tokenizer.ggml.add_bos_token is true",
                )
            })?)
        } else {
            None
        };
        let eos = if self.add_eos {
            Some(self.special_token(self.eos_id).ok_or_else(|| {
                Error::field(
                    file,
                    "tokenizer.ggml.eos_token_id",
                    "missing, but tokenizer.ggml.add_eos_token is true",
                )
            })?)
        } else {
            None
        };

        let special = |(text, _): &(String, u32), type_id: u32| serde_json::json!({"SpecialToken": {"id": text, "type_id": type_id}});
        let sequence = |id: &str, type_id: u32| serde_json::json!({"Sequence": {"id": id, "type_id": type_id}});
        let one = |seq: &str, type_id: u32| {
            let mut pieces = Vec::new();
            pieces.extend(bos.as_ref().map(|t| special(t, type_id)));
            pieces.push(sequence(seq, type_id));
            pieces.extend(eos.as_ref().map(|t| special(t, type_id)));
            pieces
        };
        let single = one("A", 0);
        let mut pair = one("A", 0);
        pair.extend(one("B", 1));
        let mut tokens = serde_json::Map::new();
        for (text, id) in bos.iter().chain(eos.iter()) {
            tokens.insert(
                text.clone(),
                serde_json::json!({"id": text, "ids": [id], "tokens": [text]}),
            );
        }
        let json = serde_json::json!({
            "type": "TemplateProcessing",
            "single": single,
            "pair": pair,
            "special_tokens": tokens,
        });
        serde_json::from_value(json)
            .map_err(|e| Error::field(file, "tokenizer.ggml.add_bos_token", format!("post-processor: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_split_after_the_first_character() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ".to_string(), "t".to_string())));
        assert_eq!(split_merge("  a"), Some((" ".to_string(), "a".to_string())));
        assert_eq!(split_merge("ab"), None);
        assert_eq!(split_merge("a "), None);
        assert_eq!(split_merge(""), None);
    }

    fn meta(pre: &str) -> BTreeMap<String, GgufValue> {
        let entries = [
            ("tokenizer.ggml.model", GgufValue::from("gpt2")),
            ("tokenizer.ggml.pre", GgufValue::from(pre)),
            (
                "tokenizer.ggml.tokens",
                GgufValue::Array(vec![GgufValue::from("a"), GgufValue::from("b"), GgufValue::from("ab")]),
            ),
            (
                "tokenizer.ggml.token_type",
                GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(1), GgufValue::I32(3)]),
            ),
            ("tokenizer.ggml.merges", GgufValue::Array(vec![GgufValue::from("a b")])),
            ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ];
        entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn metadata_fills_the_vocabulary_with_llama_cpp_defaults() {
        let file = Path::new("m.gguf");
        let v = GgufVocab::from_metadata(&meta("smollm"), file).unwrap();
        assert_eq!(v.model, "gpt2");
        assert_eq!(v.pre.as_deref(), Some("smollm"));
        assert_eq!(v.tokens, ["a", "b", "ab"]);
        assert_eq!(v.token_types, [1, 1, 3]);
        assert_eq!(v.merges, ["a b"]);
        assert_eq!((v.bos_id, v.eos_id), (None, Some(2)));
        assert!(!v.add_bos && !v.add_eos);
        assert_eq!(v.chat_template, None);
        // Llama 3 vocabularies start with BOS unless the file says otherwise.
        assert!(GgufVocab::from_metadata(&meta("llama-bpe"), file).unwrap().add_bos);
        let mut m = meta("llama-bpe");
        m.insert("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(false));
        assert!(!GgufVocab::from_metadata(&m, file).unwrap().add_bos);
    }

    #[test]
    fn metadata_type_errors_name_the_key() {
        let file = Path::new("m.gguf");
        let cases = [
            ("tokenizer.ggml.eos_token_id", GgufValue::I32(-1)),
            (
                "tokenizer.ggml.tokens",
                GgufValue::Array(vec![GgufValue::from("a"), GgufValue::U32(1)]),
            ),
            ("tokenizer.ggml.merges", GgufValue::from("a b")),
            ("tokenizer.ggml.add_bos_token", GgufValue::U32(1)),
        ];
        for (key, value) in cases {
            let mut m = meta("smollm");
            m.insert(key.to_string(), value);
            match GgufVocab::from_metadata(&m, file) {
                Err(Error::Field { field, .. }) => assert_eq!(field, key),
                other => panic!("{key}: expected a Field error, got {other:?}"),
            }
        }
        let mut m = meta("smollm");
        m.remove("tokenizer.ggml.tokens");
        assert!(matches!(
            GgufVocab::from_metadata(&m, file),
            Err(Error::Field { field, .. }) if field == "tokenizer.ggml.tokens"
        ));
    }
}
