//! The listen backlog of the API's socket.
//!
//! Rocket 0.5 binds through tokio and mio, which call `listen()` with std's
//! backlog of 128 and offer no setting. When nginx opens hundreds of
//! upstream connections at once (1,000 clients, bench/README.md), the
//! connections past 128 that the accept loop has not yet taken are dropped
//! SYN by SYN, and each is retried by the client a second later: that
//! second is the p99. On Linux a second `listen()` on a listening socket
//! only sets its backlog (the kernel caps it at `net.core.somaxconn`), so
//! the backlog is raised that way, once Rocket has bound the socket.
//! Rocket 0.6's listener API makes this unnecessary.

use std::collections::HashSet;
use std::io;
use std::os::fd::RawFd;

/// Raises the backlog of this process's listening TCP sockets on `port`;
/// how many there were.
pub fn raise_backlog(port: u16, backlog: u32) -> io::Result<usize> {
    let listeners = listening_inodes(port);
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    let mut raised = 0;
    for fd in socket_fds(&listeners)? {
        // SAFETY: listen() takes two integers and touches no memory of
        // ours; on a descriptor that is not a socket it fails with an error.
        if unsafe { libc::listen(fd, backlog) } != 0 {
            return Err(io::Error::last_os_error());
        }
        raised += 1;
    }
    Ok(raised)
}

/// The socket inodes in state LISTEN on `port`, from /proc/net/tcp{,6}
/// (lines of `sl local_address rem_address st ... inode`, addresses as
/// `HEXADDR:HEXPORT`, LISTEN as `0A`).
fn listening_inodes(port: u16) -> HashSet<String> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        // tcp6 is missing without IPv6; an unreadable table finds nothing,
        // which the caller reports.
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) {
                inodes.insert((*inode).to_owned());
            }
        }
    }
    inodes
}

/// This process's descriptors that are one of those sockets
/// (`/proc/self/fd/N` links to `socket:[INODE]`).
fn socket_fds(inodes: &HashSet<String>) -> io::Result<Vec<RawFd>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        // A descriptor closed since the listing has no link: not ours to raise.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'));
        if inode.is_some_and(|inode| inodes.contains(inode))
            && let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok())
        {
            fds.push(fd);
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    /// The backlog the kernel reports for a listening socket
    /// (`tcpi_sacked` of TCP_INFO holds it for a socket in LISTEN).
    fn backlog_of(listener: &TcpListener) -> u32 {
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` and `len` are valid for the kernel to write, and
        // `len` says how much it may write.
        let rc = unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        info.tcpi_sacked
    }

    #[test]
    fn the_listener_on_the_port_gets_the_new_backlog_and_no_other() {
        let ours = TcpListener::bind("127.0.0.1:0").unwrap();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(backlog_of(&ours), 128, "std's backlog, as Rocket binds");
        let port = ours.local_addr().unwrap().port();
        assert_eq!(raise_backlog(port, 1000).unwrap(), 1);
        assert_eq!(backlog_of(&ours), 1000);
        assert_eq!(backlog_of(&other), 128);
    }

    #[test]
    fn no_listener_on_the_port_is_none_raised() {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        assert_eq!(raise_backlog(port, 1000).unwrap(), 0);
    }
}
