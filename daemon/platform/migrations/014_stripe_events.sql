-- Stripe webhook events as received (daemon/payments/stripe_events.py): one row per Stripe
-- event id, so a redelivery is recognised and never processed twice. The body is kept as
-- Stripe signed it (parsed); processing re-fetches the object from Stripe anyway, because
-- events arrive out of order and their snapshot may be stale.
CREATE TABLE stripe_events (
    event_id      text PRIMARY KEY CHECK (event_id <> ''),
    type          text NOT NULL,
    -- The object the event is about (data.object): "payment_intent" / "pi_…", etc.
    object_type   text,
    object_id     text,
    livemode      boolean NOT NULL DEFAULT false,
    stripe_created timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    deliveries    integer NOT NULL DEFAULT 1,
    -- queued: a message is on the stripe_events queue; processed: its object was re-read
    -- and applied (or there was nothing to do: outcome says); failed: gave up (outcome says).
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'processed', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    processed_at  timestamptz,
    outcome       text,
    body          jsonb NOT NULL CHECK (jsonb_typeof(body) = 'object')
);
CREATE INDEX stripe_events_object ON stripe_events (object_id) WHERE object_id IS NOT NULL;
CREATE INDEX stripe_events_received_at ON stripe_events (received_at);
