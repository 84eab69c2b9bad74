//! The controller's files in the profile: `security/controller-client.json` and
//! `security/controller-engine.json`.
//!
//! They are written once both ROUTERs are bound, so a file's existence means the controller
//! accepts connections, and removed when the controller stops ([`SecurityFiles`] removes them
//! when dropped, so an error return removes them too).
//!
//! Which address goes in them: the address the controller bound to, except when it bound to
//! every interface (`0.0.0.0` or `::`), where a client on this host is told `127.0.0.1` (`::1`)
//! and an engine, which may run on another host, is told the first non-loopback address this
//! host's name resolves to (falling back to the loopback address when there is none).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use parallax_wire::profile::{read_json, write_json, ControllerFile, Profile};

use crate::ControllerError;

/// The host part of a `tcp://` endpoint for `ip` (IPv6 addresses in brackets).
pub(crate) fn endpoint_host(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => ip.to_owned(),
    }
}

/// The port of a resolved endpoint such as `tcp://127.0.0.1:40123`.
pub(crate) fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit_once(':')?.1.parse().ok()
}

/// The hosts written in the client file and the engine file for a controller bound to `ip`.
/// Resolving the host name may block briefly: call it off the async threads.
pub(crate) fn advertised_hosts(ip: &str) -> (String, String) {
    match ip.parse::<IpAddr>() {
        Ok(addr) if addr.is_unspecified() => {
            let loopback = if addr.is_ipv4() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            };
            let engine = host_address(addr.is_ipv4()).unwrap_or(loopback);
            (
                endpoint_host(&loopback.to_string()),
                endpoint_host(&engine.to_string()),
            )
        }
        _ => (endpoint_host(ip), endpoint_host(ip)),
    }
}

/// The first non-loopback address of this host's name, in the wanted family.
fn host_address(ipv4: bool) -> Option<IpAddr> {
    let name = nix::unistd::gethostname().ok()?.into_string().ok()?;
    (name.as_str(), 0)
        .to_socket_addrs()
        .ok()?
        .map(|a| a.ip())
        .find(|ip| !ip.is_loopback() && ip.is_ipv4() == ipv4)
}

/// The two files, removed when dropped if they still describe this controller.
#[derive(Debug)]
pub(crate) struct SecurityFiles {
    written: Vec<(PathBuf, ControllerFile)>,
}

impl SecurityFiles {
    /// Writes both files (mode 0600, in the 0700 security folder).
    pub fn write(
        profile: &Profile,
        client: ControllerFile,
        engine: ControllerFile,
    ) -> Result<Self, ControllerError> {
        let mut files = SecurityFiles {
            written: Vec::new(),
        };
        for (path, contents) in [
            (profile.client_file(), client),
            (profile.engine_file(), engine),
        ] {
            write_json(&path, &contents, true)?;
            files.written.push((path, contents));
        }
        Ok(files)
    }
}

impl Drop for SecurityFiles {
    fn drop(&mut self) {
        for (path, ours) in &self.written {
            // Another controller started on this profile since would have replaced the file:
            // leave its file alone.
            match read_json::<ControllerFile>(path) {
                Ok(found) if found == *ours => {
                    if let Err(error) = std::fs::remove_file(path) {
                        tracing::warn!(path = %path.display(), %error, "cannot remove");
                    }
                }
                _ => tracing::debug!(path = %path.display(), "not ours any more; left alone"),
            }
        }
    }
}

/// Fails if the profile's client file names another controller that is still running: its
/// process exists and its URL accepts connections. A file left by a controller that was killed
/// is simply replaced. Blocks for up to half a second: call it off the async threads.
pub(crate) fn check_not_running(profile: &Profile) -> Result<(), ControllerError> {
    let Ok(file) = read_json::<ControllerFile>(&profile.client_file()) else {
        return Ok(());
    };
    if file.controller_pid == std::process::id() || !process_exists(file.controller_pid) {
        return Ok(());
    }
    let accepts = file
        .url
        .strip_prefix("tcp://")
        .and_then(|address| address.to_socket_addrs().ok())
        .into_iter()
        .flatten()
        .any(|address: SocketAddr| {
            TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
        });
    if accepts {
        return Err(ControllerError::AlreadyRunning {
            profile: profile.name().to_owned(),
            pid: file.controller_pid,
            url: file.url,
        });
    }
    Ok(())
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        // It exists but belongs to someone else.
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(endpoint_host("127.0.0.1"), "127.0.0.1");
        assert_eq!(endpoint_host("::1"), "[::1]");
        assert_eq!(port_of("tcp://127.0.0.1:40123"), Some(40123));
        assert_eq!(port_of("tcp://[::1]:7"), Some(7));
        assert_eq!(port_of("garbage"), None);
        assert_eq!(
            advertised_hosts("10.1.2.3"),
            ("10.1.2.3".into(), "10.1.2.3".into())
        );
        let (client, engine) = advertised_hosts("0.0.0.0");
        assert_eq!(client, "127.0.0.1");
        assert!(engine.parse::<Ipv4Addr>().is_ok(), "{engine}");
        assert_eq!(advertised_hosts("::").0, "[::1]");
    }
}
