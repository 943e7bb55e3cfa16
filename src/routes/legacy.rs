//! The original sample's calls, kept working verbatim:
//! `POST /create_user?userid=1&username=John`, `GET /get_user?userid=1`.

use rocket::form;
use rocket::response::status::Created;
use rocket::serde::json::Json;
use rocket::{Route, get, post, routes};

use crate::db::Db;
use crate::domain::{User, UserId, UserName};
use crate::error::ApiError;
use crate::guards::StrictQuery;

pub fn routes() -> Vec<Route> {
    routes![create_user, get_user]
}

#[post("/create_user?<userid>&<username>")]
async fn create_user(
    db: &Db,
    query: Result<StrictQuery, ApiError>,
    userid: form::Result<'_, UserId>,
    username: form::Result<'_, UserName>,
) -> Result<Created<Json<User>>, ApiError> {
    query?;
    let user = User {
        userid: ApiError::from_param("userid", userid)?,
        username: ApiError::from_param("username", username)?,
    };
    if !db.create(&user).await? {
        return Err(ApiError::user_exists());
    }
    Ok(super::users::created(user))
}

#[get("/get_user?<userid>")]
async fn get_user(
    db: &Db,
    query: Result<StrictQuery, ApiError>,
    userid: form::Result<'_, UserId>,
) -> Result<Json<User>, ApiError> {
    query?;
    let userid = ApiError::from_param("userid", userid)?;
    db.find(userid)
        .await?
        .map(Json)
        .ok_or_else(ApiError::user_not_found)
}
