-- Payments (daemon/payments/): the payment and refund rows, their append-only history,
-- the API's idempotency keys, and the mock provider's own ledger.
-- Money is integer minor units of `currency` (ISO 4217, upper case; the exponent is
-- daemon/payments/currency.py's); the state machines are daemon/payments/states.py's.

CREATE TABLE payments (
    id                  text PRIMARY KEY CHECK (id ~ '^pay_[0-9a-f]{24}$'),
    -- Commit-independent order for cursor pagination; ids are random.
    seq                 bigserial UNIQUE,
    status              text NOT NULL DEFAULT 'created' CHECK (status IN (
                            'created', 'pending', 'requires_action', 'processing',
                            'requires_capture', 'unknown',
                            'succeeded', 'failed', 'canceled', 'expired')),
    amount              bigint NOT NULL CHECK (amount > 0),
    currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- Captured by the provider; refunds (pending + succeeded) reserve part of it.
    amount_captured     bigint NOT NULL DEFAULT 0 CHECK (amount_captured BETWEEN 0 AND amount),
    amount_refunded     bigint NOT NULL DEFAULT 0
                            CHECK (amount_refunded >= 0 AND amount_refunded <= amount_captured),
    method              text NOT NULL
                            CHECK (method IN ('intent', 'hosted_checkout', 'payment_link')),
    kind                text NOT NULL CHECK (kind IN ('one_time', 'recurring')),
    "interval"          text CHECK ("interval" IN ('day', 'week', 'month', 'year')),
    capture_method      text NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    description         text CHECK (length(description) <= 1000),
    customer            text CHECK (length(customer) <= 200),
    metadata            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    status_callback_url text CHECK (length(status_callback_url) <= 2000),
    uisp_client_id      bigint CHECK (uisp_client_id > 0),
    -- Who asked: the API key's id ("admin" for the admin token, "sql:<role>" for the SQL
    -- entry point). Idempotency keys are scoped by it too.
    created_by          text NOT NULL,
    -- The provider, fixed at creation (a config change never moves a payment).
    provider            text NOT NULL CHECK (provider IN ('mock', 'stripe')),
    provider_object     text CHECK (provider_object IN
                            ('payment_intent', 'checkout_session', 'payment_link')),
    provider_ref        text,
    provider_status     text,  -- the provider's own word, as last seen
    provider_intent_id  text,  -- a Checkout Session's PaymentIntent, once there is one
    provider_subscription_id text,
    -- For the browser: a Stripe client secret only lets the holder confirm this one
    -- payment with the publishable key; it is handed to the customer, so it is stored
    -- in clear (the SQL entry point returns it) and never logged.
    client_secret       text,
    hosted_url          text,
    failure_code        text,
    failure_message     text,
    -- Set (committed) just before the first provider create: a payment never attempted
    -- can be cancelled without asking the provider; one attempted is re-created with the
    -- same idempotency key, so a crash in between makes one provider object, not two.
    create_attempted_at timestamptz,
    cancel_requested_at timestamptz,
    capture_requested_at timestamptz,
    capture_amount      bigint CHECK (capture_amount > 0 AND capture_amount <= amount),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- A pending payment past this is cancelled at the provider and marked expired.
    expires_at          timestamptz NOT NULL,
    -- Reconcile: when to re-fetch next (bounded backoff), how often it has.
    reconcile_at        timestamptz,
    reconcile_attempts  integer NOT NULL DEFAULT 0,
    finished_at         timestamptz,
    -- A succeeded payment with uisp_client_id, recorded in UISP (payments.uisp_record_payments).
    uisp_payment_id     bigint,
    uisp_recorded_at    timestamptz,
    uisp_error          text,
    CHECK ((kind = 'recurring') = ("interval" IS NOT NULL)),
    CHECK (provider_ref IS NULL OR provider_object IS NOT NULL)
);
CREATE UNIQUE INDEX payments_provider_ref ON payments (provider, provider_ref)
    WHERE provider_ref IS NOT NULL;
CREATE INDEX payments_provider_intent ON payments (provider, provider_intent_id)
    WHERE provider_intent_id IS NOT NULL;
