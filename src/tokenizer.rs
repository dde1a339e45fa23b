//! Tokenizers (HF `tokenizer.json` or rebuilt from GGUF) and chat templates.
