//! Test splitting (issue 18): a job's tests, listed at the commit, cut
//! into batches that runners pull from the job's queue as they free up.
//!
//! Everything here is a pure function, so the rules are written once and
//! tested without a runner: which lines of a listing are test ids
//! ([`TestId::from_line`]), how long each test is expected to take
//! ([`estimates`], from past durations smoothed by [`smooth`]), how the
//! tests are cut ([`cut`]: longest first, batches shrinking towards the
//! end, so the last ones are short and the runners end together), and how
//! a batch's ids go into its command ([`command_for`]). [`makespan`]
//! replays a schedule on N runners pulling from one queue, which is what
//! the queue does, to compare cuttings.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest test id kept from a listing.
pub const MAX_TEST_ID_BYTES: usize = 1024;
/// What a test no past run has timed is expected to take when no test of
/// the listing has been timed either.
pub const UNKNOWN_TEST_MS: u64 = 1000;
/// The weight of the newest duration in a test's smoothed time.
pub const SMOOTHING: f64 = 0.3;
/// Where a batch's ids go in the `run` command.
pub const TESTS_PLACEHOLDER: &str = "{tests}";
/// The most bytes a batch's quoted ids may take in its command (a job's
/// command has at most [`crate::pipeline::MAX_RUN_BYTES`]).
pub const MAX_BATCH_ID_BYTES: usize = 32 * 1024;
/// The longest `split.run`, so that it and a batch's ids fit in a job's
/// command.
pub const MAX_SPLIT_RUN_BYTES: usize = 16 * 1024;

/// One test, as the listing command printed it (`tests/test_a.py::test_x`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TestId(String);

