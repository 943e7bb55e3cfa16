//! src/bin/proxy-preflight.rs as the proxy image runs it: from the command line, in front of
//! another program (sh here: any program shows that it was exec'd; tests/tls runs it in front of
//! nginx). Its parsing and dates are unit-tested in the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PREFLIGHT: &str = env!("CARGO_BIN_EXE_proxy-preflight");

/// Valid from 2025-01-01T00:00:00Z to 2025-02-01T00:00:00Z: expired for good.
const EXPIRED: &str = include_str!("fixtures/january-2025.crt");

/// A config directory whose tls.conf names `certificate` (written there when given).
fn config_dir(name: &str, certificate: Option<&str>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("preflight-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("tls_cert.pem");
    if let Some(text) = certificate {
        std::fs::write(&cert, text).unwrap();
    }
    std::fs::write(
        dir.join("tls.conf"),
        format!("ssl_certificate {};\n", cert.display()),
    )
    .unwrap();
    dir
}

/// `proxy-preflight <program> -c <dir>/nginx.conf`, as the image runs nginx.
fn run(program: &str, dir: &Path) -> Output {
    Command::new(PREFLIGHT)
        .args([program, "-c", &format!("{}/nginx.conf", dir.display())])
        .output()
        .unwrap()
}

#[test]
fn an_expired_certificate_stops_it_before_the_program_runs() {
    let dir = config_dir("expired", Some(EXPIRED));
    let out = run("sh", &dir);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "proxy: {}/tls_cert.pem: the certificate expired on 2025-02-01T00:00:00Z \
             (clients refuse it); nginx is not started\n",
            dir.display()
        )
    );
}

#[test]
fn with_nothing_to_refuse_it_becomes_the_program() {
    // No certificate file: left to nginx. sh then runs "<dir>/nginx.conf" as a script, which
    // does not exist: sh's own exit status 127 and message, so sh is what ran.
    let dir = config_dir("missing", None);
    let out = run("sh", &dir);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("proxy"));
}

#[test]
fn a_program_that_cannot_run_and_no_program_are_errors() {
    let dir = config_dir("absent", None);
    let out = run("/nonexistent/nginx", &dir);
    assert_eq!(out.status.code(), Some(126));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("proxy-preflight: cannot run /nonexistent/nginx: ")
    );
    let out = Command::new(PREFLIGHT).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "proxy-preflight: usage: proxy-preflight NGINX [ARG...]\n"
    );
}
