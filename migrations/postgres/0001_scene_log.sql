-- The append-only log of a scene: one row per committed batch of yrs updates (v1 encoding).
-- `seq` is assigned by the scene's single owner; `epoch` and `writer_node` record who wrote it.
CREATE TABLE scene_versions (
    scene_id      TEXT   NOT NULL,
    seq           BIGINT NOT NULL,
    epoch         BIGINT NOT NULL,
    writer_node   TEXT   NOT NULL,
    data          BYTEA  NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scene_id, seq)
);

-- Compaction folds the log into full-state snapshots; a snapshot covers rows with seq <= upto_seq.
CREATE TABLE scene_snapshots (
    scene_id      TEXT   NOT NULL,
    upto_seq      BIGINT NOT NULL,
    data          BYTEA  NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scene_id, upto_seq)
);
