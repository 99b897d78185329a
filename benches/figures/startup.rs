//! Item 5, start-up: `envctl validate` on the example repository (this one) and `envctl --help`,
//! whole process from spawn to exit, beside `true` (what spawning and reaping any process costs
//! here). Run interleaved, many times; the target is on the median.

use std::process::Command;

use crate::measure::{self, Stats, mib, secs, verdict};
use crate::{Ctx, clean_env};

/// A case's name and how to make its command.
type Case<'a> = (&'static str, Box<dyn Fn() -> Command + 'a>);

pub fn run(ctx: &Ctx) -> String {
    let repeat = ctx.repeat(40);
    let out = ctx.out();
    let cases: [Case; 3] = [
        (
            "`envctl validate` (example repository)",
            Box::new(|| {
                let mut command = ctx.envctl();
                command.arg("-C").arg(&ctx.root).arg("validate");
                command
            }),
        ),
        (
            "`envctl --help`",
            Box::new(|| {
                let mut command = ctx.envctl();
                command.arg("--help");
                command
            }),
        ),
        (
            "`true` (reference: a process)",
            Box::new(|| {
                let mut command = Command::new("true");
                clean_env(&mut command);
                command
            }),
        ),
    ];
    let mut runs = vec![Vec::new(); cases.len()];
    eprintln!("item 5: {repeat} rounds");
    // One warm-up round: the page cache, not the first exec, is what users see after install.
    for round in 0..=repeat {
        for (i, (_, make)) in cases.iter().enumerate() {
            let run = measure::run(&mut make(), &out, "startup");
            run.expect_success("start-up case");
            if round > 0 {
                runs[i].push(run);
            }
        }
    }
    let floor = runs
        .iter()
        .map(|r| Stats::of_floor_mib(r).max)
        .fold(0.0, f64::max);
    let mut rows = Vec::new();
    let mut all_met = true;
    for (i, (name, _)) in cases.iter().enumerate() {
        let wall = Stats::of_walls(&runs[i]);
        let rss = Stats::of_rss_mib(&runs[i]);
        let is_envctl = i < 2;
        let met = wall.median < 0.020;
        if is_envctl {
            all_met &= met;
        }
        rows.push(format!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            secs(wall.median),
            secs(wall.min),
            secs(wall.p90),
            secs(wall.max),
            mib(rss.median),
            if is_envctl { verdict(met) } else { "" },
        ));
    }
    format!(
        "## 5. Start-up\n\n\
         Whole process, spawn to exit, {repeat} interleaved runs each after one warm-up round.\n\
         Target: under 20 ms (on the median). Peak RSS reads no lower than the harness's own RSS\n\
         when it started the process, at most {} here (`true` shows it).\n\n\
         | command | median | min | p90 | max | peak RSS | < 20 ms |\n\
         |---|---|---|---|---|---|---|\n\
         {}\n\n\
         Item 5: {}.\n",
        mib(floor),
        rows.join("\n"),
        if all_met {
            "all targets met"
        } else {
            "**a target missed**"
        }
    )
}
