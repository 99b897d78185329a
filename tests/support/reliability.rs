//! What the reliability suites share (RELIABILITY.md): how many iterations a run makes, a seeded
//! random source whose seed is printed so a failure can be replayed, and a counted fuzz runner
//! over proptest strategies.
//!
//! The same tests run short inside `cargo test` and long through `scripts/reliability.sh --long`,
//! which sets `ENVCTL_RELIABILITY=long`. Each count can also be set on its own (the variable named
//! at each call), and `ENVCTL_RELIABILITY_SEED` replays a run.

use std::sync::OnceLock;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

/// Whether this is a long run (`ENVCTL_RELIABILITY=long`).
pub fn long() -> bool {
    std::env::var("ENVCTL_RELIABILITY").is_ok_and(|v| v == "long")
}

/// How many iterations: `variable` when set, else `long_count` in a long run, else `short`.
pub fn count(variable: &str, short: u64, long_count: u64) -> u64 {
    match std::env::var(variable) {
        Ok(text) if !text.is_empty() => text
            .parse()
            .unwrap_or_else(|_| panic!("{variable}={text:?} is not a count")),
        _ if long() => long_count,
        _ => short,
    }
}

/// The run's seed: `ENVCTL_RELIABILITY_SEED`, else from the clock. Printed once.
pub fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let seed = match std::env::var("ENVCTL_RELIABILITY_SEED") {
            Ok(text) if !text.is_empty() => text
                .parse()
                .unwrap_or_else(|_| panic!("ENVCTL_RELIABILITY_SEED={text:?} is not a number")),
            _ => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        eprintln!("reliability seed {seed} (replay with ENVCTL_RELIABILITY_SEED={seed})");
        seed
    })
}

/// A small seeded random source (splitmix64): enough to pick kill moments and changes.
pub struct Rng(u64);

impl Rng {
    /// A source for one suite: the run's seed mixed with the suite's name.
    pub fn for_suite(name: &str) -> Rng {
        let mut state = seed();
        for byte in name.bytes() {
            state = state.rotate_left(5) ^ u64::from(byte);
        }
        Rng(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs `test` on `cases` inputs drawn from `strategy` (`ENVCTL_FUZZ_CASES` overrides, per
/// target; a long run multiplies `cases` by `long_factor`), failing with the shrunk input on the
/// first failure or panic, and prints how many inputs ran. Returns that number.
pub fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    long_factor: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64 {
    let cases = count(
        "ENVCTL_FUZZ_CASES",
        u64::from(cases),
        u64::from(cases) * u64::from(long_factor),
    );
    let seed = seed() ^ fnv(name);
    let config = Config {
        cases: u32::try_from(cases).expect("at most 2^32 cases a target"),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        // Rejections (prop_filter) are bounded per case, never per run.
        max_global_rejects: u32::MAX,
        ..Config::default()
    };
    let ran = std::sync::atomic::AtomicU64::new(0);
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |value| {
        ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        test(value)
    });
    let ran = ran.into_inner();
    match result {
        Ok(()) => {
            eprintln!(
                "fuzz {name}: {ran} inputs, 0 failures, 0 panics in {:.1}s (seed {seed})",
                started.elapsed().as_secs_f64()
            );
            ran
        }
        Err(TestError::Fail(reason, input)) => panic!(
            "fuzz {name}: failed after {ran} inputs (seed {seed}): {reason}\nminimal input: {input:#?}"
        ),
        Err(TestError::Abort(reason)) => {
            panic!("fuzz {name}: aborted after {ran} inputs: {reason}")
        }
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
