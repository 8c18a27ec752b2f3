//! Names of well-known ports, for reports and the live view.

/// A small built-in table of the services people recognise by port.
const SERVICES: &[(u16, &str)] = &[
    (20, "ftp-data"),
    (21, "ftp"),
    (22, "ssh"),
    (23, "telnet"),
    (25, "smtp"),
    (53, "domain"),
    (67, "bootps"),
    (68, "bootpc"),
    (69, "tftp"),
    (80, "http"),
    (88, "kerberos"),
    (110, "pop3"),
    (123, "ntp"),
    (143, "imap"),
    (161, "snmp"),
    (389, "ldap"),
    (443, "https"),
    (445, "microsoft-ds"),
    (465, "submissions"),
    (514, "syslog"),
    (587, "submission"),
    (631, "ipp"),
    (636, "ldaps"),
    (853, "domain-s"),
    (873, "rsync"),
    (993, "imaps"),
    (995, "pop3s"),
    (1194, "openvpn"),
    (1883, "mqtt"),
    (3306, "mysql"),
    (3389, "rdp"),
    (5222, "xmpp-client"),
    (5353, "mdns"),
    (5432, "postgresql"),
    (6379, "redis"),
    (8080, "http-alt"),
    (8443, "https-alt"),
    (9418, "git"),
    (51820, "wireguard"),
];

/// The service name of a well-known port.
pub fn service_name(port: u16) -> Option<&'static str> {
    SERVICES
        .binary_search_by_key(&port, |(p, _)| *p)
        .ok()
        .map(|i| SERVICES[i].1)
}

/// The port of a service name (`https` -> 443).
pub fn service_port(name: &str) -> Option<u16> {
    SERVICES
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(p, _)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_both_ways_agree() {
        assert!(SERVICES.windows(2).all(|w| w[0].0 < w[1].0));
        for (p, n) in SERVICES {
            assert_eq!(service_name(*p), Some(*n));
            assert_eq!(service_port(n), Some(*p));
        }
        assert_eq!(service_name(443), Some("https"));
        assert_eq!(service_name(40000), None);
        assert_eq!(service_port("SSH"), Some(22));
    }
}
