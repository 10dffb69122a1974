-- Named SQL that both dialects run as written. Each query starts with "-- name: NAME" and
-- takes named parameters (:name). A query whose text differs between the dialects stands
-- in sqlite.sql and postgres.sql instead, with the same name and meaning in both.

-- name: insert_batch
INSERT INTO batches (id, workspace, processing_status, total, created_at, expires_at, priority,
                     input_tokens, retry_of, dialect, dialect_fields)
VALUES (:id, :workspace, 'in_progress', :total, :created_at, :expires_at, :priority,
        :input_tokens, :retry_of, :dialect, :dialect_fields)
RETURNING seq;

-- name: get_batch
SELECT * FROM batches WHERE id = :id AND workspace = :workspace;

-- name: get_batch_by_seq
SELECT * FROM batches WHERE seq = :seq;

-- name: list_newest
SELECT * FROM batches WHERE workspace = :workspace AND dialect = :dialect
ORDER BY seq DESC LIMIT :limit;

-- name: list_older
SELECT * FROM batches WHERE workspace = :workspace AND dialect = :dialect AND seq < :seq
ORDER BY seq DESC LIMIT :limit;

-- name: list_newer
SELECT * FROM batches WHERE workspace = :workspace AND dialect = :dialect AND seq > :seq
ORDER BY seq ASC LIMIT :limit;

-- name: start_cancel
UPDATE batches SET processing_status = 'canceling', cancel_initiated_at = :now
WHERE seq = :seq AND processing_status = 'in_progress';

-- name: settle_queued
-- (the store adds the row count to the batch's counter of :state in the same transaction;
-- a concurrent settle finds the rows no longer queued and counts nothing)
UPDATE requests SET state = :state, done_seq = :mark WHERE batch_seq = :seq AND state = 'queued';

