use tokio::time::advance;

use super::*;

fn observe(state: &UpstreamLimitState, pairs: &[(&'static str, &str)]) -> Moment {
    let now = test_moment();
    state.observe(UpstreamLimits::from_headers(&test_headers(pairs), now).unwrap());
    now
}

#[tokio::test(start_paused = true)]
async fn no_requests_left_blocks_until_the_reset() {
    let state = UpstreamLimitState::default();
    assert_eq!(
        state.ready_at(100, Instant::now()),
        None,
        "nothing learned yet"
    );
    assert_eq!(state.view(Instant::now()), None);
    let seen = observe(
        &state,
        &[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "2s"),
            ("x-ratelimit-remaining-tokens", "5000"),
        ],
    );
    let reset = seen.instant + Duration::from_secs(2);
    assert_eq!(state.ready_at(1, Instant::now()), Some(reset));
    advance(Duration::from_millis(1_999)).await;
    assert_eq!(state.ready_at(1, Instant::now()), Some(reset));
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        state.ready_at(1, Instant::now()),
        None,
        "the reset has passed"
    );
}

#[tokio::test(start_paused = true)]
async fn too_few_tokens_left_for_the_prompt_blocks_until_the_token_reset() {
    let state = UpstreamLimitState::default();
    let seen = observe(
        &state,
        &[
            ("x-ratelimit-limit-tokens", "1000"),
            ("x-ratelimit-remaining-tokens", "100"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("x-ratelimit-remaining-requests", "50"),
            ("x-ratelimit-reset-requests", "1s"),
        ],
    );
    let token_reset = seen.instant + Duration::from_secs(360);
    assert_eq!(state.ready_at(100, Instant::now()), None);
    assert_eq!(state.ready_at(101, Instant::now()), Some(token_reset));
    // A prompt larger than the whole window is held to the window's limit, not forever.
    assert_eq!(state.ready_at(50_000, Instant::now()), Some(token_reset));
    // Sent prompts count down the tokens left.
    state.note_sent(60);
    assert_eq!(state.ready_at(41, Instant::now()), Some(token_reset));
    assert_eq!(state.ready_at(40, Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn a_burst_after_a_few_left_sends_only_those() {
    let state = UpstreamLimitState::default();
    let seen = observe(
        &state,
        &[
            ("anthropic-ratelimit-requests-remaining", "3"),
            ("anthropic-ratelimit-requests-reset", "2026-11-29T10:00:20Z"),
        ],
    );
    let mut sent = 0;
    while state.ready_at(10, Instant::now()).is_none() {
        state.note_sent(10);
        sent += 1;
        assert!(sent <= 3);
    }
    assert_eq!(sent, 3);
    assert_eq!(
        state.ready_at(10, Instant::now()),
        Some(seen.instant + Duration::from_secs(20))
    );
    // The next answer's figures replace the counted-down ones.
    observe(
        &state,
        &[
            ("anthropic-ratelimit-requests-remaining", "40"),
            ("anthropic-ratelimit-requests-reset", "2026-11-29T10:00:20Z"),
        ],
    );
    assert_eq!(state.ready_at(10, Instant::now()), None);
    assert_eq!(state.view(Instant::now()).unwrap().sent_since, 0);
}

#[tokio::test(start_paused = true)]
async fn zero_left_without_a_reset_blocks_briefly_and_older_answers_are_ignored() {
    let state = UpstreamLimitState::default();
    let older = test_moment();
    advance(Duration::from_millis(10)).await;
    let seen = observe(
        &state,
        &[("anthropic-ratelimit-output-tokens-remaining", "0")],
    );
    assert_eq!(
        state.ready_at(1, Instant::now()),
        Some(seen.instant + FALLBACK_RESET)
    );
    // An answer received before the held one (a slow response racing a fast one) is ignored.
    let headers = test_headers(&[("anthropic-ratelimit-output-tokens-remaining", "5000")]);
    state.observe(UpstreamLimits::from_headers(&headers, older).unwrap());
    assert!(state.ready_at(1, Instant::now()).is_some());
    advance(FALLBACK_RESET).await;
    assert_eq!(state.ready_at(1, Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn the_view_shows_the_figures_and_the_block() {
    let state = UpstreamLimitState::default();
    observe(
        &state,
        &[
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "1"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-ratelimit-remaining-tokens", "29000"),
            ("x-ratelimit-reset-tokens", "2s"),
        ],
    );
    state.note_sent(500);
    let view = state.view(Instant::now()).unwrap();
    assert_eq!(
        serde_json::to_value(view).unwrap(),
        serde_json::json!({
            "observed_at": "2026-11-29T10:00:00Z",
            "requests": {"limit": 500, "remaining": 1, "reset_at": "2026-11-29T10:00:00.120Z"},
            "tokens": {"limit": 30000, "remaining": 29000, "reset_at": "2026-11-29T10:00:02Z"},
            "input_tokens": null,
            "output_tokens": null,
            "sent_since": 1,
            "blocked_until": "2026-11-29T10:00:00.120Z"
        })
    );
    advance(Duration::from_millis(120)).await;
    assert_eq!(state.view(Instant::now()).unwrap().blocked_until, None);
}
