//! HTTP handlers, one per action.

pub mod meta;
pub mod tasks;
