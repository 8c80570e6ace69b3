-- Scenes each user brought into being, per minute: the cluster-wide quota on new scenes
-- (TROUPE_MAX_NEW_SCENES_PER_MINUTE). Rows older than an hour are deleted by the nodes.
CREATE TABLE scene_creations (
    user_id TEXT   NOT NULL,
    minute  BIGINT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (user_id, minute)
);
