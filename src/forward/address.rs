//! Which destination addresses are public: forwarding refuses the rest
//! (unless `--allow-private-destinations`), on a subscription's URL when it is
//! created and on every address its name resolves to at connect time, so a
//! subscription cannot reach the machine's own network (SSRF).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether an address is on the public internet. Refused (see [`non_public_reason`]):
/// loopback, private, link-local, unique- and site-local, CGNAT, multicast,
/// unspecified, documentation, benchmarking, reserved and special-purpose
/// ranges, and IPv6 addresses that carry such an IPv4 address inside them
/// (mapped, compatible, NAT64, 6to4, Teredo), since a gateway on the path may
/// deliver them to that IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    non_public_reason(ip).is_none()
}

/// Why an address is not a public destination, or None when it is.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let o = v4.octets();
    let reason = if v4.is_loopback() {
        "loopback"
    } else if v4.is_private() {
        "private"
    } else if v4.is_link_local() {
        "link-local"
    } else if o[0] == 0 {
        "unspecified (0.0.0.0/8)"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "shared address space (CGNAT, 100.64.0.0/10)"
    } else if v4.is_multicast() {
        "multicast"
    } else if o[0] >= 240 {
        "reserved (240.0.0.0/4) or broadcast"
    } else if v4.is_documentation() {
        "documentation"
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        "benchmarking (198.18.0.0/15)"
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        "IETF protocol assignments (192.0.0.0/24)"
    } else if o[0] == 192 && o[1] == 88 && o[2] == 99 {
        "6to4 relay anycast (192.88.99.0/24)"
    } else {
        return None;
    };
    Some(reason)
}

fn non_public_v6(v6: Ipv6Addr) -> Option<&'static str> {
    let seg = v6.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    // An IPv4 address inside: refused when that address would be.
    let inner = |what: &'static str, v4: Ipv4Addr| non_public_v4(v4).map(|_| what);
    if v6.is_unspecified() {
        return Some("unspecified");
    }
    if v6.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = v6.to_ipv4_mapped() {
        return inner("an IPv4-mapped address of a non-public IPv4 address", v4);
    }
    if seg[..6] == [0; 6] {
        // ::a.b.c.d, IPv4-compatible (deprecated, still routed by some stacks).
        return inner(
            "an IPv4-compatible address of a non-public IPv4 address",
            embedded(seg[6], seg[7]),
        );
    }
    if seg[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some("IPv4-translated (::ffff:0:0:0/96)");
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return inner(
            "a NAT64 address (64:ff9b::/96) of a non-public IPv4 address",
            embedded(seg[6], seg[7]),
        );
    }
    if seg[..3] == [0x64, 0xff9b, 1] {
        // RFC 8215: for networks' own translators; where the IPv4 sits varies.
        return Some("local-use NAT64 (64:ff9b:1::/48)");
    }
    if seg[0] == 0x2002 {
        return inner(
            "a 6to4 address (2002::/16) of a non-public IPv4 address",
            embedded(seg[1], seg[2]),
        );
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        // Teredo: the server's IPv4 is in clear, the client's inverted.
        let server = inner(
            "a Teredo address (2001::/32) of a non-public IPv4 address",
            embedded(seg[2], seg[3]),
        );
        let client = inner(
            "a Teredo address (2001::/32) of a non-public IPv4 address",
            embedded(!seg[6], !seg[7]),
        );
        return server.or(client);
    }
    let reason = if v6.is_multicast() {
        "multicast"
    } else if v6.is_unique_local() {
        "unique-local (fc00::/7)"
    } else if v6.is_unicast_link_local() {
        "link-local"
    } else if (seg[0] & 0xffc0) == 0xfec0 {
        "site-local (fec0::/10)"
    } else if seg[..4] == [0x100, 0, 0, 0] {
        "discard-only (100::/64)"
    } else if seg[0] == 0x2001 && seg[1] == 0xdb8 || (seg[0] & 0xfff0) == 0x3ff0 {
        "documentation"
    } else if seg[0] == 0x2001 && seg[1] == 2 && seg[2] == 0 {
        "benchmarking (2001:2::/48)"
    } else {
        return None;
    };
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses() {
        for ip in ["8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    fn refused(ip: &str) -> bool {
        !is_public(ip.parse().unwrap())
    }

    #[test]
    fn ipv4_compatible_ipv6_of_a_private_address_is_refused() {
        assert!(refused("::127.0.0.1"));
        assert!(refused("::10.0.0.1"));
        assert!(refused("::169.254.169.254"));
        assert!(!refused("::8.8.8.8"));
    }

    #[test]
    fn nat64_of_a_private_address_is_refused() {
        assert!(refused("64:ff9b::127.0.0.1"));
        assert!(refused("64:ff9b::a9fe:a9fe")); // 169.254.169.254
        assert!(refused("64:ff9b::192.168.0.1"));
        assert!(!refused("64:ff9b::8.8.8.8"));
        // Local-use NAT64: the network's own translator, refused whole.
        assert!(refused("64:ff9b:1::808:808"));
        assert!(refused("64:ff9b:1:ffff::1"));
    }

    #[test]
    fn six_to_four_of_a_private_address_is_refused() {
        assert!(refused("2002:7f00:1::1")); // 127.0.0.1
        assert!(refused("2002:a00:1::")); // 10.0.0.1
        assert!(refused("2002:c0a8:101::1")); // 192.168.1.1
        assert!(!refused("2002:808:808::1")); // 8.8.8.8
    }

    #[test]
    fn teredo_with_a_private_address_is_refused() {
        // Server 10.0.0.1.
        assert!(refused("2001:0:a00:1::ffff:ffff"));
        // Client 127.0.0.1 (stored inverted: 80ff:fffe).
        assert!(refused("2001:0:808:808:0:0:80ff:fffe"));
        // Server 8.8.8.8, client 8.8.4.4 (inverted f7f7:fbfb).
        assert!(!refused("2001:0:808:808:0:0:f7f7:fbfb"));
    }

    #[test]
    fn site_local_and_other_special_ipv6_are_refused() {
        assert!(refused("fec0::1"));
        assert!(refused("feff::1"));
        assert!(refused("100::1"));
        assert!(refused("2001:db8::1"));
        assert!(refused("3fff::1"));
        assert!(refused("2001:2::1"));
        assert!(refused("::ffff:0:7f00:1"));
        assert!(!refused("2a00:1450:4001::200e"));
    }

    #[test]
    fn benchmarking_reserved_and_protocol_ipv4_ranges_are_refused() {
        for ip in [
            "198.18.0.1",
            "198.19.255.254",
            "240.0.0.1",
            "255.255.255.254",
            "255.255.255.255",
            "192.0.0.8",
            "192.88.99.1",
            "224.0.0.1",
        ] {
            assert!(refused(ip), "{ip}");
        }
        for ip in [
            "198.17.255.255",
            "198.20.0.1",
            "239.255.255.255",
            "192.0.1.1",
        ] {
            // 239/8 is multicast: refused, the others are public.
            assert_eq!(refused(ip), ip.starts_with("239."), "{ip}");
        }
    }
}
