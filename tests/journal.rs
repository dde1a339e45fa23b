//! The feedback journal: round trips, torn tails, damage in the middle, bad headers,
//! writers killed with SIGKILL, compaction (also killed), pairing and "new since training".

mod common;

use common::tiny::{fresh_dir, tokenizer_json};
use nudge::Error;
use nudge::data::{PreferenceSet, Truncation, TruncationMode};
use nudge::journal::{
    CompactOptions, Dropped, Durability, Entry, Journal, PreferencePair, Prompt, Record, Target, Thumbs,
    TrainingOptions, UnpairedPolicy,
};
use nudge::tokenizer::{ChatMessage, TextTokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};

const T0: u64 = 1_700_000_000_000;

fn thumb(id: &str, prompt: &str, completion: &str, up: bool, strength: Option<f32>) -> Record {
    Record::Thumbs(Thumbs {
        id: id.into(),
        prompt: Prompt::Text(prompt.into()),
        completion: completion.into(),
        up,
        strength,
        timestamp_ms: T0,
    })
}

fn pair(id: &str, prompt: &str, chosen: &str, rejected: &str, strength: Option<f32>) -> Record {
    Record::Pair(PreferencePair {
        id: id.into(),
        prompt: Prompt::Text(prompt.into()),
        chosen: chosen.into(),
        rejected: rejected.into(),
        strength,
        timestamp_ms: T0,
    })
}

fn chat(id: &str, user: &str, completion: &str, up: bool) -> Record {
    Record::Thumbs(Thumbs {
        id: id.into(),
        prompt: Prompt::Chat(vec![ChatMessage::new("user", user)]),
        completion: completion.into(),
        up,
        strength: Some(2.0),
        timestamp_ms: T0 + 1,
    })
}

/// A new journal at `dir/name` holding `records`; returns its path and entries.
fn write_journal(dir: &Path, name: &str, records: &[Record]) -> (PathBuf, Vec<Entry>) {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let (mut j, r) = Journal::open(&path, Durability::Batch).expect("creates");
    assert_eq!(r, None);
    for rec in records {
        j.append(rec.clone()).expect("appends");
    }
    let entries = j.entries().to_vec();
    j.close().expect("closes");
    (path, entries)
}

fn seq_records(entries: &[Entry]) -> Vec<(u64, Record)> {
    entries.iter().map(|e| (e.seq, e.record.clone())).collect()
}

/// A deterministic generator for damage, delays and sizes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn sample_records() -> Vec<Record> {
    vec![
        thumb("a", "What is 2+2?", "4", true, Some(1.5)),
        pair("b", "Say hi", "Hello!", "Go away.", None),
        chat("c", "Ünïcødé ✓ prompt", "a\nmulti-line\ncompletion", false),
        thumb("d", "", &"long ".repeat(2000), false, None),
        thumb("e", "last", "the last record", true, Some(0.0)),
    ]
}

