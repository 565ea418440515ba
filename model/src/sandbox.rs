//! How a runner isolates the jobs it runs. It travels with every runner's
//! events and results (`RunnerInfo::sandbox`), so the dispatcher can show
//! which runners, and which jobs, ran without one.

use serde::{Deserialize, Serialize};

/// A runner's isolation of its jobs (`--sandbox`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sandbox {
    /// Each job in bubblewrap's namespaces: it sees its checkout, the
    /// system read-only, a private `/tmp` and `HOME`, and nothing of the
    /// runner.
    Bwrap,
    /// No isolation: the job runs as the runner's user with its file
    /// system (what runners before the sandbox did, hence the default).
    #[default]
    #[serde(rename = "none")]
    Off,
}

impl Sandbox {
    pub fn as_str(self) -> &'static str {
        match self {
            Sandbox::Bwrap => "bwrap",
            Sandbox::Off => "none",
        }
    }
}

impl std::fmt::Display for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Sandbox {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "bwrap" => Ok(Sandbox::Bwrap),
            "none" => Ok(Sandbox::Off),
            other => Err(format!("expected bwrap or none, got {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_a_missing_one_is_none() {
        for sandbox in [Sandbox::Bwrap, Sandbox::Off] {
            assert_eq!(sandbox.as_str().parse::<Sandbox>(), Ok(sandbox));
            let json = serde_json::to_string(&sandbox).expect("json");
            assert_eq!(json, format!("\"{sandbox}\""));
        }
        assert!("docker".parse::<Sandbox>().is_err());
    }
}
