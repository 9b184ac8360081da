fn main() {
    std::process::exit(imgraph::cli::main());
}
