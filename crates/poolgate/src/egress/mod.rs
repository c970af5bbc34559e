//! The egress policy: where backends may point. Local model servers (Ollama, vLLM on the same
//! host or LAN) are legitimate, so loopback and private ranges are allowed by default; what a
//! backend URL must never reach is the machine's cloud-metadata service and the link-local
//! range it lives in.
//!
//! - [`classify`] names the kind of an address, after normalising IPv4 embedded in IPv6
//!   (`::ffff:a.b.c.d`, `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::`).
//! - [`EgressPolicy::decide`] applies, in this order: the **deny** list (CIDRs and host names)
//!   wins over everything; then the **allow** list wins over the default refusal; then the
//!   default by class — public allowed; loopback, private (RFC 1918, `fc00::/7`) and shared
//!   CGNAT space (`100.64.0.0/10`: carrier NAT, but also Tailscale and some clusters) allowed
//!   while `network.allow_private` is true (the default); link-local, cloud metadata,
//!   unspecified (`0.0.0.0` reaches loopback on Linux), multicast, broadcast and reserved
//!   ranges refused.
//! - [`EgressPolicy::check_base_url`] checks a backend URL's literal host when it is created or
//!   updated (a clear 400 naming `api_base_url`); the `url` crate has already turned
//!   `2130706433`, `0x7f000001`, `127.1` and `[::ffff:127.0.0.1]` into the address they mean.
//! - [`PolicyResolver`] is the upstream client's DNS resolver: every resolution is checked, so
//!   a name that resolves (or re-resolves) to a refused address is never connected to — no DNS
//!   rebinding. IP-literal hosts are not resolved by the client, so
//!   [`EgressPolicy::check_url`] must run for them before a request is sent (the literal is
//!   fixed per backend: check it once when the snapshot is built).

mod resolve;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::domain::Invalid;

pub use resolve::{refusal_in, PolicyResolver, ResolveRefused};

/// What kind of address an IP is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    /// RFC 1918, unique-local `fc00::/7` (and deprecated site-local `fec0::/10`).
    Private,
    /// `100.64.0.0/10` (RFC 6598): treated like private.
    SharedCgnat,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// A cloud metadata endpoint (AWS, GCP, Azure, Oracle, Alibaba, ECS).
    Metadata,
    Unspecified,
    Multicast,
    Broadcast,
    /// Documentation, benchmarking, IETF and future-use ranges.
    Reserved,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private-network",
            AddressClass::SharedCgnat => "shared (CGNAT) address space",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Metadata => "cloud-metadata",
            AddressClass::Unspecified => "unspecified (0.0.0.0 / ::)",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Reserved => "reserved",
        }
    }

    /// Whether `network.allow_private` governs this class.
    fn is_private_like(self) -> bool {
        matches!(
            self,
            AddressClass::Loopback | AddressClass::Private | AddressClass::SharedCgnat
        )
    }
}

/// Cloud metadata endpoints (AWS/GCP/Azure/Oracle IMDS, AWS ECS task metadata, AWS IPv6 IMDS,
/// Alibaba, Azure's wire server).
const METADATA_ADDRESSES: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Host names of metadata services (they resolve to the addresses above inside the cloud).
const METADATA_HOSTS: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// The IPv4 address an IPv6 address stands for, if it embeds one: IPv4-mapped
/// (`::ffff:0:0/96`), IPv4-compatible (`::/96`, except `::` and `::1`), NAT64 (`64:ff9b::/96`)
/// and 6to4 (`2002::/16`).
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let low = |a: u16, b: u16| {
        let [a1, a2] = a.to_be_bytes();
        let [b1, b2] = b.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(a1, a2, b1, b2))
    };
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return low(s[6], s[7]);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return low(s[6], s[7]);
    }
    if s[0] == 0x2002 {
        return low(s[1], s[2]);
    }
    ip
}

/// The kind of `ip` (after [`canonical`]).
pub fn classify(ip: IpAddr) -> AddressClass {
    let ip = canonical(ip);
    if METADATA_ADDRESSES.contains(&ip) {
        return AddressClass::Metadata;
    }
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip.is_broadcast() => AddressClass::Broadcast,
        (0, ..) => AddressClass::Unspecified,
        (127, ..) => AddressClass::Loopback,
        (10, ..) | (192, 168, _) => AddressClass::Private,
        (172, 16..=31, _) => AddressClass::Private,
        (100, 64..=127, _) => AddressClass::SharedCgnat,
        (169, 254, _) => AddressClass::LinkLocal,
        (224..=239, ..) => AddressClass::Multicast,
        (240..=255, ..) | (192, 0, 0 | 2) | (198, 18 | 19, _) | (198, 51, 100) | (203, 0, 113) => {
            AddressClass::Reserved
        }
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        AddressClass::Private
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if (s[0], s[1]) == (0x2001, 0x0db8) || s[..4] == [0x100, 0, 0, 0] {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// A host-name rule: `example.com` (exactly) or `*.example.com` (any name below it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostRule {
    name: String,
    subdomains: bool,
}

impl HostRule {
    fn matches(&self, host: &str) -> bool {
        if self.subdomains {
            host.strip_suffix(self.name.as_str())
                .is_some_and(|prefix| prefix.ends_with('.'))
        } else {
            host == self.name
        }
    }
}

/// One entry of `network.allow` / `network.deny`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    Net(IpNet),
    Host(HostRule),
}

