//! The proxy image's entrypoint, in front of nginx:
//!
//!     proxy-preflight /bin/nginx -p /tmp/ -e stderr -c /etc/nginx/nginx.conf
//!
//! nginx refuses a missing certificate, a key that does not parse or one of another certificate,
//! but never looks at dates: an expired certificate would be served, and every client would
//! refuse it. So before nginx starts, this reads the certificate of each `ssl_certificate` in the
//! `tls*.conf` files beside the `-c` file (nginx.conf includes them by that glob) and stops with
//! one line when one has expired or is not valid yet. Anything it cannot read or parse is left to
//! nginx, whose own `[emerg]` line names it better. Then it becomes nginx (exec): nginx stays the
//! container's PID 1 and gets its signals.
//!
//! The line goes to stderr as plain text, beside nginx's own lines in the proxy's log: this runs
//! for a few milliseconds, before anything that would set up structured logging.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_cert::Certificate;
use x509_cert::der::DecodePem;

/// Where nginx.conf is when the command line names no `-c` (the image's layout).
const DEFAULT_CONFIG_DIR: &str = "/etc/nginx";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("proxy-preflight: usage: proxy-preflight NGINX [ARG...]");
        return ExitCode::from(64);
    };
    let args: Vec<OsString> = args.collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    for certificate in certificate_files(&config_dir(&args)) {
        if let Some(refusal) = refusal(&certificate, now) {
            eprintln!("proxy: {refusal}; nginx is not started");
            return ExitCode::from(1);
        }
    }
    let error = Command::new(&program).args(&args).exec();
    eprintln!(
        "proxy-preflight: cannot run {}: {error}",
        Path::new(&program).display()
    );
    ExitCode::from(126)
}

/// The directory of nginx's `-c` file.
fn config_dir(args: &[OsString]) -> PathBuf {
    args.iter()
        .position(|arg| arg == "-c")
        .and_then(|i| args.get(i + 1))
        .and_then(|file| Path::new(file).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR))
}

/// Every certificate path the `tls*.conf` files of `dir` name, in file order.
fn certificate_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut includes: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("tls") && name.ends_with(".conf"))
        })
        .collect();
    includes.sort();
    includes
        .iter()
        .filter_map(|include| std::fs::read_to_string(include).ok())
        .flat_map(|text| ssl_certificates(&text))
        .collect()
}

/// The files of the `ssl_certificate` directives of one include file. A path with a variable is
/// loaded by nginx at each handshake, not at start: left out.
fn ssl_certificates(conf: &str) -> Vec<PathBuf> {
    conf.lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter_map(|line| line.strip_prefix("ssl_certificate"))
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .map(|rest| rest.trim().trim_end_matches(';').trim())
        .filter(|path| !path.is_empty() && !path.contains('$'))
        .map(PathBuf::from)
        .collect()
}

/// Why nginx must not start with the certificate in `file` at `now` (seconds since the epoch):
/// it has expired, or is not valid yet. None when it is valid, and when it cannot be read or
/// parsed (nginx says so itself).
fn refusal(file: &Path, now: Duration) -> Option<String> {
    let pem = std::fs::read(file).ok()?;
    // The first certificate of the file is the server's own; the rest is its chain.
    let end = pem
        .windows(END_MARKER.len())
        .position(|window| window == END_MARKER)?
        + END_MARKER.len();
    let certificate = Certificate::from_pem(&pem[..end]).ok()?;
    let validity = certificate.tbs_certificate.validity;
    let (not_before, not_after) = (validity.not_before, validity.not_after);
    if now > not_after.to_unix_duration() {
        Some(format!(
            "{}: the certificate expired on {} (clients refuse it)",
            file.display(),
            not_after
        ))
    } else if now < not_before.to_unix_duration() {
        Some(format!(
            "{}: the certificate is not valid before {} (check the clock, or the certificate)",
            file.display(),
            not_before
        ))
    } else {
        None
    }
}

const END_MARKER: &[u8] = b"-----END CERTIFICATE-----";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_certificate_directives_of_an_include_file() {
        let conf = "# ssl_certificate /commented;\n\
                    listen 8443 ssl;\n\
                    ssl_certificate     /run/secrets/tls_cert;\n\
                    ssl_certificate_key /run/secrets/tls_key;\n\
                    \tssl_certificate /b.pem; # trailing\n\
                    ssl_certificate $by_name;\n";
        assert_eq!(
            ssl_certificates(conf),
            [
                PathBuf::from("/run/secrets/tls_cert"),
                PathBuf::from("/b.pem")
            ]
        );
    }

    /// Valid from 2025-01-01T00:00:00Z (1735689600) to 2025-02-01T00:00:00Z (1738368000),
    /// made with `openssl req -x509 -not_before 20250101000000Z -not_after 20250201000000Z`.
    const JANUARY_2025: &str = include_str!("../../tests/api/fixtures/january-2025.crt");

    fn written(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("proxy-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn refuses_before_and_after_the_validity_and_only_then() {
        // The server's certificate first; what follows (its chain) is not read.
        let file = written("chain.pem", &format!("{JANUARY_2025}{JANUARY_2025}"));
        let at = Duration::from_secs;
        let before = refusal(&file, at(1_735_689_599)).unwrap();
        assert!(before.ends_with("the certificate is not valid before 2025-01-01T00:00:00Z (check the clock, or the certificate)"), "{before}");
        assert!(
            before.starts_with(&format!("{}: ", file.display())),
            "{before}"
        );
        assert_eq!(refusal(&file, at(1_735_689_600)), None);
        assert_eq!(refusal(&file, at(1_738_368_000)), None);
        let after = refusal(&file, at(1_738_368_001)).unwrap();
        assert!(
            after.ends_with("the certificate expired on 2025-02-01T00:00:00Z (clients refuse it)"),
            "{after}"
        );
    }

    #[test]
    fn leaves_what_it_cannot_read_to_nginx() {
        let at = Duration::from_secs(1_800_000_000);
        assert_eq!(refusal(Path::new("/nonexistent/cert.pem"), at), None);
        assert_eq!(
            refusal(&written("junk.pem", "not a certificate\n"), at),
            None
        );
        let cut = &JANUARY_2025[..JANUARY_2025.len() - 40];
        assert_eq!(refusal(&written("cut.pem", cut), at), None);
    }

    #[test]
    fn finds_the_certificates_of_the_tls_include_files_only() {
        let dir = std::env::temp_dir().join(format!("proxy-preflight-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.conf"), "ssl_certificate /a.pem;\n").unwrap();
        std::fs::write(dir.join("tls-extra.conf"), "ssl_certificate /b.pem;\n").unwrap();
        std::fs::write(dir.join("limits.conf"), "ssl_certificate /not-tls.pem;\n").unwrap();
        std::fs::write(
            dir.join("tls.conf.orig"),
            "ssl_certificate /not-conf.pem;\n",
        )
        .unwrap();
        assert_eq!(
            certificate_files(&dir),
            [PathBuf::from("/b.pem"), PathBuf::from("/a.pem")]
        );
        assert!(certificate_files(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn the_config_directory_is_that_of_the_c_file() {
        let args: Vec<OsString> = ["-p", "/tmp/", "-c", "/x/y/nginx.conf"]
            .map(OsString::from)
            .into();
        assert_eq!(config_dir(&args), PathBuf::from("/x/y"));
        assert_eq!(config_dir(&[]), PathBuf::from(DEFAULT_CONFIG_DIR));
    }
}