impl TestId {
    /// The test id a line of a listing holds, if it looks like one:
    /// trimmed, not empty, at most [`MAX_TEST_ID_BYTES`], no control
    /// characters, no whitespace except inside brackets (pytest's
    /// parameters, `test_x[a b]`), and not ending with `:`. So a listing's
    /// headers and summaries (`tests:`, `5 tests collected in 0.01s`) are
    /// dropped.
    pub fn from_line(line: &str) -> Option<TestId> {
        let id = line.trim();
        if id.is_empty()
            || id.len() > MAX_TEST_ID_BYTES
            || id.ends_with(':')
            || id.chars().any(char::is_control)
        {
            return None;
        }
        let mut depth = 0usize;
        for c in id.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                c if c.is_whitespace() && depth == 0 => return None,
                _ => {}
            }
        }
        id.chars()
            .any(char::is_alphanumeric)
            .then(|| TestId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The test ids of a listing, in order, each once.
pub fn parse_listing(output: &str) -> Vec<TestId> {
    let mut seen = std::collections::HashSet::new();
    output
        .lines()
        .filter_map(TestId::from_line)
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// A test's time after one more run: the newest duration weighs
/// [`SMOOTHING`], so one slow run moves it, and a trend takes it over.
pub fn smooth(previous_ms: Option<u64>, observed_ms: u64) -> u64 {
    match previous_ms {
        None => observed_ms,
        Some(previous) => {
            let blended = previous as f64 * (1.0 - SMOOTHING) + observed_ms as f64 * SMOOTHING;
            blended.round() as u64
        }
    }
}

/// Each test with the time it is expected to take: its smoothed past
/// time, else the median of the listed tests that have one, else
/// [`UNKNOWN_TEST_MS`].
pub fn estimates(tests: &[TestId], past_ms: &HashMap<TestId, u64>) -> Vec<(TestId, u64)> {
    let mut known: Vec<u64> = tests
        .iter()
        .filter_map(|test| past_ms.get(test).copied())
        .collect();
    known.sort_unstable();
    let median = if known.is_empty() {
        UNKNOWN_TEST_MS
    } else {
        known[known.len() / 2]
    };
    tests
        .iter()
        .map(|test| (test.clone(), past_ms.get(test).copied().unwrap_or(median)))
        .collect()
}

/// A batch: tests one runner runs with one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub tests: Vec<TestId>,
    /// The sum of its tests' estimates.
    pub estimate_ms: u64,
}

/// Cuts estimated tests into batches for `runners` runners pulling from
/// one queue: longest tests first; each batch takes tests until it holds
/// about the remaining time divided by twice the runners (guided
/// self-scheduling), but never less than `min_batch_ms` (a batch costs a
/// checkout and a process start), and at least one test. The batches
/// shrink as the work left does, so whichever runner frees up last has
/// only a short batch left to take. A batch's quoted ids also stay
/// within [`MAX_BATCH_ID_BYTES`]. Deterministic: equal estimates keep the
/// ids' order.
pub fn cut(mut tests: Vec<(TestId, u64)>, runners: usize, min_batch_ms: u64) -> Vec<Batch> {
    let runners = runners.max(1) as u64;
    tests.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut remaining: u64 = tests.iter().map(|(_, ms)| ms).sum();
    let mut batches = Vec::new();
    let mut tests = tests.into_iter().peekable();
    while tests.peek().is_some() {
        let target = (remaining / (2 * runners)).max(min_batch_ms).max(1);
        let mut batch = Batch {
            tests: Vec::new(),
            estimate_ms: 0,
        };
        let mut bytes = 0;
        while let Some((test, ms)) = tests.peek() {
            let quoted = test.as_str().len() + 3;
            if !batch.tests.is_empty()
                && (batch.estimate_ms + ms > target || bytes + quoted > MAX_BATCH_ID_BYTES)
            {
                break;
            }
            let Some((test, ms)) = tests.next() else {
                break;
            };
            bytes += quoted;
            batch.estimate_ms += ms;
            batch.tests.push(test);
        }
        remaining -= batch.estimate_ms;
        batches.push(batch);
    }
    batches
}

/// The static split other CIs do before the run: test `i` goes to shard
/// `i mod shards`, whatever its time. For comparison.
pub fn round_robin(tests: &[TestId], shards: usize) -> Vec<Vec<TestId>> {
    let shards = shards.max(1);
    let mut out = vec![Vec::new(); shards.min(tests.len().max(1))];
    let count = out.len();
    for (i, test) in tests.iter().enumerate() {
        out[i % count].push(test.clone());
    }
    out
}

/// How long `runners` runners pulling batches from one queue, in order,
/// take for batches lasting `batch_ms` each, plus `overhead_ms` per batch
/// (checkout, process start): each batch goes to the runner that frees
/// up first.
pub fn makespan(batch_ms: &[u64], runners: usize, overhead_ms: u64) -> u64 {
    let mut free_at = vec![0u64; runners.max(1)];
    for ms in batch_ms {
        let Some(first) = free_at.iter_mut().min() else {
            break;
        };
        *first += ms + overhead_ms;
    }
    free_at.into_iter().max().unwrap_or(0)
}

/// How one test ended in a batch, or over its attempts (`Flaky`: it
/// failed, then passed when retried alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestStatus {
    Passed,
    Failed,
    Skipped,
    Flaky,
}

impl TestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "passed",
            TestStatus::Failed => "failed",
            TestStatus::Skipped => "skipped",
            TestStatus::Flaky => "flaky",
        }
    }
}

impl std::str::FromStr for TestStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            TestStatus::Passed,
            TestStatus::Failed,
            TestStatus::Skipped,
            TestStatus::Flaky,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
        .ok_or_else(|| format!("{text:?} is not a test status"))
    }
}

/// A test's status over its attempts: one that failed and then passed
/// (retried alone) is flaky; otherwise the newest attempt tells.
pub fn merge(previous: Option<TestStatus>, newest: TestStatus) -> TestStatus {
    match (previous, newest) {
        (Some(TestStatus::Failed | TestStatus::Flaky), TestStatus::Passed) => TestStatus::Flaky,
        (_, newest) => newest,
    }
}

/// A test's merged result in a split job, as `GET /api/jobs/{id}/tests`
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRecord {
    pub test: TestId,
    pub status: TestStatus,
    /// Its newest attempt's time.
    pub duration_ms: u64,
    /// The runner and the batch (a job id) of its newest attempt.
    pub runner: String,
    pub batch: String,
    pub attempts: u32,
}

