fn main() {
    if let Err(e) = mmlab::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
