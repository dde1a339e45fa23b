//! Model files (GGUF, HF safetensors directories), their configuration, and the network.

pub mod gguf;
