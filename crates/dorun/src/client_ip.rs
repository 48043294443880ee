//! The client address a Worker sees as `CF-Connecting-IP`.
//!
//! By default it is the TCP peer, whatever the request claims. Peers named with
//! `--trust-proxy CIDR` are reverse proxies: from them, a `CF-Connecting-IP` header is kept
//! as sent, or else the last address in `X-Forwarded-For` that is not itself a trusted proxy
//! (the hop that reached the first proxy) is the client.

use std::net::IpAddr;

use ipnet::IpNet;

/// The reverse proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// Parses `10.0.0.0/8`, `::1/128` or a bare address (one host).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("'{text}' is not an address or CIDR range (e.g. 10.0.0.0/8)"))
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request that arrived from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(ip) = header("cf-connecting-ip").and_then(|v| v.trim().parse().ok()) {
            return ip;
        }
        let Some(forwarded) = header("x-forwarded-for") else {
            return peer;
        };
        // Right to left: each trusted proxy appended the address it got the request from.
        let hops: Vec<IpAddr> = forwarded
            .split(',')
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        hops.iter()
            .rev()
            .find(|hop| !self.trusts(**hop))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 peers) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec![
            parse_cidr("10.0.0.0/8").unwrap(),
            parse_cidr("127.0.0.1").unwrap(),
        ])
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let claims = headers(&[
            ("cf-connecting-ip", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        assert_eq!(proxies().client_ip(ip("9.9.9.9"), &claims), ip("9.9.9.9"));
        assert_eq!(
            TrustedProxies::default().client_ip(ip("127.0.0.1"), &claims),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn a_trusted_proxy_passes_cf_connecting_ip_on() {
        let claims = headers(&[
            ("cf-connecting-ip", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        assert_eq!(proxies().client_ip(ip("127.0.0.1"), &claims), ip("1.1.1.1"));
    }

    #[test]
    fn x_forwarded_for_gives_the_last_untrusted_hop() {
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.1.2.3")]);
        assert_eq!(proxies().client_ip(ip("10.0.0.1"), &chain), ip("5.5.5.5"));
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.2.3")]);
        assert_eq!(
            proxies().client_ip(ip("10.0.0.1"), &all_trusted),
            ip("10.9.9.9")
        );
        assert_eq!(
            proxies().client_ip(ip("10.0.0.1"), &headers(&[])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_ranges_and_bad_ranges_are_refused() {
        let claims = headers(&[("cf-connecting-ip", "1.1.1.1")]);
        assert_eq!(
            proxies().client_ip(ip("::ffff:127.0.0.1"), &claims),
            ip("1.1.1.1")
        );
        assert!(parse_cidr("10.0.0.0/99").is_err());
        assert!(parse_cidr("proxy").is_err());
    }
}
