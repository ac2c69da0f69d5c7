//! PII replacement, FineWeb's last step (datatrove `PIIFormatter`): e-mail addresses and public
//! IPv4 addresses are replaced by fixed placeholders. Private, loopback, link-local, multicast and
//! reserved IPv4 ranges are left alone (they identify nobody), as datatrove does.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// `[pii]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PiiConfig {
    pub enabled: bool,
    pub email_replacement: String,
    /// One of these is chosen per address, by a hash of the address (deterministic).
    pub ip_replacements: Vec<String>,
}

impl Default for PiiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            email_replacement: "email@example.com".into(),
            // datatrove's defaults: non-resolving public addresses.
            ip_replacements: vec![
                "22.214.171.124".into(),
                "126.96.36.199".into(),
                "188.8.131.52".into(),
                "184.108.40.206".into(),
                "220.127.116.11".into(),
                "18.104.22.168".into(),
            ],
        }
    }
}

fn email_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\b")
            .expect("valid regex")
    })
}

fn ipv4_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\b")
            .expect("valid regex")
    })
}

fn is_public(ip: std::net::Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || o[0] == 0
        || o[0] >= 240
        || (o[0] == 100 && (64..128).contains(&o[1])))
}

/// Replace e-mails and public IPv4 addresses; returns the text and how many were replaced.
pub fn redact(text: &str, c: &PiiConfig) -> (String, usize, usize) {
    let mut emails = 0;
    let step1 = email_re().replace_all(text, |_: &regex::Captures| {
        emails += 1;
        c.email_replacement.clone()
    });
    let mut ips = 0;
    let step2 = ipv4_re().replace_all(&step1, |caps: &regex::Captures| {
        let s = &caps[0];
        // Version-like strings ("1.2.3.4" inside "v1.2.3.4.5") are not addresses.
        match s.parse::<std::net::Ipv4Addr>() {
            Ok(ip) if is_public(ip) && !c.ip_replacements.is_empty() => {
                ips += 1;
                let h = s
                    .bytes()
                    .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
                c.ip_replacements[h % c.ip_replacements.len()].clone()
            }
            _ => s.to_string(),
        }
    });
    (step2.into_owned(), emails, ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_public_ips_replaced_private_kept() {
        let c = PiiConfig::default();
        let (out, e, i) = redact(
            "Write to jane.doe+news@mail.example.org or admin@localhost.dev. Server 8.8.8.8, LAN 192.168.1.10, loopback 127.0.0.1, docs 192.0.2.5.",
            &c,
        );
        assert_eq!((e, i), (2, 1), "{out}");
        assert!(!out.contains("jane.doe") && !out.contains("8.8.8.8"));
        assert!(
            out.contains("email@example.com")
                && out.contains("192.168.1.10")
                && out.contains("127.0.0.1")
        );
        let (same, _, _) = redact("8.8.8.8", &c);
        assert_eq!(same, redact("8.8.8.8", &c).0, "deterministic");
    }
}
