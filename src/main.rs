//! The `envctl` binary: parse arguments, run, map the outcome to an exit code. Nothing else.

fn main() {
    // An empty variable means unset, as for ENVCTL_PREFIX and ENVCTL_LOCAL_URL (CI templates set
    // `ENVCTL_PROVIDER: ${{ vars.X }}` to "" when X is not configured). Done before any thread
    // starts, which is what makes changing the environment sound.
    // The AWS SDK panics on an empty `AWS_ENDPOINT_URL` (or a service's `AWS_ENDPOINT_URL_*`),
    // which `AWS_ENDPOINT_URL: ${{ vars.X }}` gives when X is not configured.
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(key, value)| {
            value.is_empty()
                && key.to_str().is_some_and(|k| {
                    ["ENVCTL_PROVIDER", "ENVCTL_REPO", "ENVCTL_MAX_ENVIRONMENTS"].contains(&k)
                        || k.starts_with("AWS_ENDPOINT_URL")
                })
        })
        .map(|(key, _)| key)
        .collect();
    for var in empty {
        // SAFETY: single-threaded: nothing else reads or writes the environment yet.
        unsafe { std::env::remove_var(var) };
    }
    let code = envctl::main_with_args(std::env::args_os());
    std::process::exit(code);
}
