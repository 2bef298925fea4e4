//! The models and the reference: the catalogue of pretrained models on PyPI,
//! the `model` command (synthetic GPT-2, catalogue, Hugging Face, tiny), the
//! project's Python (PyTorch reference, converter) and the prompts.

pub mod catalogue;
pub mod model;
pub mod prompts;
pub mod python;
