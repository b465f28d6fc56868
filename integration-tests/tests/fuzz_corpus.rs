//! Every fuzz target's seed corpus runs as a test, on a stable toolchain.
//!
//! A target is `fuzz/fuzz_targets/<name>.rs`, the binary `<name>` of the fuzz package, with its
//! seeds in `fuzz/corpus/<name>/`. `make build-debug` builds the targets into this target
//! directory without sanitizers or coverage (`cargo build --manifest-path fuzz/Cargo.toml
//! --target-dir target`); such a libFuzzer binary given files runs each once and exits non-zero
//! on a panic. Targets are discovered, not listed here: a corpus without a target, a target
//! without seeds, or a target that was not built fails loudly.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reloadsup_integration_tests::{bins, output_with_timeout};

fn fuzz_dir() -> PathBuf {
    bins::workspace_root().join("fuzz")
}

/// The names of the entries of `dir` that `keep` accepts, with `strip` removed from the end.
fn names(dir: &Path, strip: &str, keep: impl Fn(&Path) -> bool) -> BTreeSet<String> {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("unable to list {}: {e}", dir.display()));
    entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
                .path()
        })
        .filter(|p| keep(p))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            Some(name.strip_suffix(strip)?.to_owned())
        })
        .collect()
}

fn targets() -> BTreeSet<String> {
    names(&fuzz_dir().join("fuzz_targets"), ".rs", |p| p.is_file())
}

fn corpora() -> BTreeSet<String> {
    names(&fuzz_dir().join("corpus"), "", |p| p.is_dir())
}

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = names(&dir, "", |p| p.is_file())
        .into_iter()
        .map(|n| dir.join(n))
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_has_a_target_and_every_target_seeds() {
    let (targets, corpora) = (targets(), corpora());
    let orphans: Vec<_> = corpora.difference(&targets).collect();
    assert!(
        orphans.is_empty(),
        "fuzz/corpus/ has seeds for {orphans:?} but fuzz/fuzz_targets/ has no such target: add \
         fuzz_targets/<name>.rs and its [[bin]] in fuzz/Cargo.toml, or remove the corpus"
    );
    let unseeded: Vec<_> = targets
        .iter()
        .filter(|t| !corpora.contains(*t) || seeds(t).is_empty())
        .collect();
    assert!(
        unseeded.is_empty(),
        "fuzz targets {unseeded:?} have no seeds: add files to fuzz/corpus/<name>/"
    );
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for t in &targets {
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{t}.rs\"")),
            "fuzz_targets/{t}.rs has no [[bin]] in fuzz/Cargo.toml"
        );
    }
}

#[test]
fn every_fuzz_target_runs_its_seed_corpus() {
    let mut failures = Vec::new();
    let mut ran = 0;
    // A crashing input is saved here (and kept) rather than in the working directory.
    let artifacts = std::env::temp_dir().join(format!("reloadsup-fuzz-{}", std::process::id()));
    fs::create_dir_all(&artifacts).expect("artifact directory");
    for target in targets() {
        let files = seeds(&target);
        if files.is_empty() {
            continue; // reported by every_corpus_has_a_target_and_every_target_seeds
        }
        let bin = bins::profile_dir().join(&target);
        assert!(
            bin.is_file(),
            "{} is missing: build the fuzz targets first (make build-debug, or cargo build \
             --manifest-path fuzz/Cargo.toml --locked --target-dir target)",
            bin.display()
        );
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("-artifact_prefix={}/", artifacts.display()))
            .args(&files);
        let out = output_with_timeout(&mut cmd, Duration::from_secs(120));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let executed = stderr
            .lines()
            .filter(|l| l.starts_with("Executed "))
            .count();
        eprintln!(
            "fuzz target {target}: {executed} of {} seeds run, {}",
            files.len(),
            out.status
        );
        if !out.status.success() || executed != files.len() {
            failures.push(format!(
                "{target} ({}, ran {executed} of {} seeds):\n{stderr}",
                out.status,
                files.len()
            ));
        }
        ran += 1;
    }
    let _ = fs::remove_dir(&artifacts); // only if no crash left anything there
    assert!(ran > 0, "no fuzz target ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
