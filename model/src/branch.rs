//! Branch patterns, for the repository registry's `--branch PATTERN`:
//! which branches of a repository Warren builds, whether it learns of a
//! push by webhook or by polling.
//!
//! A pattern is a branch name in which `*` matches any run of characters
//! within one path component (`release/*` matches `release/1.2` but not
//! `release/1.2/fix`), and a component that is exactly `**` matches any
//! number of whole components, none included (`team/**` matches `team`,
//! `team/a` and `team/a/b`; `**/hotfix` matches `hotfix` and `x/y/hotfix`).
//! `**` inside a component (`a**b`) is the same as `*`. Every other
//! character matches itself; there are no other wildcards.

/// A `--branch` pattern that could never match a branch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--branch {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// Checks that `pattern` is a branch name once its wildcards are taken
/// for letters (git's ref-format rules, as [`crate::BranchName`] has
/// them), so that it can match something and cannot be read as an option.
pub fn check_branch_pattern(pattern: &str) -> Result<(), PatternError> {
    let as_name = pattern.replace('*', "x");
    crate::BranchName::parse(&as_name)
        .map(|_| ())
        .map_err(|err| PatternError {
            pattern: pattern.to_string(),
            reason: err.reason,
        })
}

/// Whether `branch` (a name such as `release/1.2`, without `refs/heads/`)
/// matches `pattern` (see the module's documentation).
pub fn branch_matches(pattern: &str, branch: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let branch: Vec<&str> = branch.split('/').collect();
    // matches[i][j]: pattern[i..] matches branch[j..]. Filled from the
    // end, so that `**` costs no backtracking however many there are.
    let (np, nb) = (pattern.len(), branch.len());
    let mut matches = vec![vec![false; nb + 1]; np + 1];
    matches[np][nb] = true;
    for i in (0..np).rev() {
        for j in (0..=nb).rev() {
            matches[i][j] = if pattern[i] == "**" {
                matches[i + 1][j] || (j < nb && matches[i][j + 1])
            } else {
                j < nb && component_matches(pattern[i], branch[j]) && matches[i + 1][j + 1]
            };
        }
    }
    matches[0][0]
}

/// `*` against any run of characters of one component.
fn component_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it was tried at: on a
    // mismatch, that star takes one more character.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_at, tried_at)) = star {
            pi = star_at + 1;
            ti = tried_at + 1;
            star = Some((star_at, tried_at + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_match_only_themselves() {
        assert!(branch_matches("main", "main"));
        assert!(!branch_matches("main", "main2"));
        assert!(!branch_matches("main", "mai"));
        assert!(!branch_matches("main", "x/main"));
        assert!(branch_matches("release/1.2", "release/1.2"));
    }

    #[test]
    fn a_star_stays_within_one_component() {
        assert!(branch_matches("release/*", "release/1.2"));
        assert!(
            branch_matches("release/*", "release/"),
            "empty run (never a real branch)"
        );
        assert!(!branch_matches("release/*", "release/1.2/fix"));
        assert!(!branch_matches("release/*", "release"));
        assert!(!branch_matches("release/*", "other/1.2"));
        assert!(branch_matches("*", "main"));
        assert!(!branch_matches("*", "feature/x"));
        assert!(branch_matches("feat-*-x", "feat-login-x"));
        assert!(branch_matches("feat-*-x", "feat--x"));
        assert!(!branch_matches("feat-*-x", "feat-login-y"));
        assert!(branch_matches("*-rc*", "v1-rc2"));
        assert!(branch_matches("a*b*c", "aXbYbZc"));
        assert!(!branch_matches("a*b*c", "aXbYbZ"));
        assert!(branch_matches("a**b", "aXYb"), "** inside a component is *");
        assert!(!branch_matches("a**b", "aX/Yb"));
        assert!(branch_matches("é*", "éte"), "characters, not bytes");
    }

    #[test]
    fn a_double_star_spans_any_number_of_components() {
        assert!(branch_matches("**", "main"));
        assert!(branch_matches("**", "a/b/c"));
        assert!(branch_matches("team/**", "team"));
        assert!(branch_matches("team/**", "team/a"));
        assert!(branch_matches("team/**", "team/a/b"));
        assert!(!branch_matches("team/**", "other/a"));
        assert!(branch_matches("**/hotfix", "hotfix"));
        assert!(branch_matches("**/hotfix", "x/y/hotfix"));
        assert!(!branch_matches("**/hotfix", "x/hotfix/y"));
        assert!(branch_matches("a/**/z", "a/z"));
        assert!(branch_matches("a/**/z", "a/b/c/z"));
        assert!(!branch_matches("a/**/z", "a/b/c"));
        assert!(branch_matches("**/rel-*/**", "x/rel-1/y/z"));
        // Many double stars against a long name: no blow-up.
        let pattern = vec!["**"; 30].join("/") + "/end";
        let branch = vec!["c"; 100].join("/");
        assert!(!branch_matches(&pattern, &branch));
        assert!(branch_matches(&pattern, &(branch + "/end")));
    }

    #[test]
    fn patterns_must_be_branch_names_with_wildcards() {
        for good in ["main", "release/*", "**", "team/**/fix-*"] {
            assert!(check_branch_pattern(good).is_ok(), "{good}");
        }
        for bad in ["", "-*", "a b", "release/", "a..b", "x:*", "/main"] {
            let err = check_branch_pattern(bad).expect_err(bad);
            assert!(err.to_string().starts_with("--branch "), "{err}");
        }
    }
}
