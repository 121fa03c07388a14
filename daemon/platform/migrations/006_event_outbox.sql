-- The event outbox: every state change that partners may hear about, written in the same
-- transaction as the change (daemon/platform/outbox.py). Append-only. The outbound
-- webhook dispatcher fans each event out to matching endpoints; the payment and task
-- histories stay in their own tables, this is what is announced.
CREATE TABLE events (
    id          text PRIMARY KEY CHECK (id ~ '^evt_[0-9a-f]{32}$'),
    -- Commit-independent order for listing; ids are random.
    seq         bigserial UNIQUE,
    type        text NOT NULL CHECK (type ~ '^[a-z_]+(\.[a-z_]+)+$'),
    occurred_at timestamptz NOT NULL DEFAULT now(),
    -- What the event is about ("payment:pay_…", "task:42"), for filtering and the console.
    subject     text,
    data        jsonb NOT NULL CHECK (jsonb_typeof(data) = 'object')
);
CREATE INDEX events_type_seq ON events (type, seq);
CREATE INDEX events_subject ON events (subject) WHERE subject IS NOT NULL;
CREATE INDEX events_occurred_at ON events (occurred_at);
