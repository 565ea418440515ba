//! Versioned schema migrations: numbered SQL files per backend
//! (`migrations/sqlite/NNNN_name.sql`, `migrations/postgres/NNNN_name.sql`,
//! the same numbers on both), embedded in the binary, applied in order in
//! one transaction and recorded in `warren_migrations` (version, name,
//! SHA-256 of the text, when).
//!
//! A small runner of our own rather than sqlx's `migrate!`: it refuses a
//! store migrated by a newer warren with a message that says so, reports
//! without changing anything (`warren migrate --check`), serialises
//! dispatchers that start together (an advisory lock on PostgreSQL, `BEGIN
//! IMMEDIATE` on SQLite), and, after migrating a SQLite store from before
//! logs lived in it, imports its log files once.

use std::fmt;
use std::path::{Path, PathBuf};

use model::JobId;
use sha2::{Digest, Sha256};
use sqlx::Executor as _;

use crate::sql::{connect, cut, on, replace_log, storable, Conn, Fail, Single};
use crate::url::Kind;
use crate::{StoreError, StoreSettings, StoreUrl};

struct Migration {
    version: i64,
    /// `NNNN_name`: the file's name in both folders, less `.sql`.
    file: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

macro_rules! migration {
    ($version:literal, $file:literal) => {
        Migration {
            version: $version,
            file: $file,
            sqlite: include_str!(concat!("../migrations/sqlite/", $file, ".sql")),
            postgres: include_str!(concat!("../migrations/postgres/", $file, ".sql")),
        }
    };
}

/// Every migration this build knows, oldest first. A test checks that
/// the files in `migrations/` are exactly these, numbered as listed.
const MIGRATIONS: [Migration; 8] = [
    migration!(1, "0001_baseline"),
    migration!(2, "0002_logs_in_store"),
    migration!(3, "0003_repos"),
    migration!(4, "0004_sandbox"),
    migration!(5, "0005_pipelines"),
    migration!(6, "0006_job_changes"),
    migration!(7, "0007_test_splitting"),
    migration!(8, "0008_filter_indexes"),
];

impl Migration {
    fn text(&self, postgres: bool) -> &'static str {
        if postgres {
            self.postgres
        } else {
            self.sqlite
        }
    }

    fn checksum(&self, postgres: bool) -> String {
        Sha256::digest(self.text(postgres).as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn name(&self) -> &'static str {
        self.file
            .split_once('_')
            .map_or(self.file, |(_, name)| name)
    }

    fn step(&self) -> MigrationStep {
        MigrationStep {
            version: self.version,
            name: self.name().to_string(),
        }
    }
}

/// The newest schema version this build knows.
fn known() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS warren_migrations (\
     version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, \
     applied_at_ms BIGINT NOT NULL)";

const APPLIED: &str = "SELECT version, name, checksum FROM warren_migrations ORDER BY version";

const RECORD: &str = "INSERT INTO warren_migrations (version, name, checksum, applied_at_ms) \
     VALUES ($1, $2, $3, $4)";

/// Whether `warren_migrations` exists (for `--check`, which creates
/// nothing): each database has its own catalogue.
const SQLITE_HAS_TABLE: &str =
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'warren_migrations'";
const POSTGRES_HAS_TABLE: &str = "SELECT COUNT(*) FROM information_schema.tables \
     WHERE table_schema = current_schema() AND table_name = 'warren_migrations'";

/// Held to the end of the migrating transaction, so dispatchers starting
/// together migrate one after the other (the key is arbitrary but fixed).
const POSTGRES_LOCK: &str = "SELECT pg_advisory_xact_lock(7157083921)";

/// An old log file of a job: imported only if the job is known and has no
/// log in the store yet.
const CLAIM_OLD_LOG: &str = "UPDATE jobs SET log_bytes = $2 \
     WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM job_logs WHERE job_id = $1)";

/// One migration, by number and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStep {
    pub version: i64,
    pub name: String,
}

impl fmt::Display for MigrationStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04} {}", self.version, self.name)
    }
}

/// What `warren migrate` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The store, without its password.
    pub store: String,
    /// The newest version this build knows.
    pub known: i64,
    /// Applied before this call.
    pub applied: Vec<MigrationStep>,
    /// Not applied before this call: applied by it unless `check_only`.
    pub pending: Vec<MigrationStep>,
    pub check_only: bool,
    /// Log files of a store from before logs lived in it (SQLite), found
    /// beside the database.
    pub log_files: usize,
    /// How many of them were imported (none with `check_only`, nor those
    /// of unknown jobs or of jobs that already had a log in the store).
    pub logs_imported: usize,
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.applied.last().map_or(0, |m| m.version);
        writeln!(
            f,
            "store {}: schema at version {at}; this warren knows up to {}",
            self.store, self.known
        )?;
        for step in &self.applied {
            writeln!(f, "  applied  {step}")?;
        }
        let pending_word = if self.check_only {
            "pending "
        } else {
            "applied now"
        };
        for step in &self.pending {
            writeln!(f, "  {pending_word} {step}")?;
        }
        if self.pending.is_empty() {
            writeln!(f, "  nothing pending")?;
        }
        if self.log_files > 0 {
            if self.check_only {
                writeln!(f, "  {} old log files to import", self.log_files)?;
            } else {
                writeln!(
                    f,
                    "  imported {} of {} old log files",
                    self.logs_imported, self.log_files
                )?;
            }
        }
        Ok(())
    }
}

