//! Tokenizer and chat-template tests: the HF files and the GGUF vocabulary of the golden
//! model against the reference ids and prompts, and the GGUF rebuild's pre-tokenizer
//! families and error paths on small synthetic vocabularies.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use nudge::Error;
use nudge::gguf::GgufFile;
use nudge::tokenizer::{ChatMessage, GgufVocab, TextTokenizer, token_type};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Golden reference

fn golden_dir() -> PathBuf {
    std::env::var_os("NUDGE_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/smollm2"))
}

fn golden() -> Value {
    let path = golden_dir().join("golden.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (set NUDGE_GOLDEN_DIR)", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn hf_tokenizer() -> TextTokenizer {
    TextTokenizer::from_hf_dir(&golden_dir().join("hf")).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an id list")
        .iter()
        .map(|v| u32::try_from(v.as_u64().expect("an id")).unwrap())
        .collect()
}

/// `(text, ids)` of every golden tokenizer entry.
fn golden_tokenizer_cases() -> Vec<(String, Vec<u32>)> {
    let golden = golden();
    let cases: Vec<_> = golden["tokenizer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["text"].as_str().unwrap().to_string(), ids(&c["ids"])))
        .collect();
    assert!(!cases.is_empty());
    cases
}

/// `(messages, text)` of every golden chat-template entry.
fn golden_chat_cases() -> Vec<(Vec<ChatMessage>, String)> {
    let golden = golden();
    let cases: Vec<_> = golden["chat_template"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let turns = c["turns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| ChatMessage::new(t[0].as_str().unwrap(), t[1].as_str().unwrap()))
                .collect();
            (turns, c["text"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(!cases.is_empty());
    cases
}

/// Every id list of the golden examples (prompts and both completions).
fn golden_example_ids() -> Vec<Vec<u32>> {
    let golden = golden();
    let mut all = Vec::new();
    for example in golden["examples"].as_array().unwrap() {
        for key in ["prompt_ids", "chosen_ids", "rejected_ids"] {
            all.push(ids(&example[key]));
        }
    }
    assert!(!all.is_empty());
    all
}

fn check_golden_encoding(tok: &TextTokenizer) {
    for (text, expected) in golden_tokenizer_cases() {
        assert_eq!(tok.encode(&text, false).unwrap(), expected, "encode {text:?}");
        assert_eq!(tok.decode(&expected, false).unwrap(), text, "decode {expected:?}");
    }
}

fn check_golden_chat(tok: &TextTokenizer) {
    assert!(tok.has_chat_template());
    for (messages, expected) in golden_chat_cases() {
        assert_eq!(tok.apply_chat_template(&messages, true).unwrap(), expected);
    }
}

fn check_examples_round_trip(tok: &TextTokenizer) {
    for expected in golden_example_ids() {
        let text = tok.decode(&expected, false).unwrap();
        assert_eq!(tok.encode(&text, false).unwrap(), expected, "re-encode {text:?}");
    }
}

#[test]
fn hf_encodes_golden_texts_to_their_ids_and_back() {
    check_golden_encoding(&hf_tokenizer());
}

#[test]
fn hf_chat_template_renders_golden_prompts() {
    check_golden_chat(&hf_tokenizer());
}

#[test]
fn hf_example_ids_decode_and_re_encode_to_themselves() {
    check_examples_round_trip(&hf_tokenizer());
}

#[test]
fn hf_special_tokens_come_from_tokenizer_config() {
    let tok = hf_tokenizer();
    let path = golden_dir().join("hf/tokenizer_config.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let bos = config["bos_token"].as_str().unwrap();
    let eos = config["eos_token"].as_str().unwrap();
    assert_eq!(tok.bos_token(), Some(bos));
    assert_eq!(tok.eos_token(), Some(eos));
    assert_eq!(tok.eos_id(), tok.token_to_id(eos));
    assert!(tok.eos_id().is_some());
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("hf/tokenizer.json")).unwrap()).unwrap();
    let model_vocab = json["model"]["vocab"].as_object().unwrap().len();
    assert_eq!(tok.vocab_size(), model_vocab);

    let written = tok.tokenizer_config_json();
    for field in ["bos_token", "eos_token", "pad_token", "unk_token"] {
        assert_eq!(written[field], config[field], "{field}");
    }
    let template = std::fs::read_to_string(golden_dir().join("hf/chat_template.jinja")).unwrap();
    assert_eq!(written["chat_template"].as_str(), Some(template.as_str()));
    assert_eq!(tok.chat_template_source(), Some(template.as_str()));
}

#[test]
fn hf_tokenizer_json_written_back_encodes_identically() {
    let tok = hf_tokenizer();
    let reloaded = tokenizers::Tokenizer::from_str(&tok.to_tokenizer_json().unwrap()).unwrap();
    for (text, expected) in golden_tokenizer_cases() {
        let encoding = reloaded.encode(text.as_str(), false).unwrap();
        assert_eq!(encoding.get_ids(), expected.as_slice(), "{text:?}");
    }
    for expected in golden_example_ids() {
        let text = tok.decode(&expected, false).unwrap();
        let encoding = reloaded.encode(text.as_str(), false).unwrap();
        assert_eq!(encoding.get_ids(), expected.as_slice(), "{text:?}");
    }
}

#[test]
fn decode_rejects_ids_outside_the_vocabulary() {
    let tok = hf_tokenizer();
    let outside = u32::try_from(tok.vocab_size()).unwrap();
    match tok.decode(&[0, outside], false) {
        Err(Error::TokenOutOfVocabulary {
            id,
            position,
            vocab_size,
        }) => {
            assert_eq!((id, position, vocab_size), (outside, 1, tok.vocab_size()));
        }
        other => panic!("expected TokenOutOfVocabulary, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The golden model's GGUF file

fn model_path() -> PathBuf {
    std::env::var_os("NUDGE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

fn gguf_tokenizer() -> TextTokenizer {
    let path = model_path();
    let gguf = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e} (set NUDGE_MODEL)"));
    TextTokenizer::from_gguf(&gguf).unwrap()
}

#[test]
fn gguf_encodes_golden_texts_to_their_ids_and_back() {
    check_golden_encoding(&gguf_tokenizer());
}

#[test]
fn gguf_chat_template_renders_golden_prompts() {
    check_golden_chat(&gguf_tokenizer());
}

#[test]
fn gguf_example_ids_decode_and_re_encode_to_themselves() {
    check_examples_round_trip(&gguf_tokenizer());
}

#[test]
fn gguf_rebuild_agrees_with_the_hf_tokenizer() {
    let (gguf, hf) = (gguf_tokenizer(), hf_tokenizer());
    assert_eq!(gguf.vocab_size(), hf.vocab_size());
    assert_eq!(gguf.bos_token(), hf.bos_token());
    assert_eq!(gguf.eos_token(), hf.eos_token());
    assert_eq!(gguf.eos_id(), hf.eos_id());
    for expected in golden_example_ids() {
        let text = hf.decode(&expected, false).unwrap();
        assert_eq!(gguf.decode(&expected, false).unwrap(), text);
        assert_eq!(gguf.encode(&text, false).unwrap(), hf.encode(&text, false).unwrap());
        for special in [false, true] {
            assert_eq!(gguf.encode(&text, special).unwrap(), hf.encode(&text, special).unwrap());
            assert_eq!(
                gguf.decode(&expected, special).unwrap(),
                hf.decode(&expected, special).unwrap()
            );
        }
    }
    for (messages, _) in golden_chat_cases() {
        let text = gguf.apply_chat_template(&messages, true).unwrap();
        assert_eq!(gguf.encode(&text, false).unwrap(), hf.encode(&text, false).unwrap());
    }
}

#[test]
fn gguf_tokenizer_json_written_back_encodes_like_the_golden_ids() {
    let tok = gguf_tokenizer();
    let reloaded = tokenizers::Tokenizer::from_str(&tok.to_tokenizer_json().unwrap()).unwrap();
    for (text, expected) in golden_tokenizer_cases() {
        let encoding = reloaded.encode(text.as_str(), false).unwrap();
        assert_eq!(encoding.get_ids(), expected.as_slice(), "{text:?}");
    }
    // The written config carries what the HF directory's does.
    let written = tok.tokenizer_config_json();
    let hf = hf_tokenizer().tokenizer_config_json();
    for field in ["bos_token", "eos_token", "pad_token", "unk_token"] {
        assert_eq!(written[field], hf[field], "{field}");
    }
    assert_eq!(
        written["chat_template"].as_str().map(str::trim_end),
        hf["chat_template"].as_str().map(str::trim_end)
    );
}

// ---------------------------------------------------------------------------------------
// Synthetic GGUF vocabularies

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the
/// others take the code points from 256 up, in byte order.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                let c = char::from_u32(next).unwrap();
                next += 1;
                c
            }
        })
        .collect()
}

fn byte_level(text: &str) -> String {
    let table = byte_chars();
    text.bytes().map(|b| table[b as usize]).collect()
}

const CONTROL: &str = "<|ctl|>";
const USER: &str = "<user>";
const BOS: &str = "<s>";
const EOS: &str = "</s>";

/// Every byte, a few merged tokens and special tokens; `pre` selects the pre-tokenizer.
fn synthetic_vocab(pre: &str) -> GgufVocab {
    let mut tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
    let mut token_types = vec![token_type::NORMAL; tokens.len()];
    let merged = ["12", "123", "1234", "'M", "ab", &byte_level("é")];
    tokens.extend(merged.iter().map(|t| t.to_string()));
    token_types.extend(merged.iter().map(|_| token_type::NORMAL));
    for (text, kind) in [
        (CONTROL, token_type::CONTROL),
        (USER, token_type::USER_DEFINED),
        (BOS, token_type::CONTROL),
        (EOS, token_type::CONTROL),
    ] {
        tokens.push(text.to_string());
        token_types.push(kind);
    }
    let e_acute = byte_level("é");
    let mut chars = e_acute.chars();
    let (e0, e1) = (chars.next().unwrap(), chars.next().unwrap());
    // No `a b` merge: `ab` is reachable only as a whole word.
    let merges = vec![
        "1 2".to_string(),
        "12 3".to_string(),
        "123 4".to_string(),
        "' M".to_string(),
        format!("{e0} {e1}"),
    ];
    let id = |t: &str| tokens.iter().position(|x| x == t).map(|i| i as u32);
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        bos_id: id(BOS),
        eos_id: id(EOS),
        unk_id: None,
        pad_id: None,
        add_bos: false,
        add_eos: false,
        chat_template: None,
        merges,
        token_types,
        tokens,
    }
}

fn synthetic_file() -> PathBuf {
    PathBuf::from("synthetic.gguf")
}

fn build(vocab: &GgufVocab) -> TextTokenizer {
    TextTokenizer::from_gguf_vocab(vocab, &synthetic_file()).unwrap()
}

/// Ids of `pieces`, each given as text and looked up in byte-level form.
fn piece_ids(tok: &TextTokenizer, pieces: &[&str]) -> Vec<u32> {
    pieces
        .iter()
        .map(|p| {
            tok.token_to_id(&byte_level(p))
                .unwrap_or_else(|| panic!("no token {p:?}"))
        })
        .collect()
}

#[test]
fn gguf_pre_tokenizers_split_numbers_by_family() {
    // GPT-2 keeps a run of digits whole; Llama 3 cuts it in threes; SmolLM and Qwen2 split
    // every digit.
    let cases: [(&str, &[&str]); 4] = [
        ("gpt2", &["1234"]),
        ("llama-bpe", &["123", "4"]),
        ("smollm", &["1", "2", "3", "4"]),
        ("qwen2", &["1", "2", "3", "4"]),
    ];
    for (pre, pieces) in cases {
        let tok = build(&synthetic_vocab(pre));
        assert_eq!(tok.encode("1234", false).unwrap(), piece_ids(&tok, pieces), "{pre}");
        assert_eq!(tok.decode(&tok.encode("1234", false).unwrap(), false).unwrap(), "1234");
    }
}

#[test]
fn gguf_pre_tokenizers_treat_contractions_by_family() {
    // Llama 3 and Qwen2 match contractions case-insensitively; GPT-2's regex only knows
    // lower case, so the apostrophe stands alone and `' M` cannot merge.
    let cases: [(&str, &[&str]); 4] = [
        ("gpt2", &["I", "'", "M"]),
        ("smollm", &["I", "'", "M"]),
        ("llama-bpe", &["I", "'M"]),
        ("qwen2", &["I", "'M"]),
    ];
    for (pre, pieces) in cases {
        let tok = build(&synthetic_vocab(pre));
        assert_eq!(tok.encode("I'M", false).unwrap(), piece_ids(&tok, pieces), "{pre}");
    }
}

#[test]
fn gguf_llama3_takes_whole_words_from_the_vocabulary() {
    let cases: [(&str, &[&str]); 3] = [("llama-bpe", &["ab"]), ("gpt2", &["a", "b"]), ("qwen2", &["a", "b"])];
    for (pre, pieces) in cases {
        let tok = build(&synthetic_vocab(pre));
        assert_eq!(tok.encode("ab", false).unwrap(), piece_ids(&tok, pieces), "{pre}");
    }
}

#[test]
fn gguf_qwen2_normalizes_to_nfc() {
    let decomposed = "e\u{301}";
    let qwen = build(&synthetic_vocab("qwen2"));
    assert_eq!(qwen.encode(decomposed, false).unwrap(), piece_ids(&qwen, &["é"]));
    // Without NFC the combining accent stays its own bytes, which no merge joins.
    let gpt2 = build(&synthetic_vocab("gpt2"));
    let bytes: Vec<u32> = byte_level(decomposed)
        .chars()
        .map(|c| gpt2.token_to_id(&c.to_string()).unwrap())
        .collect();
    assert_eq!(bytes.len(), 3);
    assert_eq!(gpt2.encode(decomposed, false).unwrap(), bytes);
}

#[test]
fn gguf_control_and_user_defined_tokens_are_matched_whole() {
    let tok = build(&synthetic_vocab("smollm"));
    let [a, b] = piece_ids(&tok, &["a", "b"])[..] else {
        unreachable!()
    };
    let control = tok.token_to_id(CONTROL).unwrap();
    let user = tok.token_to_id(USER).unwrap();
    let text = format!("a{CONTROL}b{USER}a");
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(ids, vec![a, control, b, user, a]);
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    // Control tokens are special (skipped on request); user-defined ones are text.
    assert_eq!(tok.decode(&ids, true).unwrap(), format!("ab{USER}a"));
}

#[test]
fn gguf_bos_and_eos_are_added_when_the_vocabulary_asks() {
    let mut vocab = synthetic_vocab("llama-bpe");
    let plain = build(&vocab).encode("ab", true).unwrap();
    vocab.add_bos = true;
    let tok = build(&vocab);
    let bos = vocab.bos_id.unwrap();
    assert_eq!(tok.encode("ab", true).unwrap(), [vec![bos], plain.clone()].concat());
    assert_eq!(tok.encode("ab", false).unwrap(), plain);
    assert_eq!(tok.bos_token(), Some(BOS));
    assert_eq!(tok.bos_id(), Some(bos));

    vocab.add_eos = true;
    let tok = build(&vocab);
    let eos = vocab.eos_id.unwrap();
    assert_eq!(tok.encode("ab", true).unwrap(), [vec![bos], plain, vec![eos]].concat());
    assert_eq!(tok.eos_id(), Some(eos));
    assert_eq!(tok.eos_token(), Some(EOS));
}

#[test]
fn gguf_tokenizer_json_written_back_encodes_identically() {
    for pre in ["gpt2", "smollm", "llama-bpe", "qwen2"] {
        let mut vocab = synthetic_vocab(pre);
        vocab.add_bos = true;
        let tok = build(&vocab);
        let reloaded = tokenizers::Tokenizer::from_str(&tok.to_tokenizer_json().unwrap()).unwrap();
        for text in ["1234 I'M ab e\u{301}", "a<|ctl|>b<user>", "  x\n\ny"] {
            for special in [false, true] {
                let encoding = reloaded.encode(text, special).unwrap();
                assert_eq!(
                    encoding.get_ids(),
                    tok.encode(text, special).unwrap().as_slice(),
                    "{pre} {text:?}"
                );
            }
        }
    }
}

fn expect_field(result: Result<TextTokenizer, Error>, field_name: &str, needle: &str) {
    match result {
        Err(Error::Field { file, field, what }) => {
            assert_eq!(file, synthetic_file());
            assert_eq!(field, field_name);
            assert!(what.contains(needle), "{what:?} lacks {needle:?}");
        }
        other => panic!("expected a `{field_name}` error, got {other:?}"),
    }
}

#[test]
fn gguf_unknown_pre_tokenizer_is_a_typed_error() {
    let vocab = synthetic_vocab("no-such-pre");
    let result = TextTokenizer::from_gguf_vocab(&vocab, &synthetic_file());
    expect_field(result, "tokenizer.ggml.pre", "no-such-pre");
}

#[test]
fn gguf_malformed_vocabularies_are_typed_errors() {
    let file = synthetic_file();
    let mut v = synthetic_vocab("gpt2");
    v.model = "llama".into();
    expect_field(
        TextTokenizer::from_gguf_vocab(&v, &file),
        "tokenizer.ggml.model",
        "llama",
    );

    let mut v = synthetic_vocab("gpt2");
    v.merges.push("nospace".into());
    let row = (v.merges.len() - 1).to_string();
    expect_field(TextTokenizer::from_gguf_vocab(&v, &file), "tokenizer.ggml.merges", &row);

    let mut v = synthetic_vocab("gpt2");
    v.merges.push("4 4".into()); // `44` is not a token
    expect_field(TextTokenizer::from_gguf_vocab(&v, &file), "tokenizer.ggml.merges", "");

    let mut v = synthetic_vocab("gpt2");
    v.bos_id = Some(v.tokens.len() as u32);
    expect_field(
        TextTokenizer::from_gguf_vocab(&v, &file),
        "tokenizer.ggml.bos_token_id",
        "outside",
    );

    let mut v = synthetic_vocab("gpt2");
    v.token_types.pop();
    expect_field(
        TextTokenizer::from_gguf_vocab(&v, &file),
        "tokenizer.ggml.token_type",
        "",
    );

    let mut v = synthetic_vocab("gpt2");
    v.add_bos = true;
    v.bos_id = None;
    expect_field(
        TextTokenizer::from_gguf_vocab(&v, &file),
        "tokenizer.ggml.bos_token_id",
        "add_bos_token",
    );
}

// ---------------------------------------------------------------------------------------
// Chat templates

fn with_template(template: &str) -> TextTokenizer {
    let mut vocab = synthetic_vocab("gpt2");
    vocab.chat_template = Some(template.to_string());
    build(&vocab)
}

fn messages(turns: &[(&str, &str)]) -> Vec<ChatMessage> {
    turns.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
}

#[test]
fn chat_template_raise_exception_is_a_typed_error_with_its_message() {
    let message = "Conversation roles must alternate user/assistant";
    let tok = with_template(&format!(
        "{{% for m in messages %}}{{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}}\
         {{{{ raise_exception('{message}') }}}}{{% endif %}}{{{{ m['content'] }}}}{{% endfor %}}"
    ));
    let good = messages(&[("user", "a"), ("assistant", "b")]);
    assert_eq!(tok.apply_chat_template(&good, false).unwrap(), "ab");
    let bad = messages(&[("user", "a"), ("user", "b")]);
    match tok.apply_chat_template(&bad, false) {
        Err(Error::ChatTemplate(text)) => {
            assert!(text.contains(message), "{text:?}");
            assert!(text.contains("synthetic.gguf"), "{text:?}");
        }
        other => panic!("expected ChatTemplate, got {other:?}"),
    }
}

#[test]
fn chat_template_follows_hf_whitespace_rules_and_python_methods() {
    // trim_blocks + lstrip_blocks, no trailing newline kept, `.strip()` from Python;
    // the expected text is what transformers' Jinja2 environment renders.
    let template = "{{ bos_token }}\n{% for m in messages %}\n    {% if m['role'] == 'user' %}\n\
                    [U] {{ m['content'].strip() }}\n    {% else %}\n[{{ m.role }}] {{ m.content }}\n\
                    \x20   {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n[A]\n{% endif %}\n";
    let tok = with_template(template);
    let turns = messages(&[("user", "  hi  "), ("assistant", "yo")]);
    assert_eq!(
        tok.apply_chat_template(&turns, true).unwrap(),
        "<s>\n[U] hi\n[assistant] yo\n[A]\n"
    );
    assert_eq!(
        tok.apply_chat_template(&turns, false).unwrap(),
        "<s>\n[U] hi\n[assistant] yo\n"
    );
    let tail = with_template("{{ eos_token }}\n");
    assert_eq!(tail.apply_chat_template(&turns, false).unwrap(), EOS);
}

#[test]
fn chat_template_syntax_errors_are_typed() {
    let tok = with_template("{% for m in messages %}");
    match tok.apply_chat_template(&messages(&[("user", "a")]), true) {
        Err(Error::ChatTemplate(text)) => assert!(text.contains("synthetic.gguf"), "{text:?}"),
        other => panic!("expected ChatTemplate, got {other:?}"),
    }
}

#[test]
fn missing_chat_template_names_the_model_file() {
    let tok = build(&synthetic_vocab("gpt2"));
    assert!(!tok.has_chat_template());
    match tok.apply_chat_template(&messages(&[("user", "a")]), true) {
        Err(Error::Field { file, field, .. }) => {
            assert_eq!(file, synthetic_file());
            assert_eq!(field, "tokenizer.chat_template");
        }
        other => panic!("expected a Field error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// HF directories

/// A fresh directory under the test target holding `files`.
fn hf_dir(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokenizer").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

fn synthetic_tokenizer_json() -> String {
    build(&synthetic_vocab("smollm")).to_tokenizer_json().unwrap()
}

#[test]
fn hf_chat_template_jinja_wins_over_the_config() {
    let json = synthetic_tokenizer_json();
    let config = serde_json::json!({
        "bos_token": {"content": BOS, "special": true},
        "eos_token": EOS,
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "config {{ bos_token }}"},
        ],
    })
    .to_string();
    let dir = hf_dir(
        "config_template",
        &[("tokenizer.json", &json), ("tokenizer_config.json", &config)],
    );
    let tok = TextTokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(tok.bos_token(), Some(BOS));
    assert_eq!(tok.eos_id(), tok.token_to_id(EOS));
    assert_eq!(tok.apply_chat_template(&[], false).unwrap(), format!("config {BOS}"));

    let dir = hf_dir(
        "jinja_template",
        &[
            ("tokenizer.json", &json),
            ("tokenizer_config.json", &config),
            ("chat_template.jinja", "jinja {{ eos_token }}"),
        ],
    );
    let tok = TextTokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(tok.apply_chat_template(&[], false).unwrap(), format!("jinja {EOS}"));

    let dir = hf_dir("no_template", &[("tokenizer.json", &json)]);
    let tok = TextTokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(tok.bos_token(), None);
    match tok.apply_chat_template(&[], false) {
        Err(Error::Field { file, field, .. }) => {
            assert_eq!(file, dir);
            assert_eq!(field, "chat_template");
        }
        other => panic!("expected a Field error, got {other:?}"),
    }
}

#[test]
fn hf_malformed_files_are_typed_errors_naming_the_file() {
    for (name, text) in [("not_json", "{\"model\": "), ("not_a_tokenizer", "{\"model\": 3}")] {
        let dir = hf_dir(name, &[("tokenizer.json", text)]);
        match TextTokenizer::from_hf_dir(&dir) {
            Err(Error::Format { file, .. }) => assert_eq!(file, dir.join("tokenizer.json")),
            other => panic!("expected a Format error, got {other:?}"),
        }
    }

    let dir = hf_dir(
        "bad_config",
        &[
            ("tokenizer.json", &synthetic_tokenizer_json()),
            ("tokenizer_config.json", "{\"bos_token\": 7}"),
        ],
    );
    match TextTokenizer::from_hf_dir(&dir) {
        Err(Error::Field { file, field, .. }) => {
            assert_eq!(file, dir.join("tokenizer_config.json"));
            assert_eq!(field, "bos_token");
        }
        other => panic!("expected a Field error, got {other:?}"),
    }

    let dir = hf_dir("empty", &[]);
    match TextTokenizer::from_hf_dir(&dir) {
        Err(Error::Io { path, .. }) => assert_eq!(path, dir.join("tokenizer.json")),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TextTokenizer>();
}
