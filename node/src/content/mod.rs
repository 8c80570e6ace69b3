//! Scene content outside the editor: the blocks of a scene as the P1 product stores them.

pub mod blocks;
