//! user-api: a small user service on Rocket and MySQL/MariaDB.
//!
//! [`rocket`] builds the server from the environment; [`build`] from a given
//! figment, which is how the tests point it at their own database.

mod conditional;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod error_code;
mod guards;
pub mod healthcheck;
mod listener;
pub mod log;
pub mod metrics;
mod request_id;
mod routes;
pub mod shutdown;

use rocket::fairing::AdHoc;
use rocket::figment::Figment;
use rocket::{Build, Rocket};
use rocket_db_pools::Database;

pub use guards::BODY_LIMIT_BYTES;

/// The server as configured by Rocket.toml, `ROCKET_*` and `DATABASE_*`.
pub fn rocket() -> Rocket<Build> {
    build(config::figment())
}

/// The server for `figment`. Logs go to whatever subscriber the caller
/// installed (`main` installs [`log::init`]'s).
pub fn build(figment: Figment) -> Rocket<Build> {
    let settings = figment.extract::<config::AppSettings>();
    // Invalid settings stop the server at ignition (below); until then the
    // defaults stand in.
    let config::AppSettings {
        access_log,
        metrics: with_metrics,
        listen_backlog,
        require_if_match,
        docs,
        ..
    } = settings.clone().unwrap_or_default();
    let rocket = rocket::custom(figment)
        .attach(AdHoc::try_on_ignite("app settings", |rocket| async move {
            match settings {
                Ok(_) => Ok(rocket),
                Err(e) => {
                    tracing::error!(reason = %e, "invalid configuration");
                    Err(rocket)
                }
            }
        }))
        .attach(request_id::RequestLog {
            enabled: access_log,
        })
        .attach(conditional::CachingRules)
        .manage(conditional::RequireIfMatch(require_if_match))
        .attach(db::Db::init());
    // After the database fairing: the metrics register the pool's.
    let rocket = if with_metrics {
        metrics::attach(rocket)
    } else {
        rocket
    };
    let rocket = if docs {
        rocket.mount("/", routes::docs::routes())
    } else {
        rocket
    };
    rocket
        // Liftoff runs once Rocket has bound its socket, before it accepts;
        // Rocket then holds the bound port. Port 0 means nothing was bound:
        // a `rocket::local` client, which runs liftoff without a server.
        .attach(AdHoc::on_liftoff("listen backlog", move |rocket| {
            let port = rocket.config().port;
            Box::pin(async move {
                if listen_backlog > 0 && port != 0 {
                    match listener::raise_backlog(port, listen_backlog) {
                        Ok(0) => tracing::warn!(
                            port,
                            reason = "no listening socket found on the port",
                            "listen backlog left at 128"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(port, reason = %e, "listen backlog left at 128"),
                    }
                }
            })
        }))
        .attach(AdHoc::on_liftoff("announce", |rocket| {
            Box::pin(async move {
                let config = rocket.config();
                tracing::info!(
                    version = env!("CARGO_PKG_VERSION"),
                    address = %config.address,
                    port = config.port,
                    "user-api listening"
                );
            })
        }))
        .attach(AdHoc::on_shutdown("farewell", |_| {
            Box::pin(async { tracing::info!("shutting down: finishing requests in flight") })
        }))
        .mount("/", routes::all())
        .register("/", error::catchers())
}

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi_document() -> &'static str {
    routes::openapi::DOCUMENT
}
