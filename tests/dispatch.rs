//! Runtime dispatch is sound: every CPU feature a function is compiled for
//! (`#[target_feature(enable = "...")]`) is one that `Isa::is_supported` checks before any
//! such function is chosen. A function compiled for a feature the check skips would be
//! undefined behaviour on a CPU (or a VM) that masks it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The quoted names after each occurrence of `marker` in `text`, split at commas.
fn quoted_after(text: &str, marker: &str) -> Vec<String> {
    let mut names = Vec::new();
    for part in text.split(marker).skip(1) {
        let Some(start) = part.find('"') else { continue };
        let rest = &part[start + 1..];
        let Some(end) = rest.find('"') else { continue };
        names.extend(rest[..end].split(',').map(|s| s.trim().to_string()));
    }
    names
}

#[test]
fn every_enabled_cpu_feature_is_checked_before_dispatch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut enabled = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source file");
        for name in quoted_after(&text, "target_feature(enable") {
            enabled.insert((name, f.strip_prefix(root).unwrap().display().to_string()));
        }
    }
    assert!(
        enabled.iter().any(|(n, _)| n == "avx512f"),
        "the scan found no AVX-512 function: it is not reading the kernels"
    );
    let isa = std::fs::read_to_string(root.join("src/isa.rs")).expect("src/isa.rs");
    let checked: BTreeSet<String> = quoted_after(&isa, "is_x86_feature_detected!(").into_iter().collect();
    let unchecked: Vec<_> = enabled.iter().filter(|(n, _)| !checked.contains(n)).collect();
    assert!(
        unchecked.is_empty(),
        "compiled for features that Isa::is_supported does not check: {unchecked:?} (checked: {checked:?})"
    );
    // Detection happens in one place, so no other code path can dispatch on its own check.
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source file");
        if !f.ends_with("src/isa.rs") {
            assert!(
                !text.contains("is_x86_feature_detected!("),
                "{} detects CPU features itself; use nudge::isa::Isa",
                f.display()
            );
        }
    }
}
