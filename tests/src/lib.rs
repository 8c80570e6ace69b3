//! Shared helpers for the cross-process tests.
