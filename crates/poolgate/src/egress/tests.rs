use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn policy(allow_private: bool, allow: &[&str], deny: &[&str]) -> EgressPolicy {
    let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    EgressPolicy::new(allow_private, &owned(allow), &owned(deny)).unwrap()
}

#[test]
fn addresses_are_classified() {
    use AddressClass::*;
    let cases = [
        ("8.8.8.8", Public),
        ("2606:4700::1111", Public),
        ("127.0.0.1", Loopback),
        ("127.255.0.9", Loopback),
        ("::1", Loopback),
        ("10.1.2.3", Private),
        ("172.16.0.1", Private),
        ("172.31.255.255", Private),
        ("172.32.0.1", Public),
        ("192.168.1.10", Private),
        ("fd12:3456::1", Private),
        ("fc00::1", Private),
        ("100.64.0.1", SharedCgnat),
        ("100.127.255.254", SharedCgnat),
        ("100.128.0.1", Public),
        ("169.254.1.1", LinkLocal),
        ("fe80::1", LinkLocal),
        ("169.254.169.254", Metadata),
        ("169.254.170.2", Metadata),
        ("fd00:ec2::254", Metadata),
        ("100.100.100.200", Metadata),
        ("168.63.129.16", Metadata),
        ("0.0.0.0", Unspecified),
        ("0.1.2.3", Unspecified),
        ("::", Unspecified),
        ("224.0.0.1", Multicast),
        ("ff02::1", Multicast),
        ("255.255.255.255", Broadcast),
        ("192.0.2.1", Reserved),
        ("198.18.0.1", Reserved),
        ("240.0.0.1", Reserved),
        ("2001:db8::1", Reserved),
    ];
    for (text, class) in cases {
        assert_eq!(classify(ip(text)), class, "{text}");
    }
}

#[test]
fn ipv4_inside_ipv6_is_normalised() {
    use AddressClass::*;
    let cases = [
        ("::ffff:127.0.0.1", Loopback),
        ("::ffff:169.254.169.254", Metadata),
        ("::ffff:a9fe:a9fe", Metadata),
        ("::127.0.0.1", Loopback),
        ("::10.0.0.1", Private),
        ("64:ff9b::169.254.169.254", Metadata),
        ("64:ff9b::7f00:1", Loopback),
        ("2002:a9fe:a9fe::1", Metadata),
        ("2002:0808:0808::1", Public),
        ("::ffff:8.8.8.8", Public),
    ];
    for (text, class) in cases {
        assert_eq!(classify(ip(text)), class, "{text}");
    }
    assert_eq!(canonical(ip("::1")), ip("::1"), "::1 stays IPv6 loopback");
    assert_eq!(canonical(ip("::")), ip("::"));
}

/// The `url` crate turns every spelling of loopback into the address, so the literal check
/// sees it (WHATWG host parsing: decimal, hex, octal, short forms, IPv4-mapped IPv6).
#[test]
fn url_spellings_of_loopback_reach_the_check_as_loopback() {
    let spellings = [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://0177.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://１２７.０.０.１/",
        "http://127.0.0.1./",
    ];
    let strict = policy(false, &[], &[]);
    let open = EgressPolicy::default();
    for text in spellings {
        let url = url::Url::parse(text).unwrap();
        let host_ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            other => panic!("{text} parsed as {other:?}"),
        };
        assert_eq!(classify(host_ip), AddressClass::Loopback, "{text}");
        let error = strict.check_base_url("api_base_url", text).unwrap_err();
        assert_eq!(error.field, "api_base_url");
        assert!(error.message.contains("allow_private"), "{}", error.message);
        assert!(open.check_base_url("api_base_url", text).is_ok(), "{text}");
    }
}

#[test]
fn metadata_targets_are_refused_at_create_with_a_clear_error() {
    let default = EgressPolicy::default();
    for text in [
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:169.254.169.254]/",
        "http://2852039166/",
        "http://0xa9fea9fe/",
        "http://[fd00:ec2::254]/latest",
        "http://100.100.100.200/",
        "http://metadata.google.internal/computeMetadata/v1",
        "http://METADATA.google.internal./",
        "http://169.254.10.20:8080/v1",
        "http://0.0.0.0:11434/v1",
    ] {
        let error = default.check_base_url("api_base_url", text).unwrap_err();
        assert_eq!(error.field, "api_base_url", "{text}");
        assert!(
            error
                .to_string()
                .starts_with("`api_base_url`: is refused by the egress policy"),
            "{error}"
        );
    }
    let metadata = default
        .check_base_url("api_base_url", "http://169.254.169.254/")
        .unwrap_err();
    assert!(
        metadata.message.contains("cloud-metadata"),
        "{}",
        metadata.message
    );
    // Local model servers and ordinary names pass by default.
    for text in [
        "http://127.0.0.1:11434/v1",
        "http://localhost:8000/v1",
        "http://10.0.0.5:8000/v1",
        "https://api.openai.com/v1",
    ] {
        assert!(
            default.check_base_url("api_base_url", text).is_ok(),
            "{text}"
        );
    }
}

