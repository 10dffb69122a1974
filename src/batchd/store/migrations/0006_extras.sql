-- batchd's own extensions beyond the hosted API (README "Beyond the hosted API"):
-- results read while a batch runs, retries of what failed, idempotent creates, answers reused.
--
-- A request's done_seq orders the results recorded so far: every transaction that makes
-- requests of a batch final takes the batch's next results_mark (the batch row's lock
-- orders them) and gives it to those requests, so that marks become visible in order and a
-- reader that saw a batch's results_mark M sees every result with done_seq <= M. Not
-- indexed: a reader walks the batch by requests_by_batch (an index on done_seq made every
-- recorded result cost an index insert, and the engine's record twice as long on SQLite).
ALTER TABLE batches ADD COLUMN results_mark INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN done_seq INTEGER;
UPDATE requests SET done_seq = 0 WHERE state IN ('succeeded', 'errored', 'canceled', 'expired');

-- The batch a retry batch retries (its id), and how many answers a batch reused.
ALTER TABLE batches ADD COLUMN retry_of TEXT;
ALTER TABLE batches ADD COLUMN reused INTEGER NOT NULL DEFAULT 0;
CREATE INDEX batches_retries ON batches (retry_of) WHERE retry_of IS NOT NULL;

-- A succeeded request's canonical params key (a hash, workspace and backend in it, in hex),
-- where its backend reuses answers.
ALTER TABLE requests ADD COLUMN answer_key TEXT;
CREATE INDEX requests_answers ON requests (answer_key) WHERE answer_key IS NOT NULL;

-- Idempotency-Key of a create: the same key and body give the batch made the first time.
CREATE TABLE idempotency_keys (
    workspace TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    body_hash BLOB NOT NULL,
    batch_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX idempotency_by_key ON idempotency_keys (workspace, idem_key);
