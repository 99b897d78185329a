//! The time to sign one IAM auth token, in an optimised build: the figures harness
//! (`benches/figures`) is built in the dev profile, where the signer runs unoptimised, so it runs
//! this with `cargo bench --bench signing` (`scripts/bench.sh` builds it first). The signer is
//! the one `envctl proxy` calls for every upstream connection on AWS; the AWS credentials are
//! given (the proxy caches them). Prints the median microseconds per token of 5 batches of
//! 20 000, then each batch's.

use std::time::{Instant, SystemTime};

fn main() {
    let credentials = aws_credential_types::Credentials::new(
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        Some("IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN".to_owned()),
        None,
        "bench",
    );
    let n = 20_000;
    let mut batches: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                let token = envctl::provider::aws::token::generate_auth_token(
                    &credentials,
                    "us-east-1",
                    "envctl-feature-login-005b07d0.cluster-abcdefghijkl.us-east-1.rds.amazonaws.com",
                    5432,
                    "postgres",
                    SystemTime::now(),
                )
                .expect("a token");
                std::hint::black_box(token);
            }
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .collect();
    let each: Vec<String> = batches.iter().map(|b| format!("{b:.2}")).collect();
    batches.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{:.2} {}", batches[2], each.join(" "));
}