#[test]
fn deny_wins_over_allow_and_allow_wins_over_the_default() {
    let rules = policy(
        false,
        &[
            "10.1.0.0/16",
            "169.254.10.0/24",
            "ollama.lan",
            "*.models.internal",
        ],
        &["10.1.2.0/24", "bad.models.internal"],
    );
    assert!(rules.decide(ip("10.1.9.9"), None).is_ok(), "allowed CIDR");
    assert!(rules.decide(ip("10.2.0.1"), None).is_err(), "private off");
    assert!(matches!(
        rules.decide(ip("10.1.2.3"), None),
        Err(Refusal::Denied { .. })
    ));
    assert!(
        rules.decide(ip("169.254.10.7"), None).is_ok(),
        "link-local allowed by CIDR"
    );
    assert!(
        rules.decide(ip("192.168.1.2"), Some("ollama.lan")).is_ok(),
        "allowed by name"
    );
    assert!(rules.decide(ip("192.168.1.2"), Some("OLLAMA.LAN.")).is_ok());
    assert!(rules
        .decide(ip("192.168.1.3"), Some("gpu.models.internal"))
        .is_ok());
    assert!(rules
        .decide(ip("192.168.1.3"), Some("models.internal"))
        .is_err());
    assert!(matches!(
        rules.decide(ip("8.8.8.8"), Some("bad.models.internal")),
        Err(Refusal::Denied { .. })
    ));
    // An allowed name still cannot reach a denied address.
    assert!(rules.decide(ip("10.1.2.3"), Some("ollama.lan")).is_err());
    // The metadata name can be allowed explicitly (deny still wins over that).
    let metadata_allowed = policy(true, &["metadata.google.internal"], &[]);
    assert!(metadata_allowed
        .decide_name("metadata.google.internal")
        .is_ok());
}

#[test]
fn bad_list_entries_are_refused_naming_the_entry() {
    let error =
        EgressPolicy::new(true, &["10.0.0.0/8".into(), "not a host!".into()], &[]).unwrap_err();
    assert_eq!(error.field, "network.allow[1]");
    let error = EgressPolicy::new(true, &[], &["10.0.0.0/33".into()]).unwrap_err();
    assert_eq!(error.field, "network.deny[0]");
}

#[test]
fn a_resolution_keeps_only_allowed_addresses() {
    let strict = policy(false, &[], &[]);
    let addr = |text: &str| SocketAddr::new(ip(text), 0);
    // Rebinding-style answer: one public address, one loopback.
    let mixed = PolicyResolver::filter(
        &strict,
        "evil.example",
        [addr("8.8.8.8"), addr("127.0.0.1")],
    );
    assert_eq!(mixed.unwrap(), vec![addr("8.8.8.8")]);
    let refused = PolicyResolver::filter(&strict, "evil.example", [addr("127.0.0.1")]).unwrap_err();
    assert!(refused.to_string().contains("evil.example"));
    let metadata = PolicyResolver::filter(
        &EgressPolicy::default(),
        "rebind.example",
        [addr("169.254.169.254")],
    )
    .unwrap_err();
    assert_eq!(
        metadata.refusal,
        Refusal::Class {
            ip: ip("169.254.169.254"),
            class: AddressClass::Metadata
        }
    );
}

/// A real upstream on 127.0.0.1 reached through the name `localhost` (resolved through
/// /etc/hosts by the system resolver) with the upstream client poolgate sends with: refused at
/// connect time with private addresses off, served with them on.
#[tokio::test]
async fn localhost_backend_is_refused_at_connect_time_when_private_is_off() {
    use crate::domain::HttpVersion;
    use crate::providers::body::SplicedBody;
    use crate::upstream::{ClientSettings, UpstreamClient};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/v1/models", axum::routing::get(|| async { "models" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let uri: http::Uri = format!("http://localhost:{port}/v1/models")
        .parse()
        .unwrap();
    let get = |policy: EgressPolicy| {
        let client = UpstreamClient::new(&ClientSettings {
            connect_timeout: std::time::Duration::from_secs(5),
            egress: Arc::new(policy),
            version: HttpVersion::Auto,
            extra_roots: Arc::from([]),
            idle_timeout: std::time::Duration::from_secs(90),
        })
        .unwrap();
        let body = SplicedBody::whole(bytes::Bytes::new());
        client.send(
            http::Method::GET,
            Ok(uri.clone().into()),
            http::HeaderMap::new(),
            body,
        )
    };

    let error = get(policy(false, &[], &[])).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    let refused = refusal_in(&error).expect("the policy's refusal in the client error");
    assert_eq!(refused.host, "localhost");
    assert!(matches!(
        refused.refusal,
        Refusal::Class {
            class: AddressClass::Loopback,
            ..
        }
    ));

    let mut allowed = get(EgressPolicy::default()).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.chunk().await.unwrap().unwrap(), "models");

    let by_name = get(policy(false, &["localhost"], &[])).await.unwrap();
    assert_eq!(by_name.status(), 200);

    let denied = get(policy(true, &[], &["127.0.0.0/8"])).await.unwrap_err();
    assert!(matches!(
        refusal_in(&denied).map(|r| &r.refusal),
        Some(Refusal::Denied { .. })
    ));
}

proptest! {
    #[test]
    fn mapped_and_plain_ipv4_are_decided_alike(octets in any::<[u8; 4]>(), allow_private in any::<bool>()) {
        let v4 = Ipv4Addr::from(octets);
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        let rules = policy(allow_private, &[], &[]);
        prop_assert_eq!(classify(IpAddr::V4(v4)), classify(mapped));
        prop_assert_eq!(rules.decide(IpAddr::V4(v4), None).is_ok(), rules.decide(mapped, None).is_ok());
    }
}
