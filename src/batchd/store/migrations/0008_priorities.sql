-- Lanes and fair share: a batch's priority (batchd-priority: -1 low, 0 normal, 1 high)
-- orders the engine's claims, and the input tokens its queued requests were estimated at
-- on create are what max_queued_input_tokens_per_workspace counts.

ALTER TABLE batches ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;

-- One budget for a fleet: each backend's requests and tokens per minute, shared by every
-- worker on the database as token buckets (level refilled at the configured rate since stamp,
-- a wall-clock time), drawn from a few seconds' worth at a time (backends/fleet.py).
CREATE TABLE fleet_budgets (
    name TEXT NOT NULL PRIMARY KEY,
    level REAL NOT NULL,
    stamp REAL NOT NULL
);
