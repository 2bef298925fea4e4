//! The user's commands: each is its command line and its flow, built from
//! the libraries beside this folder; no module imports a command.

pub mod compare;
pub mod conformance;
pub mod diff_trees;
pub mod doctor;
pub mod extract;
pub mod replay;
