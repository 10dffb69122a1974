-- Named SQL of the SQLite store whose text differs from PostgreSQL's (see common.sql).
-- A list parameter arrives as a JSON array: read it with json_each.

-- name: lock_batch
-- (the store's one writer already holds the database's write lock)
SELECT * FROM batches WHERE id = :id AND workspace = :workspace;

-- name: claim
-- In (prefix_key, id) order from the watermark: requests sharing a prompt prefix together.
UPDATE requests
SET state = 'running', lease_owner = :owner, lease_expires = :until, attempts = attempts + 1
WHERE id IN (SELECT id FROM requests
             WHERE backend = :backend AND batch_seq = :seq AND state = 'queued'
               AND (prefix_key, id) > (:mark_key, :mark)
             ORDER BY prefix_key, id LIMIT :limit)
RETURNING id, custom_id, params, attempts, prefix_key, endpoint;

-- name: renew_leases
UPDATE requests SET lease_expires = :until
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'running' AND lease_owner = :owner;

-- name: record_result
-- (run once per result; :mark is its batch's results mark, taken first: see Store.record)
UPDATE requests SET state = :state, result = :result, lease_owner = NULL, lease_expires = NULL,
                    answer_key = :answer_key, done_seq = :mark
WHERE id = :id AND lease_owner = :owner AND attempts = :attempt
RETURNING id, batch_seq, state, backend;

-- name: lock_batches
-- (the store's one writer already holds the database's write lock)
SELECT seq, processing_status FROM batches WHERE seq IN (SELECT value FROM json_each(:seqs))
ORDER BY seq;

-- name: sweep_lock
-- (the store's one writer already holds the database's write lock)
SELECT 1;

-- name: migration_lock
SELECT 1;

-- name: lock_workspace
-- (the store's one writer already holds the database's write lock)
SELECT 1;

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL);

-- name: lock_budget
-- (the store's one writer already holds the database's write lock)
SELECT level, stamp FROM fleet_budgets WHERE name = :name;
-- name: claim_deliveries
-- (the lease is the new next_attempt_at: a row whose sender died is due again after it)
UPDATE webhook_deliveries
SET lease_owner = :owner, attempts = attempts + 1, next_attempt_at = :until
WHERE id IN (SELECT id FROM webhook_deliveries
             WHERE state = 'pending' AND next_attempt_at <= :now
             ORDER BY next_attempt_at, id LIMIT :limit)
RETURNING id, endpoint_id, webhook_id, event_type, payload, created_at, attempts;
-- name: find_answers
SELECT answer_key, result FROM requests
WHERE answer_key IN (SELECT value FROM json_each(:keys));

-- name: mark_done
-- (PostgreSQL's record takes its marks after the results; SQLite's record_result sets them)
UPDATE requests SET done_seq = :mark WHERE id IN (SELECT value FROM json_each(:ids));

-- name: lock_idempotency_key
-- (the store's one writer already holds the database's write lock)
SELECT 1;

-- name: delete_request_chunk
-- (one chunk per transaction, so that the writer is not held long)
DELETE FROM requests
WHERE id IN (SELECT id FROM requests WHERE batch_seq = :seq ORDER BY id LIMIT :limit);

-- name: database_bytes
-- The file's pages in use and free (free pages are given back by incremental_vacuum).
SELECT (p.page_count - f.freelist_count) * s.page_size AS used,
       f.freelist_count * s.page_size AS free
FROM pragma_page_count() AS p, pragma_page_size() AS s, pragma_freelist_count() AS f;

-- name: lock_fleet_slots
-- (the store's one writer already holds the database's write lock)
SELECT 1;
