fn main() {
    muster_cli::cli::main();
}
