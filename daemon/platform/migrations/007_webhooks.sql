-- Outbound webhooks (daemon/webhooks/): endpoints partners register, their signing
-- secrets (encrypted with the keyring), one delivery per event x endpoint with its durable
-- next-attempt time, and the log of every attempt. The dispatcher
-- (daemon/actors/webhook_dispatcher.py) sleeps until the earliest next_attempt_at; the
-- event outbox (006) feeds the fan-out.

CREATE TABLE webhook_endpoints (
    id               text PRIMARY KEY CHECK (id ~ '^ep_[0-9a-f]{24}$'),
    url              text NOT NULL CHECK (url ~* '^https?://[^\s]+$' AND length(url) <= 2048),
    description      text NOT NULL DEFAULT '' CHECK (length(description) <= 1000),
    -- Event-type filters: exact ("payment.succeeded"), a prefix wildcard ("payment.*"),
    -- or "*" for every type. At least one (an endpoint that wants nothing is disabled).
    event_types      text[] NOT NULL DEFAULT '{*}'
                     CHECK (cardinality(event_types) > 0
                            AND array_position(event_types, NULL) IS NULL),
    enabled          boolean NOT NULL DEFAULT true,
    -- Why and when the endpoint was disabled ("gone": 410; "failing": failed for
    -- webhooks.disable_after_seconds; "operator"), cleared when it is enabled again.
    disabled_reason  text,
    disabled_at      timestamptz,
    -- Optional per-endpoint limits; NULL: webhooks.default_endpoint_concurrency, no rate.
    rate_limit_per_second integer CHECK (rate_limit_per_second > 0),
    max_concurrency  integer CHECK (max_concurrency > 0),
    -- Also send "X-Webhook-Signature: <hex HMAC-SHA256(body)>" (the system we replace).
    legacy_signature boolean NOT NULL DEFAULT false,
    -- Start of the current run of failed attempts; NULL after any success. An endpoint
    -- failing for longer than webhooks.disable_after_seconds is disabled.
    failing_since    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_enabled ON webhook_endpoints (id) WHERE enabled;

-- Signing secrets: several per endpoint while a rotation overlaps. Every secret whose
-- expires_at is NULL or in the future signs (one webhook-signature entry each).
-- endpoint_id NULL: the daemon-wide secrets that sign one-off callbacks (a payment's
-- status_callback_url) that name no endpoint.
CREATE TABLE webhook_secrets (
    id          bigserial PRIMARY KEY,
    endpoint_id text REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    -- Keyring token of "whsec_<base64>" (ENCRYPTED_COLUMNS; aad binds it to this row id).
    secret_enc  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);
CREATE INDEX webhook_secrets_endpoint ON webhook_secrets (endpoint_id, id);

-- One delivery per event and target. The target is an endpoint (endpoint_id), or a
-- one-off callback URL (target_url, endpoint_id NULL) signed with the secrets of
-- signing_endpoint_id, or with the daemon-wide callback secrets when that is NULL.
CREATE TABLE webhook_deliveries (
    id                  bigserial PRIMARY KEY,
    event_id            text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id         text REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    target_url          text CHECK (target_url ~* '^https?://[^\s]+$' AND length(target_url) <= 2048),
    signing_endpoint_id text REFERENCES webhook_endpoints (id) ON DELETE SET NULL,
    -- pending: waits for next_attempt_at (or is being sent, under a lease);
    -- succeeded: a 2xx answer; failed: retries exhausted, endpoint gone/disabled or the
    -- target refused (recover/retry puts it back to pending).
    state               text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'succeeded', 'failed')),
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- The durable timer: when the next attempt is due. NULL once the delivery is final.
    next_attempt_at     timestamptz DEFAULT now(),
    -- A dispatcher holds the delivery until then while it sends; a crash mid-send lets
    -- it be claimed again after the lease, never earlier.
    leased_until        timestamptz,
    last_attempt_at     timestamptz,
    last_status_code    integer,
    last_error          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    CHECK ((endpoint_id IS NULL) <> (target_url IS NULL)),
    CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL))
);
CREATE UNIQUE INDEX webhook_deliveries_event_endpoint
    ON webhook_deliveries (event_id, endpoint_id) WHERE endpoint_id IS NOT NULL;
CREATE UNIQUE INDEX webhook_deliveries_event_target
    ON webhook_deliveries (event_id, target_url) WHERE endpoint_id IS NULL;
-- The dispatcher's timer and claim: the earliest due pending deliveries.
CREATE INDEX webhook_deliveries_due
    ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
-- Per target (an endpoint, or a callback URL): its oldest due deliveries (the claim; a
-- sender that just finished takes the next one of the same target).
CREATE INDEX webhook_deliveries_target_due
    ON webhook_deliveries (coalesce(endpoint_id, target_url), next_attempt_at)
    WHERE state = 'pending';
-- Due callbacks, apart from endpoint deliveries (a dead endpoint's backlog is not scanned).
CREATE INDEX webhook_deliveries_callbacks_due
    ON webhook_deliveries (next_attempt_at) WHERE state = 'pending' AND endpoint_id IS NULL;
-- What is being sent right now (the claim counts it per target): a handful of rows.
CREATE INDEX webhook_deliveries_leased
    ON webhook_deliveries (leased_until) WHERE state = 'pending' AND leased_until IS NOT NULL;
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_state ON webhook_deliveries (state, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

-- Every attempt, as sent and as answered. Pruned after retention.keep_days
-- (wiring.retention_targets); the delivery row keeps the last outcome.
CREATE TABLE webhook_attempts (
    id            bigserial PRIMARY KEY,
    delivery_id   bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       integer NOT NULL CHECK (attempt >= 1),
    started_at    timestamptz NOT NULL,
    duration_ms   integer NOT NULL CHECK (duration_ms >= 0),
    url           text NOT NULL,
    -- The address connected to (the one the SSRF check passed), when one was.
    address       text,
    status_code   integer,
    error         text,
    -- At most 64 KB of the answer, read with a size and time cap.
    response_body text,
    response_truncated boolean NOT NULL DEFAULT false
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
CREATE INDEX webhook_attempts_started_at ON webhook_attempts (started_at);