/// One test's result in one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestOutcome {
    pub test: TestId,
    pub status: TestStatus,
    pub duration_ms: u64,
}

/// A batch's results when its command wrote no JUnit report: its time
/// spread evenly over its tests, all passed when the command exited 0,
/// all failed otherwise (each is then retried alone, which finds the one
/// that fails).
pub fn spread(tests: &[TestId], elapsed_ms: u64, passed: bool) -> Vec<TestOutcome> {
    let each = elapsed_ms / tests.len().max(1) as u64;
    let status = if passed {
        TestStatus::Passed
    } else {
        TestStatus::Failed
    };
    tests
        .iter()
        .map(|test| TestOutcome {
            test: test.clone(),
            status,
            duration_ms: each,
        })
        .collect()
}

/// Whether a flaky test (failed, then passed alone) fails its job
/// (`.warren.yml`'s top-level `flaky:`, default `fail`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlakyPolicy {
    #[default]
    Fail,
    Pass,
}

/// What a job is in a split, carried in its [`crate::JobSpec`]. A job
/// `test` with `split:` is planned as two jobs: `test [list]` (the spec's
/// `run` is the listing command) and the gate `test`, which needs it and
/// which its dependents need. The list job's result names the tests; the
/// dispatcher then adds the batches, and the gate needs them too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "part", rename_all = "lowercase")]
pub enum SplitPart {
    /// Lists the tests. `run` is the batches' command (with
    /// [`TESTS_PLACEHOLDER`]); at most `parallel` batches are out at once.
    List {
        gate: String,
        run: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parallel: Option<u32>,
        #[serde(default)]
        flaky: FlakyPolicy,
    },
    /// Never goes to a runner: ends once every batch has, with the
    /// verdict of the tests' merged results ([`gate_verdict`]).
    Gate {
        #[serde(default)]
        flaky: FlakyPolicy,
    },
    /// Runs these tests (the spec's `run` holds them); `retry`: a failed
    /// test run again alone.
    Batch {
        gate: String,
        tests: Vec<TestId>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retry: bool,
    },
}

/// What a split job's result reports about tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TestsReport {
    /// A list job's tests, in the listing's order.
    Listed { tests: Vec<TestId> },
    /// A batch's results, one per test of the batch.
    Ran { outcomes: Vec<TestOutcome> },
}

/// The list job of the split job `name`.
pub fn list_name(name: &str) -> String {
    format!("{name} [list]")
}

/// Batch `index` (from 1) of `count` of the split job `name`.
pub fn batch_name(name: &str, index: usize, count: usize) -> String {
    format!("{name} [{index}/{count}]")
}

/// Whether `name` is one of a split job's batches or retries (see
/// [`batch_name`], [`retry_name`]): names that change from run to run.
pub fn is_part_name(name: &str) -> bool {
    let Some(open) = name.rfind(" [") else {
        return false;
    };
    let Some(inner) = name[open + 2..].strip_suffix(']') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match inner.split_once('/') {
        Some((index, count)) => digits(index) && digits(count),
        None => inner.strip_prefix("retry ").is_some_and(digits),
    }
}

/// The `index`th retry (from 1) of the split job `name`.
pub fn retry_name(name: &str, index: usize) -> String {
    format!("{name} [retry {index}]")
}

/// A gate's outcome from its tests' merged results: passed unless a test
/// failed, or was flaky under [`FlakyPolicy::Fail`], or none ran; with a
/// one-line reason (`200 tests: 197 passed, 1 failed, 1 flaky, 1 skipped`).
pub fn gate_verdict(tests: &[TestRecord], flaky: FlakyPolicy) -> (bool, String) {
    let count = |status: TestStatus| tests.iter().filter(|t| t.status == status).count();
    let (passed, failed, flaky_count, skipped) = (
        count(TestStatus::Passed),
        count(TestStatus::Failed),
        count(TestStatus::Flaky),
        count(TestStatus::Skipped),
    );
    let ok = !tests.is_empty() && failed == 0 && (flaky_count == 0 || flaky == FlakyPolicy::Pass);
    let reason = format!(
        "{} tests: {passed} passed, {failed} failed, {flaky_count} flaky, {skipped} skipped",
        tests.len()
    );
    (ok, reason)
}