-- name: expire_running
-- (a batch past its deadline: its requests still in flight end expired too, as the API's
-- do, however long their calls take; a worker's later result is fenced off with the lease).
-- Their results mark: the one settle_queued just took in the same transaction.
UPDATE requests SET state = 'expired', lease_owner = NULL, lease_expires = NULL,
                    done_seq = (SELECT results_mark FROM batches WHERE seq = :seq)
WHERE batch_seq = :seq AND state = 'running';

-- name: add_counts
UPDATE batches SET succeeded = succeeded + :succeeded, errored = errored + :errored,
                   canceled = canceled + :canceled, expired = expired + :expired,
                   reused = reused + :reused
WHERE seq = :seq
RETURNING workspace;

-- name: next_mark
-- (locks the batch row until commit: the marks of one batch are taken and made visible in
-- order, so a reader that sees results_mark M sees every request with done_seq <= M)
UPDATE batches SET results_mark = results_mark + 1 WHERE seq = :seq RETURNING results_mark;

-- name: results_mark
SELECT results_mark FROM batches WHERE seq = :seq;

-- name: recorded_page
-- The results recorded after mark :mark up to mark :upto, in request order after :after
-- (one pass over the batch per read: done_seq has no index, see migration 0006).
SELECT id, custom_id, state, result FROM requests
WHERE batch_seq = :seq AND id > :after AND done_seq > :mark AND done_seq <= :upto
ORDER BY id LIMIT :limit;

-- name: filtered_page
-- A page of a batch's final results in request order, of one state ('' for any), whose
-- custom_id starts with :prefix.
SELECT id, custom_id, state, result FROM requests
WHERE batch_seq = :seq AND done_seq IS NOT NULL AND id > :after
  AND (CAST(:state AS TEXT) = '' OR state = CAST(:state AS TEXT))
  AND substr(custom_id, 1, length(CAST(:prefix AS TEXT))) = CAST(:prefix AS TEXT)
ORDER BY id LIMIT :limit;

-- name: request_result
SELECT id, custom_id, state, result FROM requests
WHERE batch_seq = :seq AND custom_id = :custom_id AND done_seq IS NOT NULL;

-- name: requests_in_states
-- A page of the requests of a batch in one of three states (a state named twice for fewer).
SELECT id, custom_id, params FROM requests
WHERE batch_seq = :seq AND id > :after AND state IN (:state1, :state2, :state3)
ORDER BY id LIMIT :limit;

-- name: retries_of
SELECT id FROM batches WHERE workspace = :workspace AND retry_of = :id ORDER BY seq;


-- name: find_idempotency_key
SELECT body_hash, batch_id FROM idempotency_keys
WHERE workspace = :workspace AND idem_key = :key AND created_at >= :not_before;

-- name: forget_idempotency_keys
-- (a workspace's keys older than their 24 hours, and this key whatever its age)
DELETE FROM idempotency_keys
WHERE workspace = :workspace AND (created_at < :not_before OR idem_key = :key);

-- name: insert_idempotency_key
INSERT INTO idempotency_keys (workspace, idem_key, body_hash, batch_id, created_at)
VALUES (:workspace, :key, :body_hash, :batch_id, :created_at);

-- name: finalize_batch
UPDATE batches SET processing_status = 'ended', ended_at = :now
WHERE seq = :seq AND processing_status != 'ended'
  AND succeeded + errored + canceled + expired = total
RETURNING seq;

-- name: finalize_all
UPDATE batches SET processing_status = 'ended', ended_at = :now
WHERE processing_status != 'ended' AND succeeded + errored + canceled + expired = total
RETURNING seq;

-- name: delete_requests
DELETE FROM requests WHERE batch_seq = :seq;

-- name: delete_batch_usage
DELETE FROM batch_usage WHERE batch_seq = :seq;

-- name: delete_batch
DELETE FROM batches WHERE seq = :seq;

-- name: results_page
SELECT id, custom_id, state, result FROM requests
WHERE batch_seq = :seq AND id > :after ORDER BY id LIMIT :limit;

-- name: errored_page
SELECT id, custom_id, state, result FROM requests
WHERE batch_seq = :seq AND state = 'errored' ORDER BY id LIMIT :limit;

-- name: claimable_batches
-- (the != 'ended' term lets SQLite use the partial index batches_unfinished; the engine
-- orders them: engine/order.py)
SELECT seq, workspace, priority, expires_at FROM batches
WHERE processing_status != 'ended' AND processing_status = 'in_progress' AND expires_at > :now
ORDER BY seq;

-- name: unfinished_batches
-- Every workspace's batches not yet ended, for the figures of /metrics (deadlines at risk).
SELECT * FROM batches WHERE processing_status != 'ended' ORDER BY seq;

-- name: expiring_batches
SELECT seq FROM batches
WHERE processing_status != 'ended' AND processing_status = 'in_progress' AND expires_at <= :now
ORDER BY seq;

-- name: requeue_lost
UPDATE requests SET state = 'queued', lease_owner = NULL, lease_expires = NULL
WHERE state = 'running' AND lease_expires < :now
RETURNING batch_seq;

-- name: release_leases
UPDATE requests SET state = 'queued', lease_owner = NULL, lease_expires = NULL
WHERE state = 'running' AND lease_owner = :owner
RETURNING batch_seq;

-- name: queued_by_backend
SELECT backend, count(*) AS n FROM requests WHERE state = 'queued' GROUP BY backend;

-- name: running_count
SELECT count(*) FROM requests WHERE state = 'running';

-- name: final_totals
-- (one row per batch, read per /metrics scrape: the small table, not the requests)
SELECT coalesce(sum(succeeded), 0) AS succeeded, coalesce(sum(errored), 0) AS errored,
       coalesce(sum(canceled), 0) AS canceled, coalesce(sum(expired), 0) AS expired
FROM batches;

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

-- name: schema_version
SELECT coalesce(max(version), 0) FROM schema_migrations;

-- name: add_migration
INSERT INTO schema_migrations (version, applied_at) VALUES (:version, :now);

-- name: workspace_backlog
-- A workspace's unfinished batches, their requests not yet final, and those requests' share
-- of the input tokens estimated on create.
SELECT count(*), CAST(coalesce(sum(total - succeeded - errored - canceled - expired), 0) AS BIGINT),
       CAST(coalesce(sum(input_tokens * (total - succeeded - errored - canceled - expired)
                         / CASE WHEN total > 0 THEN total ELSE 1 END), 0) AS BIGINT)
FROM batches WHERE workspace = :workspace AND processing_status != 'ended';

-- name: ensure_budget
INSERT INTO fleet_budgets (name, level, stamp) VALUES (:name, :level, :now)
ON CONFLICT (name) DO NOTHING;

-- name: set_budget
UPDATE fleet_budgets SET level = :level, stamp = :now WHERE name = :name;
-- name: insert_endpoint
INSERT INTO webhook_endpoints (id, workspace, url, secret, events, created_at)
VALUES (:id, :workspace, :url, :secret, :events, :created_at);

-- name: list_endpoints
SELECT * FROM webhook_endpoints WHERE workspace = :workspace ORDER BY created_at, id;

-- name: list_all_endpoints
SELECT * FROM webhook_endpoints ORDER BY workspace, created_at, id;

-- name: endpoint_by_id
SELECT * FROM webhook_endpoints WHERE id = :id;

-- name: delete_endpoint_deliveries
DELETE FROM webhook_deliveries WHERE endpoint_id = :id;

-- name: delete_endpoint
DELETE FROM webhook_endpoints WHERE id = :id;

-- name: subscribed_endpoints
-- The endpoints an event of this workspace goes to (the store filters them by event type).
SELECT id, events FROM webhook_endpoints WHERE workspace = :workspace AND disabled_at IS NULL;

-- name: insert_delivery
INSERT INTO webhook_deliveries
    (endpoint_id, webhook_id, event_type, payload, created_at, state, next_attempt_at)
VALUES (:endpoint_id, :webhook_id, :event_type, :payload, :now, 'pending', :now);

-- name: finish_delivery
-- Fenced by (owner, attempt): a sender whose lease ran out cannot overwrite a newer attempt.
UPDATE webhook_deliveries
SET state = :state, next_attempt_at = :next_at, last_status = :status, last_error = :error,
    finished_at = :finished_at, first_failed_at = coalesce(first_failed_at, :failed_at),
    lease_owner = NULL
WHERE id = :id AND lease_owner = :owner AND attempts = :attempt
RETURNING first_failed_at;

-- name: endpoint_succeeded
UPDATE webhook_endpoints SET failing_since = NULL WHERE id = :id;

-- name: endpoint_failed
UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, :now) WHERE id = :id
RETURNING failing_since;

-- name: disable_endpoint
UPDATE webhook_endpoints SET disabled_at = :now, disabled_reason = :reason
WHERE id = :id AND disabled_at IS NULL;

-- name: fail_pending_deliveries
UPDATE webhook_deliveries
SET state = 'failed', last_error = :error, finished_at = :now, lease_owner = NULL
WHERE endpoint_id = :id AND state = 'pending';

-- name: list_deliveries
SELECT id, endpoint_id, webhook_id, event_type, created_at, state, attempts, next_attempt_at,
       last_status, last_error, finished_at
FROM webhook_deliveries WHERE endpoint_id = :id ORDER BY id DESC LIMIT :limit;

-- name: add_batch_usage
INSERT INTO batch_usage (batch_seq, model, requests, input_tokens, output_tokens, cache_read_tokens)
VALUES (:seq, :model, :requests, :input_tokens, :output_tokens, :cache_read_tokens)
ON CONFLICT (batch_seq, model) DO UPDATE SET
    requests = batch_usage.requests + excluded.requests,
    input_tokens = batch_usage.input_tokens + excluded.input_tokens,
    output_tokens = batch_usage.output_tokens + excluded.output_tokens,
    cache_read_tokens = batch_usage.cache_read_tokens + excluded.cache_read_tokens;

-- name: add_daily_usage
INSERT INTO usage_daily (day, workspace, backend, model, succeeded, errored, canceled, expired,
                         input_tokens, output_tokens, cache_read_tokens)
VALUES (:day, :workspace, :backend, :model, :succeeded, :errored, :canceled, :expired,
        :input_tokens, :output_tokens, :cache_read_tokens)
ON CONFLICT (workspace, day, backend, model) DO UPDATE SET
    succeeded = usage_daily.succeeded + excluded.succeeded,
    errored = usage_daily.errored + excluded.errored,
    canceled = usage_daily.canceled + excluded.canceled,
    expired = usage_daily.expired + excluded.expired,
    input_tokens = usage_daily.input_tokens + excluded.input_tokens,
    output_tokens = usage_daily.output_tokens + excluded.output_tokens,
    cache_read_tokens = usage_daily.cache_read_tokens + excluded.cache_read_tokens;

-- name: batch_usage
SELECT model, requests, input_tokens, output_tokens, cache_read_tokens FROM batch_usage
WHERE batch_seq = :seq ORDER BY model;

-- name: daily_usage
-- (one row per day, workspace and model; :workspace '' reads every workspace)
SELECT day, workspace, model,
       CAST(sum(succeeded) AS BIGINT) AS succeeded, CAST(sum(errored) AS BIGINT) AS errored,
       CAST(sum(canceled) AS BIGINT) AS canceled, CAST(sum(expired) AS BIGINT) AS expired,
       CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
       CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
       CAST(sum(cache_read_tokens) AS BIGINT) AS cache_read_tokens
FROM usage_daily WHERE (workspace = :workspace OR :workspace = '') AND day >= :since
GROUP BY day, workspace, model ORDER BY day, workspace, model;

-- name: tokens_by_workspace
SELECT workspace, backend, CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
       CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
       CAST(sum(cache_read_tokens) AS BIGINT) AS cache_read_tokens
FROM usage_daily WHERE backend != '' GROUP BY workspace, backend ORDER BY workspace, backend;

-- name: purgeable_batches
-- Ended batches whose results passed the retention time and whose requests are not yet
-- all deleted, oldest first (the partial index batches_unpurged).
SELECT seq FROM batches
WHERE purged_at IS NULL AND created_at <= :cutoff AND processing_status = 'ended'
ORDER BY created_at LIMIT :limit;

-- name: mark_purged
-- (only once no request of the batch is left: a chunk another worker held is not missed)
UPDATE batches SET purged_at = :now
WHERE seq = :seq AND purged_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM requests WHERE batch_seq = :seq);

