//! The users table's queries: each one statement through [`UserPool::run`].

use sqlx::Row;
use sqlx::mysql::MySqlRow;

use super::{DbError, UserPool};
use crate::domain::{PageSize, User, UserId, UserName};

const SELECT_ONE: &str = "SELECT userid, username FROM users WHERE userid = ?";
const SELECT_PAGE: &str =
    "SELECT userid, username FROM users WHERE userid > ? ORDER BY userid LIMIT ?";

impl UserPool {
    /// `false` when the userid is taken. Relies on the primary key, not on a
    /// read first: of many concurrent creates of one id exactly one succeeds.
    pub async fn create(&self, user: &User) -> Result<bool, DbError> {
        let (userid, username) = (user.userid.get(), user.username.as_str().to_owned());
        self.run(move |connection| {
            Box::pin(async move {
                let inserted = sqlx::query("INSERT INTO users (userid, username) VALUES (?, ?)")
                    .bind(userid)
                    .bind(username)
                    .execute(connection)
                    .await;
                match inserted {
                    Ok(_) => Ok(true),
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
                    Err(e) => Err(e),
                }
            })
        })
        .await
    }

    pub async fn find(&self, userid: UserId) -> Result<Option<User>, DbError> {
        let row = self
            .run(move |connection| {
                Box::pin(
                    sqlx::query(SELECT_ONE)
                        .bind(userid.get())
                        .try_map(|row| user_from_row(&row))
                        .fetch_optional(connection),
                )
            })
            .await?;
        Ok(row)
    }

    /// `false` when no such user exists.
    pub async fn rename(&self, userid: UserId, username: &UserName) -> Result<bool, DbError> {
        let username = username.as_str().to_owned();
        // The connection sets CLIENT_FOUND_ROWS: an unchanged name still
        // counts as a matched row.
        let updated = self
            .run(move |connection| {
                Box::pin(
                    sqlx::query("UPDATE users SET username = ? WHERE userid = ?")
                        .bind(username)
                        .bind(userid.get())
                        .execute(connection),
                )
            })
            .await?;
        Ok(updated.rows_affected() > 0)
    }

    /// `false` when no such user exists.
    pub async fn delete(&self, userid: UserId) -> Result<bool, DbError> {
        let deleted = self
            .run(move |connection| {
                Box::pin(
                    sqlx::query("DELETE FROM users WHERE userid = ?")
                        .bind(userid.get())
                        .execute(connection),
                )
            })
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// One page in userid order after `after`, and the cursor of the next
    /// page when there is one.
    pub async fn list(
        &self,
        after: Option<UserId>,
        size: PageSize,
    ) -> Result<(Vec<User>, Option<UserId>), DbError> {
        let rows = self
            .run(move |connection| {
                Box::pin(
                    sqlx::query(SELECT_PAGE)
                        .bind(after.map_or(0, UserId::get))
                        .bind(u32::from(size.get()) + 1)
                        .try_map(|row| user_from_row(&row))
                        .fetch_all(connection),
                )
            })
            .await?;
        let mut users = rows;
        let next = if users.len() > usize::from(size.get()) {
            users.truncate(size.get().into());
            users.last().map(|u| u.userid)
        } else {
            None
        };
        Ok((users, next))
    }
}

/// `username` is read unchecked: its binary collation (utf8mb4_bin, so that
/// names compare exactly) makes MariaDB flag the column BINARY, and sqlx 0.8
/// then refuses to decode it as a `String`, though its bytes are utf8mb4
/// text. The decode still checks that they are UTF-8.
fn user_from_row(row: &MySqlRow) -> Result<User, sqlx::Error> {
    Ok(User {
        userid: UserId::from_stored(row.try_get("userid")?),
        username: UserName::from_stored(row.try_get_unchecked("username")?),
    })
}
