//! user-api: a small user service on Rocket and MySQL/MariaDB.
//!
//! [`rocket`] builds the server from the environment; [`build`] from a given
//! figment, which is how the tests point it at their own database.

pub mod config;
pub mod db;
pub mod domain;
pub mod error;
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
pub use request_id::HEADER as REQUEST_ID_HEADER;

/// The server as configured by Rocket.toml, `ROCKET_*` and `DATABASE_*`.
pub fn rocket() -> Rocket<Build> {
    build(config::figment())
}

pub fn build(figment: Figment) -> Rocket<Build> {
    let settings = figment.extract::<config::AppSettings>();
    if let Ok(settings) = &settings {
        log::init(settings.log_format, settings.log_level);
    }
    let access_log = settings.as_ref().map_or(true, |s| s.access_log);
    let with_metrics = settings.as_ref().map_or(true, |s| s.metrics);
    let listen_backlog = settings.as_ref().map_or(0, |s| s.listen_backlog);
    let rocket = rocket::custom(figment)
        .attach(AdHoc::try_on_ignite("app settings", |rocket| async move {
            match settings {
                Ok(_) => Ok(rocket),
                Err(e) => {
                    log::error(&format!("invalid configuration: {e}"));
                    Err(rocket)
                }
            }
        }))
        .attach(request_id::RequestLog {
            enabled: access_log,
        })
        .attach(db::Db::init());
    // After the database fairing: the metrics register the pool's.
    let rocket = if with_metrics {
        metrics::attach(rocket)
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
                        Ok(0) => log::warn(&format!(
                            "listen backlog left at 128: no listening socket found on port {port}"
                        )),
                        Ok(_) => {}
                        Err(e) => log::warn(&format!("listen backlog left at 128: {e}")),
                    }
                }
            })
        }))
        .attach(AdHoc::on_liftoff("announce", |rocket| {
            Box::pin(async move {
                let config = rocket.config();
                log::info(&format!(
                    "user-api {} listening on {}:{}",
                    env!("CARGO_PKG_VERSION"),
                    config.address,
                    config.port
                ));
            })
        }))
        .attach(AdHoc::on_shutdown("farewell", |_| {
            Box::pin(async { log::info("shutting down: finishing requests in flight") })
        }))
        .mount("/", routes::all())
        .register("/", error::catchers())
}

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi_document() -> &'static str {
    routes::openapi::DOCUMENT
}
