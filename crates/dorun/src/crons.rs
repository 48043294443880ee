//! Cron triggers (`[triggers] crons`): each pattern fires the Worker's `scheduled()` handler
//! at its minutes, in UTC, while the server runs. A run missed while the server was down is
//! not replayed; the next one is computed from now at start.
//!
//! Patterns follow Cloudflare's syntax (5 fields; ranges, steps, lists, 3-letter names,
//! `L`, `W`, `#`, weekdays 1-7 from Sunday), parsed by `croner` in its Quartz weekday mode.
//!
//! A scheduled event reaches the isolate as an internal request the front door never
//! forwards: it carries the process's secret token (`x-dorun-scheduled`), which JS checks
//! before it calls `scheduled(controller, env, ctx)` instead of `fetch`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use dorun_runtime::WorkerPool;
use http_body_util::BodyExt as _;

/// Header of the internal request that runs `scheduled()`; its value is the secret token.
pub const SCHEDULED_HEADER: &str = "x-dorun-scheduled";
/// The cron pattern that fired (empty when fired on demand without one).
pub const CRON_HEADER: &str = "x-dorun-cron";
/// `controller.scheduledTime` (ms since the epoch).
pub const TIME_HEADER: &str = "x-dorun-scheduled-time";

/// A parsed cron pattern: croner's, plus Cloudflare's `LW` (the last weekday of the
/// month) in the day-of-month field, which croner does not take: that field is matched
/// by hand on the times croner finds for the rest of the pattern.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    last_weekday: bool,
}

/// A cron pattern in Cloudflare's syntax, or why it is not one.
pub fn parse(pattern: &str) -> Result<Schedule, String> {
    let mut fields: Vec<&str> = pattern.split_whitespace().collect();
    let last_weekday = fields.len() == 5 && fields[2].eq_ignore_ascii_case("LW");
    if last_weekday {
        fields[2] = "*";
    }
    // Quartz weekdays (1-7 from Sunday), as Cloudflare's docs give them; croner's
    // default is 0-6.
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .alternative_weekdays(true)
        .build()
        .parse(&fields.join(" "))
        .map_err(|e| e.to_string())?;
    Ok(Schedule { cron, last_weekday })
}

/// Whether `day` is the last Monday-to-Friday of its month.
fn is_last_weekday(day: DateTime<Utc>) -> bool {
    use chrono::{Datelike, Duration as Days, Weekday};
    let weekday = |d: DateTime<Utc>| !matches!(d.weekday(), Weekday::Sat | Weekday::Sun);
    if !weekday(day) {
        return false;
    }
    // No weekday later in the month.
    (1..=3).all(|n| {
        let later = day + Days::days(n);
        later.month() != day.month() || !weekday(later)
    })
}

/// The first time after `now` that `schedule` fires.
pub fn next_after(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::Timelike;
    // Whole seconds: croner keeps the fraction of its start in what it finds.
    let mut at = now.with_nanosecond(0).unwrap_or(now);
    // A day a minute for `LW`: at most a month of minutes before it matches.
    for _ in 0..50_000 {
        at = schedule.cron.find_next_occurrence(&at, false).ok()?;
        if !schedule.last_weekday || is_last_weekday(at) {
            return Some(at);
        }
    }
    None
}

/// What the last run of one trigger did (the admin listener shows it).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LastRun {
    /// `scheduledTime` of the run (ms since the epoch).
    pub scheduled: i64,
    /// `ok`, or `exception` with `error`.
    pub outcome: String,
    pub error: Option<String>,
    pub ms: f64,
}

/// One trigger of one worker, and its last run.
pub struct Trigger {
    pub worker: String,
    pub pattern: String,
    cron: Schedule,
    pub last: Mutex<Option<LastRun>>,
}

impl Trigger {
    pub fn next(&self) -> Option<DateTime<Utc>> {
        next_after(&self.cron, Utc::now())
    }
}

/// The triggers of the workers of one `dorun serve` that have a script, from each worker's
/// (name, `triggers.crons`, pool).
pub fn triggers<'a>(
    workers: impl IntoIterator<Item = (&'a str, &'a [String], &'a Option<Arc<WorkerPool>>)>,
) -> Vec<(Arc<WorkerPool>, Arc<Trigger>)> {
    let mut out = Vec::new();
    for (worker, crons, pool) in workers {
        let Some(pool) = pool else { continue };
        for pattern in crons {
            // Checked when the config was read.
            let Ok(cron) = parse(pattern) else { continue };
            out.push((
                pool.clone(),
                Arc::new(Trigger {
                    worker: worker.to_string(),
                    pattern: pattern.clone(),
                    cron,
                    last: Mutex::new(None),
                }),
            ));
        }
    }
    out
}

