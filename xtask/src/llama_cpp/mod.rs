//! llama.cpp itself: which tree (`pin`), getting it (`fetch`), knowing it
//! (`tree`, `hashes`), the tools and bindings that build it (`tools`,
//! `bindgen`), building it (`build`) and packing it for a GPU machine (`bundle`).

pub mod bindgen;
pub mod build;
pub mod bundle;
pub mod fetch;
pub mod hashes;
pub mod pin;
pub mod tools;
pub mod tree;
pub mod vulkan;