-- name: batches_by_status
SELECT processing_status, count(*) AS n, count(purged_at) AS purged
FROM batches GROUP BY processing_status ORDER BY processing_status;

-- name: requests_by_state
SELECT state, count(*) AS n FROM requests GROUP BY state ORDER BY state;

-- name: insert_file
INSERT INTO files (id, workspace, purpose, filename, bytes, lines, created_at, expires_at, role,
                   batch_seq, expires_after)
VALUES (:id, :workspace, :purpose, :filename, :bytes, :lines, :created_at, :expires_at, :role,
        :batch_seq, :expires_after)
RETURNING seq;

-- name: start_file_lifetimes
-- A batch has just ended: its output and error files are made now, as OpenAI makes them
-- (output_expires_after counts from their creation), and expire within the expires_at they
-- had (the batch's retention).
UPDATE files SET created_at = :now,
                 expires_at = CASE WHEN :now + expires_after < expires_at
                                   THEN :now + expires_after ELSE expires_at END
WHERE batch_seq = :seq AND expires_after IS NOT NULL;

-- name: expired_files
-- Files past their expires_at, which the purger deletes (by the index files_by_expiry).
SELECT seq, batch_seq FROM files WHERE expires_at <= :now ORDER BY expires_at LIMIT :limit;

-- name: delete_batch_files
DELETE FROM files WHERE batch_seq = :seq;

-- name: batch_without_files
-- An ended OpenAI batch, not yet purged, whose output and error files are all gone.
SELECT seq FROM batches
WHERE seq = :seq AND processing_status = 'ended' AND purged_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM files WHERE batch_seq = :seq);

