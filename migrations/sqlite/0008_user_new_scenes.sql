-- The scenes each user brought into being, per minute: the cluster-wide quota on new scenes
-- (TROUPE_MAX_NEW_SCENES_PER_MINUTE) counts distinct scenes, so that two tabs opening the
-- same new scene, or a client retrying it, count it once. Only scenes admitted under the
-- quota get a row (a flood of refused ids adds nothing). Rows older than an hour are deleted
-- by the nodes. `scene_creations` (a bare count per user and minute) is left for nodes of
-- the previous release during a rolling upgrade; the nodes still clear its old rows.
CREATE TABLE user_new_scenes (
    user_id  TEXT   NOT NULL,
    minute   BIGINT NOT NULL,
    scene_id TEXT   NOT NULL,
    PRIMARY KEY (user_id, minute, scene_id)
);
