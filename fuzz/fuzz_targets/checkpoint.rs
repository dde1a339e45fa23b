//! A training checkpoint (`Checkpoint::from_bytes`), twice: the input as a whole file (its
//! header checks), and the input as the payload behind a valid header, because a fuzzer
//! cannot forge the header's SHA-256 and the bincode decoding behind it is the parser worth
//! reaching. A decoded checkpoint is resumed on the tiny model with the data the seeds were
//! trained on (`Trainer::resume`) and takes one training step.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nudge::PreferenceSet;
use nudge::train::checkpoint::{FORMAT_VERSION, MAGIC};
use nudge::train::{Checkpoint, Trainer};
use nudge_fuzz::{TRAIN_PAIRS, TRAIN_THUMBS, tiny_model, training_data};
use sha2::{Digest, Sha256};

const FILE: &str = "checkpoint.bin";

fuzz_target!(|data: &[u8]| {
    if let Ok(ck) = Checkpoint::from_bytes(data, Path::new(FILE)) {
        resume(ck);
    }
    if let Ok(ck) = Checkpoint::from_bytes(&framed(data), Path::new(FILE)) {
        resume(ck);
    }
});

/// `payload` behind the header `Checkpoint::to_bytes` writes.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(52 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// Resumes on whichever training set the checkpoint's data fingerprint names.
fn resume(ck: Checkpoint) {
    static DATA: OnceLock<[PreferenceSet; 2]> = OnceLock::new();
    let sets = DATA.get_or_init(|| [training_data(TRAIN_PAIRS), training_data(TRAIN_THUMBS)]);
    for data in sets {
        if let Ok(mut trainer) = Trainer::resume(tiny_model(), ck.clone(), data.clone(), Path::new(FILE)) {
            let _ = trainer.train_step();
            return;
        }
    }
}
