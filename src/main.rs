use std::process::ExitCode;

use rocket::{Phase, Rocket};
use rocket_db_pools::Database;
use user_api::db::Db;

const USAGE: &str = "usage: user-api [healthcheck | --version]

  (no argument)  serve the API (configuration: Rocket.toml, ROCKET_*, DATABASE_*)
  healthcheck    GET /healthz on the configured port; exit 0 when it answers 200";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => serve(),
        ["healthcheck"] => user_api::healthcheck::run(),
        ["--version" | "-V"] => {
            println!("user-api {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
    let served = rocket::execute(async {
        match user_api::rocket().launch().await {
            Ok(rocket) => {
                close_pool(&rocket).await;
                Ok(())
            }
            Err(e) => match e.kind() {
                // Rocket 0.5.2 race: a SIGTERM that lands between two polls
                // of its shutdown select ends the accept loop first, and
                // launch() returns at once, while connections still serve
                // requests in flight. Wait them out (they keep their own
                // grace and mercy), as the nominal path would have.
                rocket::error::ErrorKind::Shutdown(rocket, None) => {
                    // Rocket skipped its shutdown fairings on this path.
                    user_api::log::info("shutting down: finishing requests in flight");
                    let limit = user_api::shutdown::in_flight_limit(&rocket.config().shutdown);
                    user_api::shutdown::wait_until_sole_owner(rocket, limit).await;
                    close_pool(rocket).await;
                    Ok(())
                }
                _ => Err(e),
            },
        }
    });
    let code = match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let reason = match e.kind() {
                rocket::error::ErrorKind::Config(e) => format!("invalid configuration: {e}"),
                rocket::error::ErrorKind::Bind(e) => format!("cannot listen: {e}"),
                // The failing fairing has logged its own reason already.
                other => other.to_string(),
            };
            user_api::log::error(&format!("stopped: {reason}"));
            ExitCode::FAILURE
        }
    };
    user_api::log::finish();
    code
}

/// Only once every request is done: see `UserPool::close`.
async fn close_pool<P: Phase>(rocket: &Rocket<P>) {
    if let Some(db) = Db::fetch(rocket) {
        db.close_after_shutdown().await;
    }
}
