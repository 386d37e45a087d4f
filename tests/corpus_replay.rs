//! Replays every file of the fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets'
//! own entry points, so CI checks the seeds and every regression input without cargo-fuzz.
//!
//! The entry points live in `fuzz/src/lib.rs`, included here as a module: the fuzzer and this
//! test run exactly the same checks. A corpus file that makes an entry point panic fails the
//! test with the file's name.

#[path = "../fuzz/src/lib.rs"]
mod entry_points;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Run every file of `fuzz/corpus/<target>/` through `run`; returns how many there were.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut failed = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).expect("a readable corpus file");
        if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: these inputs panic: {failed:?}"
    );
    files.len()
}

#[test]
fn every_key_normaliser_corpus_file_replays_without_a_panic() {
    assert!(replay("key_normaliser", entry_points::key_normaliser) >= 20);
}

#[test]
fn every_entry_decoder_corpus_file_replays_without_a_panic() {
    assert!(replay("entry_decoder", entry_points::entry_decoder) >= 10);
}

#[test]
fn every_cache_control_corpus_file_replays_without_a_panic() {
    assert!(replay("cache_control", entry_points::cache_control) >= 20);
}

#[test]
fn a_resigned_real_entry_is_the_entry_itself() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/entry_decoder");
    let real = std::fs::read(dir.join("layer-00")).expect("a real entry in the corpus");
    assert_eq!(entry_points::resign(&real), real);
}
