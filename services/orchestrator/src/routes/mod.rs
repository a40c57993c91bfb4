//! HTTP handlers, one per action.

pub mod meta;
pub mod priorities;
pub mod tasks;
pub mod ui;
