fn main() {
    muster_node::cli::main();
}
