//! Candidate selection: unit tests on small routes and property tests on random ones — each
//! backend at most once, pools in priority order, weighted shares over many requests, a cooling
//! or disabled backend never chosen.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::cooldown::Outcome as UpstreamOutcome;
use crate::domain::tests_support::backend_record;
use crate::domain::{PersistedHealth, PoolName};

const MODEL: &str = "gpt-4o";

/// One observer for every route the tests build (its series are not what they check).
static OBSERVER: std::sync::LazyLock<Observer> = std::sync::LazyLock::new(|| {
    Observer::new(crate::telemetry::ObserverOptions::default(), None).unwrap()
});

fn pool(name: &str, priority: i64) -> Pool {
    Pool {
        name: PoolName::new(name),
        priority,
        description: String::new(),
    }
}

/// A backend in `pool` with `weight`, optionally disabled or rate limited for a minute.
fn backend(name: &str, pool: &str, weight: u32, enabled: bool, cooling: bool) -> Arc<LiveBackend> {
    let mut record = backend_record(name);
    record.pool = PoolName::new(pool);
    record.weight = weight;
    record.enabled = enabled;
    record.rpm_limit = 0;
    let now = Instant::now();
    let runtime = Arc::new(BackendRuntime::restore(0, &PersistedHealth::default(), now));
    if cooling {
        let mut admitted = runtime.admit(now).expect("a new backend admits");
        let policy = CooldownPolicy {
            jitter: 0.0,
            ..CooldownPolicy::default()
        };
        let limited = UpstreamOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
        };
        let _ = admitted.resolve(limited, &policy, now);
    }
    Arc::new(LiveBackend {
        telemetry: LiveBackend::telemetry_for(&OBSERVER, &record),
        upstream: crate::providers::target::UpstreamTarget::new(
            record.api,
            &record.api_base_url,
            &SecretString::from("sk-test"),
        ),
        record,
        api_key: SecretString::from("sk-test"),
        runtime,
        unreadable: None,
        scrubber: crate::scrub::KeyScrubber::new("sk-test"),
        egress_refused: None,
        spend: None,
    })
}

fn any_api(_: &BackendRecord) -> bool {
    true
}

/// The route of [`MODEL`] over `backends`, if any serves it.
fn route_for(backends: &[Arc<LiveBackend>], pools: &[Pool]) -> Option<Arc<Route>> {
    RouteTable::build(backends, pools, [], &OBSERVER)
        .route(MODEL)
        .map(|routed| routed.route)
}

/// Every ticket one request could get, in order.
fn drain(route: &Route) -> Vec<Ticket> {
    let mut selection = Selection::new(route, any_api);
    let now = Instant::now();
    std::iter::from_fn(|| selection.next(now)).collect()
}

