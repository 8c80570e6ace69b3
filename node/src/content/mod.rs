//! Scene content outside the editor: the blocks of a scene as the P1 product stores them
//! ([`blocks`]), and the scene as plain text or Fountain ([`fountain`]).

pub mod blocks;
pub mod fountain;
