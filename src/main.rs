//! The `wspoold` binary: arguments in, library call, exit code out.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(wspoold::cli::main(&args));
}