/// Why a split's `run` cannot take a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("split.run must contain {TESTS_PLACEHOLDER}, where a batch's test ids go")]
    NoPlaceholder,
    #[error("split.run is longer than {MAX_SPLIT_RUN_BYTES} bytes")]
    TooLong,
}

/// Checks that `run` has a place for the batch's ids, and room for them.
pub fn check_run(run: &str) -> Result<(), SplitError> {
    if run.len() > MAX_SPLIT_RUN_BYTES {
        Err(SplitError::TooLong)
    } else if run.contains(TESTS_PLACEHOLDER) {
        Ok(())
    } else {
        Err(SplitError::NoPlaceholder)
    }
}

/// `run` with every [`TESTS_PLACEHOLDER`] replaced by the batch's ids,
/// each quoted for `sh` (so an id is one word whatever it holds).
pub fn command_for(run: &str, tests: &[TestId]) -> String {
    let words: Vec<String> = tests.iter().map(|t| shell_quote(t.as_str())).collect();
    run.replace(TESTS_PLACEHOLDER, &words.join(" "))
}

/// `text` as one `sh` word: in single quotes, each `'` written `'\''`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {

    #[test]
    fn batches_and_retries_are_told_by_their_names() {
        assert!(is_part_name(&batch_name("unit", 3, 12)));
        assert!(is_part_name(&retry_name("unit", 2)));
        for name in [
            "unit",
            "unit [list]",
            "test (a, b)",
            "x [1/]",
            "x [retry]",
            "x [a/2]",
        ] {
            assert!(!is_part_name(name), "{name}");
        }
        assert_eq!(list_name("unit"), "unit [list]");
    }
    use super::*;

    fn id(text: &str) -> TestId {
        TestId::from_line(text).unwrap_or_else(|| panic!("{text:?} is a test id"))
    }

    #[test]
    fn a_listing_keeps_test_ids_and_drops_the_rest() {
        let output = "\n============ test session starts ============\n\
            tests/test_a.py::test_one\n\
            tests/test_a.py::test_param[a b]\n\
            \x20 tests/test_b.py::TestX::test_two  \n\
            tests/test_a.py::test_one\n\
            \n\
            3 tests collected in 0.01s\n\
            tests:\n\
            ---\n\
            bad\x07id\n";
        let ids: Vec<String> = parse_listing(output)
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(
            ids,
            vec![
                "tests/test_a.py::test_one",
                "tests/test_a.py::test_param[a b]",
                "tests/test_b.py::TestX::test_two",
            ]
        );
        assert_eq!(TestId::from_line(&"x".repeat(MAX_TEST_ID_BYTES + 1)), None);
        assert!(parse_listing("no tests ran\n\n").is_empty());
    }

    #[test]
    fn smoothing_follows_a_trend_and_damps_one_slow_run() {
        assert_eq!(smooth(None, 500), 500);
        assert_eq!(smooth(Some(1000), 2000), 1300);
        let mut time = Some(1000);
        for _ in 0..20 {
            time = Some(smooth(time, 100));
        }
        assert!(time.is_some_and(|ms| ms < 110), "{time:?}");
    }

    #[test]
    fn unknown_tests_get_the_median_of_the_known_ones() {
        let tests = [id("a"), id("b"), id("c"), id("d")];
        let past = HashMap::from([(id("a"), 100), (id("b"), 300), (id("c"), 5000)]);
        let got = estimates(&tests, &past);
        assert_eq!(got[3], (id("d"), 300));
        let none = estimates(&tests, &HashMap::new());
        assert!(none.iter().all(|(_, ms)| *ms == UNKNOWN_TEST_MS));
    }

    /// 200 tests, a few long and many short, about 60 s in all.
    fn skewed_suite() -> Vec<(TestId, u64)> {
        (0..200u64)
            .map(|i| {
                let ms = match i % 40 {
                    0 => 6000,
                    1 | 2 => 1500,
                    _ => 40 + (i * 37) % 90,
                };
                (id(&format!("tests/test_{i:03}.py::test_case")), ms)
            })
            .collect()
    }

    #[test]
    fn every_test_is_in_exactly_one_batch_longest_first_and_batches_shrink() {
        let suite = skewed_suite();
        let batches = cut(suite.clone(), 4, 200);
        let mut all: Vec<TestId> = batches.iter().flat_map(|b| b.tests.clone()).collect();
        all.sort();
        let mut expected: Vec<TestId> = suite.iter().map(|(t, _)| t.clone()).collect();
        expected.sort();
        assert_eq!(all, expected);
        assert_eq!(batches[0].estimate_ms, 6000, "the longest test goes first");
        let last = batches.last().map(|b| b.estimate_ms).unwrap_or_default();
        assert!(last <= 400, "the last batch is short: {last} ms");
        assert!(
            batches.len() < 60,
            "not a batch per test: {}",
            batches.len()
        );
    }

    #[test]
    fn with_timings_four_runners_end_within_ten_percent_of_a_quarter() {
        let suite = skewed_suite();
        let sum: u64 = suite.iter().map(|(_, ms)| ms).sum();
        let batches = cut(suite, 4, 200);
        let times: Vec<u64> = batches.iter().map(|b| b.estimate_ms).collect();
        // 20 ms a batch: a checkout and a process start on a warm runner.
        let wall = makespan(&times, 4, 20);
        let bound = sum as f64 / 4.0 * 1.1 + 500.0;
        assert!(
            (wall as f64) <= bound,
            "{wall} ms against a bound of {bound:.0} ms (sum {sum} ms)"
        );
        // The static split is worse on the same suite: it cannot see that
        // the long tests land on the same shards.
        let ids: Vec<TestId> = skewed_suite().into_iter().map(|(t, _)| t).collect();
        let times_of: HashMap<TestId, u64> = skewed_suite().into_iter().collect();
        let shards: Vec<u64> = round_robin(&ids, 4)
            .iter()
            .map(|shard| shard.iter().map(|t| times_of[t]).sum())
            .collect();
        let static_wall = makespan(&shards, 4, 20);
        assert!(static_wall > wall);
        // The first run has no timings: batches cut by count, timed by
        // what the tests really take.
        let blind = cut(estimates(&ids, &HashMap::new()), 4, 200);
        let blind_times: Vec<u64> = blind
            .iter()
            .map(|b| b.tests.iter().map(|t| times_of[t]).sum())
            .collect();
        let first_wall = makespan(&blind_times, 4, 20);
        eprintln!(
            "sum/4 {} ms; with timings {wall} ms; first run {first_wall} ms; round robin {static_wall} ms",
            sum / 4
        );
    }

    #[test]
    fn a_batch_of_many_quick_tests_stays_within_a_commands_size() {
        let many: Vec<(TestId, u64)> = (0..5000)
            .map(|i| (id(&format!("tests/test_module_{i:05}.py::test_case")), 1))
            .collect();
        let batches = cut(many, 4, 200);
        assert!(batches.len() > 1, "{}", batches.len());
        for batch in &batches {
            let command = command_for(
                &format!("{} {{tests}}", "x".repeat(MAX_SPLIT_RUN_BYTES - 8)),
                &batch.tests,
            );
            assert!(
                command.len() <= crate::pipeline::MAX_RUN_BYTES,
                "{}",
                command.len()
            );
        }
        assert_eq!(batches.iter().map(|b| b.tests.len()).sum::<usize>(), 5000);
        assert_eq!(
            check_run(&"y".repeat(MAX_SPLIT_RUN_BYTES + 1)),
            Err(SplitError::TooLong)
        );
    }

    #[test]
    fn one_runner_or_one_test_still_cuts() {
        let batches = cut(vec![(id("only"), 5)], 4, 200);
        assert_eq!(batches.len(), 1);
        assert!(cut(Vec::new(), 4, 200).is_empty());
        let batches = cut(skewed_suite(), 1, 200);
        assert_eq!(batches.iter().map(|b| b.tests.len()).sum::<usize>(), 200);
        assert_eq!(makespan(&[], 3, 10), 0);
        assert_eq!(makespan(&[5, 5, 5], 0, 0), 15);
        assert_eq!(round_robin(&[id("a")], 4).len(), 1);
    }

    #[test]
    fn a_gate_fails_on_a_failure_and_on_a_flaky_test_unless_told_to_pass() {
        let record = |t: &str, status| TestRecord {
            test: id(t),
            status,
            duration_ms: 1,
            runner: "r".into(),
            batch: "b".into(),
            attempts: 1,
        };
        let clean = [
            record("a", TestStatus::Passed),
            record("b", TestStatus::Skipped),
        ];
        assert_eq!(
            gate_verdict(&clean, FlakyPolicy::Fail),
            (
                true,
                "2 tests: 1 passed, 0 failed, 0 flaky, 1 skipped".into()
            )
        );
        let flaky = [
            record("a", TestStatus::Passed),
            record("b", TestStatus::Flaky),
        ];
        assert!(!gate_verdict(&flaky, FlakyPolicy::Fail).0);
        assert!(gate_verdict(&flaky, FlakyPolicy::Pass).0);
        let failed = [
            record("a", TestStatus::Failed),
            record("b", TestStatus::Flaky),
        ];
        assert!(!gate_verdict(&failed, FlakyPolicy::Pass).0);
        assert!(!gate_verdict(&[], FlakyPolicy::Pass).0, "no test ran");
        let part = SplitPart::Batch {
            gate: "test".into(),
            tests: vec![id("a")],
            retry: false,
        };
        let json = serde_json::to_string(&part).expect("json");
        assert_eq!(json, r#"{"part":"batch","gate":"test","tests":["a"]}"#);
        assert_eq!(batch_name("test", 3, 12), "test [3/12]");
    }

    #[test]
    fn a_failure_then_a_pass_is_flaky_and_statuses_read_back() {
        use TestStatus::*;
        assert_eq!(merge(None, Failed), Failed);
        assert_eq!(merge(Some(Failed), Passed), Flaky);
        assert_eq!(merge(Some(Failed), Failed), Failed);
        assert_eq!(merge(Some(Passed), Skipped), Skipped);
        for status in [Passed, Failed, Skipped, Flaky] {
            assert_eq!(status.as_str().parse::<TestStatus>(), Ok(status));
        }
        assert!("green".parse::<TestStatus>().is_err());
    }

    #[test]
    fn without_a_report_a_batch_spreads_its_time_and_its_verdict() {
        let tests = [id("a"), id("b"), id("c")];
        let passed = spread(&tests, 900, true);
        assert!(passed
            .iter()
            .all(|o| o.status == TestStatus::Passed && o.duration_ms == 300));
        assert!(spread(&tests, 900, false)
            .iter()
            .all(|o| o.status == TestStatus::Failed));
        assert!(spread(&[], 900, true).is_empty());
        assert_eq!(
            serde_json::to_string(&TestStatus::Flaky).expect("json"),
            "\"flaky\""
        );
    }

    #[test]
    fn ids_go_into_the_command_as_one_quoted_word_each() {
        assert_eq!(
            check_run("pytest {tests}"),
            Ok(()),
            "the placeholder is there"
        );
        assert_eq!(check_run("pytest"), Err(SplitError::NoPlaceholder));
        let tests = [id("tests/a.py::t[x y]"), id("it's")];
        assert_eq!(
            command_for("pytest -q {tests}", &tests),
            r#"pytest -q 'tests/a.py::t[x y]' 'it'\''s'"#
        );
        // sh reads them back as the same words.
        let script = format!(
            "for w in {}; do printf '%s\\n' \"$w\"; done",
            command_for("{tests}", &tests)
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "tests/a.py::t[x y]\nit's\n"
        );
    }
}
