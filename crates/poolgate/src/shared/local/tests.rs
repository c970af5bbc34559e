use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{advance, Instant};

use super::{Authority, LocalShared, SharedCooldown};
use crate::cooldown::{CooldownPolicy, CooldownReason, Outcome};
use crate::domain::BackendId;
use crate::shared::{
    Admit, AdmitRequest, BucketClaim, BucketKey, CooldownView, Precheck, Refusal, SharedRuntime,
};

fn backend() -> BackendId {
    BackendId::new("b-1")
}

fn request(claims: Vec<BucketClaim>) -> AdmitRequest {
    AdmitRequest {
        backend: backend(),
        claims,
        probe_ttl: Duration::from_secs(30),
    }
}

fn policy() -> CooldownPolicy {
    CooldownPolicy {
        base: Duration::from_secs(5),
        max: Duration::from_secs(600),
        jitter: 0.0,
        error_cooldown: Duration::from_secs(5),
    }
}

fn admit(local: &LocalShared, claims: &[BucketClaim]) -> Admit {
    local.admit_at(&request(claims.to_vec()), Instant::now())
}

fn is_admitted(answer: &Admit) -> bool {
    matches!(answer, Admit::Admitted(_))
}

#[tokio::test(start_paused = true)]
async fn all_or_nothing_across_buckets_with_costs() {
    let local = LocalShared::new("i");
    let small = BucketClaim::one(BucketKey::new("test", "small"), 3);
    let big = BucketClaim {
        cost: 5,
        ..BucketClaim::one(BucketKey::new("test", "big"), 12)
    };
    let both = [small.clone(), big.clone()];
    assert!(is_admitted(&admit(&local, &both)));
    assert!(is_admitted(&admit(&local, &both)));
    // `big` has 2 of the 5 tokens: refused, and `small` (checked first) keeps its last token.
    // 3 more tokens at 12/min: 15 s.
    let refused = admit(&local, &both);
    assert_eq!(
        refused,
        Admit::Refused(Refusal::Limited {
            key: big.key.clone(),
            retry_after: Duration::from_secs(15)
        })
    );
    assert!(is_admitted(&admit(&local, std::slice::from_ref(&small))));
    assert!(!is_admitted(&admit(&local, std::slice::from_ref(&small))));
    // `big` kept its 2 tokens too.
    let two = BucketClaim {
        cost: 2,
        ..big.clone()
    };
    assert!(is_admitted(&admit(&local, std::slice::from_ref(&two))));
    assert!(!is_admitted(&admit(&local, &[two])));

    // A refund gives the tokens back, never above capacity.
    for _ in 0..4 {
        local.refund(std::slice::from_ref(&small)).await;
    }
    let granted = (0..10)
        .filter(|_| is_admitted(&admit(&local, std::slice::from_ref(&small))))
        .count();
    assert_eq!(granted, 3);
}

#[tokio::test(start_paused = true)]
async fn buckets_hold_this_instances_share_of_the_limit() {
    let instances = Arc::new(AtomicU32::new(3));
    let local = LocalShared::with_instances("i".into(), Arc::clone(&instances));
    let claim = BucketClaim::one(BucketKey::new("test", "share"), 60);
    let granted = (0..100)
        .filter(|_| is_admitted(&admit(&local, std::slice::from_ref(&claim))))
        .count();
    assert_eq!(granted, 20, "60 / 3 instances");
    // The share refills at its own rate: 20/min, one token per 3 s.
    advance(Duration::from_secs(3)).await;
    assert!(is_admitted(&admit(&local, std::slice::from_ref(&claim))));
    assert!(!is_admitted(&admit(&local, std::slice::from_ref(&claim))));

    // A limit below the instance count still admits one per instance and minute.
    let tiny = BucketClaim::one(BucketKey::new("test", "tiny"), 2);
    assert!(is_admitted(&admit(&local, std::slice::from_ref(&tiny))));
    assert!(!is_admitted(&admit(&local, &[tiny])));
}

