-- The P1 product's tables, as the team adopting Troupe has them: a scene row with a content
-- version for optimistic concurrency, and its blocks in order. Created only where missing
-- (the adopting team's database already has them); Troupe reads them to seed scenes with no
-- Yjs state yet (backfill) and, later, writes the live documents back into them.
CREATE TABLE IF NOT EXISTS scenes (
    id              TEXT        NOT NULL PRIMARY KEY,
    project_id      TEXT,
    title           TEXT        NOT NULL DEFAULT '',
    content_version BIGINT      NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS content_blocks (
    scene_id   TEXT        NOT NULL REFERENCES scenes (id) ON DELETE CASCADE,
    position   INTEGER     NOT NULL,
    block_type TEXT        NOT NULL,
    text       TEXT        NOT NULL DEFAULT '',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scene_id, position)
);
