//! Secrets from the environment: one rule for every component, so that the
//! `warren` binary's own secrets (`WARREN_API_TOKEN`, `WARREN_STORE`, …)
//! and those the repository registry names (a forge's token, a webhook
//! secret) are read the same way.

use std::path::PathBuf;

/// Suffix of the variable naming a file that holds a secret (the
/// Docker-secrets convention: `WARREN_API_TOKEN_FILE=/run/secrets/token`).
pub const SECRET_FILE_SUFFIX: &str = "_FILE";

/// A secret given as `NAME` or as a file named by `NAME_FILE` (never a
/// flag, so never in `ps` or `--help`): its value, or `None` when neither
/// is set. Empty variables count as unset. The file's content is the value,
/// less trailing newlines. Errors are one line naming the variables (and
/// the file), never the value.
pub fn secret(name: &str) -> Result<Option<String>, String> {
    let set = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    let file_var = format!("{name}{SECRET_FILE_SUFFIX}");
    match (set(name), set(&file_var)) {
        (Some(_), Some(_)) => Err(format!(
            "{name} and {file_var} are both set; set only one of them"
        )),
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {file_var} ({}): {e}", path.display()))?;
            let value = text.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                return Err(format!("{file_var} ({}) is empty", path.display()));
            }
            Ok(Some(value.to_string()))
        }
        (Some(value), None) => value
            .into_string()
            .map(Some)
            .map_err(|_| format!("{name} is not valid UTF-8")),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test uses variables of its own: tests run in parallel threads
    // of one process, which share the environment.
    #[test]
    fn a_variable_or_its_file_and_never_both() {
        let dir = std::env::temp_dir().join(format!("warren-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").expect("write");
        std::env::set_var("WARREN_T_SECRET_A", "from-var");
        assert_eq!(
            secret("WARREN_T_SECRET_A"),
            Ok(Some("from-var".to_string()))
        );
        std::env::set_var("WARREN_T_SECRET_B_FILE", &file);
        assert_eq!(
            secret("WARREN_T_SECRET_B"),
            Ok(Some("from-file".to_string()))
        );
        std::env::set_var("WARREN_T_SECRET_A_FILE", &file);
        let both = secret("WARREN_T_SECRET_A").expect_err("both");
        assert!(
            both.contains("both set") && !both.contains("from-"),
            "{both}"
        );
        std::env::set_var("WARREN_T_SECRET_C", "");
        assert_eq!(secret("WARREN_T_SECRET_C"), Ok(None));
        std::fs::write(&file, "\n").expect("write");
        let empty = secret("WARREN_T_SECRET_B").expect_err("empty");
        assert!(empty.contains("WARREN_T_SECRET_B_FILE"), "{empty}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
