//! Which address engines on other hosts should dial: the address of this machine's interface
//! that routes towards them (what the kernel's routing table picks), never a loopback address.
//! A host name that resolves to a loopback address here (Debian's `127.0.1.1` line for the
//! machine's own name) is exactly what this avoids.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

/// The local address the route to `host` leaves from, unless it is a loopback address.
/// Connecting a UDP socket sends nothing; it only asks the kernel for the route.
pub fn location_for(host: &str) -> Option<IpAddr> {
    let peer: SocketAddr = (host, 9).to_socket_addrs().ok()?.next()?;
    let bind: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(peer).ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_peers_give_no_location_and_garbage_none() {
        assert_eq!(location_for("127.0.0.1"), None);
        assert_eq!(location_for("no such host.invalid"), None);
    }
}