#[test]
fn smooth_weighted_schedule_interleaves() {
    assert_eq!(smooth_weighted_schedule(&[1, 1, 1]), vec![0, 1, 2]);
    let schedule = smooth_weighted_schedule(&[5, 1, 1]);
    assert_eq!(schedule.len(), 7);
    assert_eq!(schedule.iter().filter(|&&i| i == 0).count(), 5);
    assert_eq!(schedule, vec![0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn a_request_tries_the_primary_pool_first_then_the_fallback_each_backend_once() {
    let backends = vec![
        backend("f1", "fallback", 1, true, false),
        backend("p1", "primary", 1, true, false),
        backend("p2", "primary", 3, true, false),
    ];
    let route = route_for(&backends, &[pool("primary", 0), pool("fallback", 1)]).unwrap();
    let tickets = drain(&route);
    let names: Vec<&str> = tickets
        .iter()
        .map(|t| t.backend.record.name.as_str())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[2], "f1", "the fallback pool comes last: {names:?}");
    assert!(names[..2].contains(&"p1") && names[..2].contains(&"p2"));
    for ticket in &tickets {
        assert_eq!(ticket.backend.runtime.snapshot(Instant::now()).in_flight, 1);
    }
    drop(tickets);
    assert_eq!(backends[1].runtime.snapshot(Instant::now()).in_flight, 0);
}

#[test]
fn cooling_disabled_and_unsuitable_backends_are_skipped_and_the_wait_is_known() {
    let backends = vec![
        backend("cool", "primary", 1, true, true),
        backend("off", "primary", 1, false, false),
        backend("ok", "primary", 1, true, false),
    ];
    let route = &*route_for(&backends, &[pool("primary", 0)]).unwrap();
    let names: Vec<String> = drain(route)
        .iter()
        .map(|t| t.backend.record.name.clone())
        .collect();
    assert_eq!(names, ["ok"]);

    // A backend that cannot serve the endpoint is never a candidate.
    let now = Instant::now();
    let only_anthropic = |record: &BackendRecord| record.api == crate::domain::ApiKind::Anthropic;
    let mut none = Selection::new(route, only_anthropic);
    assert!(none.next(now).is_none(), "no backend speaks what is asked");
    // The next request gets `ok` again, then nothing: the cooling one is ready in a minute.
    let mut selection = Selection::new(route, any_api);
    let first = selection.next(now).expect("`ok` admits again");
    assert_eq!(first.backend.record.name, "ok");
    drop(first);
    assert!(selection.next(now).is_none());
    let earliest = selection
        .earliest_ready()
        .expect("the cooling backend's end");
    assert!(earliest > now + Duration::from_secs(59));
    assert_eq!(
        selection.earliest_ready_overall(now),
        Some(now),
        "`ok` is ready now"
    );
}

/// One backend of a generated route: (pool index, weight, enabled, cooling).
fn member() -> impl Strategy<Value = (usize, u32, bool, bool)> {
    (
        0_usize..3,
        1_u32..=5,
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.25),
    )
}

fn route_of(members: &[(usize, u32, bool, bool)]) -> (Vec<Arc<LiveBackend>>, Vec<Pool>) {
    let pools = vec![pool("p0", 0), pool("p1", 1), pool("p2", 2)];
    let backends = members
        .iter()
        .enumerate()
        .map(|(i, &(p, weight, enabled, cooling))| {
            backend(&format!("b{i}"), &format!("p{p}"), weight, enabled, cooling)
        })
        .collect();
    (backends, pools)
}

proptest! {
    /// However the route looks: every ready backend exactly once, none twice, no cooling or
    /// disabled one, pools in priority order.
    #[test]
    fn a_request_sees_each_ready_backend_once_in_pool_order(
        members in prop::collection::vec(member(), 1..10),
    ) {
        let (backends, pools) = route_of(&members);
        let Some(route) = route_for(&backends, &pools) else {
            prop_assert!(members.iter().all(|&(_, _, enabled, _)| !enabled));
            return Ok(());
        };
        let tickets = drain(&route);
        let mut seen: Vec<&str> = tickets.iter().map(|t| t.backend.record.name.as_str()).collect();
        let priorities: Vec<i64> = tickets.iter().map(|t| t.pool.priority).collect();
        prop_assert!(priorities.windows(2).all(|w| w[0] <= w[1]), "{priorities:?}");
        for ticket in &tickets {
            prop_assert!(ticket.backend.record.enabled);
            prop_assert_eq!(
                ticket.backend.runtime.snapshot(Instant::now()).health,
                Health::Healthy
            );
        }
        let count = seen.len();
        seen.sort_unstable();
        seen.dedup();
        prop_assert_eq!(seen.len(), count, "a backend was handed out twice");
        let ready = members.iter().filter(|&&(_, _, enabled, cooling)| enabled && !cooling).count();
        prop_assert_eq!(count, ready);
    }

    /// Over many requests, each backend of a pool gets its weight's share: within a whole
    /// number of rounds of the schedule exactly, and never off by more than its weight.
    #[test]
    fn weighted_shares_hold_over_many_requests(
        weights in prop::collection::vec(1_u32..=8, 1..6),
        requests in 50_usize..600,
    ) {
        let backends: Vec<Arc<LiveBackend>> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| backend(&format!("w{i}"), "primary", w, true, false))
            .collect();
        let route = &*route_for(&backends, &[pool("primary", 0)]).unwrap();
        let mut counts = vec![0_usize; weights.len()];
        let now = Instant::now();
        for _ in 0..requests {
            let ticket = Selection::new(route, any_api).next(now).expect("all ready");
            let index = backends.iter().position(|b| Arc::ptr_eq(b, &ticket.backend)).unwrap();
            counts[index] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, &weight) in weights.iter().enumerate() {
            let expected = requests as f64 * f64::from(weight) / f64::from(total);
            let off = (counts[i] as f64 - expected).abs();
            prop_assert!(off <= f64::from(weight), "backend {i} (weight {weight}): {} of {requests}, expected {expected:.1}", counts[i]);
        }
    }
}

