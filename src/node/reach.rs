//! Which addresses a local dials for an announced server (DESIGN.md
//! "Discovery"). The address comes from that server's own signed hello,
//! and with open admission anyone may be that server: without a rule, any
//! host could make every local dial its loopback, link-local or private
//! addresses. An announced address is dialed if it is public, or in the
//! same class as this node's own mesh (its `--master-url` or advertised
//! URL): a mesh on one machine dials loopback, one on a LAN private
//! addresses. Unspecified, multicast and broadcast addresses never. A name
//! is resolved first and every address it resolves to must pass; the dial
//! then goes to the checked addresses, not to a second lookup.

use std::net::{IpAddr, SocketAddr};

/// What kind of network an address is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostClass {
    /// Reachable from anywhere.
    Public,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (shared), fc00::/7.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 127/8, ::1.
    Loopback,
    /// Unspecified, multicast, broadcast: never dialed.
    Never,
}

/// The class of `ip`.
pub(crate) fn classify(ip: IpAddr) -> HostClass {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() {
                HostClass::Never
            } else if v4.is_loopback() {
                HostClass::Loopback
            } else if v4.is_link_local() {
                HostClass::LinkLocal
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                HostClass::Private
            } else {
                HostClass::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_unspecified() || v6.is_multicast() {
                HostClass::Never
            } else if v6.is_loopback() {
                HostClass::Loopback
            } else if first & 0xffc0 == 0xfe80 {
                HostClass::LinkLocal
            } else if first & 0xfe00 == 0xfc00 {
                HostClass::Private
            } else {
                HostClass::Public
            }
        }
    }
}

/// The host and port of a `ws://` or `wss://` URL (the port defaults to
/// the scheme's); None for anything else.
pub(crate) fn host_port(url: &str) -> Option<(String, u16)> {
    let (rest, default) = if let Some(r) = url.strip_prefix("ws://") {
        (r, 80)
    } else {
        (url.strip_prefix("wss://")?, 443)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

/// The classes of network this node's mesh is on: an announced address in
/// one of them is dialed even if it is not public.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scope {
    near: Vec<HostClass>,
}

impl Scope {
    /// The classes of the hosts of `urls` (our advertised URL, the
    /// master's), names resolved.
    pub async fn of(urls: &[&str]) -> Scope {
        let mut near = Vec::new();
        for url in urls {
            let Some((host, port)) = host_port(url) else {
                continue;
            };
            for addr in resolve(&host, port).await.unwrap_or_default() {
                let class = classify(addr.ip());
                if class != HostClass::Never && !near.contains(&class) {
                    near.push(class);
                }
            }
        }
        Scope { near }
    }

    /// True if an announced server may be dialed at `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        match classify(ip) {
            HostClass::Public => true,
            HostClass::Never => false,
            class => self.near.contains(&class),
        }
    }

    /// The addresses to dial for `url`: every address its host resolves to
    /// must be allowed (a name that also resolves to a loopback address is
    /// refused whole).
    pub async fn addresses(&self, url: &str) -> Result<Vec<SocketAddr>, String> {
        let (host, port) = host_port(url).ok_or("not a ws:// or wss:// URL")?;
        let addrs = resolve(&host, port)
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        if let Some(bad) = addrs.iter().find(|a| !self.allows(a.ip())) {
            return Err(format!(
                "{} is a {:?} address outside this mesh's networks",
                bad.ip(),
                classify(bad.ip())
            ));
        }
        Ok(addrs)
    }
}

/// The addresses of `host` (an IP literal as is; `localhost` without asking
/// a resolver).
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return Ok(vec![SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)]);
    }
    Ok(tokio::net::lookup_host((host, port)).await?.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_classified() {
        for (addr, class) in [
            ("8.8.8.8", HostClass::Public),
            ("2001:db8::1", HostClass::Public),
            ("127.0.0.1", HostClass::Loopback),
            ("127.9.9.9", HostClass::Loopback),
            ("::1", HostClass::Loopback),
            ("::ffff:127.0.0.1", HostClass::Loopback),
            ("169.254.169.254", HostClass::LinkLocal),
            ("fe80::1", HostClass::LinkLocal),
            ("10.1.2.3", HostClass::Private),
            ("172.20.0.1", HostClass::Private),
            ("192.168.1.1", HostClass::Private),
            ("100.100.1.1", HostClass::Private),
            ("fd00::1", HostClass::Private),
            ("0.0.0.0", HostClass::Never),
            ("::", HostClass::Never),
            ("224.0.0.1", HostClass::Never),
            ("255.255.255.255", HostClass::Never),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn urls_give_their_host_and_port() {
        let hp = |u: &str| host_port(u);
        assert_eq!(hp("ws://127.0.0.1:9102"), Some(("127.0.0.1".into(), 9102)));
        assert_eq!(
            hp("wss://Chat.Example/x"),
            Some(("chat.example".into(), 443))
        );
        assert_eq!(hp("ws://[::1]:7/"), Some(("::1".into(), 7)));
        assert_eq!(hp("ws://u@10.0.0.1"), Some(("10.0.0.1".into(), 80)));
        assert_eq!(hp("http://a:1"), None);
        assert_eq!(hp("ws://:1"), None);
        assert_eq!(hp("ws://a:notaport"), None);
    }

    #[tokio::test]
    async fn a_mesh_dials_public_addresses_and_only_its_own_kind_of_others() {
        let on_loopback = Scope::of(&["ws://127.0.0.1:1", "ws://localhost:2"]).await;
        assert!(on_loopback.allows(ip("127.0.0.1")));
        assert!(on_loopback.allows(ip("8.8.8.8")));
        assert!(!on_loopback.allows(ip("10.0.0.1")));
        assert!(!on_loopback.allows(ip("169.254.169.254")));
        assert!(!on_loopback.allows(ip("0.0.0.0")));

        let public = Scope::of(&["wss://203.0.113.9:443"]).await;
        for refused in ["127.0.0.1", "::1", "192.168.0.1", "fe80::1", "224.0.0.1"] {
            assert!(!public.allows(ip(refused)), "{refused}");
        }
        assert!(
            public
                .addresses("ws://localhost:9")
                .await
                .unwrap_err()
                .contains("Loopback")
        );
        assert_eq!(
            public.addresses("ws://198.51.100.7:9").await,
            Ok(vec!["198.51.100.7:9".parse().unwrap()])
        );

        let lan = Scope::of(&["ws://192.168.1.5:9"]).await;
        assert!(lan.allows(ip("10.9.9.9")));
        assert!(!lan.allows(ip("127.0.0.1")));
    }
}
