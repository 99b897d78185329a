//! The `envctl` binary: parse arguments, run, map the outcome to an exit code. Nothing else.

fn main() {
    // An empty variable means unset, as for ENVCTL_PREFIX and ENVCTL_LOCAL_URL (CI templates set
    // `ENVCTL_PROVIDER: ${{ vars.X }}` to "" when X is not configured). Done before any thread
    // starts, which is what makes changing the environment sound.
    for var in ["ENVCTL_PROVIDER", "ENVCTL_REPO", "ENVCTL_MAX_ENVIRONMENTS"] {
        if std::env::var_os(var).is_some_and(|v| v.is_empty()) {
            // SAFETY: single-threaded: nothing else reads or writes the environment yet.
            unsafe { std::env::remove_var(var) };
        }
    }
    let code = envctl::main_with_args(std::env::args_os());
    std::process::exit(code);
}
