-- The declared schema: what every migration applied in order must give (tests/test_migrations.py).
-- Written in the portable subset that the migrations use (see batchd.store.queries.for_dialect).

CREATE TABLE batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    workspace TEXT NOT NULL,
    processing_status TEXT NOT NULL,
    total INTEGER NOT NULL,
    succeeded INTEGER NOT NULL DEFAULT 0,
    errored INTEGER NOT NULL DEFAULT 0,
    canceled INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    ended_at REAL,
    cancel_initiated_at REAL
);

CREATE INDEX batches_by_workspace ON batches (workspace, seq);
CREATE INDEX batches_unfinished ON batches (processing_status) WHERE processing_status != 'ended';

CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    batch_seq INTEGER NOT NULL REFERENCES batches (seq),
    custom_id TEXT NOT NULL,
    backend TEXT,
    params BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    result BLOB
);

CREATE INDEX requests_by_batch ON requests (batch_seq);
CREATE INDEX requests_running ON requests (lease_owner, lease_expires) WHERE state = 'running';
CREATE INDEX requests_queued ON requests (backend, batch_seq, id) WHERE state = 'queued';

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    workspace TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL,
    is_operator INTEGER NOT NULL DEFAULT 0
);
