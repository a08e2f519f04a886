//! Replays every committed fuzz input on stable, in every CI run: the seed corpora in
//! `fuzz/corpus/<target>/` and the inputs of bugs the fuzzers found in
//! `fuzz/regressions/<target>/`, through the same functions the fuzzers call
//! (`muster_node::fuzzing`). A target without a corpus fails the test.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_has_a_seed_corpus_and_every_committed_input_runs_clean() {
    let mut ran = Vec::new();
    for (target, run) in muster_node::fuzzing::TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(target));
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} has no seed inputs");
        let regressions = inputs(&fuzz_dir().join("regressions").join(target));
        for file in corpus.iter().chain(&regressions) {
            let bytes = std::fs::read(file).unwrap();
            // A panic names the input through the test's output.
            eprintln!("{target}: {}", file.display());
            run(&bytes);
        }
        ran.push(format!(
            "{target}: {} seeds, {} regressions",
            corpus.len(),
            regressions.len()
        ));
    }
    assert_eq!(ran.len(), 7, "every target replayed: {ran:?}");
    eprintln!("{}", ran.join("\n"));
}

#[test]
fn every_fuzz_target_has_a_fuzzer() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (target, _) in muster_node::fuzzing::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] for {target}"
        );
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{target}.rs"))
                .exists()
        );
    }
}
