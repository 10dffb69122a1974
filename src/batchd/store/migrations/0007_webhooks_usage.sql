-- Webhooks and usage, both batchd's own.
-- webhook_endpoints: a workspace's receivers (events: the event types it takes, space-separated).
-- webhook_deliveries: the outbox, one row per (event, endpoint), written in the transaction of
-- the change that causes the event and sent by an engine: a claim leases the row by moving
-- next_attempt_at to the lease's end, so a row whose sender died is due again after it.
-- batch_usage and usage_daily: tokens and requests summed as results are recorded.

CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    created_at REAL NOT NULL,
    failing_since REAL,
    disabled_at REAL,
    disabled_reason TEXT
);

CREATE INDEX webhook_endpoints_by_workspace ON webhook_endpoints (workspace);

CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id),
    webhook_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    last_status INTEGER,
    last_error TEXT,
    first_failed_at REAL,
    finished_at REAL
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);

CREATE TABLE batch_usage (
    batch_seq INTEGER NOT NULL REFERENCES batches (seq),
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX batch_usage_key ON batch_usage (batch_seq, model);

CREATE TABLE usage_daily (
    day TEXT NOT NULL,
    workspace TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    errored INTEGER NOT NULL DEFAULT 0,
    canceled INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX usage_daily_key ON usage_daily (workspace, day, backend, model);
