-- Messages that exhausted their deliveries without an outcome (poison), kept until
-- replayed: listed by the CLI and the admin API.
CREATE TABLE failed_messages (
    id           bigserial PRIMARY KEY,
    queue        text NOT NULL,
    msg_id       bigint NOT NULL,
    message      jsonb NOT NULL,
    deliveries   integer NOT NULL,
    reason       text NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz
);
CREATE INDEX failed_messages_open ON failed_messages (queue, id) WHERE replayed_at IS NULL;

-- A webhook's processing state: failed ones are re-queued by a redelivery or a replay.
ALTER TABLE uisp_webhooks
    ADD COLUMN state text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'processed', 'failed')),
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN replays integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    -- When it was last (re)queued: the retry window for a UISP outage runs from here.
    ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now();
UPDATE uisp_webhooks SET queued_at = received_at;
UPDATE uisp_webhooks SET state = CASE
    WHEN processed_at IS NULL THEN 'queued'
    WHEN outcome LIKE 'error:%' THEN 'failed'
    ELSE 'processed' END;
CREATE INDEX uisp_webhooks_state ON uisp_webhooks (state, received_at);
CREATE INDEX uisp_webhooks_received ON uisp_webhooks (received_at);

-- Retention deletes old webhooks; the tasks they caused keep their own record.
ALTER TABLE reconnect_tasks DROP CONSTRAINT reconnect_tasks_webhook_uuid_fkey,
    ADD CONSTRAINT reconnect_tasks_webhook_uuid_fkey FOREIGN KEY (webhook_uuid)
        REFERENCES uisp_webhooks (uuid) ON DELETE SET NULL;
CREATE INDEX reconnect_tasks_webhook ON reconnect_tasks (webhook_uuid);
CREATE INDEX task_events_at ON task_events (at);

-- Periodic jobs: the next run time lives here, so it survives a restart, and the lease
-- (lease_until) keeps a job from running twice at once, across processes too.
CREATE TABLE scheduled_jobs (
    name              text PRIMARY KEY,
    interval_seconds  double precision NOT NULL CHECK (interval_seconds > 0),
    next_run_at       timestamptz NOT NULL DEFAULT now(),
    lease_until       timestamptz,
    lease_owner       text,  -- who holds the lease: extend and finish are conditional on it
    last_started_at   timestamptz,
    last_finished_at  timestamptz,
    last_outcome      text,
    last_error        text,
    runs              bigint NOT NULL DEFAULT 0
);
