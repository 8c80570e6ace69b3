//! Scene content outside the editor: the blocks of a scene as the P1 product stores them
//! ([`blocks`]), the scene as plain text or Fountain ([`fountain`]), and merging a write
//! made against an older version into the live document ([`merge`]), and notices to the people in a scene
//! ([`notice`]).

pub mod blocks;
pub mod fountain;
pub mod merge;
pub mod notice;
