-- Requests sharing a prompt prefix are claimed together: each request keeps the prefix key
-- computed when its batch was created (batchd/prefix.py; '' where the backend does not
-- order by prefix), and claims walk a batch's queue in (prefix_key, id) order.

ALTER TABLE requests ADD COLUMN prefix_key TEXT NOT NULL DEFAULT '';
DROP INDEX requests_queued;
CREATE INDEX requests_queued ON requests (backend, batch_seq, prefix_key, id) WHERE state = 'queued';
