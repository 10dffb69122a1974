-- Named SQL of the PostgreSQL store whose text differs from SQLite's (see common.sql).
-- A list parameter arrives as an array: cast it and read it with ANY or unnest.

-- name: lock_batch
SELECT * FROM batches WHERE id = :id AND workspace = :workspace FOR UPDATE;

-- name: claim
-- Short and lock-free for other claimers: rows another worker is claiming are skipped, and
-- the scan starts after the watermark (the index is (backend, batch_seq, prefix_key, id)
-- WHERE queued), so that it does not walk the dead index entries of the rows claimed
-- before. In (prefix_key, id) order: requests sharing a prompt prefix together (the key
-- holds only lowercase hex digits, which every collation orders as Python's str does).
UPDATE requests r
SET state = 'running', lease_owner = :owner, lease_expires = :until, attempts = r.attempts + 1
FROM (SELECT id FROM requests
      WHERE backend = :backend AND batch_seq = :seq AND state = 'queued'
        AND (prefix_key, id) > (:mark_key, :mark)
      ORDER BY prefix_key, id LIMIT :limit
      FOR UPDATE SKIP LOCKED) AS picked
WHERE r.id = picked.id
RETURNING r.id, r.custom_id, r.params, r.attempts, r.prefix_key, r.endpoint;

-- name: renew_leases
UPDATE requests SET lease_expires = :until
WHERE id = ANY(:ids::bigint[]) AND state = 'running' AND lease_owner = :owner;

-- name: record_result
-- Run once for all the results: each per-result parameter arrives as an array.
-- No `state = 'running'` test: only a running row has a lease_owner (every statement that
-- moves a row out of 'running' clears it), and that test let the cached generic plan
-- pick the partial index requests_running with a nested loop over the unnested results,
-- 60-370 ms per group of 256 with 1,500 requests in flight instead of about 6 ms by id.
UPDATE requests r
SET state = u.state, result = u.result, lease_owner = NULL, lease_expires = NULL,
    answer_key = u.answer_key
FROM unnest(:id::bigint[], :state::text[], :result::bytea[], :attempt::bigint[],
            :answer_key::text[])
     AS u (id, state, result, attempt, answer_key)
WHERE r.id = u.id AND r.lease_owner = :owner AND r.attempts = u.attempt
RETURNING r.id, r.batch_seq, r.state, r.backend;

-- name: lock_batches
-- Locked before their status is read: a cancel that started meanwhile is seen once it
-- commits, so that the requests returned to its queue are canceled too (its own settle saw
-- them running). Unlocked, they stayed queued in a canceling batch for good. No status test
-- here: the scan would apply it to the old row before waiting for the lock.
SELECT seq, processing_status FROM batches WHERE seq = ANY(:seqs::bigint[])
ORDER BY seq FOR UPDATE;

-- name: sweep_lock
-- One sweeper at a time across every worker; the others skip this round.
SELECT pg_try_advisory_xact_lock(hashtext('batchd.sweep'));

-- name: migration_lock
SELECT pg_advisory_xact_lock(hashtext('batchd.migrate'));

-- name: lock_workspace
-- One quota-checked create of a workspace at a time, so that two cannot both fit under it.
SELECT pg_advisory_xact_lock(hashtext('batchd.quota.' || :workspace));

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations
    (version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL);

-- name: lock_budget
SELECT level, stamp FROM fleet_budgets WHERE name = :name FOR UPDATE;
-- name: claim_deliveries
-- Each due delivery to one sender: rows another worker is claiming are skipped. The lease is
-- the new next_attempt_at: a row whose sender died is due again after it.
UPDATE webhook_deliveries d
SET lease_owner = :owner, attempts = d.attempts + 1, next_attempt_at = :until
FROM (SELECT id FROM webhook_deliveries
      WHERE state = 'pending' AND next_attempt_at <= :now
      ORDER BY next_attempt_at, id LIMIT :limit
      FOR UPDATE SKIP LOCKED) AS picked
WHERE d.id = picked.id
RETURNING d.id, d.endpoint_id, d.webhook_id, d.event_type, d.payload, d.created_at, d.attempts;
-- name: find_answers
SELECT answer_key, result FROM requests WHERE answer_key = ANY(:keys::text[]);

-- name: mark_done
-- (the results mark of the requests record_result just made final, taken after them)
UPDATE requests SET done_seq = :mark WHERE id = ANY(:ids::bigint[]);

-- name: lock_idempotency_key
-- One create with a given key of a workspace at a time: the second sees the first's batch.
SELECT pg_advisory_xact_lock(hashtext('batchd.idempotency.' || :workspace || '.' || :key));

-- name: delete_request_chunk
-- A short transaction that locks only the rows it deletes; rows another worker is deleting
-- are skipped (the batch is marked purged once none is left).
DELETE FROM requests
WHERE id IN (SELECT id FROM requests WHERE batch_seq = :seq ORDER BY id LIMIT :limit
             FOR UPDATE SKIP LOCKED);

-- name: database_bytes
-- The database's size on disk; the space of deleted rows is reused by later writes once
-- autovacuum has passed, and is not given back to the file system (VACUUM FULL does that).
SELECT pg_database_size(current_database()) AS used, CAST(NULL AS BIGINT) AS free;

-- name: lock_fleet_slots
-- One look at a backend's fleet slots at a time, so that two cannot both take the same free ones.
SELECT pg_advisory_xact_lock(hashtext('batchd.fleet_slots.' || :backend));
