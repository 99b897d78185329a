//! How names and durations are written for people: a name inside a code span that shows it as
//! written whatever it holds (git allows backticks in branch names), and a duration rounded to
//! what a person reads (`30s`, `2m 5s`), never `30s 1ms 815us 501ns`.
//!
//! Architecture invariant: no IO (see `model/mod.rs`).

use std::time::Duration;

/// `text` as a CommonMark code span: fenced by one backtick more than its longest run of them,
/// padded with a space where it starts or ends with a backtick (or with spaces at both ends, which
/// a code span would strip). Reads as usual for ordinary names: `` `feature/login` ``.
pub fn code(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = text.starts_with('`')
        || text.ends_with('`')
        || (text.len() > 1 && text.starts_with(' ') && text.ends_with(' '));
    match pad {
        true => format!("{fence} {text} {fence}"),
        false => format!("{fence}{text}{fence}"),
    }
}

/// A duration as a person reads it, rounded to its two largest units: `850ms`, `30s`, `2m 5s`,
/// `1h 3m`, `2d 4h`.
pub fn duration_text(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    // Rounded to the nearest second, then shown in its two largest units.
    let seconds = (millis + 500) / 1000;
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    let two = |big: u128, big_unit: &str, small: u128, small_unit: &str| match small {
        0 => format!("{big}{big_unit}"),
        small => format!("{big}{big_unit} {small}{small_unit}"),
    };
    if days > 0 {
        two(days, "d", hours, "h")
    } else if hours > 0 {
        two(hours, "h", minutes, "m")
    } else if minutes > 0 {
        two(minutes, "m", secs, "s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_hold_any_name() {
        assert_eq!(code("feature/login"), "`feature/login`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("``x"), "``` ``x ```");
        assert_eq!(code("x`"), "`` x` ``");
        assert_eq!(code(" a "), "`  a  `");
        assert_eq!(code("<b>"), "`<b>`");
    }

    #[test]
    fn durations_round_for_people() {
        let d = |s: u64, ns: u32| Duration::new(s, ns);
        assert_eq!(duration_text(d(30, 1_815_501)), "30s");
        assert_eq!(duration_text(d(0, 850_000_000)), "850ms");
        assert_eq!(duration_text(d(1, 499_000_000)), "1s");
        assert_eq!(duration_text(d(59, 600_000_000)), "1m");
        assert_eq!(duration_text(d(125, 0)), "2m 5s");
        assert_eq!(duration_text(d(900, 0)), "15m");
        assert_eq!(duration_text(d(3780, 10)), "1h 3m");
        assert_eq!(duration_text(d(187_200, 0)), "2d 4h");
    }
}