CREATE INDEX payments_status_seq ON payments (status, seq);
CREATE INDEX payments_customer_seq ON payments (customer, seq) WHERE customer IS NOT NULL;
CREATE INDEX payments_created_at ON payments (created_at);
CREATE INDEX payments_reconcile ON payments (reconcile_at)
    WHERE status IN ('pending', 'requires_action', 'processing', 'requires_capture', 'unknown');
CREATE INDEX payments_expiry ON payments (expires_at)
    WHERE status IN ('created', 'pending', 'requires_action');

CREATE TABLE refunds (
    id              text PRIMARY KEY CHECK (id ~ '^rf_[0-9a-f]{24}$'),
    seq             bigserial UNIQUE,
    payment_id      text NOT NULL REFERENCES payments (id),
    status          text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'succeeded', 'failed')),
    amount          bigint NOT NULL CHECK (amount > 0),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    reason          text CHECK (length(reason) <= 500),
    created_by      text NOT NULL,
    provider_ref    text,
    provider_status text,
    failure_reason  text,
    attempted_at    timestamptz,  -- like payments.create_attempted_at
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX refunds_payment ON refunds (payment_id, seq);
CREATE INDEX refunds_pending ON refunds (updated_at) WHERE status = 'pending';

-- Every change to a payment or one of its refunds, in the transaction that made it.
-- Append-only: the trigger below refuses updates and deletes.
CREATE TABLE payment_events (
    id          bigserial PRIMARY KEY,
    payment_id  text NOT NULL REFERENCES payments (id),
    refund_id   text REFERENCES refunds (id),
    at          timestamptz NOT NULL DEFAULT now(),
    -- "transition" (from_status → to_status), or what happened without a state change
    -- ("provider_created", "capture_requested", "cancel_requested", "reconcile" …).
    kind        text NOT NULL,
    from_status text,
    to_status   text,
    actor       text NOT NULL,  -- "api:<key id>", "processor", "reconcile", "expire", "provider"
    detail      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object')
);
CREATE INDEX payment_events_payment ON payment_events (payment_id, id);

CREATE FUNCTION payment_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'payment_events is append-only';
END $$;
CREATE TRIGGER payment_events_append_only BEFORE UPDATE OR DELETE ON payment_events
    FOR EACH ROW EXECUTE FUNCTION payment_events_append_only();

-- Idempotency-Key, modelled on Stripe's: scoped per caller (an API key's id), kept 24 h.
-- `fingerprint` is the SHA-256 of the operation and its canonical parameters: the same
-- key with other parameters is refused. A "running" row whose lock is older than the
-- recovery window belongs to a request that died; the next repeat takes it over (its
-- work commits together with the key's "finished", so a dead one left nothing behind).
CREATE TABLE idempotency_keys (
    scope           text NOT NULL,
    key             text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    operation       text NOT NULL,  -- "payments.create", "payments.refund" …
    fingerprint     bytea NOT NULL CHECK (length(fingerprint) = 32),
    status          text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'finished')),
    locked_at       timestamptz,
    response_status integer,
    response_body   jsonb,
    resource_id     text,  -- what the request made (pay_…, rf_…)
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    expires_at      timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (scope, key),
    CHECK ((status = 'finished') = (response_status IS NOT NULL))
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

-- The mock provider's ledger (daemon/payments/mock_provider.py): it stands in for an
-- external party, so its objects outlive a daemon restart the way Stripe's do, and it
-- counts creates per idempotency key so tests can prove a retry made no second object.
CREATE TABLE mock_provider_objects (
    id              text PRIMARY KEY,  -- mock_pi_…
    idempotency_key text NOT NULL UNIQUE,
    kind            text NOT NULL,
    payment_id      text,
    status          text NOT NULL,
    amount          bigint NOT NULL,
    currency        text NOT NULL,
    capture_method  text NOT NULL,
    amount_captured bigint NOT NULL DEFAULT 0,
    client_secret   text NOT NULL,
    behaviour       text NOT NULL,
    -- "processing" settles to succeeded at this time (the mock's "for a while").
    settles_at      timestamptz,
    create_calls    integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE mock_provider_refunds (
    id              text PRIMARY KEY,  -- mock_re_…
    idempotency_key text NOT NULL UNIQUE,
    object_id       text NOT NULL REFERENCES mock_provider_objects (id),
    amount          bigint NOT NULL,
    status          text NOT NULL,
    failure_reason  text,
    create_calls    integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now()
);
