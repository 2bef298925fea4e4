//! Checking the project itself: `verify` (the test command, in tiers) and the
//! campaigns it runs (bench, kills, fuzz), the house rules (tidy, layering)
//! and the generated CLI reference (cli_docs).

pub mod bench;
pub mod cli_docs;
pub mod fuzz;
pub mod kills;
pub mod layering;
#[cfg(test)]
mod tidy;
pub mod verify;
