//! What can go wrong with the store, in words an operator can act on.
//!
//! No variant holds a driver error: their text is copied in with the
//! password hidden (see `StoreUrl::hide_password_in`), so printing an error
//! with its whole chain cannot leak a secret.

use std::time::Duration;

use model::JobId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error("cannot connect to the store {store}: {reason}")]
    Connect { store: String, reason: String },

    #[error("the store {store} did not answer within {} ms while {doing}", after.as_millis())]
    TimedOut {
        store: String,
        doing: &'static str,
        after: Duration,
    },

    #[error("the store {store} failed while {doing}: {reason}")]
    Database {
        store: String,
        doing: &'static str,
        reason: String,
    },

    #[error("the store's schema is at version {found} but this warren knows up to {known}: upgrade warren (store {store})")]
    SchemaTooNew {
        store: String,
        found: i64,
        known: i64,
    },

    #[error("migration {version} ({name}) as applied to the store {store} differs from this warren's copy: the store was migrated by another build of warren")]
    MigrationChanged {
        store: String,
        version: i64,
        name: String,
    },

    #[error("job id {id} is already recorded for {stored}, not for {given}: two different jobs share one id")]
    Collision {
        id: JobId,
        stored: String,
        given: String,
    },

    #[error("the store {store} holds a record this warren cannot read: {reason}")]
    Corrupt { store: String, reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
