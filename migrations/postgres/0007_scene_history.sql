-- A scene's history: whole-document states to look at and restore. Snapshots are pruned to
-- the newest two, so history keeps copies of its own: `auto` ones taken from compaction
-- snapshots (at most one per TROUPE_HISTORY_EVERY, the newest 100 kept), `named` ones an
-- editor saved, and `before_restore`, the state a restore replaced (so a restore can be
-- undone). `version` counts up per scene; `data` is the document as a yrs update (v1).
CREATE TABLE scene_history (
    scene_id      TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    kind          TEXT   NOT NULL,
    name          TEXT,
    created_by    TEXT,
    upto_seq      BIGINT NOT NULL,
    data          BYTEA  NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scene_id, version)
);