#[test]
fn a_journal_whose_sequence_numbers_run_out_refuses_appends_and_loses_nothing() {
    let dir = fresh_dir("journal-seq-exhausted");
    let path = dir.join("j.nj");
    // A header (with a valid checksum) whose next sequence number is the last there is.
    std::fs::write(&path, nudge::journal::frame::encode_header(u64::MAX - 1)).unwrap();
    let (mut j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert_eq!(j.append(thumb("a", "p", "c", true, None)).unwrap(), u64::MAX - 1);
    assert_eq!(j.next_sequence(), u64::MAX);
    let e = j.append(thumb("b", "p", "c", false, None)).unwrap_err();
    assert!(e.to_string().contains("exhausted"), "{e}");
    drop(j);
    // Every acknowledged record reads back.
    let (j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert_eq!(j.entries().len(), 1);
    assert_eq!(j.entries()[0].seq, u64::MAX - 1);
    drop(j);

    std::fs::write(&path, nudge::journal::frame::encode_header(u64::MAX)).unwrap();
    let (mut j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert!(j.append(thumb("c", "p", "c", true, None)).is_err());
    drop(j);
    let (j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert!(j.entries().is_empty());
}

#[test]
fn a_crafted_record_that_could_never_be_appended_is_refused_on_read() {
    use nudge::journal::frame::{encode_header, encode_record};
    let dir = fresh_dir("journal-crafted-nan");
    let path = dir.join("j.nj");
    // A frame with a valid checksum around a thumb whose strength is NaN: `append` refuses
    // such a record, so only a crafted file holds one.
    let mut bytes = encode_header(0).to_vec();
    bytes.extend(encode_record(0, &thumb("a", "p", "c", true, None)).unwrap());
    bytes.extend(encode_record(1, &thumb("b", "p", "c", true, Some(f32::NAN))).unwrap());
    bytes.extend(encode_record(2, &thumb("c", "p", "c", false, None)).unwrap());
    std::fs::write(&path, &bytes).unwrap();
    match Journal::open(&path, Durability::EveryRecord) {
        Err(Error::CorruptRecord { record, what, .. }) => {
            assert_eq!(record, 1);
            assert!(what.contains("fails validation") && what.contains("strength"), "{what}");
        }
        other => panic!(
            "expected the crafted record to be refused, got {:?}",
            other.map(|(j, _)| j.entries().len())
        ),
    }
    // A repair passes over it and keeps the others.
    let (j, report) = Journal::repair(&path, Durability::EveryRecord).unwrap();
    assert_eq!(j.entries().iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(report.skipped.len(), 1, "{report:?}");
}

#[test]
fn a_long_crafted_tail_is_cut_in_one_pass_and_a_frame_after_it_is_found() {
    use nudge::journal::frame::{encode_header, encode_record};
    let dir = fresh_dir("journal-crafted-tail");
    let path = dir.join("j.nj");
    let mut bytes = encode_header(0).to_vec();
    bytes.extend(encode_record(0, &thumb("a", "p", "c", true, None)).unwrap());
    let good = bytes.len();
    // Every offset of this tail claims a 64 KiB payload that is there, with a wrong
    // checksum: checksumming each candidate anew took 32 s for one MiB.
    for _ in 0..(1 << 18) {
        bytes.extend([0, 0, 1, 0]);
    }
    std::fs::write(&path, &bytes).unwrap();
    let (j, tail) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert_eq!(j.entries().len(), 1);
    let tail = tail.expect("the tail is reported");
    assert_eq!(tail.offset, good as u64);
    assert_eq!(j.file_bytes(), good as u64, "the tail is cut");
    drop(j);

    // The same stretch with an intact frame after it is damage, not a torn tail: the file
    // is left alone and the error says where the intact frame is.
    bytes.truncate(good);
    bytes.extend(std::iter::repeat_n([0u8, 0, 1, 0], 1 << 16).flatten());
    let next = bytes.len();
    bytes.extend(encode_record(1, &thumb("b", "p", "c", true, None)).unwrap());
    std::fs::write(&path, &bytes).unwrap();
    match Journal::open(&path, Durability::EveryRecord) {
        Err(Error::CorruptRecord { what, .. }) => {
            assert!(
                what.contains(&format!("an intact frame follows at byte {next}")),
                "{what}"
            )
        }
        other => panic!(
            "expected damage to be reported, got {:?}",
            other.map(|(j, _)| j.entries().len())
        ),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "nothing is cut from a damaged file"
    );
}

#[test]
fn a_forgotten_prompt_leaves_training_at_once_and_the_file_at_compaction() {
    let dir = fresh_dir("journal-forget");
    let secret = "my medical question";
    let (path, _) = write_journal(
        &dir,
        "j.nj",
        &[
            thumb("s0", secret, "see a doctor", true, None),
            thumb("s1", secret, "drink bleach", false, None),
            thumb("k0", "weather?", "sunny", true, None),
            thumb("k1", "weather?", "no idea", false, None),
            pair("s2", secret, "rest", "panic", None),
            // A later thumb with the other label would supersede s0; once s0 is forgotten
            // it stands alone.
            thumb("k2", "weather?", "cloudy", true, None),
        ],
    );
    let (mut j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    let keep = TrainingOptions {
        unpaired: UnpairedPolicy::Keep,
        ..TrainingOptions::default()
    };
    // A training run consumed everything but one unpaired thumb of each prompt.
    let mark = j.plan(&keep).mark(T0).unwrap();
    j.mark_trained(mark.up_to_sequence, vec![0, 5], T0).unwrap();
    j.append(thumb("s3", secret, "more details", true, None)).unwrap();

    let of_secret = j.events_of_prompt(&Prompt::Text(secret.into()));
    assert_eq!(of_secret, [0, 1, 4, 7]);
    assert_eq!(j.forget(&of_secret, T0 + 9).unwrap(), of_secret);
    assert!(
        j.forget(&of_secret, T0 + 9).unwrap().is_empty(),
        "forgetting twice writes nothing"
    );
    let all = TrainingOptions::default();
    let prompts = |j: &Journal| -> Vec<String> {
        let plan = j.plan(&all);
        let mut p: Vec<String> = plan.pairs.iter().map(|r| format!("{:?}", r.prompt)).collect();
        p.extend(plan.unpaired.iter().map(|r| format!("{:?}", r.prompt)));
        p
    };
    let before = prompts(&j);
    assert!(
        !before.is_empty() && before.iter().all(|p| !p.contains(secret)),
        "{before:?}"
    );
    assert_eq!(j.stats().forgotten, 4);
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        contains(&bytes, secret),
        "until compaction the text is still in the file"
    );

    let r = j.compact(CompactOptions::default()).unwrap();
    assert_eq!(r.forgotten, 4);
    assert!(!contains(&std::fs::read(&path).unwrap(), secret), "gone from the file");
    assert_eq!(prompts(&j), before, "the training set is the same after compaction");
    let mark = j.last_mark().unwrap();
    assert_eq!(mark.unconsumed, [5], "the mark no longer lists the forgotten event");
    drop(j);
    let (j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert_eq!(prompts(&j), before);
    assert_eq!(j.stats().forgotten, 0);
    drop(j);
    // Sequence numbers that name nothing, or name a mark, cannot be forgotten.
    let (mut j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    let mark_seq = j.entries().iter().find(|e| !e.record.is_event()).unwrap().seq;
    for bad in [999, mark_seq] {
        assert!(j.forget(&[bad], T0).is_err(), "{bad}");
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn round_trip_keeps_every_record_and_its_sequence() {
    let dir = fresh_dir("journal-round-trip");
    let recs = sample_records();
    let (path, entries) = write_journal(&dir, "j.nj", &recs);
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);

    let (j, r) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert_eq!(r, None);
    assert_eq!(j.entries(), &entries[..]);
    assert_eq!(j.entries().iter().map(|e| e.record.clone()).collect::<Vec<_>>(), recs);
    assert_eq!(j.next_sequence(), 5);
    assert_eq!(j.durable_through(), Some(4));
    assert_eq!(j.file_bytes(), std::fs::metadata(&path).unwrap().len());
    assert_eq!(j.get(2).map(|e| &e.record), Some(&recs[2]));
    drop(j);

    let (ro, r) = Journal::open_read_only(&path).unwrap();
    assert_eq!(r, None);
    assert_eq!(ro.entries(), &entries[..]);

    // Batch durability: appended records are durable once synced.
    let (mut j, _) = Journal::open(&path, Durability::Batch).unwrap();
    assert_eq!(j.append(thumb("f", "p", "c", true, None)).unwrap(), 5);
    assert_eq!(j.durable_through(), Some(4));
    j.sync().unwrap();
    assert_eq!(j.durable_through(), Some(5));
    j.close().unwrap();
    let (j, _) = Journal::open_read_only(&path).unwrap();
    assert_eq!(j.entries().len(), 6);
}

#[test]
fn a_torn_tail_at_every_byte_is_cut_and_reported() {
    let dir = fresh_dir("journal-torn");
    let (path, entries) = write_journal(&dir, "j.nj", &sample_records());
    let full = std::fs::read(&path).unwrap();
    let last = entries.last().unwrap().offset as usize;
    let kept = &entries[..entries.len() - 1];
    for cut in 1..full.len() - last {
        std::fs::write(&path, &full[..last + cut]).unwrap();

        // A reader reports the torn tail and leaves the file alone.
        let (ro, r) = Journal::open_read_only(&path).unwrap();
        assert_eq!(ro.entries(), kept, "cut {cut}");
        assert_eq!(
            r.as_ref().map(|r| (r.offset, r.cut_bytes)),
            Some((last as u64, cut as u64))
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), (last + cut) as u64);
        drop(ro);

        let (mut j, r) = Journal::open(&path, Durability::EveryRecord).unwrap();
        let r = r.unwrap_or_else(|| panic!("cut {cut}: no recovery reported"));
        assert_eq!(
            (r.offset, r.cut_bytes, r.records_kept),
            (last as u64, cut as u64, kept.len())
        );
        assert_eq!(j.entries(), kept, "cut {cut}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), last as u64);
        // The journal goes on from where the intact records end.
        assert_eq!(j.append(thumb("n", "p", "c", true, None)).unwrap(), kept.len() as u64);
        drop(j);
        let (j, r) = Journal::open(&path, Durability::EveryRecord).unwrap();
        assert_eq!(r, None);
        assert_eq!(j.entries().len(), kept.len() + 1);
    }

    // Garbage after the last record (zeros, as a file system may leave, or random bytes).
    let mut rng = SplitMix(1);
    for tail in [vec![0u8; 4096], (0..777).map(|_| rng.next() as u8).collect::<Vec<u8>>()] {
        let mut bytes = full.clone();
        bytes.extend_from_slice(&tail);
        std::fs::write(&path, &bytes).unwrap();
        let (j, r) = Journal::open(&path, Durability::EveryRecord).unwrap();
        assert_eq!(j.entries(), &entries[..]);
        assert_eq!(
            r.map(|r| (r.offset, r.cut_bytes)),
            Some((full.len() as u64, tail.len() as u64))
        );
    }
}

#[test]
fn a_bit_flip_in_the_last_record_is_cut_and_reported() {
    let dir = fresh_dir("journal-flip-last");
    let (path, entries) = write_journal(&dir, "j.nj", &sample_records());
    let full = std::fs::read(&path).unwrap();
    let last = entries.last().unwrap().offset as usize;
    for at in last..full.len() {
        let mut bytes = full.clone();
        bytes[at] ^= 1 << (at % 8);
        std::fs::write(&path, &bytes).unwrap();
        let (j, r) = Journal::open(&path, Durability::EveryRecord).unwrap();
        assert_eq!(j.entries(), &entries[..entries.len() - 1], "flip at {at}");
        assert_eq!(r.map(|r| r.offset), Some(last as u64), "flip at {at}");
    }
}

#[test]
fn a_bit_flip_in_a_middle_record_is_an_error_naming_it() {
    let dir = fresh_dir("journal-flip-middle");
    let (path, entries) = write_journal(&dir, "j.nj", &sample_records());
    let full = std::fs::read(&path).unwrap();
    for victim in [1usize, 2, 3] {
        let (start, end) = (entries[victim].offset as usize, entries[victim + 1].offset as usize);
        // Every byte of the small records; of the 10 KB one, its frame and record headers
        // and a sample of its text.
        let sample = |at: usize| victim != 3 || at < start + 24 || (at - start).is_multiple_of(41);
        for at in (start..end).filter(|&at| sample(at)) {
            let mut bytes = full.clone();
            bytes[at] ^= 1 << (at % 8);
            std::fs::write(&path, &bytes).unwrap();
            for e in [
                Journal::open(&path, Durability::EveryRecord).map(|_| ()).unwrap_err(),
                Journal::open_read_only(&path).map(|_| ()).unwrap_err(),
            ] {
                match &e {
                    Error::CorruptRecord {
                        file, record, offset, ..
                    } => {
                        assert_eq!((*record, *offset), (victim as u64, start as u64), "flip at {at}: {e}");
                        assert_eq!(file, &path);
                    }
                    _ => panic!("flip at {at}: {e}"),
                }
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("at byte {start}")) && msg.contains("j.nj"),
                    "{msg}"
                );
            }
            // Nothing was cut: the intact records after the damage are still in the file.
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "flip at {at}");
        }
    }

    // Repair drops exactly the damaged record and keeps every other one, numbers included.
    let mut bytes = full.clone();
    let at = entries[1].offset as usize + 1; // inside the length field
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let (mut j, report) = Journal::repair(&path, Durability::EveryRecord).unwrap();
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].offset, entries[1].offset);
    assert_eq!(report.skipped[0].bytes, entries[2].offset - entries[1].offset);
    let mut expect = seq_records(&entries);
    expect.remove(1);
    assert_eq!(seq_records(j.entries()), expect);
    assert_eq!(j.append(thumb("z", "p", "c", true, None)).unwrap(), 5);
    drop(j);
    let (j, r) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert_eq!(r, None);
    assert_eq!(j.entries().len(), 5);
}

#[test]
fn bad_headers_give_typed_errors() {
    let dir = fresh_dir("journal-header");
    let (path, entries) = write_journal(&dir, "j.nj", &sample_records());
    let full = std::fs::read(&path).unwrap();
    let open = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        Journal::open(&path, Durability::EveryRecord).map(|_| ()).unwrap_err()
    };

    let mut b = full.clone();
    b[..8].copy_from_slice(b"GGUF\0\0\0\0");
    assert!(matches!(open(&b), Error::Format { ref what, .. } if what.contains("magic")));

    let mut b = full.clone();
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert!(matches!(
        open(&b),
        Error::UnsupportedVersion {
            found: 2,
            supported: 1,
            ..
        }
    ));

    for len in 0..32 {
        assert!(
            matches!(open(&full[..len]), Error::Format { .. }),
            "header cut at {len}"
        );
    }
    // Any flipped header bit is refused (the header carries its own checksum).
    for at in 0..32 {
        let mut b = full.clone();
        b[at] ^= 1 << (at % 8);
        let e = open(&b);
        assert!(
            matches!(e, Error::Format { .. } | Error::UnsupportedVersion { .. }),
            "flip at {at}: {e}"
        );
    }
    std::fs::write(&path, &full).unwrap();
    assert_eq!(
        Journal::open(&path, Durability::EveryRecord).unwrap().0.entries(),
        &entries[..]
    );
}

#[test]
fn random_damage_is_an_error_or_a_reported_cut_never_a_silent_part() {
    let dir = fresh_dir("journal-random-damage");
    let (path, entries) = write_journal(&dir, "j.nj", &sample_records());
    let full = std::fs::read(&path).unwrap();
    let original = seq_records(&entries);
    let mut rng = SplitMix(7);
    let (mut errors, mut cuts) = (0, 0);
    for case in 0..400 {
        let mut b = full.clone();
        match case % 4 {
            0 => b.truncate(rng.below(full.len() as u64) as usize),
            1 => {
                let at = rng.below(full.len() as u64) as usize;
                b[at] ^= 1 << rng.below(8);
            }
            2 => {
                let at = rng.below(full.len() as u64) as usize;
                let n = (rng.below(64) as usize).min(full.len() - at);
                b[at..at + n].iter_mut().for_each(|x| *x = rng.next() as u8);
            }
            _ => {
                let at = rng.below(full.len() as u64) as usize;
                b.truncate(at);
                b.extend((0..rng.below(300)).map(|_| rng.next() as u8));
            }
        }
        std::fs::write(&path, &b).unwrap();
        match Journal::open(&path, Durability::EveryRecord) {
            Ok((j, r)) => {
                let got = seq_records(j.entries());
                assert!(original.starts_with(&got), "case {case}: records changed");
                if got.len() < original.len() || b.len() > full.len() {
                    assert!(r.is_some(), "case {case}: records lost without a report");
                    cuts += 1;
                }
            }
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        Error::Format { .. } | Error::UnsupportedVersion { .. } | Error::CorruptRecord { .. }
                    ),
                    "case {case}: {e}"
                );
                errors += 1;
            }
        }
    }
    assert!(errors > 0 && cuts > 0, "{errors} errors, {cuts} cuts");
}

