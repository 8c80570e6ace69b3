-- The P1 product's tables (see the Postgres migration of the same number).
CREATE TABLE IF NOT EXISTS scenes (
    id              TEXT    NOT NULL PRIMARY KEY,
    project_id      TEXT,
    title           TEXT    NOT NULL DEFAULT '',
    content_version INTEGER NOT NULL DEFAULT 0,
    updated_at      TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS content_blocks (
    scene_id   TEXT    NOT NULL REFERENCES scenes (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    block_type TEXT    NOT NULL,
    text       TEXT    NOT NULL DEFAULT '',
    updated_at TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (scene_id, position)
);
