-- OLT devices; passwords are AES-256-GCM ciphertext (daemon/secrets.py), never plaintext.
CREATE TABLE olt_devices (
    id                  bigserial PRIMARY KEY,
    name                text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]*$'),
    vendor              text NOT NULL CHECK (vendor IN ('huawei', 'zte')),
    host                text NOT NULL,
    port                integer NOT NULL DEFAULT 22 CHECK (port BETWEEN 1 AND 65535),
    username            text NOT NULL,
    password_enc        text NOT NULL,
    enable_password_enc text,
    options             jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Where a UISP service's ONU is, when the service's custom attributes are wrong or missing.
CREATE TABLE onu_overrides (
    service_id  bigint PRIMARY KEY,
    olt_name    text NOT NULL,
    onu         text NOT NULL,  -- "frame/slot/port:onu"
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every accepted UISP webhook; uuid is UISP's per-event dedupe key.
CREATE TABLE uisp_webhooks (
    uuid          uuid PRIMARY KEY,
    event_name    text NOT NULL,
    entity        text NOT NULL,
    entity_id     bigint,
    change_type   text NOT NULL,
    body          jsonb NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    deliveries    integer NOT NULL DEFAULT 1,
    processed_at  timestamptz,
    outcome       text
);

-- One row per reconnection (or disconnection): the task log.
CREATE TABLE reconnect_tasks (
    id            bigserial PRIMARY KEY,
    dedupe_key    text NOT NULL UNIQUE,
    webhook_uuid  uuid REFERENCES uisp_webhooks (uuid),
    action        text NOT NULL CHECK (action IN ('activate', 'deactivate')),
    client_id     bigint,
    client_name   text,
    phone         text,
    service_id    bigint NOT NULL,
    service_name  text,
    olt_name      text NOT NULL,
    onu           text NOT NULL,
    -- superseded: a newer task for the same service carries the latest intent.
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'superseded')),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    olt_output    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconnect_tasks_created ON reconnect_tasks (created_at DESC);
CREATE INDEX reconnect_tasks_state ON reconnect_tasks (state) WHERE state IN ('queued', 'running');
CREATE INDEX reconnect_tasks_service ON reconnect_tasks (service_id, id);

-- Append-only history of each task (what the admin console shows as a timeline).
CREATE TABLE task_events (
    id       bigserial PRIMARY KEY,
    task_id  bigint NOT NULL REFERENCES reconnect_tasks (id),
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind     text NOT NULL,
    detail   jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX task_events_task ON task_events (task_id, id);

-- One SMS per reconnection at most: task_id is unique.
CREATE TABLE sms_messages (
    id            bigserial PRIMARY KEY,
    task_id       bigint UNIQUE REFERENCES reconnect_tasks (id),
    phone         text NOT NULL,
    body          text NOT NULL,
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'skipped')),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    provider      text,
    provider_ref  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
