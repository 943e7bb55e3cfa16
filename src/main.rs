use std::process::ExitCode;

use rocket::{Build, Phase, Rocket};
use rocket_db_pools::Database;
use user_api::config::AppSettings;
use user_api::db::Db;

const USAGE: &str = "usage: user-api [healthcheck | pre-stop SECONDS | --version]

  (no argument)     serve the API (configuration: Rocket.toml, ROCKET_*, DATABASE_*)
  healthcheck       GET /healthz on the configured port; exit 0 when it answers 200
  pre-stop SECONDS  wait SECONDS (0-60), then exit 0: a Kubernetes preStop hook, so that the
                    endpoint is gone from every proxy before the API gets its SIGTERM";

/// The longest pre-stop wait: Kubernetes counts it against the pod's
/// terminationGracePeriodSeconds, which must still leave the shutdown its time.
const PRE_STOP_MAX_SECONDS: u64 = 60;

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
        // The image has no shell and no sleep: the hook runs the binary itself.
        ["pre-stop", seconds] => match pre_stop_wait(seconds) {
            Some(wait) => {
                std::thread::sleep(wait);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "pre-stop: SECONDS must be a whole number from 0 to {PRE_STOP_MAX_SECONDS}, not {seconds:?}"
                );
                ExitCode::from(2)
            }
        },
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

fn pre_stop_wait(seconds: &str) -> Option<std::time::Duration> {
    match seconds.parse::<u64>() {
        Ok(s) if s <= PRE_STOP_MAX_SECONDS => Some(std::time::Duration::from_secs(s)),
        _ => None,
    }
}

fn serve() -> ExitCode {
    let figment = user_api::config::figment();
    // The log first, so that everything after it is a log line. Settings
    // that do not parse stop the server at ignition, which says why; until
    // then the defaults' format stands in.
    let settings: AppSettings = figment.extract().unwrap_or_default();
    user_api::log::init(settings.log_format, settings.log_level);
    let code = match rocket::execute(run(user_api::build(figment))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(reason = %format_args!("{e:#}"), "stopped");
            ExitCode::FAILURE
        }
    };
    user_api::log::finish();
    code
}

async fn run(server: Rocket<Build>) -> anyhow::Result<()> {
    let stopped = match server.launch().await {
        Ok(rocket) => rocket,
        Err(e) => match e.kind() {
            // Rocket 0.5.2 returns this, with requests still in flight,
            // on two paths: a SIGTERM that lands between two polls of its
            // shutdown select ends the accept loop first and launch()
            // returns at once (its shutdown fairings skipped); or a
            // request outlives grace + mercy + 1 s (a database call may
            // be allowed longer). Wait for them as the nominal path would
            // have, so that no write is cut off by closing the pool.
            rocket::error::ErrorKind::Shutdown(rocket, None) => {
                tracing::info!("shutting down: waiting for the requests still in flight");
                let limit = user_api::shutdown::in_flight_limit(&rocket.config().shutdown);
                if !user_api::shutdown::wait_until_sole_owner(rocket, limit).await {
                    // Not closing the pool: that would wait for the very
                    // connections those requests hold.
                    anyhow::bail!(
                        "abandoned the requests still in flight after waiting {} s for them",
                        limit.as_secs()
                    );
                }
                close_pool(rocket).await;
                linger(rocket).await;
                return Ok(());
            }
            rocket::error::ErrorKind::Config(e) => {
                return Err(anyhow::Error::new(e.clone()).context("invalid configuration"));
            }
            rocket::error::ErrorKind::Bind(e) => {
                return Err(anyhow::anyhow!("{e}").context("cannot listen"));
            }
            // The failing fairing has logged its own reason already.
            other => anyhow::bail!("{other}"),
        },
    };
    close_pool(&stopped).await;
    linger(&stopped).await;
    Ok(())
}

/// `exit_linger`: the listener is closed by now (Rocket drops it when its
/// accept loop ends), so new connections are reset and a proxy moves them
/// to another replica at once; were the process gone, its address would
/// vanish with it and a proxy that has not re-resolved yet would wait out
/// its connect timeout instead (nginx/README.md, "A replica that dies").
async fn linger<P: Phase>(rocket: &Rocket<P>) {
    let seconds = rocket
        .figment()
        .extract::<AppSettings>()
        .map_or(0, |settings| settings.exit_linger);
    if seconds > 0 {
        tracing::info!(
            exit_linger_s = seconds,
            "stopped listening; exiting after exit_linger"
        );
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    }
}

/// Only once every request is done: see `UserPool::close`.
async fn close_pool<P: Phase>(rocket: &Rocket<P>) {
    if let Some(db) = Db::fetch(rocket) {
        db.close_after_shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pre_stop_takes_whole_seconds_from_0_to_60() {
        assert_eq!(pre_stop_wait("0"), Some(Duration::ZERO));
        assert_eq!(pre_stop_wait("60"), Some(Duration::from_secs(60)));
        for wrong in ["61", "-1", "five", "", "1.5"] {
            assert_eq!(pre_stop_wait(wrong), None, "{wrong:?}");
        }
    }
}