#[test]
fn wildcard_routes_are_built_once_per_snapshot_and_exact_mappings_win() {
    let mut exact = backend("exact", "primary", 1, true, false);
    let mut wild = backend("wild", "primary", 1, true, false);
    for (backend, key, upstream) in [
        (&mut exact, "gpt-4o", "pinned"),
        (&mut wild, "gpt-*", "gpt-*"),
    ] {
        let record = &mut Arc::get_mut(backend).unwrap().record;
        record.model_mappings = [(
            crate::domain::CanonicalModel::new(key),
            crate::domain::ModelMapping {
                upstream_model: UpstreamModel::new(upstream),
            },
        )]
        .into();
    }
    let table = RouteTable::build(
        &[exact, wild],
        &[pool("primary", 0)],
        [(
            "latest".to_owned(),
            crate::domain::CanonicalModel::new("gpt-4o"),
        )],
        &OBSERVER,
    );
    // Looking a name up (`serves`) says what `route` would find, and builds nothing: the
    // names it is asked for are not kept.
    for (name, served) in [
        ("gpt-4.1", true),
        ("gpt-4o", true),
        ("latest", true),
        ("claude", false),
    ] {
        assert_eq!(table.serves(name), served, "{name}");
    }
    assert_eq!(table.resolved_count(), 0, "nothing kept by a lookup");
    let first = table.route("gpt-4.1").unwrap();
    let again = table.route("gpt-4.1").unwrap();
    assert!(
        Arc::ptr_eq(&first.route, &again.route),
        "built once, then kept"
    );
    assert_eq!(first.route.members().count(), 1);
    assert_eq!(drain(&first.route)[0].upstream_model.as_str(), "gpt-4.1");
    // The exact mapping wins for its name: the wildcard backend does not join.
    let exact_route = table.route("gpt-4o").unwrap();
    let names: Vec<String> = drain(&exact_route.route)
        .iter()
        .map(|t| t.backend.record.name.clone())
        .collect();
    assert_eq!(names, ["exact"]);
    let alias = table.route("latest").unwrap();
    assert_eq!(alias.canonical.as_str(), "gpt-4o");
    assert!(Arc::ptr_eq(&alias.route, &exact_route.route));
    assert!(table.route("claude").is_none());
    // Once built (or found missing), the kept answer is what a lookup says.
    assert!(table.serves("gpt-4.1") && !table.serves("claude"));
    // Series are labelled by the mapping that matched: a made-up name is not a label.
    assert_eq!(first.route.telemetry.model(), "gpt-*");
    assert_eq!(drain(&first.route)[0].telemetry.model(), "gpt-*");
    assert_eq!(exact_route.route.telemetry.model(), "gpt-4o");
}

#[test]
fn a_preferred_backend_goes_first_in_its_pool_only_while_ready() {
    let backends = vec![
        backend("p1", "primary", 1, true, false),
        backend("p2", "primary", 1, true, false),
        backend("p3", "primary", 1, true, true),
        backend("f1", "fallback", 1, true, false),
    ];
    let route = route_for(&backends, &[pool("primary", 0), pool("fallback", 1)]).unwrap();
    let now = Instant::now();
    for _ in 0..4 {
        let mut selection = Selection::new(&route, any_api);
        selection.prefer(backends[1].id().clone());
        assert_eq!(selection.next(now).unwrap().backend.record.name, "p2");
    }
    // A cooling preference is skipped; a fallback preference never jumps the primary pool.
    for preferred in [2, 3] {
        let mut selection = Selection::new(&route, any_api);
        selection.prefer(backends[preferred].id().clone());
        let first = selection.next(now).unwrap();
        assert!(["p1", "p2"].contains(&first.backend.record.name.as_str()));
    }
}
