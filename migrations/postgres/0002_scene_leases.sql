-- One writer per scene: the owner and placement epoch that may append to its log.
-- A claim at epoch E replaces only an older epoch (or renews the same owner's claim); every
-- append checks the lease in the same statement, so a former owner can never write again.
CREATE TABLE scene_leases (
    scene_id      TEXT   NOT NULL PRIMARY KEY,
    epoch         BIGINT NOT NULL,
    owner         TEXT   NOT NULL,
    claimed_at_ms BIGINT NOT NULL
);