#[tokio::test(start_paused = true)]
async fn a_seeded_bucket_starts_with_the_tokens_left() {
    let local = LocalShared::with_instances("i".into(), Arc::new(AtomicU32::new(2)));
    let claim = BucketClaim::one(BucketKey::new("test", "seeded"), 100);
    local.seed_bucket(&claim, 7, Instant::now());
    // Seeding an existing bucket changes nothing.
    local.seed_bucket(&claim, 50, Instant::now());
    let granted = (0..100)
        .filter(|_| is_admitted(&admit(&local, std::slice::from_ref(&claim))))
        .count();
    assert_eq!(granted, 7);
    local.clear_buckets();
    local.seed_bucket(&claim, u64::MAX, Instant::now());
    let granted = (0..100)
        .filter(|_| is_admitted(&admit(&local, std::slice::from_ref(&claim))))
        .count();
    assert_eq!(granted, 50, "at most one share (100 / 2)");
}

#[tokio::test(start_paused = true)]
async fn cooldown_probe_and_outcomes_follow_the_state_machine() {
    let local = LocalShared::new("i");
    let id = backend();
    assert_eq!(local.precheck(&id, false, Instant::now()), Precheck::Ready);
    assert_eq!(
        local.precheck(&id, true, Instant::now()),
        Precheck::NeedsAdmit
    );

    let view = local
        .report(
            &id,
            Outcome::RateLimited { retry_after: None },
            None,
            &policy(),
        )
        .await;
    assert_eq!(view.level, 1);
    assert_eq!(view.reason, Some(CooldownReason::RateLimited));
    let until = view.until.unwrap();
    assert_eq!(until, Instant::now() + Duration::from_secs(5));
    // Same episode: a second 429 does not raise the level.
    let view = local
        .report(
            &id,
            Outcome::RateLimited { retry_after: None },
            None,
            &policy(),
        )
        .await;
    assert_eq!(view.level, 1);
    assert_eq!(
        local.precheck(&id, false, Instant::now()),
        Precheck::Refused(Refusal::Cooling { until })
    );

    advance(Duration::from_secs(5)).await;
    assert_eq!(
        local.precheck(&id, false, Instant::now()),
        Precheck::NeedsAdmit
    );
    let probe = admit(&local, &[]);
    assert!(matches!(&probe, Admit::Admitted(admitted) if admitted.probe.is_some()));
    assert!(matches!(
        admit(&local, &[]),
        Admit::Refused(Refusal::ProbeInFlight { .. })
    ));
    let view = local.report(&id, Outcome::Success, None, &policy()).await;
    assert_eq!(view, CooldownView::default());
    assert!(matches!(&admit(&local, &[]), Admit::Admitted(a) if a.probe.is_none()));

    local
        .report(&id, Outcome::AuthFailed, None, &policy())
        .await;
    assert_eq!(
        local.precheck(&id, false, Instant::now()),
        Precheck::Refused(Refusal::Broken)
    );
    local.reset(&id).await;
    assert_eq!(local.precheck(&id, false, Instant::now()), Precheck::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_probe_refused_by_a_bucket_frees_the_probe_slot() {
    let local = LocalShared::new("i");
    let id = backend();
    let claim = BucketClaim::one(BucketKey::new("test", "one"), 1);
    local
        .report(&id, Outcome::ServerError, None, &policy())
        .await;
    assert!(matches!(
        admit(&local, std::slice::from_ref(&claim)),
        Admit::Refused(Refusal::Cooling { .. })
    ));
    advance(Duration::from_secs(5)).await;
    // Take the only token elsewhere, then the probe attempt is refused by the bucket...
    let other = AdmitRequest {
        backend: BackendId::new("b-2"),
        ..request(vec![claim.clone()])
    };
    assert!(is_admitted(&local.admit_at(&other, Instant::now())));
    assert!(matches!(
        admit(&local, std::slice::from_ref(&claim)),
        Admit::Refused(Refusal::Limited { .. })
    ));
    // ...and the slot is free for the next attempt.
    assert!(matches!(&admit(&local, &[]), Admit::Admitted(a) if a.probe.is_some()));
}

#[tokio::test(start_paused = true)]
async fn a_mirror_is_trusted_only_when_synced_and_fed() {
    let local = LocalShared::new("i");
    let id = backend();
    let fed = Authority::Mirror {
        feed_connected: true,
    };
    let unfed = Authority::Mirror {
        feed_connected: false,
    };
    assert_eq!(
        local.precheck_with(&id, false, Instant::now(), fed),
        Precheck::NeedsAdmit,
        "never synced"
    );
    let healthy = SharedCooldown {
        view: CooldownView::default(),
        seq: 0,
    };
    local.apply_shared(&id, &healthy, false);
    assert_eq!(
        local.precheck_with(&id, false, Instant::now(), fed),
        Precheck::Ready
    );
    assert_eq!(
        local.precheck_with(&id, false, Instant::now(), unfed),
        Precheck::NeedsAdmit
    );

    // Newer states replace older ones, never the other way round.
    let until = Instant::now() + Duration::from_secs(9);
    let cooling = SharedCooldown {
        view: CooldownView {
            until: Some(until),
            level: 2,
            broken: false,
            reason: Some(CooldownReason::RateLimited),
        },
        seq: 5,
    };
    local.apply_shared(&id, &cooling, false);
    local.apply_shared(
        &id,
        &SharedCooldown {
            seq: 4,
            ..healthy.clone()
        },
        false,
    );
    assert_eq!(local.view(&id), cooling.view);
    assert_eq!(
        local.precheck_with(&id, false, Instant::now(), fed),
        Precheck::Refused(Refusal::Cooling { until })
    );

    // A local change (degraded mode) is kept until a forced sync replaces it.
    local.report_at(&id, Outcome::AuthFailed, &policy(), Instant::now());
    assert_eq!(local.local_changes().len(), 1);
    local.apply_shared(
        &id,
        &SharedCooldown {
            seq: 9,
            ..healthy.clone()
        },
        false,
    );
    assert!(
        local.view(&id).broken,
        "not overwritten by a routine update"
    );
    local.apply_shared(&id, &SharedCooldown { seq: 9, ..healthy }, true);
    assert!(!local.view(&id).broken);
    assert!(local.local_changes().is_empty());
}

#[tokio::test]
async fn in_flight_counts_each_attempt_until_its_guard_drops() {
    let local = LocalShared::new("i");
    let id = backend();
    let counter = local.in_flight_counter(&id);
    let first = counter.enter();
    // The same counter on every call: a second handle counts into it.
    let second = local.in_flight_counter(&id).enter();
    assert_eq!(local.in_flight(&id).await, Some(2));
    assert_eq!(local.in_flight(&BackendId::new("other")).await, Some(0));
    drop(first);
    assert_eq!(local.in_flight(&id).await, Some(1));
    drop(second);
    assert_eq!(counter.get(), 0);
    assert!(local
        .in_flight_counts()
        .contains(&(BackendId::new("b-1"), 0)));
    // Still held (by the backend's runtime, here `counter`): kept and reported again.
    assert!(local.in_flight_counts().contains(&(id.clone(), 0)));
    // Its holder gone, with no attempt in flight: reported once more as 0, then forgotten.
    drop(counter);
    assert_eq!(local.in_flight_counts(), vec![(id.clone(), 0)]);
    assert!(local.in_flight_counts().is_empty());
}

/// Issue #11: a TPM claim costs the request's estimated tokens at once (no per-token loop), a
/// refund gives back the unused part, an extra charge takes more (down to empty, no debt here).
#[tokio::test(start_paused = true)]
async fn tpm_claims_take_refund_and_charge_many_tokens_at_once() {
    let local = LocalShared::new("i");
    let claim = |cost: u64| BucketClaim {
        cost,
        ..BucketClaim::one(BucketKey::new("key-tpm", "k"), 6_000_000)
    };
    assert!(is_admitted(&admit(&local, &[claim(5_000_000)])));
    // 1 000 000 left: 1 500 000 more need 500 000 at 100 000 a second = 5 s.
    assert_eq!(
        admit(&local, &[claim(1_500_000)]),
        Admit::Refused(Refusal::Limited {
            key: BucketKey::new("key-tpm", "k"),
            retry_after: Duration::from_secs(5),
        })
    );
    // The request used 4 500 000 of its 5 000 000: 500 000 back, so 1 500 000 fits now.
    local.refund(&[claim(500_000)]).await;
    assert!(is_admitted(&admit(&local, &[claim(1_500_000)])));
    // Used 2 000 000 more than reserved: the bucket (empty now) stays at empty, and a one-token
    // claim waits for the refill (10 µs per token at 6 000 000 a minute).
    local.charge(&[claim(2_000_000)]).await;
    assert!(!is_admitted(&admit(&local, &[claim(1)])));
    advance(Duration::from_millis(1)).await;
    assert!(is_admitted(&admit(&local, &[claim(1)])));
}
