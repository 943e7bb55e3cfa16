use std::process::ExitCode;

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
        let rocket = user_api::rocket().launch().await?;
        // Only now are all requests done: see `UserPool::close`.
        if let Some(db) = Db::fetch(&rocket) {
            db.close_after_shutdown().await;
        }
        Ok::<_, rocket::Error>(())
    });
    match served {
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
    }
}