/// `warren migrate [--check]`.
pub(crate) async fn run(
    url: &StoreUrl,
    settings: &StoreSettings,
    check_only: bool,
) -> Result<MigrationReport, StoreError> {
    if !check_only {
        let mut single = connect(url, settings, false).await?;
        let report = apply(&mut single, url, settings).await;
        single.close().await;
        return report;
    }
    let applied = match url.kind() {
        // Not created yet: everything is pending, and stays so.
        Kind::Sqlite(path) if !path.exists() => Vec::new(),
        _ => {
            let mut single = connect(url, settings, true).await?;
            let applied = read_applied_if_any(&mut single, url.is_postgres()).await;
            single.close().await;
            applied.map_err(|fail| fail.describe(url, settings, "reading the schema version"))?
        }
    };
    let pending = plan(url, &applied, url.is_postgres())?;
    Ok(MigrationReport {
        store: url.to_string(),
        known: known(),
        applied: steps(&applied),
        pending: pending.iter().map(|m| m.step()).collect(),
        check_only,
        log_files: old_log_files(url).len(),
        logs_imported: 0,
    })
}

/// What `warren_migrations` records: version, name, checksum.
type Applied = Vec<(i64, String, String)>;

fn steps(applied: &Applied) -> Vec<MigrationStep> {
    applied
        .iter()
        .map(|(version, name, _)| MigrationStep {
            version: *version,
            name: name.clone(),
        })
        .collect()
}

async fn read_applied(conn: Conn<'_>) -> Result<Applied, Fail> {
    Ok(on!(conn, |c| {
        sqlx::query_as::<_, (i64, String, String)>(APPLIED)
            .fetch_all(c)
            .await?
    }))
}

async fn read_applied_if_any(single: &mut Single, postgres: bool) -> Result<Applied, Fail> {
    let has_table = if postgres {
        POSTGRES_HAS_TABLE
    } else {
        SQLITE_HAS_TABLE
    };
    let tables: i64 = on!(single.conn(), |c| sqlx::query_scalar(has_table)
        .fetch_one(c)
        .await?);
    if tables == 0 {
        return Ok(Vec::new());
    }
    read_applied(single.conn()).await
}

/// The migrations to apply, after refusing a schema newer than this build
/// or a migration whose text differs from the one applied.
fn plan(
    url: &StoreUrl,
    applied: &Applied,
    postgres: bool,
) -> Result<Vec<&'static Migration>, StoreError> {
    if let Some(newest) = applied.iter().map(|(version, _, _)| *version).max() {
        if newest > known() {
            return Err(StoreError::SchemaTooNew {
                store: url.to_string(),
                found: newest,
                known: known(),
            });
        }
    }
    for (version, name, checksum) in applied {
        let ours = MIGRATIONS.iter().find(|m| m.version == *version);
        if ours.is_none_or(|m| m.checksum(postgres) != *checksum) {
            return Err(StoreError::MigrationChanged {
                store: url.to_string(),
                version: *version,
                name: name.clone(),
            });
        }
    }
    Ok(MIGRATIONS
        .iter()
        .filter(|m| !applied.iter().any(|(version, _, _)| *version == m.version))
        .collect())
}

/// Applies the pending migrations in one transaction, then imports old
/// log files (SQLite).
pub(crate) async fn apply(
    single: &mut Single,
    url: &StoreUrl,
    settings: &StoreSettings,
) -> Result<MigrationReport, StoreError> {
    let (applied, pending) = apply_pending(single, url)
        .await
        .map_err(|fail| fail.describe(url, settings, "migrating the schema"))?;
    if !pending.is_empty() {
        tracing::info!(store = %url, version = known(), "store schema migrated");
    }
    let files = old_log_files(url);
    let logs_imported = import_logs(single, url, settings, &files).await?;
    Ok(MigrationReport {
        store: url.to_string(),
        known: known(),
        applied: steps(&applied),
        pending: pending.iter().map(|m| m.step()).collect(),
        check_only: false,
        log_files: files.len(),
        logs_imported,
    })
}

