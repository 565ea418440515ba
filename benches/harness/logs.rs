//! Reading the components' log files: each `tracing` line carries a UTC
//! timestamp with microseconds, a level, a target, a message and
//! `key=value` fields, e.g.
//!
//! `2025-11-22T04:01:02.123456Z DEBUG warren_runner::workspace: checkout timings job=ab12 fetch_ms=3`
//!
//! All components run on this machine, so their timestamps share the
//! harness's clock.

use std::collections::HashMap;
use std::path::Path;

/// One parsed log line.
#[derive(Debug, Clone)]
pub struct Line {
    /// Milliseconds since the Unix epoch (with the microseconds).
    pub at_ms: f64,
    pub level: String,
    pub target: String,
    pub message: String,
    pub fields: HashMap<String, String>,
}

impl Line {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A numeric field.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.field(key)?.parse().ok()
    }

    /// Is this `message` (exactly) about job `job`?
    pub fn is(&self, message: &str, job: &str) -> bool {
        self.message == message && self.field("job") == Some(job)
    }
}

/// Milliseconds since the epoch for `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn parse_timestamp(text: &str) -> Option<f64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let mut time_parts = time.splitn(3, ':');
    let hour: i64 = time_parts.next()?.parse().ok()?;
    let minute: i64 = time_parts.next()?.parse().ok()?;
    let seconds: f64 = time_parts.next()?.parse().ok()?;
    let days = days_from_civil(year, month, day);
    let whole = days * 86_400 + hour * 3_600 + minute * 60;
    Some(whole as f64 * 1000.0 + seconds * 1000.0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses one line; `None` for anything that is not a `tracing` line
/// (continuation lines, output of other programs).
pub fn parse_line(line: &str) -> Option<Line> {
    let mut rest = line.trim_end();
    let (stamp, after) = rest.split_once(' ')?;
    let at_ms = parse_timestamp(stamp)?;
    rest = after.trim_start();
    let (level, after) = rest.split_once(' ')?;
    rest = after.trim_start();
    let (target, after) = rest.split_once(": ")?;
    let mut message = Vec::new();
    let mut fields = HashMap::new();
    for token in after.split_whitespace() {
        match token.split_once('=') {
            Some((key, value))
                if !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') =>
            {
                fields.insert(key.to_string(), value.to_string());
            }
            _ if fields.is_empty() => message.push(token),
            _ => {}
        }
    }
    Some(Line {
        at_ms,
        level: level.to_string(),
        target: target.to_string(),
        message: message.join(" "),
        fields,
    })
}

/// Every parsed line of a log file (empty if it cannot be read).
pub fn read(path: &Path) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(parse_line)
        .collect()
}

/// How many lines of `path` contain `needle` (cheap; no parsing).
pub fn count(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(needle)
        .count()
}
