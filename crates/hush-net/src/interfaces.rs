//! Local interface addresses for host candidates.

use std::net::IpAddr;

/// The addresses of this machine's interfaces that make sense as host candidates: IPv4 and
/// global/unique-local IPv6; no link-local, unspecified or multicast addresses; loopback only
/// when `include_loopback`.
///
/// Returns an empty list if the interfaces cannot be read.
pub fn host_addresses(include_loopback: bool) -> Vec<IpAddr> {
    let ifaces = match rtc_shared::ifaces::ifaces() {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list network interfaces");
            return Vec::new();
        }
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for iface in ifaces {
        let Some(addr) = iface.addr else { continue };
        let ip = addr.ip();
        if usable(ip, include_loopback) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

fn usable(ip: IpAddr, include_loopback: bool) -> bool {
    if ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    if ip.is_loopback() {
        return include_loopback;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
        // fe80::/10 needs a scope id, which candidates cannot carry.
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_addresses() {
        assert!(usable("10.1.2.3".parse().unwrap(), false));
        assert!(!usable("127.0.0.1".parse().unwrap(), false));
        assert!(usable("127.0.0.1".parse().unwrap(), true));
        assert!(!usable("169.254.1.1".parse().unwrap(), true));
        assert!(!usable("fe80::1".parse().unwrap(), true));
        assert!(usable("2001:db8::1".parse().unwrap(), true));
        assert!(!usable("0.0.0.0".parse().unwrap(), true));
    }

    #[test]
    fn lists_loopback_when_asked() {
        let with = host_addresses(true);
        assert!(with.iter().any(IpAddr::is_loopback));
        assert!(!host_addresses(false).iter().any(IpAddr::is_loopback));
    }
}
