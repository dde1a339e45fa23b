//! The atomic writer: files appear whole or not at all, a failed write leaves no temporary
//! file, and a set of files (a PEFT adapter) is never half old, half new.

mod common;

use common::tiny::*;
use nudge::Error;
use nudge::adapter::format::peft;
use nudge::adapter::{Adapter, LoraConfig};
use nudge::fsutil::{AtomicFile, FileSet, write_atomic, write_atomic_with};
use nudge::gguf::GgufWriter;
use nudge::model::Model;
use std::path::Path;

/// The names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_write_replaces_the_file_and_leaves_nothing_else() {
    let d = fresh_dir("fsutil-replace");
    let p = d.join("out.json");
    write_atomic(&p, b"old").unwrap();
    write_atomic(&p, b"new").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"new");
    assert_eq!(names(&d), ["out.json"]);
}

#[test]
fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
    let d = fresh_dir("fsutil-fail");
    let p = d.join("out.json");
    write_atomic(&p, b"old").unwrap();
    let e = write_atomic_with(&p, |w| {
        w.write_all(b"half")?;
        Err(std::io::Error::other("disk full"))
    })
    .unwrap_err();
    assert!(matches!(&e, Error::Io { path, .. } if path == &p), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), b"old");
    assert_eq!(names(&d), ["out.json"]);

    // Dropped without a commit: gone.
    let f = AtomicFile::new(&p).unwrap();
    assert!(f.temp_path().exists());
    drop(f);
    assert_eq!(names(&d), ["out.json"]);
}

#[test]
fn a_write_under_a_file_is_a_typed_error() {
    let d = fresh_dir("fsutil-parent-file");
    std::fs::write(d.join("plain"), b"x").unwrap();
    let p = d.join("plain").join("out.json");
    let e = write_atomic(&p, b"x").unwrap_err();
    assert!(matches!(&e, Error::Io { path, .. } if path == &p), "{e}");
    let e = GgufWriter::new().write(&p).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(names(&d), ["plain"]);
}

#[test]
fn a_new_file_is_never_put_over_an_existing_one_by_commit_new() {
    let d = fresh_dir("fsutil-noclobber");
    let p = d.join("journal");
    std::fs::write(&p, b"theirs").unwrap();
    let f = AtomicFile::new(&p).unwrap();
    std::io::Write::write_all(&mut f.file(), b"ours").unwrap();
    match f.commit_new() {
        Err(Error::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&p).unwrap(), b"theirs");
    assert_eq!(names(&d), ["journal"]);
}

#[test]
fn a_file_set_that_fails_leaves_no_temporary_file() {
    let d = fresh_dir("fsutil-set-fail");
    // A folder where a file of the set goes: its rename fails.
    std::fs::create_dir_all(d.join("weights").join("inside")).unwrap();
    let mut set = FileSet::new(&d).unwrap();
    set.add("weights", b"w").unwrap();
    set.add("config", b"c").unwrap();
    assert!(set.commit("config").is_err());
    assert_eq!(names(&d), ["weights"]);

    // A set without its marker is refused before anything moves.
    let d = fresh_dir("fsutil-set-marker");
    let mut set = FileSet::new(&d).unwrap();
    set.add("weights", b"w").unwrap();
    assert!(matches!(set.commit("config"), Err(Error::Invalid(_))));
    assert!(names(&d).is_empty());
}

#[test]
fn a_peft_adapter_saved_over_another_is_whole_and_keeps_the_other_files() {
    let d = fresh_dir("fsutil-peft-model");
    write_model(&d, &TinySpec::default());
    let m = Model::open(&d).unwrap();
    let out = fresh_dir("fsutil-peft-out");
    std::fs::write(out.join("metrics.jsonl"), b"{}\n").unwrap();
    let a = Adapter::new(&m.config, LoraConfig::default(), 1, "tiny").unwrap();
    peft::save(&a, &out).unwrap();
    let b = Adapter::new(
        &m.config,
        LoraConfig {
            r: 4,
            ..LoraConfig::default()
        },
        2,
        "tiny",
    )
    .unwrap();
    peft::save(&b, &out).unwrap();
    assert_eq!(names(&out), [peft::CONFIG_FILE, peft::WEIGHTS_FILE, "metrics.jsonl"]);
    assert_eq!(peft::load(&out, &m.config).unwrap(), b);
}
