//! JUnit XML, as the test command of a split batch writes it to
//! `$WARREN_JUNIT` (pytest `--junitxml`, cargo-nextest, go-junit-report,
//! unittest-xml-reporting): one [`model::split::TestOutcome`] per test id
//! of the batch.
//!
//! A report names a test by `classname` and `name`, a listing by an id of
//! its own (`tests/test_a.py::test_x` against `tests.test_a` and
//! `test_x`), so both are brought to one dotted form ([`key`]) before they
//! are matched. A test of the batch the report does not mention did not
//! run: it counts as failed (and is retried alone).

use std::collections::HashMap;

use model::split::{TestId, TestOutcome, TestStatus};

/// The largest report read (a batch of thousands of tests with their
/// output stays far below it).
pub const MAX_REPORT_BYTES: usize = 32 * 1024 * 1024;

/// One `<testcase>` of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub classname: String,
    pub name: String,
    pub status: TestStatus,
    pub duration_ms: u64,
}

/// Why a report cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("the JUnit report is not XML: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("the JUnit report has {0} bytes, more than {MAX_REPORT_BYTES}")]
    TooLarge(usize),
}

/// Every `<testcase>` of a report, wherever it is nested (`<testsuites>`,
/// `<testsuite>`, suites in suites).
pub fn parse(text: &str) -> Result<Vec<Case>, JunitError> {
    if text.len() > MAX_REPORT_BYTES {
        return Err(JunitError::TooLarge(text.len()));
    }
    let document = roxmltree::Document::parse(text)?;
    Ok(document
        .descendants()
        .filter(|node| node.has_tag_name("testcase"))
        .map(|case| {
            let has = |tag: &str| case.children().any(|child| child.has_tag_name(tag));
            let status = if has("failure") || has("error") {
                TestStatus::Failed
            } else if has("skipped") {
                TestStatus::Skipped
            } else {
                TestStatus::Passed
            };
            let seconds: f64 = case
                .attribute("time")
                .and_then(|t| t.trim().parse().ok())
                .filter(|t: &f64| t.is_finite() && *t >= 0.0)
                .unwrap_or(0.0);
            Case {
                classname: case.attribute("classname").unwrap_or_default().to_string(),
                name: case.attribute("name").unwrap_or_default().to_string(),
                status,
                duration_ms: (seconds * 1000.0).round() as u64,
            }
        })
        .collect())
}

/// A test's name in one dotted form: path separators, `.py::` and `::`
/// become dots (`tests/test_a.py::T::test_x` → `tests.test_a.T.test_x`).
pub fn key(text: &str) -> String {
    text.replace(".py::", ".")
        .replace("::", ".")
        .replace('/', ".")
        .trim_matches('.')
        .to_string()
}

