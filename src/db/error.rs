//! What a failed database call means for the client, decided here once from
//! sqlx's error: the only place that reads MySQL/MariaDB error numbers.

use std::fmt;

use crate::error_code::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// Nothing was sent, or what was sent was rolled back (a lock wait, a
    /// deadlock): retrying is safe.
    Unavailable,
    /// A statement was sent, then the database stopped answering (timeout or
    /// lost connection): a write may still have been applied.
    Interrupted,
    /// Anything else the database or the driver reported: a bug or a
    /// misconfiguration, not worth a retry. The text is for the log (sqlx's
    /// errors never carry the password).
    Failed(String),
}

impl DbError {
    /// Why a pooled connection could not be had: no statement was sent.
    pub fn before_sending(error: &sqlx::Error) -> Self {
        use sqlx::Error as E;
        match error {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                Self::Unavailable
            }
            other => Self::answered(other),
        }
    }

    /// Why a statement already sent failed.
    pub fn after_sending(error: &sqlx::Error) -> Self {
        if is_interruption(error) {
            Self::Interrupted
        } else {
            Self::answered(error)
        }
    }

    /// The server answered with an error, or the driver refused.
    fn answered(error: &sqlx::Error) -> Self {
        if server_error_number(error).is_some_and(is_transient_server_error) {
            Self::Unavailable
        } else {
            Self::Failed(error.to_string())
        }
    }

    /// The code clients see for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unavailable => ErrorCode::DatabaseUnavailable,
            Self::Interrupted => ErrorCode::DatabaseInterrupted,
            Self::Failed(_) => ErrorCode::Internal,
        }
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable => f.write_str("the database is unavailable"),
            Self::Interrupted => f.write_str("the database stopped answering a statement"),
            Self::Failed(cause) => write!(f, "database error: {cause}"),
        }
    }
}

impl std::error::Error for DbError {}

/// The connection failed under a statement already sent.
pub(super) fn is_interruption(error: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match error {
        E::Io(_) | E::Tls(_) | E::Protocol(_) | E::WorkerCrashed => true,
        E::Database(_) => {
            server_error_number(error).is_some_and(|n| matches!(n, 1053 | 1927 | 2006 | 2013))
        }
        _ => false,
    }
}

fn server_error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number()),
        _ => None,
    }
}

/// MySQL/MariaDB error numbers that mean "try again", not "bug".
fn is_transient_server_error(number: u16) -> bool {
    matches!(
        number,
        1040 // too many connections
            | 1053 // server shutdown in progress
            | 1205 // lock wait timeout
            | 1213 // deadlock
            | 1927 // connection killed
            | 2006 // server has gone away
            | 2013 // lost connection
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_server_errors_mean_try_again() {
        for retry in [1040, 1053, 1205, 1213, 1927, 2006, 2013] {
            assert!(is_transient_server_error(retry), "{retry}");
        }
        // Duplicate key, syntax error, unknown table, access denied: bugs or
        // configuration, not worth a retry.
        for bug in [1062, 1064, 1146, 1045] {
            assert!(!is_transient_server_error(bug), "{bug}");
        }
    }

    #[test]
    fn a_lost_connection_under_a_sent_statement_is_an_interruption() {
        let lost = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(is_interruption(&sqlx::Error::Io(lost)));
        assert!(is_interruption(&sqlx::Error::Protocol(
            "packet out of order".into()
        )));
        assert!(is_interruption(&sqlx::Error::WorkerCrashed));
        // Never sent, or answered: not an interruption.
        assert!(!is_interruption(&sqlx::Error::PoolTimedOut));
        assert!(!is_interruption(&sqlx::Error::RowNotFound));
        let lost = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            DbError::after_sending(&sqlx::Error::Io(lost)),
            DbError::Interrupted
        );
    }

    #[test]
    fn sqlx_errors_map_to_503_or_500() {
        for gone in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
        ] {
            assert_eq!(
                DbError::before_sending(&gone).code(),
                ErrorCode::DatabaseUnavailable
            );
        }
        let bug = DbError::after_sending(&sqlx::Error::RowNotFound);
        assert_eq!(bug.code(), ErrorCode::Internal);
        assert!(bug.to_string().contains("no rows returned"), "{bug}");
    }
}
