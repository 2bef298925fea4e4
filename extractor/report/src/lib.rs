//! llorch-checkpoint's reports: what a comparison found ([`findings`]) and
//! how a person reads it: the table and the files ([`outputs`]: report.json,
//! and through [`html`] and [`svg`] report.html and errors.svg; [`layers`]'s
//! layers.svg), with the
//! words they share ([`text`]). It depends on the spec crate alone; the
//! comparison crate fills the findings and asks for the reports.

pub mod findings;
pub mod html;
pub mod layers;
pub mod outputs;
pub mod replay;
pub mod svg;
pub mod text;