/// The outcome of each test of `batch` in `cases`: a case matches an id
/// when their keys are equal (`classname.name`, or `name` alone), or one
/// ends with the other after a dot (a report that names only the module,
/// or a listing that names only the function). A test the report does not
/// mention failed (it did not run). When a test is in several cases
/// (rerun by the tool itself), the worst status counts and the times add.
pub fn outcomes(batch: &[TestId], cases: &[Case]) -> Vec<TestOutcome> {
    let mut by_key: HashMap<String, Vec<&Case>> = HashMap::new();
    for case in cases {
        let full = if case.classname.is_empty() {
            key(&case.name)
        } else {
            key(&format!("{}.{}", case.classname, case.name))
        };
        by_key.entry(full).or_default().push(case);
        let short = key(&case.name);
        by_key.entry(short).or_default().push(case);
    }
    batch
        .iter()
        .map(|test| {
            let wanted = key(test.as_str());
            let found: Vec<&Case> = match by_key.get(&wanted) {
                Some(found) => found.clone(),
                None => by_key
                    .iter()
                    .filter(|(k, _)| {
                        k.ends_with(&format!(".{wanted}")) || wanted.ends_with(&format!(".{k}"))
                    })
                    .flat_map(|(_, cases)| cases.iter().copied())
                    .collect(),
            };
            let mut unique: Vec<&Case> = Vec::new();
            for case in found {
                if !unique.iter().any(|seen| std::ptr::eq(*seen, case)) {
                    unique.push(case);
                }
            }
            if unique.is_empty() {
                return TestOutcome {
                    test: test.clone(),
                    status: TestStatus::Failed,
                    duration_ms: 0,
                };
            }
            let status = if unique.iter().any(|c| c.status == TestStatus::Failed) {
                TestStatus::Failed
            } else if unique.iter().all(|c| c.status == TestStatus::Skipped) {
                TestStatus::Skipped
            } else {
                TestStatus::Passed
            };
            TestOutcome {
                test: test.clone(),
                status,
                duration_ms: unique.iter().map(|c| c.duration_ms).sum(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> TestId {
        TestId::from_line(text).expect("a test id")
    }

    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="0.9">
<testcase classname="tests.test_a" name="test_one" time="0.120" />
<testcase classname="tests.test_a" name="test_param[a b]" time="0.300"><failure message="assert 1 == 2">tests/test_a.py:9: AssertionError</failure></testcase>
<testcase classname="tests.test_b.TestX" name="test_two" time="0.005"><skipped message="later" /></testcase>
<testcase classname="tests.test_b" name="test_err" time="0.001"><error message="fixture broke" /></testcase>
</testsuite></testsuites>"#;

    #[test]
    fn a_pytest_report_gives_each_listed_test_its_status_and_time() {
        let cases = parse(PYTEST).expect("parses");
        assert_eq!(cases.len(), 4);
        let batch = [
            id("tests/test_a.py::test_one"),
            id("tests/test_a.py::test_param[a b]"),
            id("tests/test_b.py::TestX::test_two"),
            id("tests/test_b.py::test_err"),
            id("tests/test_c.py::test_never_ran"),
        ];
        let got: Vec<(String, TestStatus, u64)> = outcomes(&batch, &cases)
            .into_iter()
            .map(|o| (o.test.to_string(), o.status, o.duration_ms))
            .collect();
        assert_eq!(
            got,
            vec![
                ("tests/test_a.py::test_one".into(), TestStatus::Passed, 120),
                (
                    "tests/test_a.py::test_param[a b]".into(),
                    TestStatus::Failed,
                    300
                ),
                (
                    "tests/test_b.py::TestX::test_two".into(),
                    TestStatus::Skipped,
                    5
                ),
                ("tests/test_b.py::test_err".into(), TestStatus::Failed, 1),
                (
                    "tests/test_c.py::test_never_ran".into(),
                    TestStatus::Failed,
                    0
                ),
            ]
        );
    }

    #[test]
    fn a_nextest_report_matches_on_the_test_name() {
        let nextest = r#"<testsuites name="nextest-run" tests="2" failures="0">
  <testsuite name="warren-model" tests="2">
    <testcase name="split::tests::one" classname="warren-model" timestamp="2026-12-03T00:00:00Z" time="0.010"/>
    <testcase name="split::tests::two" classname="warren-model" time="1.5"/>
  </testsuite>
</testsuites>"#;
        let cases = parse(nextest).expect("parses");
        let got = outcomes(&[id("split::tests::two"), id("split::tests::one")], &cases);
        assert_eq!(got[0].status, TestStatus::Passed);
        assert_eq!(got[0].duration_ms, 1500);
        assert_eq!(got[1].duration_ms, 10);
    }

    #[test]
    fn a_broken_or_huge_report_is_an_error_and_odd_times_are_zero() {
        assert!(matches!(parse("<testsuite"), Err(JunitError::Xml(_))));
        let huge = " ".repeat(MAX_REPORT_BYTES + 1);
        assert!(matches!(parse(&huge), Err(JunitError::TooLarge(_))));
        let odd = r#"<testsuite><testcase name="t" time="NaN"/><testcase name="u" time="-1"/></testsuite>"#;
        let cases = parse(odd).expect("parses");
        assert!(cases.iter().all(|c| c.duration_ms == 0));
    }

    #[test]
    fn a_test_the_tool_reran_counts_its_worst_status() {
        let rerun = r#"<testsuite>
<testcase classname="t" name="x" time="0.1"><failure/></testcase>
<testcase classname="t" name="x" time="0.2"/>
</testsuite>"#;
        let got = outcomes(&[id("t::x")], &parse(rerun).expect("parses"));
        assert_eq!(got[0].status, TestStatus::Failed);
        assert_eq!(got[0].duration_ms, 300);
    }
}
