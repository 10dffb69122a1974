-- Operator keys may read the server-wide routes (/metrics, /status/backends), which show
-- every workspace's volumes and the upstreams' error texts. Existing keys are not operators.

ALTER TABLE api_keys ADD COLUMN is_operator INTEGER NOT NULL DEFAULT 0;