/// Fires each trigger at its times until the process ends (spawn it).
pub async fn run(triggers: Vec<(Arc<WorkerPool>, Arc<Trigger>)>) {
    let mut tasks = Vec::new();
    for (pool, trigger) in triggers {
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(at) = trigger.next() else {
                    tracing::warn!(cron = %trigger.pattern, "the cron trigger never fires again");
                    return;
                };
                let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
                // Woken early (clock changes): wait again for the same minute.
                if Utc::now() < at {
                    continue;
                }
                let run = fire(&pool, &trigger.pattern, at.timestamp_millis()).await;
                // Recorded before it is logged: whoever reads the log line finds it.
                *trigger.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(run.clone());
                match &run.error {
                    None => tracing::info!(worker = %trigger.worker, cron = %trigger.pattern, ms = run.ms, "scheduled() ran"),
                    Some(error) => tracing::warn!(worker = %trigger.worker, cron = %trigger.pattern, "scheduled() failed: {error}"),
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Runs the Worker's `scheduled()` once, as pattern `cron` at `scheduled` (ms since the
/// epoch), and waits for it (and its `waitUntil` work) to end.
pub async fn fire(pool: &WorkerPool, cron: &str, scheduled: i64) -> LastRun {
    let started = std::time::Instant::now();
    let request = http::Request::builder()
        .method(http::Method::GET)
        .uri("http://dorun.internal/__scheduled")
        .header(SCHEDULED_HEADER, dorun_runtime::events::fetch_depth_token())
        .header(CRON_HEADER, cron)
        .header(TIME_HEADER, scheduled.to_string())
        .body(dorun_runtime::body::empty_request_body());
    let outcome = match request {
        Err(error) => Err(format!("cron {cron:?}: {error}")),
        Ok(request) => match pool.dispatch(request).await {
            Err(error) => Err(error.to_string()),
            Ok(response) => {
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(if body.is_empty() {
                        status.to_string()
                    } else {
                        body
                    })
                }
            }
        },
    };
    LastRun {
        scheduled,
        outcome: if outcome.is_ok() { "ok" } else { "exception" }.to_string(),
        error: outcome.err(),
        ms: (started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
    }
}

/// The dev endpoints `/__scheduled` and `/cdn-cgi/handler/scheduled` (`?cron=…&time=…`),
/// as `wrangler dev --test-scheduled` answers them; `None` for any other path.
pub async fn dev_endpoint(
    pool: &WorkerPool,
    uri: &http::Uri,
) -> Option<http::Response<dorun_runtime::ResponseBody>> {
    if uri.path() != "/__scheduled" && uri.path() != "/cdn-cgi/handler/scheduled" {
        return None;
    }
    let mut cron = String::new();
    let mut time = Utc::now().timestamp_millis();
    if let Some(query) = uri.query() {
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "cron" => cron = value.into_owned(),
                "time" => {
                    if let Ok(ms) = value.parse::<i64>() {
                        time = ms;
                    }
                }
                _ => {}
            }
        }
    }
    let run = fire(pool, &cron, time).await;
    // As wrangler dev answers each path.
    let done = if uri.path() == "/__scheduled" {
        "Ran scheduled event"
    } else {
        "ok"
    };
    let (status, text) = match run.error {
        None => (200, done.to_string()),
        Some(error) => (500, error),
    };
    Some(
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(dorun_runtime::ResponseBody::full(text))
            .unwrap_or_else(|_| http::Response::new(dorun_runtime::ResponseBody::Empty)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn cloudflares_examples_fire_when_its_docs_say() {
        // 2026-12-07 is a Monday.
        let now = at("2026-12-07T10:00:30Z");
        let next = |p: &str| next_after(&parse(p).unwrap(), now).unwrap().to_rfc3339();
        assert_eq!(next("* * * * *"), "2026-12-07T10:01:00+00:00");
        assert_eq!(next("*/30 * * * *"), "2026-12-07T10:30:00+00:00");
        // "5PM on Sunday", as `sun` and as 1.
        assert_eq!(next("0 17 * * sun"), "2026-12-13T17:00:00+00:00");
        assert_eq!(next("0 17 * * 1"), "2026-12-13T17:00:00+00:00");
        // "7:10AM on weekdays", as mon-fri and as 2-6.
        assert_eq!(next("10 7 * * mon-fri"), "2026-12-08T07:10:00+00:00");
        assert_eq!(next("10 7 * * 2-6"), "2026-12-08T07:10:00+00:00");
        assert_eq!(next("0 15 1 * *"), "2027-01-01T15:00:00+00:00");
        // "6PM on the last Friday of the month": 2026-12-25.
        assert_eq!(next("0 18 * * 6L"), "2026-12-25T18:00:00+00:00");
        assert_eq!(next("0 18 * * friL"), "2026-12-25T18:00:00+00:00");
        // "11:59PM on the last weekday of the month": Thursday 2026-12-31.
        assert_eq!(next("59 23 LW * *"), "2026-12-31T23:59:00+00:00");
        // The second Monday of the month: 2026-12-14.
        assert_eq!(next("0 10 * * MON#2"), "2026-12-14T10:00:00+00:00");
    }

    #[test]
    fn a_bad_pattern_is_refused() {
        assert!(parse("not a cron").is_err());
        assert!(parse("* * * *").is_err(), "four fields");
        assert!(
            parse("0 * * * * *").is_err(),
            "seconds are not Cloudflare's"
        );
        assert!(parse("61 * * * *").is_err());
    }
}
