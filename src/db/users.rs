//! The users table's queries: each one call through [`UserPool::run`].

use sqlx::Row;
use sqlx::mysql::{MySqlConnection, MySqlRow};

use super::{DbError, UserPool};
use crate::domain::{
    Conditional, PageSize, StoredUser, User, UserId, UserName, Version, VersionCondition,
};

const SELECT_ONE: &str = "SELECT userid, username, version FROM users WHERE userid = ?";
const SELECT_PAGE: &str =
    "SELECT userid, username, version FROM users WHERE userid > ? ORDER BY userid LIMIT ?";
/// Every write sets a new version and reads it back in the same statement:
/// `LAST_INSERT_ID(expr)` puts `expr` in the OK packet (MariaDB has no
/// `UPDATE ... RETURNING`, MySQL no `RETURNING` at all).
const NEW_VERSION: &str = "LAST_INSERT_ID(UUID_SHORT())";

impl UserPool {
    /// The new user's version, or `None` when the userid is taken. Relies on
    /// the primary key, not on a read first: of many concurrent creates of
    /// one id exactly one succeeds.
    pub async fn create(&self, user: &User) -> Result<Option<Version>, DbError> {
        let (userid, username) = (user.userid.get(), user.username.as_str().to_owned());
        self.run(move |connection| {
            Box::pin(async move {
                let inserted = sqlx::query(&format!(
                    "INSERT INTO users (userid, username, version) VALUES (?, ?, {NEW_VERSION})"
                ))
                .bind(userid)
                .bind(username)
                .execute(connection)
                .await;
                match inserted {
                    Ok(done) => Ok(Some(Version::from_stored(done.last_insert_id()))),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
                    Err(e) => Err(e),
                }
            })
        })
        .await
    }

    pub async fn find(&self, userid: UserId) -> Result<Option<StoredUser>, DbError> {
        self.run(move |connection| {
            Box::pin(
                sqlx::query(SELECT_ONE)
                    .bind(userid.get())
                    .try_map(|row| stored_user(&row))
                    .fetch_optional(connection),
            )
        })
        .await
    }

    /// The new version; decided atomically: the condition is part of the
    /// UPDATE, never a read before it.
    pub async fn rename(
        &self,
        userid: UserId,
        username: &UserName,
        condition: &VersionCondition,
    ) -> Result<Conditional<Version>, DbError> {
        let username = username.as_str().to_owned();
        let (clause, versions) = where_version(condition);
        self.run(move |connection| {
            Box::pin(async move {
                let sql = format!(
                    "UPDATE users SET username = ?, version = {NEW_VERSION} WHERE userid = ?{clause}"
                );
                let mut update = sqlx::query(&sql).bind(username).bind(userid.get());
                for version in versions {
                    update = update.bind(version);
                }
                // The connection sets CLIENT_FOUND_ROWS: an unchanged name
                // still counts as a matched row (and gets a new version).
                let updated = update.execute(&mut *connection).await?;
                if updated.rows_affected() > 0 {
                    let version = Version::from_stored(updated.last_insert_id());
                    return Ok(Conditional::Done(version));
                }
                why_not(connection, userid).await
            })
        })
        .await
    }

    pub async fn delete(
        &self,
        userid: UserId,
        condition: &VersionCondition,
    ) -> Result<Conditional<()>, DbError> {
        let (clause, versions) = where_version(condition);
        self.run(move |connection| {
            Box::pin(async move {
                let sql = format!("DELETE FROM users WHERE userid = ?{clause}");
                let mut delete = sqlx::query(&sql).bind(userid.get());
                for version in versions {
                    delete = delete.bind(version);
                }
                if delete.execute(&mut *connection).await?.rows_affected() > 0 {
                    return Ok(Conditional::Done(()));
                }
                why_not(connection, userid).await
            })
        })
        .await
    }

    /// One page in userid order after `after`, and the cursor of the next
    /// page when there is one.
    pub async fn list(
        &self,
        after: Option<UserId>,
        size: PageSize,
    ) -> Result<(Vec<StoredUser>, Option<UserId>), DbError> {
        let mut users = self
            .run(move |connection| {
                Box::pin(
                    sqlx::query(SELECT_PAGE)
                        .bind(after.map_or(0, UserId::get))
                        .bind(u32::from(size.get()) + 1)
                        .try_map(|row| stored_user(&row))
                        .fetch_all(connection),
                )
            })
            .await?;
        let next = if users.len() > usize::from(size.get()) {
            users.truncate(size.get().into());
            users.last().map(|u| u.user.userid)
        } else {
            None
        };
        Ok((users, next))
    }
}

/// The condition as SQL after `WHERE userid = ?`, and the values it binds.
fn where_version(condition: &VersionCondition) -> (String, Vec<u64>) {
    let placeholders = |n: usize| vec!["?"; n].join(", ");
    let mut clause = String::new();
    let mut values = Vec::new();
    if condition.only_if_absent {
        clause.push_str(" AND FALSE");
    }
    match &condition.one_of {
        Some(versions) if versions.is_empty() => clause.push_str(" AND FALSE"),
        Some(versions) => {
            clause.push_str(&format!(
                " AND version IN ({})",
                placeholders(versions.len())
            ));
            values.extend(versions.iter().map(|v| v.get()));
        }
        None => {}
    }
    if !condition.none_of.is_empty() {
        let n = condition.none_of.len();
        clause.push_str(&format!(" AND version NOT IN ({})", placeholders(n)));
        values.extend(condition.none_of.iter().map(|v| v.get()));
    }
    (clause, values)
}

/// After a write that matched no row: was there no user, or another version?
/// Asked after the write, so the write itself stays one atomic statement.
async fn why_not<T>(
    connection: &mut MySqlConnection,
    userid: UserId,
) -> Result<Conditional<T>, sqlx::Error> {
    let exists = sqlx::query("SELECT 1 FROM users WHERE userid = ?")
        .bind(userid.get())
        .fetch_optional(connection)
        .await?
        .is_some();
    Ok(if exists {
        Conditional::PreconditionFailed
    } else {
        Conditional::NotFound
    })
}

/// `username` is read unchecked: its binary collation (utf8mb4_bin, so that
/// names compare exactly) makes MariaDB flag the column BINARY, and sqlx 0.8
/// then refuses to decode it as a `String`, though its bytes are utf8mb4
/// text. The decode still checks that they are UTF-8.
fn stored_user(row: &MySqlRow) -> Result<StoredUser, sqlx::Error> {
    Ok(StoredUser {
        user: User {
            userid: UserId::from_stored(row.try_get("userid")?),
            username: UserName::from_stored(row.try_get_unchecked("username")?),
        },
        version: Version::from_stored(row.try_get("version")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_becomes_a_where_clause_with_its_values() {
        let v = Version::from_stored;
        assert_eq!(
            where_version(&VersionCondition::default()),
            (String::new(), vec![])
        );
        let condition = VersionCondition {
            one_of: Some(vec![v(3), v(7)]),
            none_of: vec![v(9)],
            only_if_absent: false,
        };
        assert_eq!(
            where_version(&condition),
            (
                " AND version IN (?, ?) AND version NOT IN (?)".to_owned(),
                vec![3, 7, 9]
            )
        );
        let nothing_matches = VersionCondition {
            one_of: Some(vec![]),
            ..Default::default()
        };
        assert_eq!(where_version(&nothing_matches).0, " AND FALSE");
        let absent = VersionCondition {
            only_if_absent: true,
            ..Default::default()
        };
        assert_eq!(where_version(&absent).0, " AND FALSE");
    }
}
