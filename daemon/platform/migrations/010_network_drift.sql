-- Drift reconciliation (daemon/network/drift.py, drift_store.py): what UISP says, what
-- paymentd last applied and what the OLT reports, compared per service.
--
-- One row per run; the drift rows of the latest finished run are kept (older runs keep
-- only their counts), so the admin API and the metrics read one run's list.
CREATE TABLE drift_runs (
    id            bigserial PRIMARY KEY,
    mode          text NOT NULL CHECK (mode IN ('report', 'fix')),
    trigger       text NOT NULL,  -- schedule | cli | test …: who asked
    state         text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'finished', 'failed')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    services      integer NOT NULL DEFAULT 0,  -- UISP services with an ONU mapping compared
    skipped       integer NOT NULL DEFAULT 0,  -- without a mapping, another status, or a task in flight
    device_reads  integer NOT NULL DEFAULT 0,  -- ONU states read from the OLTs
    read_errors   integer NOT NULL DEFAULT 0,  -- reads that failed (device down, breaker open)
    drifts        integer NOT NULL DEFAULT 0,
    tasks_queued  integer NOT NULL DEFAULT 0,
    error         text
);
CREATE INDEX drift_runs_finished ON drift_runs (id) WHERE state = 'finished';

CREATE TABLE drift_items (
    id            bigserial PRIMARY KEY,
    run_id        bigint NOT NULL REFERENCES drift_runs (id) ON DELETE CASCADE,
    service_id    bigint NOT NULL,
    kind          text NOT NULL,
    -- 'active' | 'deactivated' | NULL (unknown / not read)
    uisp_state    text,
    applied_state text,
    olt_state     text,
    olt_name      text,
    onu           text,
    detail        text NOT NULL DEFAULT '',
    task_id       bigint REFERENCES reconnect_tasks (id) ON DELETE SET NULL  -- queued by --fix
);
CREATE INDEX drift_items_run ON drift_items (run_id, service_id);

-- When each ONU's state was last read from its device, so a run that may read only so
-- many per OLT reads the least recently checked ones first and covers all over runs.
CREATE TABLE drift_onu_checks (
    olt_name   text NOT NULL,
    onu        text NOT NULL,
    checked_at timestamptz NOT NULL,
    state      text,  -- 'active' | 'deactivated' | 'missing'
    PRIMARY KEY (olt_name, onu)
);