async fn apply_pending(
    single: &mut Single,
    url: &StoreUrl,
) -> Result<(Applied, Vec<&'static Migration>), Fail> {
    let postgres = url.is_postgres();
    let mut tx = single.begin().await?;
    if let Conn::Postgres(c) = tx.conn() {
        // Through the connection rather than `RawSql::execute`, whose
        // future the compiler cannot prove `Send` for every lifetime.
        c.execute(sqlx::raw_sql(POSTGRES_LOCK)).await?;
    }
    on!(tx.conn(), |c| sqlx::query(CREATE_TABLE)
        .execute(c)
        .await?
        .rows_affected());
    let applied = read_applied(tx.conn()).await?;
    let pending = plan(url, &applied, postgres)?;
    for migration in &pending {
        let text = migration.text(postgres);
        on!(tx.conn(), |c| {
            (&mut *c).execute(sqlx::raw_sql(text)).await?;
            sqlx::query(RECORD)
                .bind(migration.version)
                .bind(migration.name())
                .bind(migration.checksum(postgres))
                .bind(model::now_ms() as i64)
                .execute(c)
                .await?
                .rows_affected()
        });
    }
    tx.commit().await?;
    Ok((applied, pending))
}

/// Where a SQLite store from before logs lived in it kept them.
fn old_logs_dir(url: &StoreUrl) -> Option<PathBuf> {
    let path = url.sqlite_path()?;
    Some(path.parent().unwrap_or(Path::new("")).join("logs"))
}

/// The old `logs/<job id>.log` files beside a SQLite store.
fn old_log_files(url: &StoreUrl) -> Vec<(JobId, PathBuf)> {
    let Some(entries) = old_logs_dir(url).and_then(|dir| std::fs::read_dir(dir).ok()) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            if path.extension()? != "log" {
                return None;
            }
            let id = JobId::parse(path.file_stem()?.to_str()?).ok()?;
            Some((id, path))
        })
        .collect()
}

/// Imports old log files into the store (best effort: an unreadable file
/// is skipped with a warning), then renames their folder `logs.imported`
/// so it happens once. Importing again after a crash in between is
/// harmless: a job that has a log keeps it.
async fn import_logs(
    single: &mut Single,
    url: &StoreUrl,
    settings: &StoreSettings,
    files: &[(JobId, PathBuf)],
) -> Result<usize, StoreError> {
    let Some(dir) = old_logs_dir(url).filter(|dir| dir.is_dir()) else {
        return Ok(0);
    };
    let imported = claim_old_logs(single, settings, files)
        .await
        .map_err(|fail| fail.describe(url, settings, "importing old log files"))?;
    let mut done = dir.with_file_name("logs.imported");
    if done.exists() {
        done = dir.with_file_name(format!("logs.imported-{}", model::now_ms()));
    }
    if let Err(err) = std::fs::rename(&dir, &done) {
        // They will be offered again at the next start, and skipped.
        tracing::warn!(folder = %dir.display(), "cannot rename the imported logs' folder: {err}");
    }
    tracing::info!(
        imported,
        found = files.len(),
        folder = %done.display(),
        "imported old log files into the store"
    );
    Ok(imported)
}

/// Stores each old log whose job is known and has no log yet, in one
/// transaction; returns how many.
async fn claim_old_logs(
    single: &mut Single,
    settings: &StoreSettings,
    files: &[(JobId, PathBuf)],
) -> Result<usize, Fail> {
    let mut tx = single.begin().await?;
    let mut imported = 0;
    for (id, path) in files {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(file = %path.display(), "cannot import an old log: {err}");
                continue;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let text = storable(&text);
        let text = cut(&text, settings.output_cap);
        let claimed = on!(tx.conn(), |c| sqlx::query(CLAIM_OLD_LOG)
            .bind(id.as_str())
            .bind(text.len() as i64)
            .execute(c)
            .await?
            .rows_affected());
        if claimed == 1 {
            replace_log(tx.conn(), id.as_str(), text).await?;
            imported += 1;
        }
    }
    tx.commit().await?;
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files in `migrations/<backend>/` are exactly the list above:
    /// a new file that is not listed (or a listed one missing) fails here.
    #[test]
    fn the_migration_files_are_the_list_and_both_backends_have_the_same_numbers() {
        let expected: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| {
                assert_eq!(m.file, format!("{:04}_{}", m.version, m.name()));
                format!("{}.sql", m.file)
            })
            .collect();
        for backend in ["sqlite", "postgres"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .expect("migrations folder")
                .map(|entry| {
                    entry
                        .expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            files.sort();
            assert_eq!(files, expected, "{}", dir.display());
        }
        assert!(MIGRATIONS
            .windows(2)
            .all(|w| w[1].version == w[0].version + 1));
    }
}