-- name: get_file
-- (a batch's output and error files come with their batch's status and counts: they are
-- visible once it has ended with lines of their kind)
SELECT f.*, b.processing_status, b.succeeded, b.errored + b.canceled + b.expired AS failed
FROM files f LEFT JOIN batches b ON b.seq = f.batch_seq
WHERE f.id = :id AND f.workspace = :workspace;

-- name: list_files_desc
SELECT f.*, b.processing_status, b.succeeded, b.errored + b.canceled + b.expired AS failed
FROM files f LEFT JOIN batches b ON b.seq = f.batch_seq
WHERE f.workspace = :workspace AND (f.expires_at IS NULL OR f.expires_at > :now)
  AND f.seq < :seq AND f.purpose = coalesce(:purpose, f.purpose)
  AND (f.role = 'upload' OR (b.processing_status = 'ended' AND CASE f.role
       WHEN 'output' THEN b.succeeded ELSE b.errored + b.canceled + b.expired END > 0))
ORDER BY f.seq DESC LIMIT :limit;

-- name: list_files_asc
SELECT f.*, b.processing_status, b.succeeded, b.errored + b.canceled + b.expired AS failed
FROM files f LEFT JOIN batches b ON b.seq = f.batch_seq
WHERE f.workspace = :workspace AND (f.expires_at IS NULL OR f.expires_at > :now)
  AND f.seq > :seq AND f.purpose = coalesce(:purpose, f.purpose)
  AND (f.role = 'upload' OR (b.processing_status = 'ended' AND CASE f.role
       WHEN 'output' THEN b.succeeded ELSE b.errored + b.canceled + b.expired END > 0))
ORDER BY f.seq ASC LIMIT :limit;

-- name: file_chunks_page
SELECT id, data FROM file_chunks WHERE file_seq = :seq AND id > :after ORDER BY id LIMIT :limit;

-- name: measure_file
UPDATE files SET bytes = :bytes, lines = :lines WHERE seq = :seq;

-- name: delete_file_chunks
DELETE FROM file_chunks WHERE file_seq = :seq;

-- name: delete_file
DELETE FROM files WHERE seq = :seq;

-- name: free_lapsed_slots
-- The slots of holders whose lease lapsed (a process that died) are free again.
DELETE FROM fleet_slots WHERE backend = :backend AND lease_until < :now;

-- name: fleet_holders
SELECT holder, slots, wanted FROM fleet_slots WHERE backend = :backend;

-- name: set_slots
INSERT INTO fleet_slots (backend, holder, slots, wanted, lease_until)
VALUES (:backend, :holder, :slots, :wanted, :until)
ON CONFLICT (backend, holder)
DO UPDATE SET slots = excluded.slots, wanted = excluded.wanted, lease_until = excluded.lease_until;

-- name: drop_slots
DELETE FROM fleet_slots WHERE backend = :backend AND holder = :holder;

-- name: fleet_slots_held
-- Per backend, the slots of its fleet_max_concurrency that live leases hold.
SELECT backend, CAST(sum(slots) AS BIGINT) FROM fleet_slots WHERE lease_until >= :now
GROUP BY backend;
