-- A scene's history (see the Postgres migration of the same number).
CREATE TABLE scene_history (
    scene_id      TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    name          TEXT,
    created_by    TEXT,
    upto_seq      INTEGER NOT NULL,
    data          BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (scene_id, version)
);
