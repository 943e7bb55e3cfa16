//! `user-api healthcheck`: GET /healthz on the configured port, exit 0 on
//! 200. Lets images run their healthcheck without a shell or curl.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config;

const TIMEOUT: Duration = Duration::from_secs(3);

pub fn run() -> ExitCode {
    let figment = config::figment();
    let port: u16 = figment.extract_inner("port").unwrap_or(8000);
    let address: IpAddr = figment
        .extract_inner("address")
        .unwrap_or(Ipv4Addr::LOCALHOST.into());
    // A server bound to every address is reached on loopback.
    let target = match address {
        IpAddr::V4(a) if a.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(a) if a.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        other => other,
    };
    match probe(SocketAddr::new(target, port)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("healthcheck: http://{target}:{port}/healthz: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn probe(address: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT).context("cannot connect")?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .context("cannot send the request")?;
    let mut head = Vec::with_capacity(64);
    stream
        .take(64)
        .read_to_end(&mut head)
        .context("no answer")?;
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or("");
    match status_line.split(' ').nth(1) {
        Some("200") => Ok(()),
        _ => anyhow::bail!("unexpected answer {status_line:?}"),
    }
}
