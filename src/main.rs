//! The `envctl` binary: parse arguments, run, map the outcome to an exit code. Nothing else.

fn main() {
    let code = envctl::main_with_args(std::env::args_os());
    std::process::exit(code);
}
