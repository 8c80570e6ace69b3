-- The blocks of each recent P1 content version of a scene, as Troupe wrote or read them.
-- A write to P1 names the version it was based on; merging it into the live document
-- replays what changed since that version, so that version's blocks must be known. The
-- last 64 versions of each scene are kept.
CREATE TABLE p1_projections (
    scene_id   TEXT        NOT NULL,
    version    BIGINT      NOT NULL,
    blocks     TEXT        NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scene_id, version)
);
