-- The blocks of recent P1 content versions (see the Postgres migration of the same number).
CREATE TABLE p1_projections (
    scene_id   TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    blocks     TEXT    NOT NULL,
    written_at TEXT    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (scene_id, version)
);
