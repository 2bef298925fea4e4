//! Every call that differs between the llama.cpp trees the extractor builds
//! on, in one place. `build.rs` sets `llama_has="NAME"` from what the tree's
//! headers declare; the rest of `ffi` calls these and never asks.

use anyhow::Result;
use llorch_checkpoint_spec::record::FlashAttnMode;

use super::sys;

/// Weights mapped (llama.cpp's default: quick to start, the first decode
/// pays the page faults) or read whole at load (`map` false).
pub fn set_weight_loading(params: &mut sys::llama_model_params, map: bool) {
    #[cfg(llama_has = "llama_load_mode")]
    if !map {
        params.load_mode = sys::llama_load_mode::LLAMA_LOAD_MODE_NONE;
    }
    #[cfg(not(llama_has = "llama_load_mode"))]
    {
        params.use_mmap = map;
        params.use_mlock = false;
    }
}

/// Flash attention as asked; `auto` keeps the tree's own default (trees
/// before the `flash_attn_type` enum had a bool, off by default).
pub fn set_flash_attn(params: &mut sys::llama_context_params, mode: FlashAttnMode) {
    #[cfg(llama_has = "llama_flash_attn_type")]
    {
        use sys::llama_flash_attn_type as T;
        params.flash_attn_type = match mode {
            FlashAttnMode::On => T::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttnMode::Off => T::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            FlashAttnMode::Auto => T::LLAMA_FLASH_ATTN_TYPE_AUTO,
        };
    }
    #[cfg(not(llama_has = "llama_flash_attn_type"))]
    match mode {
        FlashAttnMode::On => params.flash_attn = true,
        FlashAttnMode::Off => params.flash_attn = false,
        FlashAttnMode::Auto => {}
    }
}

/// Makes `reg` (an RPC server's backend) one of ggml's registered backends.
pub fn register_backend(reg: sys::ggml_backend_reg_t) -> Result<()> {
    #[cfg(llama_has = "ggml_backend_register")]
    {
        // SAFETY: `reg` came from the RPC backend's own add-server function
        // and lives as long as the process.
        unsafe { sys::ggml_backend_register(reg) };
        Ok(())
    }
    #[cfg(not(llama_has = "ggml_backend_register"))]
    {
        let _ = reg;
        anyhow::bail!("this llama.cpp tree cannot register RPC servers as devices (no ggml_backend_register; it came in late 2025): build a newer tree for --rpc")
    }
}
