//! Replays saved inputs through a harness, for the regression tests on stable.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The `fuzz/` directory, from a crate under `crates/`.
pub fn fuzz_dir(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).join("../../fuzz")
}

/// Runs `run` on every file of `fuzz/regressions/<target>/` and `fuzz/seeds/<target>/`
/// (not their subdirectories) and panics naming each input that panics. Panics too if
/// there is no input at all, so that a moved directory cannot pass unnoticed.
pub fn replay(manifest_dir: &str, target: &str, run: fn(&[u8])) {
    let fuzz = fuzz_dir(manifest_dir);
    replay_dirs(
        &[
            fuzz.join("regressions").join(target),
            fuzz.join("seeds").join(target),
        ],
        run,
    );
}

/// Runs `run` on every file directly in `dirs`; see [`replay`].
pub fn replay_dirs(dirs: &[PathBuf], run: fn(&[u8])) {
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no saved inputs in {dirs:?}");
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("a readable input");
            std::panic::catch_unwind(|| run(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "inputs that fail: {failed:#?}");
}
