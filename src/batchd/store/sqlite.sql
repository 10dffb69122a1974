-- Named SQL of the SQLite store. Each query starts with "-- name: NAME".

-- name: insert_batch
INSERT INTO batches (id, workspace, processing_status, total, succeeded, errored,
                     created_at, expires_at)
VALUES (:id, :workspace, 'in_progress', :total, :succeeded, :errored, :created_at, :expires_at)
RETURNING seq;

-- name: insert_request
INSERT INTO requests (batch_seq, custom_id, backend, params, state, result)
VALUES (?, ?, ?, ?, ?, ?);

-- name: get_batch
SELECT * FROM batches WHERE id = :id AND workspace = :workspace;

-- name: get_batch_by_seq
SELECT * FROM batches WHERE seq = :seq;

-- name: list_newest
SELECT * FROM batches WHERE workspace = :workspace ORDER BY seq DESC LIMIT :limit;

-- name: list_older
SELECT * FROM batches WHERE workspace = :workspace AND seq < :seq ORDER BY seq DESC LIMIT :limit;

-- name: list_newer
SELECT * FROM batches WHERE workspace = :workspace AND seq > :seq ORDER BY seq ASC LIMIT :limit;

-- name: start_cancel
UPDATE batches SET processing_status = 'canceling', cancel_initiated_at = :now
WHERE seq = :seq AND processing_status = 'in_progress';

-- name: settle_queued
UPDATE requests SET state = :state WHERE batch_seq = :seq AND state = 'queued';

-- name: add_canceled
UPDATE batches SET canceled = canceled + :n WHERE seq = :seq;

-- name: add_expired
UPDATE batches SET expired = expired + :n WHERE seq = :seq;

-- name: delete_requests
DELETE FROM requests WHERE batch_seq = :seq;

-- name: delete_batch
DELETE FROM batches WHERE seq = :seq;

-- name: results_page
SELECT id, custom_id, state, result FROM requests
WHERE batch_seq = :seq AND id > :after ORDER BY id LIMIT :limit;

-- name: claimable_batches
-- (the != 'ended' term lets SQLite use the partial index batches_unfinished)
SELECT seq FROM batches
WHERE processing_status != 'ended' AND processing_status = 'in_progress' AND expires_at > :now
ORDER BY seq;

-- name: claim
UPDATE requests
SET state = 'running', lease_owner = :owner, lease_expires = :until, attempts = attempts + 1
WHERE id IN (SELECT id FROM requests
             WHERE backend = :backend AND batch_seq = :seq AND state = 'queued'
             ORDER BY id LIMIT :limit)
RETURNING id, batch_seq, custom_id, params, attempts;

-- name: renew_leases
-- (only the requests the worker knows it holds: a claim whose answer it never heard of
-- must expire and be claimed again)
UPDATE requests SET lease_expires = :until
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'running' AND lease_owner = :owner;

-- name: record_result
UPDATE requests SET state = ?, result = ?, lease_owner = NULL, lease_expires = NULL
WHERE id = ? AND state = 'running' AND lease_owner = ? AND attempts = ?;

-- name: add_results
UPDATE batches SET succeeded = succeeded + :succeeded, errored = errored + :errored
WHERE seq = :seq;

-- name: recount
UPDATE batches SET
    succeeded = (SELECT count(*) FROM requests WHERE batch_seq = :seq AND state = 'succeeded'),
    errored = (SELECT count(*) FROM requests WHERE batch_seq = :seq AND state = 'errored'),
    canceled = (SELECT count(*) FROM requests WHERE batch_seq = :seq AND state = 'canceled'),
    expired = (SELECT count(*) FROM requests WHERE batch_seq = :seq AND state = 'expired')
WHERE seq = :seq;

-- name: finalize_batch
UPDATE batches SET processing_status = 'ended', ended_at = :now
WHERE seq = :seq AND processing_status != 'ended'
  AND succeeded + errored + canceled + expired = total;

-- name: finalize_all
UPDATE batches SET processing_status = 'ended', ended_at = :now
WHERE processing_status != 'ended' AND succeeded + errored + canceled + expired = total;

-- name: requeue_lost
UPDATE requests SET state = 'queued', lease_owner = NULL, lease_expires = NULL
WHERE state = 'running' AND lease_expires < :now
RETURNING batch_seq;

-- name: release_leases
UPDATE requests SET state = 'queued', lease_owner = NULL, lease_expires = NULL
WHERE state = 'running' AND lease_owner = :owner
RETURNING batch_seq;

-- name: canceling_batch
SELECT seq FROM batches WHERE seq = :seq AND processing_status = 'canceling';

-- name: expiring_batches
SELECT seq FROM batches
WHERE processing_status != 'ended' AND processing_status = 'in_progress' AND expires_at <= :now;

-- name: insert_key
INSERT INTO api_keys (id, name, workspace, key_hash, created_at, is_operator)
VALUES (:id, :name, :workspace, :key_hash, :created_at, :is_operator);

-- name: list_keys
SELECT id, name, workspace, created_at, revoked_at, is_operator FROM api_keys ORDER BY created_at;

-- name: revoke_key
UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL;

-- name: find_key
SELECT id, name, workspace, created_at, revoked_at, is_operator, key_hash FROM api_keys
WHERE key_hash = :key_hash AND revoked_at IS NULL;

-- name: count_active_keys
SELECT count(*) FROM api_keys WHERE revoked_at IS NULL;

-- name: errored_page
SELECT id, custom_id, state, result FROM requests
WHERE batch_seq = :seq AND state = 'errored' ORDER BY id LIMIT :limit;

-- name: queued_by_backend
SELECT backend, count(*) AS n FROM requests WHERE state = 'queued' GROUP BY backend;

-- name: running_count
SELECT count(*) FROM requests WHERE state = 'running';

-- name: final_totals
-- (one row per batch, read per /metrics scrape: the small table, not the requests)
SELECT coalesce(sum(succeeded), 0) AS succeeded, coalesce(sum(errored), 0) AS errored,
       coalesce(sum(canceled), 0) AS canceled, coalesce(sum(expired), 0) AS expired
FROM batches;
