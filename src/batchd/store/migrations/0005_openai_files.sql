-- The OpenAI face: a batch records its dialect (the face it was created on) and that face's
-- own fields (JSON); a request records the OpenAI endpoint it is for (NULL: a Messages
-- request). Files hold uploads in chunks; a batch's output and error files are rows that
-- name the batch whose requests they render.

ALTER TABLE batches ADD COLUMN dialect TEXT NOT NULL DEFAULT 'anthropic';
ALTER TABLE batches ADD COLUMN dialect_fields BLOB;
ALTER TABLE requests ADD COLUMN endpoint TEXT;

CREATE TABLE files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    workspace TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER,
    lines INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    expires_at REAL,
    role TEXT NOT NULL,
    batch_seq INTEGER REFERENCES batches (seq)
);

CREATE INDEX files_by_workspace ON files (workspace, seq);

CREATE TABLE file_chunks (
    id INTEGER PRIMARY KEY,
    file_seq INTEGER NOT NULL REFERENCES files (seq),
    data BLOB NOT NULL
);

CREATE INDEX file_chunks_by_file ON file_chunks (file_seq, id);