#[test]
fn a_second_writer_is_refused_while_the_first_is_open() {
    let dir = fresh_dir("journal-lock");
    let (path, _) = write_journal(&dir, "j.nj", &sample_records());
    let (mut first, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    let e = Journal::open(&path, Durability::EveryRecord).unwrap_err();
    assert!(
        matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock),
        "{e}"
    );
    // Readers take no lock.
    assert_eq!(Journal::open_read_only(&path).unwrap().0.entries().len(), 5);
    // The lock moves to the compacted file with the journal's name.
    first.compact(CompactOptions::default()).unwrap();
    assert!(Journal::open(&path, Durability::EveryRecord).is_err());
    first.append(thumb("x", "p", "c", true, None)).unwrap();
    drop(first);
    let (j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert_eq!(j.entries().len(), 6);
}

#[test]
fn records_that_could_never_train_are_refused() {
    let dir = fresh_dir("journal-refuse");
    let (mut j, _) = Journal::open(dir.join("j.nj"), Durability::EveryRecord).unwrap();
    for bad in [
        thumb("", "p", "c", true, None),
        thumb("a", "p", "c", true, Some(f32::NAN)),
        thumb("a", "p", "c", true, Some(-1.0)),
        pair("a", "p", "x", "y", Some(f32::INFINITY)),
        Record::Thumbs(Thumbs {
            id: "a".into(),
            prompt: Prompt::Chat(vec![]),
            completion: "c".into(),
            up: true,
            strength: None,
            timestamp_ms: 0,
        }),
    ] {
        assert!(matches!(j.append(bad), Err(Error::Invalid(_))));
    }
    // A mark names only records already written.
    assert!(matches!(j.mark_trained(0, vec![], T0), Err(Error::Invalid(_))));
    j.append(thumb("a", "p", "c", true, None)).unwrap();
    assert!(matches!(j.mark_trained(0, vec![1], T0), Err(Error::Invalid(_))));
    assert_eq!(j.mark_trained(0, vec![0], T0).unwrap(), 1);
    assert_eq!(j.entries().len(), 2);
    drop(j);
    let (mut ro, _) = Journal::open_read_only(dir.join("j.nj")).unwrap();
    assert!(matches!(
        ro.append(thumb("b", "p", "c", true, None)),
        Err(Error::Invalid(_))
    ));
}

/// The pairing journal of the module documentation's rules.
fn pairing_records() -> Vec<Record> {
    vec![
        thumb("a1", "P", "c1", true, Some(2.0)),  // 0
        thumb("a2", "P", "c2", false, Some(1.0)), // 1
        thumb("a3", "P", "c3", true, None),       // 2
        thumb("a4", "P", "c4", false, None),      // 3
        thumb("a5", "P", "c5", true, None),       // 4
        thumb("b1", "Q", "d1", false, None),      // 5
        pair("x1", "P", "y", "z", Some(3.0)),     // 6
        thumb("a1", "P", "other", false, None),   // 7: a retry of id a1
        thumb("a6", "P", "c3", true, None),       // 8: same content and label as 2
        thumb("a7", "Q", "d1", true, None),       // 9: changes 5's label
        pair("x2", "P", "y", "z", None),          // 10: same pair as 6
    ]
}

fn pair_view(p: &nudge::journal::PlannedPair) -> (Vec<u64>, String, String, Option<f32>) {
    (p.sources.clone(), p.chosen.clone(), p.rejected.clone(), p.weight)
}

#[test]
fn thumbs_pair_newest_with_newest_and_duplicates_drop() {
    let dir = fresh_dir("journal-pairing");
    let (path, _) = write_journal(&dir, "j.nj", &pairing_records());
    let (j, _) = Journal::open_read_only(&path).unwrap();

    let plan = j.plan(&TrainingOptions::default());
    let pairs: Vec<_> = plan.pairs.iter().map(pair_view).collect();
    assert_eq!(
        pairs,
        vec![
            (vec![2, 1], "c3".into(), "c2".into(), Some(1.0)),
            (vec![4, 3], "c5".into(), "c4".into(), None),
            (vec![6], "y".into(), "z".into(), Some(3.0)),
        ]
    );
    let unpaired: Vec<_> = plan.unpaired.iter().map(|u| (u.source, u.up, u.weight)).collect();
    assert_eq!(unpaired, vec![(0, true, Some(2.0)), (9, true, None)]);
    assert_eq!(
        plan.dropped,
        vec![
            (7, Dropped::DuplicateId { of: 0 }),
            (8, Dropped::Duplicate { of: 2 }),
            (5, Dropped::Superseded { by: 9 }),
            (10, Dropped::Duplicate { of: 6 }),
        ]
    );
    assert!(plan.kept.is_empty());
    assert_eq!(plan.up_to_sequence, Some(10));

    let keep = j.plan(&TrainingOptions {
        unpaired: UnpairedPolicy::Keep,
        ..TrainingOptions::default()
    });
    assert_eq!(keep.pairs, plan.pairs);
    assert!(keep.unpaired.is_empty());
    assert_eq!(keep.kept, vec![0, 9]);
    let mark = keep.mark(T0).unwrap();
    assert_eq!((mark.up_to_sequence, mark.unconsumed), (10, vec![0, 9]));

    // For KTO nothing is paired and explicit pairs are split.
    let kto = j.plan(&TrainingOptions {
        target: Target::Kto,
        ..TrainingOptions::default()
    });
    assert!(kto.pairs.is_empty());
    let rows: Vec<_> = kto
        .unpaired
        .iter()
        .map(|u| (u.source, u.completion.as_str(), u.up))
        .collect();
    assert_eq!(
        rows,
        vec![
            (0, "c1", true),
            (1, "c2", false),
            (2, "c3", true),
            (3, "c4", false),
            (4, "c5", true),
            (6, "y", true),
            (6, "z", false),
            (9, "d1", true),
        ]
    );
}

#[test]
fn only_new_follows_the_training_mark() {
    let dir = fresh_dir("journal-only-new");
    let (path, _) = write_journal(&dir, "j.nj", &pairing_records());
    let (mut j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    let keep = TrainingOptions {
        unpaired: UnpairedPolicy::Keep,
        ..TrainingOptions::default()
    };
    assert_eq!(j.stats().new_since_training, 11);
    let mark = j.plan(&keep).mark(T0).unwrap();
    assert_eq!(j.append(Record::TrainingMark(mark)).unwrap(), 11);
    assert_eq!(j.stats().new_since_training, 2);
    assert!(j.is_new(0) && j.is_new(9) && !j.is_new(1) && !j.is_new(10));

    j.append(thumb("n1", "P", "c7", false, None)).unwrap(); // 12: a partner for kept 0
    j.append(thumb("n2", "R", "r1", true, None)).unwrap(); // 13
    j.append(thumb("a3", "P", "c9", false, None)).unwrap(); // 14: retry of an old id
    let s = j.stats();
    assert_eq!((s.thumbs, s.up, s.down, s.pairs, s.training_marks), (12, 6, 6, 2, 1));
    assert_eq!(s.new_since_training, 5);
    assert_eq!(s.file_bytes, std::fs::metadata(&path).unwrap().len());

    let only_new = TrainingOptions { only_new: true, ..keep };
    let plan = j.plan(&only_new);
    let pairs: Vec<_> = plan.pairs.iter().map(pair_view).collect();
    assert_eq!(pairs, vec![(vec![0, 12], "c1".into(), "c7".into(), Some(2.0))]);
    assert_eq!(plan.kept, vec![9, 13]);
    assert_eq!(plan.dropped, vec![(14, Dropped::DuplicateId { of: 2 })]);

    let kto = j.plan(&TrainingOptions {
        unpaired: UnpairedPolicy::Kto,
        ..only_new
    });
    assert_eq!(kto.unpaired.iter().map(|u| u.source).collect::<Vec<_>>(), vec![9, 13]);

    // The next mark consumes the pair and keeps the two without partners.
    let m = plan.mark(T0 + 5).unwrap();
    j.append(Record::TrainingMark(m)).unwrap();
    assert_eq!(j.stats().new_since_training, 2);
    assert_eq!(j.stats().last_training_ms, Some(T0 + 5));
    assert!(j.plan(&only_new).pairs.is_empty());
}

#[test]
fn compaction_keeps_what_matters_and_numbering() {
    let dir = fresh_dir("journal-compact");
    let mut recs = pairing_records();
    recs.push(Record::TrainingMark(nudge::journal::TrainingMark {
        up_to_sequence: 3,
        unconsumed: vec![],
        timestamp_ms: T0,
    })); // 11: superseded by the next mark
    recs.push(Record::TrainingMark(nudge::journal::TrainingMark {
        up_to_sequence: 6,
        unconsumed: vec![0],
        timestamp_ms: T0,
    })); // 12
    recs.push(thumb("m1", "S", "s1", false, None)); // 13
    recs.push(thumb("m1", "S", "s1", false, None)); // 14: a retry, the newest record
    let (path, before) = write_journal(&dir, "j.nj", &recs);
    let opts = [
        TrainingOptions::default(),
        TrainingOptions {
            only_new: true,
            ..TrainingOptions::default()
        },
        TrainingOptions {
            unpaired: UnpairedPolicy::Keep,
            ..TrainingOptions::default()
        },
    ];
    let (mut j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    let plans: Vec<_> = opts.iter().map(|o| j.plan(o)).collect();

    // A compaction that crashed left its temporary file behind.
    std::fs::write(dir.join("j.nj.compact"), b"half a compaction").unwrap();
    std::fs::write(dir.join(".j.nj.Ab12Cd.tmp"), b"half a compaction").unwrap();
    let r = j.compact(CompactOptions::default()).unwrap();
    assert_eq!((r.records_before, r.records_after), (15, 9));
    assert_eq!((r.duplicates, r.superseded, r.old_marks, r.trained), (4, 1, 1, 0));
    assert!(r.bytes_after < r.bytes_before);
    assert_eq!(r.bytes_after, std::fs::metadata(&path).unwrap().len());
    assert!(!dir.join("j.nj.compact").exists());
    assert!(!dir.join(".j.nj.Ab12Cd.tmp").exists());
    let kept: Vec<u64> = j.entries().iter().map(|e| e.seq).collect();
    assert_eq!(kept, vec![0, 1, 2, 3, 4, 6, 9, 12, 13]);
    for e in j.entries() {
        assert_eq!(
            Some(&e.record),
            before.iter().find(|b| b.seq == e.seq).map(|b| &b.record)
        );
    }
    // Training sees the same pairs and rows (only the reports of what it dropped are gone).
    for (o, p) in opts.iter().zip(&plans) {
        let q = j.plan(o);
        assert_eq!((&q.pairs, &q.unpaired, &q.kept), (&p.pairs, &p.unpaired, &p.kept));
    }
    // Numbering continues after the dropped newest record.
    assert_eq!(j.next_sequence(), 15);
    assert_eq!(j.append(thumb("after", "p", "c", true, None)).unwrap(), 15);
    let entries = j.entries().to_vec();
    drop(j);
    let (j, r) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert_eq!(r, None);
    assert_eq!(j.entries(), &entries[..]);
    assert_eq!(j.next_sequence(), 16);
    drop(j);

    // Dropping trained events keeps what the last mark left new.
    let (mut j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    let new_plan = j.plan(&opts[1]);
    let r = j.compact(CompactOptions { drop_trained: true }).unwrap();
    assert_eq!(r.trained, 5); // 1, 2, 3, 4 and 6 were consumed; 0 was left unconsumed
    let kept: Vec<u64> = j.entries().iter().map(|e| e.seq).collect();
    assert_eq!(kept, vec![0, 9, 12, 13, 15]);
    assert_eq!(j.plan(&opts[1]).pairs, new_plan.pairs);
    assert_eq!(j.plan(&opts[1]).unpaired, new_plan.unpaired);
    drop(j);
    // An empty compacted journal still knows where numbering resumes.
    let (mut j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    j.mark_trained(15, vec![], T0).unwrap();
    j.compact(CompactOptions { drop_trained: true }).unwrap();
    assert_eq!(j.entries().len(), 1);
    drop(j);
    let (mut j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
    assert_eq!(j.append(thumb("later", "p", "c", true, None)).unwrap(), 17);
}

/// A tokenizer of words t0..t63 (t1 and t2 are added tokens, so t10..t29 would split)
/// with a chat template (user `t3`, assistant `t4`, end `t2`).
fn tiny_tokenizer(dir: &Path) -> TextTokenizer {
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json(64).to_string()).unwrap();
    let template = "{% for m in messages %}{% if m.role == 'user' %}t3 {% else %}t4 {% endif %}\
                    {{ m.content }} t2 {% endfor %}{% if add_generation_prompt %}t4 {% endif %}";
    let config =
        serde_json::json!({"bos_token": "t1", "eos_token": "t2", "unk_token": "t0", "chat_template": template});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    TextTokenizer::from_hf_dir(dir).expect("tokenizer")
}

#[test]
fn the_training_set_tokenizes_like_trl_and_like_the_export() {
    let dir = fresh_dir("journal-training-set");
    let tok = tiny_tokenizer(&dir);
    let recs = vec![
        thumb("a", "t3 t4", "t5", true, None),          // 0
        thumb("b", "t3 t4", "t6 t7", false, Some(3.0)), // 1
        chat("c", "t7", "t9", true),                    // 2: KTO row
        Record::Pair(PreferencePair {
            id: "d".into(),
            prompt: Prompt::Chat(vec![ChatMessage::new("user", "t8")]),
            chosen: "t30".into(),
            rejected: "t31 t32".into(),
            strength: None,
            timestamp_ms: T0,
        }), // 3
    ];
    let (path, _) = write_journal(&dir, "j.nj", &recs);
    let (j, _) = Journal::open_read_only(&path).unwrap();

    let set = j.training_set(&tok, &TrainingOptions::default()).unwrap().data;
    assert_eq!(set.pairs.len(), 2);
    let p = &set.pairs[0];
    // A standard row: prompt and completion tokenized apart, EOS (t2) after the completion.
    assert_eq!(
        (p.prompt.clone(), p.chosen.clone(), p.rejected.clone()),
        (vec![3, 4], vec![5, 2], vec![6, 7, 2])
    );
    assert_eq!((p.row, p.weight), (0, Some(3.0)));
    // A conversational row: the template's prompt with the generation prompt, and what the
    // assistant turn adds after it.
    let c = &set.pairs[1];
    assert_eq!(
        (c.prompt.clone(), c.chosen.clone(), c.rejected.clone()),
        (vec![3, 8, 2, 4], vec![30, 2], vec![31, 32, 2])
    );
    assert_eq!(set.unpaired.len(), 1);
    let u = &set.unpaired[0];
    assert_eq!(
        (u.prompt.clone(), u.completion.clone(), u.label, u.weight, u.row),
        (vec![3, 7, 2, 4], vec![9, 2], true, Some(2.0), 2)
    );

    // The export is the same data for `nudge train --data`.
    for target in [Target::Dpo, Target::Kto] {
        let opts = TrainingOptions {
            target,
            ..TrainingOptions::default()
        };
        let out = dir.join("export.jsonl");
        j.export_jsonl(&out, &opts).unwrap();
        let mut from_file = PreferenceSet::from_jsonl(&tok, &out, &Truncation::default()).unwrap();
        let mut direct = j.training_set(&tok, &opts).unwrap().data;
        from_file.pairs.iter_mut().for_each(|p| p.row = 0);
        from_file.unpaired.iter_mut().for_each(|u| u.row = 0);
        direct.pairs.iter_mut().for_each(|p| p.row = 0);
        direct.unpaired.iter_mut().for_each(|u| u.row = 0);
        assert_eq!((from_file.pairs, from_file.unpaired), (direct.pairs, direct.unpaired));
    }

    // max_length truncates as from_jsonl does; a row dropped for it names its event.
    let short = j
        .training_set(
            &tok,
            &TrainingOptions {
                truncation: Truncation {
                    max_length: Some(3),
                    mode: TruncationMode::KeepStart,
                    ..Default::default()
                },
                ..TrainingOptions::default()
            },
        )
        .unwrap()
        .data;
    assert_eq!(short.pairs.len(), 1);
    assert_eq!(short.pairs[0].chosen, vec![5]);
    let dropped: Vec<usize> = short.skipped.iter().map(|n| n.row).collect();
    assert_eq!(dropped, vec![3, 2]);
}

fn nudge(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args(args)
        .output()
        .expect("runs nudge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

#[test]
fn the_command_line_adds_lists_counts_and_exports() {
    let dir = fresh_dir("journal-cli");
    let tok = tiny_tokenizer(&dir);
    let path = dir.join("j.nj");
    let p = path.to_str().unwrap();
    let run = |args: &[&str]| {
        let (ok, out, err) = nudge(args);
        assert!(ok, "nudge {args:?}: {err}");
        out
    };
    run(&[
        "journal",
        "add",
        "--journal",
        p,
        "--prompt",
        "t3",
        "--completion",
        "t5",
        "--up",
        "--id",
        "u1",
    ]);
    run(&[
        "journal",
        "add",
        "--journal",
        p,
        "--prompt",
        "t3",
        "--completion",
        "t6",
        "--down",
        "--strength",
        "2",
    ]);
    run(&[
        "journal",
        "add-pair",
        "--journal",
        p,
        "--prompt",
        "t7",
        "--chat",
        "--chosen",
        "t8",
        "--rejected",
        "t9",
    ]);
    let out = run(&[
        "journal",
        "add",
        "--journal",
        p,
        "--prompt",
        "t3",
        "--completion",
        "t5",
        "--up",
        "--id",
        "u1",
    ]);
    assert_eq!(json_lines(&out)[0]["seq"], 3);

    let list = json_lines(&run(&["journal", "list", "--journal", p, "--json"]));
    assert_eq!(list.len(), 4);
    assert_eq!(
        (list[0]["id"].as_str(), list[0]["label"].as_bool()),
        (Some("u1"), Some(true))
    );
    assert_eq!(list[1]["strength"], 2.0);
    assert_eq!(list[2]["prompt"][0]["content"], "t7");

    let stats = &json_lines(&run(&["journal", "stats", "--journal", p, "--json"]))[0];
    assert_eq!(
        (stats["thumbs"].clone(), stats["up"].clone(), stats["down"].clone()),
        (3.into(), 2.into(), 1.into())
    );
    assert_eq!(
        (stats["pairs"].clone(), stats["new_since_training"].clone()),
        (1.into(), 4.into())
    );

    let out_file = dir.join("pairs.jsonl");
    let o = out_file.to_str().unwrap();
    let summary = &json_lines(&run(&["journal", "export", "--journal", p, "--out", o, "--mark"]))[0];
    assert_eq!(
        (summary["pairs"].clone(), summary["dropped"].clone()),
        (2.into(), 1.into())
    );
    let set = PreferenceSet::from_jsonl(&tok, &out_file, &Truncation::default()).unwrap();
    assert_eq!(set.pairs.len(), 2);
    assert_eq!(
        (set.pairs[0].chosen.clone(), set.pairs[0].rejected.clone()),
        (vec![5, 2], vec![6, 2])
    );
    assert_eq!(set.pairs[0].weight, Some(2.0));
    let stats = &json_lines(&run(&["journal", "stats", "--journal", p, "--json"]))[0];
    assert_eq!(
        (stats["new_since_training"].clone(), stats["training_marks"].clone()),
        (0.into(), 1.into())
    );

    let kto_file = dir.join("kto.jsonl");
    run(&[
        "journal",
        "export",
        "--journal",
        p,
        "--out",
        kto_file.to_str().unwrap(),
        "--format",
        "kto",
    ]);
    let rows = json_lines(&std::fs::read_to_string(&kto_file).unwrap());
    let labels: Vec<bool> = rows.iter().map(|r| r["label"].as_bool().unwrap()).collect();
    assert_eq!(labels, vec![true, false, true, false]);

    let compact = &json_lines(&run(&["journal", "compact", "--journal", p]))[0];
    assert_eq!(compact["duplicates"], 1);

    // A damaged middle record: commands fail naming the file and the byte; repair fixes it.
    let (j, _) = Journal::open_read_only(&path).unwrap();
    let at = j.entries()[1].offset;
    drop(j);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at as usize + 12] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let (ok, _, err) = nudge(&["journal", "stats", "--journal", p]);
    assert!(
        !ok && err.contains(&format!("record 1 at byte {at}")) && err.contains("j.nj"),
        "{err}"
    );
    run(&["journal", "repair", "--journal", p]);
    let list = json_lines(&run(&["journal", "list", "--journal", p, "--json"]));
    assert_eq!(list.len(), 3);

    // Forgetting: the first event leaves the listing at once and the file with --compact.
    let first = list[0]["seq"].as_u64().unwrap().to_string();
    let forgot = &json_lines(&run(&["journal", "forget", "--journal", p, "--seq", &first]))[0];
    assert_eq!(forgot["forgotten"], serde_json::json!([list[0]["seq"]]));
    let after = json_lines(&run(&["journal", "list", "--journal", p, "--json"]));
    assert!(after.iter().all(|r| r["seq"] != list[0]["seq"]), "{after:?}");
    let stats = &json_lines(&run(&["journal", "stats", "--journal", p, "--json"]))[0];
    assert_eq!(stats["forgotten"], 1);
    let (ok, _, err) = nudge(&["journal", "forget", "--journal", p]);
    assert!(!ok && err.contains("--seq"), "what to forget is required: {err}");
    let done = &json_lines(&run(&[
        "journal",
        "forget",
        "--journal",
        p,
        "--seq",
        &first,
        "--compact",
    ]))[0];
    assert_eq!(done["forgotten"], serde_json::json!([]));
    assert_eq!(done["compacted"]["forgotten"], 1);
    let stats = &json_lines(&run(&["journal", "stats", "--journal", p, "--json"]))[0];
    assert_eq!(stats["forgotten"], 0);
}

#[cfg(unix)]
mod crash {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    /// Event `i` of the crash test: mostly small; every third is 0.5 to 2.5 MB, so that a
    /// kill can land inside its write.
    fn event(i: u64) -> (Value, Record) {
        let prompt = format!("prompt {}", i % 37);
        let size = if i % 3 == 1 {
            500_000 + (i * 7919) % 2_000_000
        } else {
            i % 200
        };
        let mut text = format!("{i}:");
        text.extend((0..size).map(|k| (b'a' + ((i + k) % 26) as u8) as char));
        let strength = (!i.is_multiple_of(4)).then_some((i % 4) as f32 * 0.5);
        if i.is_multiple_of(5) {
            let json = serde_json::json!({
                "id": format!("e{i}"), "prompt": prompt, "chosen": text, "rejected": "no",
                "strength": strength, "timestamp_ms": i,
            });
            let r = Record::Pair(PreferencePair {
                id: format!("e{i}"),
                prompt: Prompt::Text(prompt),
                chosen: text,
                rejected: "no".into(),
                strength,
                timestamp_ms: i,
            });
            (json, r)
        } else {
            let up = !i.is_multiple_of(3);
            let json = serde_json::json!({
                "id": format!("e{i}"), "prompt": prompt, "completion": text, "label": up,
                "strength": strength, "timestamp_ms": i,
            });
            let r = Record::Thumbs(Thumbs {
                id: format!("e{i}"),
                prompt: Prompt::Text(prompt),
                completion: text,
                up,
                strength,
                timestamp_ms: i,
            });
            (json, r)
        }
    }

    fn index_of(r: &Record) -> u64 {
        r.id()
            .and_then(|id| id.strip_prefix('e'))
            .and_then(|n| n.parse().ok())
            .expect("an e<i> id")
    }

    #[test]
    fn writers_killed_at_random_never_lose_a_durable_record() {
        let dir = fresh_dir("journal-crash");
        let path = dir.join("crash.nj");
        let mut rng = SplitMix(0x5eed);
        const LINES: u64 = 1_000_000;
        let (mut reported_total, mut torn, mut kills) = (0usize, 0usize, 0usize);
        let mut earlier: Vec<(u64, u64)> = Vec::new();
        let mut end = 0;
        for round in 0..30u64 {
            let start = round * LINES;
            let mut child = Command::new(env!("CARGO_BIN_EXE_nudge"))
                .args(["journal", "ingest", "--durability", "every", "--journal"])
                .arg(&path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawns nudge");
            let mut stdin = child.stdin.take().unwrap();
            let writer = std::thread::spawn(move || {
                for i in start..start + LINES {
                    // Fails once the child is dead: the pipe is closed.
                    if writeln!(stdin, "{}", event(i).0).is_err() {
                        break;
                    }
                }
            });
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let reader = std::thread::spawn(move || {
                for l in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                    let v: Value = serde_json::from_str(&l).expect("a JSON line");
                    let _ = tx.send((v["line"].as_u64().unwrap(), v["seq"].as_u64().unwrap()));
                }
            });
            let mut stderr = child.stderr.take().unwrap();
            let errors = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
                s
            });
            let mut reported = Vec::new();
            if round % 2 == 0 {
                // At a random moment of a random append (or of opening).
                for _ in 0..rng.below(4) {
                    match rx.recv_timeout(Duration::from_secs(60)) {
                        Ok(r) => reported.push(r),
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_micros(rng.below(30_000)));
            } else {
                // As soon as the file grows past a random size: most likely inside a write.
                let past = end + rng.below(3_000_000);
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while std::fs::metadata(&path).map_or(0, |m| m.len()) <= past && std::time::Instant::now() < deadline {
                    std::hint::spin_loop();
                }
            }
            child.kill().expect("kills");
            let status = child.wait().unwrap();
            reader.join().unwrap();
            reported.extend(rx.try_iter());
            writer.join().unwrap();
            let errors = errors.join().unwrap();
            assert_eq!(
                status.signal(),
                Some(9),
                "round {round}: the writer stopped on its own: {errors}"
            );
            kills += 1;

            let (j, recovery) = Journal::open(&path, Durability::EveryRecord)
                .unwrap_or_else(|e| panic!("round {round}: the journal does not open after a kill: {e}"));
            torn += usize::from(recovery.is_some());
            // What earlier rounds found is still there (checked whole when first seen; the
            // checksums vouch for it since).
            let found: Vec<(u64, u64)> = j.entries().iter().map(|e| (e.seq, index_of(&e.record))).collect();
            assert!(found.starts_with(&earlier), "round {round}: earlier records changed");
            // Every record reported durable is there, whole.
            for &(line, seq) in &reported {
                let e = j
                    .get(seq)
                    .unwrap_or_else(|| panic!("round {round}: durable record {seq} is missing"));
                assert_eq!(
                    e.record,
                    event(start + line - 1).1,
                    "round {round}: record {seq} differs"
                );
            }
            // Every new record is one that was sent, whole (none half-written).
            for e in &j.entries()[earlier.len()..] {
                let i = index_of(&e.record);
                assert!(i >= start, "round {round}: record {} is from an earlier round", e.seq);
                assert_eq!(e.record, event(i).1, "round {round}: record {} is damaged", e.seq);
            }
            assert!(found.len() - earlier.len() >= reported.len());
            reported_total += reported.len();
            earlier = found;
            end = j.file_bytes();
        }
        let (j, _) = Journal::open_read_only(&path).unwrap();
        eprintln!(
            "{kills} kills: {reported_total} records reported durable, {} in the journal, {torn} torn tails cut",
            j.entries().len()
        );
        assert!(reported_total > 0, "no append finished before a kill");
    }

    #[test]
    fn compactions_killed_at_random_leave_the_old_or_the_new_journal() {
        let dir = fresh_dir("journal-crash-compact");
        let template = dir.join("template.nj");
        let mut recs = Vec::new();
        for i in 0..3000u64 {
            let (_, mut r) = event(i * 2 % 1000 + i % 3);
            if let Record::Thumbs(t) = &mut r {
                t.completion.truncate(5000);
            }
            if let Record::Pair(p) = &mut r {
                p.chosen.truncate(5000);
            }
            recs.push(r);
            if i % 500 == 499 {
                recs.push(Record::TrainingMark(nudge::journal::TrainingMark {
                    up_to_sequence: recs.len() as u64 - 1,
                    unconsumed: vec![],
                    timestamp_ms: i,
                }));
            }
        }
        let (_, before) = write_journal(&dir, "template.nj", &recs);
        let bytes = std::fs::read(&template).unwrap();
        let path = dir.join("j.nj");
        std::fs::write(&path, &bytes).unwrap();
        let (mut j, _) = Journal::open(&path, Durability::EveryRecord).unwrap();
        let report = j.compact(CompactOptions::default()).unwrap();
        assert!(report.records_after < report.records_before);
        let after = seq_records(j.entries());
        drop(j);
        let before = seq_records(&before);

        let mut rng = SplitMix(0xc0de);
        let (mut old, mut new) = (0, 0);
        for round in 0..16 {
            std::fs::write(&path, &bytes).unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_nudge"))
                .args(["journal", "compact", "--journal"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawns nudge");
            std::thread::sleep(Duration::from_millis(rng.below(120)));
            let _ = child.kill();
            child.wait().unwrap();
            let (j, r) = Journal::open(&path, Durability::EveryRecord)
                .unwrap_or_else(|e| panic!("round {round}: the journal does not open: {e}"));
            assert_eq!(r, None, "round {round}");
            let got = seq_records(j.entries());
            if got == before {
                old += 1;
            } else {
                assert!(got == after, "round {round}: neither the old nor the compacted journal");
                new += 1;
            }
        }
        eprintln!("killed compactions: {old} left the old journal, {new} the compacted one");
    }
}
