//! The private-address guard (`server::guard`): a server, compromised or malicious, must
//! not make a volunteer's worker probe its owner's network. Direct downloads resolve
//! through [`GuardResolver`], which refuses a host when any of its addresses is
//! loopback, private, link-local (the cloud metadata address included), CGNAT,
//! multicast, broadcast or unspecified; ureq then connects only to the addresses
//! checked, so DNS cannot change the answer in between, and every redirect hop goes
//! through the same check. yt-dlp resolves by itself, so URLs whose host is a literal
//! address are checked before it runs ([`check_literal`]). `--allow-private-urls`
//! turns the guard off (LAN setups, tests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused, as the error names it.
pub fn rule(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => rule_v4(v4),
        IpAddr::V6(v6) => {
            // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) and NAT64
            // (64:ff9b::/96) addresses reach the IPv4 address inside.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return rule_v4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
                return rule_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return rule_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
            }
            rule_v6(v6)
        }
    }
}

fn rule_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback address"
    } else if ip.is_private() {
        "private address (RFC 1918)"
    } else if ip.is_link_local() {
        "link-local address (cloud metadata included)"
    } else if a == 100 && (64..128).contains(&b) {
        "shared CGNAT address (100.64.0.0/10)"
    } else if ip.is_multicast() {
        "multicast address"
    } else if ip.is_broadcast() {
        "broadcast address"
    } else if a == 0 {
        "unspecified address"
    } else {
        return None;
    })
}

fn rule_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "loopback address"
    } else if ip.is_unspecified() {
        "unspecified address"
    } else if first & 0xfe00 == 0xfc00 {
        "private address (RFC 4193 unique local)"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local address"
    } else if ip.is_multicast() {
        "multicast address"
    } else {
        return None;
    })
}

/// A refusal: the URL (or redirect hop) and the rule it broke.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("refused {url}: {rule} (pass --allow-private-urls to allow)")]
pub struct Refused {
    pub url: String,
    pub rule: &'static str,
}

/// Refuses a URL whose host is a literal address the guard forbids (for yt-dlp, which
/// resolves names by itself).
pub fn check_literal(url: &str) -> Result<(), Refused> {
    match literal_ip(url).and_then(rule) {
        Some(rule) => Err(Refused {
            url: url.to_string(),
            rule,
        }),
        None => Ok(()),
    }
}

/// The address a URL's host is written as, if it is one.
fn literal_ip(url: &str) -> Option<IpAddr> {
    let host = super::url::JobUrl::parse(url).ok()?.host();
    let host = host.as_str();
    host.parse::<IpAddr>().ok().or_else(|| {
        // Shorthands resolvers accept as addresses, e.g. `http://2130706433/` or `0x7f.1`.
        (!host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || "xX.".contains(c)))
        .then(|| parse_loose_v4(host))
        .flatten()
        .map(IpAddr::V4)
    })
}

/// `inet_aton`'s forms: 1-4 parts, each decimal, octal (leading 0) or hex (0x).
fn parse_loose_v4(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u64> = s
        .split('.')
        .map(|p| {
            let p = p.to_ascii_lowercase();
            if let Some(h) = p.strip_prefix("0x") {
                u64::from_str_radix(h, 16).ok()
            } else if p.len() > 1 && p.starts_with('0') {
                u64::from_str_radix(&p[1..], 8).ok()
            } else {
                p.parse().ok()
            }
        })
        .collect::<Option<_>>()?;
    let (last, head) = parts.split_last()?;
    if head.len() > 3 || head.iter().any(|&p| p > 255) {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if *last >= 1u64 << room {
        return None;
    }
    let mut v = 0u64;
    for (i, &p) in head.iter().enumerate() {
        v |= p << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from((v | last) as u32))
}

/// ureq's default resolver, then the guard: a host with any forbidden address is
/// refused; otherwise ureq connects to exactly the addresses returned.
#[derive(Debug, Default)]
pub struct GuardResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    /// Let through (tests: a loopback address standing in for a public host).
    exempt: Vec<IpAddr>,
}

impl Clone for GuardResolver {
    fn clone(&self) -> Self {
        GuardResolver {
            inner: Default::default(),
            exempt: self.exempt.clone(),
        }
    }
}

impl GuardResolver {
    /// [`check_literal`], letting the exempt addresses through.
    pub fn check_literal(&self, url: &str) -> Result<(), Refused> {
        match literal_ip(url) {
            Some(ip) if self.exempt.contains(&ip) => Ok(()),
            _ => check_literal(url),
        }
    }

    #[cfg(test)]
    pub fn exempting(ip: IpAddr) -> Self {
        GuardResolver {
            exempt: vec![ip],
            ..Self::default()
        }
    }
}

impl ureq::unversioned::resolver::Resolver for GuardResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let forbidden = addrs
            .iter()
            .filter(|a| !self.exempt.contains(&a.ip()))
            .find_map(|a| rule(a.ip()));
        if let Some(rule) = forbidden {
            return Err(ureq::Error::Other(Box::new(Refused {
                url: uri.to_string(),
                rule,
            })));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_forbidden_range_is_named() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "RFC 1918"),
            ("172.16.0.1", "RFC 1918"),
            ("172.31.255.255", "RFC 1918"),
            ("192.168.1.1", "RFC 1918"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("0.0.0.0", "unspecified"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "RFC 4193"),
            ("fd12:3456::1", "RFC 4193"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "RFC 1918"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ];
        for (ip, want) in cases {
            let got = rule(ip.parse().unwrap());
            assert!(got.is_some_and(|r| r.contains(want)), "{ip}: {got:?}");
        }
        for ok in [
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "2606:4700::1111",
        ] {
            assert_eq!(rule(ok.parse().unwrap()), None, "{ok}");
        }
    }

    #[test]
    fn literal_hosts_are_refused_before_yt_dlp_runs() {
        let e = check_literal("http://127.0.0.1:8000/x.mp3").unwrap_err();
        assert_eq!(
            e.to_string(),
            "refused http://127.0.0.1:8000/x.mp3: loopback address (pass --allow-private-urls to allow)"
        );
        for bad in [
            "http://[::1]/a",
            "https://user@169.254.169.254/latest/meta-data",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://017700000001/",
            "http://[::ffff:7f00:1]:80/",
        ] {
            assert!(check_literal(bad).is_err(), "{bad}");
        }
        for ok in [
            "https://www.youtube.com/watch?v=x",
            "https://youtu.be/abc",
            "http://93.184.216.34/a.mp3",
            "https://cafe.example/a.mp3",
        ] {
            assert!(check_literal(ok).is_ok(), "{ok}");
        }
    }
}
