-- Bytes of edits each user wrote, per hour, over the whole cluster: the quota
-- TROUPE_MAX_BYTES_PER_HOUR. Rows older than a day are deleted by the nodes.
CREATE TABLE user_bytes (
    user_id TEXT   NOT NULL,
    hour    BIGINT NOT NULL,
    bytes   BIGINT NOT NULL,
    PRIMARY KEY (user_id, hour)
);
