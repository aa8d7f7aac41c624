//! Who serves a connection, found out before anything is sent on it.
//!
//! A client talks only to a monitor run by root or by the caller: whoever
//! bound a socket path, or a loopback port, first would otherwise get the
//! caller's requests, and on TCP its bearer token. On a Unix socket the
//! kernel says who the server is (`SO_PEERCRED`). A TCP connection carries
//! no credentials, but on loopback both of its ends are sockets of this
//! machine, and `/proc/net/tcp` (`tcp6`) lists the server's end with the
//! uid that owns it (an accepted socket inherits its listener's owner).
//! Beyond loopback nothing can be checked: the token goes to whoever
//! answers at that address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether a server run by `uid` may be talked to.
pub(crate) fn trusted(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// The uid that owns the server's end of a TCP connection from `client`
/// to `server`, when `server` is on loopback; `Ok(None)` beyond it.
pub(crate) fn loopback_server_uid(
    client: SocketAddr,
    server: SocketAddr,
) -> io::Result<Option<u32>> {
    if !server.ip().is_loopback() && !is_mapped_loopback(server.ip()) {
        return Ok(None);
    }
    let table = if server.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {table}: {e}")))?;
    owner_of(&text, server, client).map(Some).ok_or_else(|| {
        io::Error::other(format!(
            "{table} does not list the server's end of the connection"
        ))
    })
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

/// The uid of the socket whose local address is `local` and remote address
/// `remote`, in the text of `/proc/net/tcp` or `tcp6`.
fn owner_of(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
        let fields: Vec<&str> = line.split_whitespace().collect();
        let here = parse_address(fields.get(1)?)?;
        let there = parse_address(fields.get(2)?)?;
        (here == local && there == remote).then(|| fields.get(7)?.parse().ok())?
    })
}

/// `0100007F:1F90` (an IPv4 address, 32 hex digits for IPv6; each group of
/// eight is a 32-bit word printed in the machine's byte order) and the port.
fn parse_address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if ip.len() % 8 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(16);
    for word in ip.as_bytes().chunks(8) {
        let word = std::str::from_utf8(word).ok()?;
        bytes.extend(u32::from_str_radix(word, 16).ok()?.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address as the kernel prints it.
    fn hex(addr: SocketAddr) -> String {
        let bytes = match addr.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        };
        let words: String = bytes
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap())))
            .collect();
        format!("{words}:{:04X}", addr.port())
    }

    fn row(local: SocketAddr, remote: SocketAddr, uid: u32) -> String {
        format!(
            "   1: {} {} 01 00000000:00000000 00:00000000 00000000 {uid:>5}        0 4242 1 0 20 4 30 10 -1",
            hex(local),
            hex(remote)
        )
    }

    #[test]
    fn the_server_end_of_a_loopback_connection_names_its_owner() {
        let server: SocketAddr = "127.0.0.1:7474".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let listener: SocketAddr = "127.0.0.1:7474".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let table = [
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode".to_string(),
            row(listener, any, 0),
            // The client's own end: its uid is the caller's, not the server's.
            row(client, server, 1000),
            row(server, client, 65534),
        ]
        .join("\n");
        assert_eq!(owner_of(&table, server, client), Some(65534));
        assert_eq!(owner_of(&table, client, server), Some(1000));
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(owner_of(&table, server, other), None);
    }

    #[test]
    fn addresses_read_as_the_kernel_prints_them() {
        for a in [
            "127.0.0.1:7474",
            "[::1]:7474",
            "[::ffff:127.0.0.1]:80",
            "10.1.2.3:1",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(parse_address(&hex(addr)), Some(addr), "{a}");
        }
        assert_eq!(parse_address("0100007F"), None);
        assert_eq!(parse_address("0100007:1F90"), None);
        assert!(is_mapped_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_mapped_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }
}