/// Lower-case, without the trailing dot of a fully qualified name.
fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl Rule {
    fn parse(text: &str) -> Result<Rule, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Rule::Net(net.trunc()));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Rule::Net(IpNet::from(canonical(ip))));
        }
        let (name, subdomains) = match text.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        let name = normalize_host(name);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "`{text}` is neither a CIDR, an IP address nor a host name (`*.example.com` for every name below one)"
            ));
        }
        Ok(Rule::Host(HostRule { name, subdomains }))
    }

    fn matches(&self, ip: Option<IpAddr>, host: Option<&str>) -> bool {
        match self {
            Rule::Net(net) => ip.is_some_and(|ip| net.contains(&canonical(ip))),
            Rule::Host(rule) => host.is_some_and(|host| rule.matches(host)),
        }
    }
}

/// Why a destination was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// On `network.deny`.
    Denied { target: String },
    /// A class the policy refuses.
    Class { ip: IpAddr, class: AddressClass },
    /// A metadata service's host name.
    MetadataHost { host: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Denied { target } => {
                write!(f, "`{target}` is on the egress deny list (`network.deny`)")
            }
            Refusal::Class { ip, class } if class.is_private_like() => write!(
                f,
                "{ip} is a {} address and `network.allow_private` is false (list it in `network.allow` to permit it)",
                class.describe()
            ),
            Refusal::Class { ip, class } => write!(
                f,
                "{ip} is a {} address, which backends may not use (list it in `network.allow` to permit it)",
                class.describe()
            ),
            Refusal::MetadataHost { host } => write!(
                f,
                "`{host}` is a cloud-metadata host, which backends may not use (list it in `network.allow` to permit it)"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The validated `[network]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    allow_private: bool,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self {
            allow_private: true,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

impl EgressPolicy {
    /// From `network.allow_private`, `network.allow`, `network.deny`; errors name the entry.
    pub fn new(allow_private: bool, allow: &[String], deny: &[String]) -> Result<Self, Invalid> {
        let parse = |field: &str, entries: &[String]| {
            entries
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    Rule::parse(entry)
                        .map_err(|message| Invalid::new(format!("{field}[{i}]"), message))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allow_private,
            allow: parse("network.allow", allow)?,
            deny: parse("network.deny", deny)?,
        })
    }

    /// The decision for a connection to `ip`, reached through the name `host` if any.
    pub fn decide(&self, ip: IpAddr, host: Option<&str>) -> Result<(), Refusal> {
        let host = host.map(normalize_host);
        let host = host.as_deref();
        let ip = canonical(ip);
        if self.deny.iter().any(|rule| rule.matches(Some(ip), host)) {
            let target = host.map_or_else(|| ip.to_string(), |host| format!("{host} ({ip})"));
            return Err(Refusal::Denied { target });
        }
        if self.allow.iter().any(|rule| rule.matches(Some(ip), host)) {
            return Ok(());
        }
        match classify(ip) {
            AddressClass::Public => Ok(()),
            class if class.is_private_like() && self.allow_private => Ok(()),
            class => Err(Refusal::Class { ip, class }),
        }
    }

    /// What can be said of a host name before it is resolved: refused when denied by name or a
    /// metadata host (unless allowed by name); otherwise the connect-time check decides.
    pub fn decide_name(&self, host: &str) -> Result<(), Refusal> {
        let host = normalize_host(host);
        if self.deny.iter().any(|rule| rule.matches(None, Some(&host))) {
            return Err(Refusal::Denied { target: host });
        }
        if self
            .allow
            .iter()
            .any(|rule| rule.matches(None, Some(&host)))
        {
            return Ok(());
        }
        if METADATA_HOSTS.contains(&host.as_str()) {
            return Err(Refusal::MetadataHost { host });
        }
        Ok(())
    }

    /// The check of a URL's literal host: an IP literal is decided fully, a name by
    /// [`EgressPolicy::decide_name`] (its addresses are checked when it is resolved).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refusal> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.decide(IpAddr::V4(ip), None),
            Some(url::Host::Ipv6(ip)) => self.decide(IpAddr::V6(ip), None),
            Some(url::Host::Domain(name)) => self.decide_name(name),
            None => Ok(()),
        }
    }

    /// The create/update check of a backend's base URL: `Invalid` naming `field`
    /// (`api_base_url`) when its literal host is refused.
    pub fn check_base_url(&self, field: &str, text: &str) -> Result<(), Invalid> {
        let url = url::Url::parse(text.trim())
            .map_err(|error| Invalid::new(field, format!("is not a valid URL ({error})")))?;
        self.check_url(&url).map_err(|refusal| {
            Invalid::new(field, format!("is refused by the egress policy: {refusal}"))
        })
    }
}
