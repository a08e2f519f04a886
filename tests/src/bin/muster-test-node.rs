//! The `muster` command line, built into the tests package so tests know its exact path.
fn main() {
    muster_cli::cli::main();
}
