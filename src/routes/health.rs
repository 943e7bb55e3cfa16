//! Liveness and readiness, for orchestrators and the image healthcheck.

use std::time::Duration;

use rocket::serde::json::{Json, Value, json};
use rocket::{Route, get, routes};

use crate::db::Db;
use crate::error::ApiError;

/// Short enough for a load balancer's probe interval.
const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

pub fn routes() -> Vec<Route> {
    routes![healthz, readyz]
}

/// 200 while the process serves requests, whatever the database does.
#[get("/healthz")]
fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 only while the database answers.
#[get("/readyz")]
async fn readyz(db: &Db) -> Result<Json<Value>, ApiError> {
    db.ping(READINESS_TIMEOUT).await?;
    Ok(Json(json!({"status": "ready"})))
}
