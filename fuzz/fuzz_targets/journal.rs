//! A feedback journal file (`Journal::open_read_only`, and `Journal::repair` for the
//! salvaging scan), its records listed, checked and turned into training plans and a
//! tokenized training set. Each input is read twice: as it is, and with every checksum
//! made valid, because a fuzzer cannot forge CRC-32s and the record decoding behind them
//! is the parser worth reaching.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nudge::journal::frame::{FRAME_OVERHEAD, HEADER_LEN};
use nudge::journal::{Durability, Journal, Target, TrainingOptions, UnpairedPolicy, crc32};
use nudge_fuzz::{put, scratch, tiny_model};

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    if let Ok((journal, _)) = Journal::open_read_only(put(dir, "raw.journal", data)) {
        use_journal(&journal);
    }
    let fixed = with_valid_checksums(data);
    if let Ok((journal, _)) = Journal::open_read_only(put(dir, "fixed.journal", &fixed)) {
        use_journal(&journal);
    }
    // Repair rewrites the file it opens: a copy of its own.
    if let Ok((journal, _)) = Journal::repair(put(dir, "repair.journal", &fixed), Durability::Batch) {
        use_journal(&journal);
    }
});

/// The input with the header's and every frame's CRC-32 recomputed, frames found by their
/// length fields as the reader finds them.
fn with_valid_checksums(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() < HEADER_LEN {
        return b;
    }
    let crc = crc32(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut pos = HEADER_LEN;
    while pos + FRAME_OVERHEAD <= b.len() {
        let len = u32::from_le_bytes(b[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let end = pos + FRAME_OVERHEAD + len;
        if len == 0 || end > b.len() {
            break;
        }
        let mut covered = b[pos..pos + 4].to_vec();
        covered.extend_from_slice(&b[pos + FRAME_OVERHEAD..end]);
        let crc = crc32(&covered);
        b[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
    b
}

fn use_journal(journal: &Journal) {
    for entry in journal.entries() {
        let record = &entry.record;
        let _ = (record.check(), record.to_json(), record.id(), record.timestamp_ms());
        let _ = (journal.get(entry.seq), journal.is_new(entry.seq));
    }
    let _ = (journal.stats(), journal.last_mark(), journal.next_sequence());
    let options = [
        TrainingOptions::default(),
        TrainingOptions {
            only_new: true,
            unpaired: UnpairedPolicy::Keep,
            ..Default::default()
        },
        TrainingOptions {
            target: Target::Kto,
            ..Default::default()
        },
    ];
    for opts in &options {
        let plan = journal.plan(opts);
        let _ = (plan.rows(), plan.mark(0));
    }
    for opts in &options[..2] {
        let _ = journal.training_set(&tiny_model().tokenizer, opts);
    }
}
