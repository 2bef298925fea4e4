//! Safe owners of llama.cpp's model and context.

use std::ffi::CString;
use std::path::Path;
use std::ptr::NonNull;

use anyhow::{bail, ensure, Context as _, Result};

use super::eval::{abort_trampoline, eval_trampoline, InstalledHook, Observer};
use super::{compat, sys};
use llorch_checkpoint_spec::record::FlashAttnMode;

pub type Token = sys::llama_token;

/// A loaded model. Freed on drop.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
}

// SAFETY: llama.cpp models are immutable after loading and may be shared
// between threads (llama.cpp's own server does so).
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

impl Model {
    /// Loads a GGUF model; `n_gpu_layers` layers are offloaded to a GPU backend if one exists.
    /// The weights are mapped, as llama.cpp does by default.
    pub fn load(path: &Path, n_gpu_layers: i32) -> Result<Model> {
        Model::load_split(path, n_gpu_layers, &[], true)
    }

    /// As [`Model::load`], with the offloaded layers split over the devices in
    /// these proportions (llama.cpp's `--tensor-split`; empty: by free memory),
    /// and the weights mapped (`map`) or read whole at load.
    pub fn load_split(
        path: &Path,
        n_gpu_layers: i32,
        tensor_split: &[f32],
        map: bool,
    ) -> Result<Model> {
        super::backend::init();
        // SAFETY: a constant of the library.
        let max = unsafe { sys::llama_max_devices() };
        ensure!(
            tensor_split.len() <= max,
            "--tensor-split has {} values; this build takes at most {max}",
            tensor_split.len()
        );
        let mut split = vec![0f32; max];
        split[..tensor_split.len()].copy_from_slice(tensor_split);
        ensure!(
            path.is_file(),
            "model file {} does not exist",
            path.display()
        );
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .context("model path contains a NUL byte")?;
        // SAFETY: default params are plain data; the path outlives the call.
        let ptr = unsafe {
            let mut params = sys::llama_model_default_params();
            params.n_gpu_layers = n_gpu_layers;
            if !tensor_split.is_empty() {
                // llama.cpp reads llama_max_devices() values; `split` outlives the load.
                params.tensor_split = split.as_ptr();
            }
            compat::set_weight_loading(&mut params, map);
            sys::llama_model_load_from_file(c_path.as_ptr(), params)
        };
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Model { ptr }),
            None => match super::backend::last_error() {
                Some(reason) => bail!("llama.cpp could not load {}: {reason}", path.display()),
                None => bail!(
                    "llama.cpp could not load {} (not a GGUF model it supports, or a truncated or corrupt file; \
                     run with -v to see llama.cpp's log)",
                    path.display()
                ),
            },
        }
    }

    fn raw(&self) -> *const sys::llama_model {
        self.ptr.as_ptr()
    }

    fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: the model is valid; the vocab lives as long as the model.
        unsafe { sys::llama_model_get_vocab(self.raw()) }
    }

    pub fn n_embd(&self) -> i64 {
        // SAFETY: valid model.
        unsafe { sys::llama_model_n_embd(self.raw()) as i64 }
    }
    pub fn n_head(&self) -> i64 {
        // SAFETY: valid model.
        unsafe { sys::llama_model_n_head(self.raw()) as i64 }
    }
    pub fn n_head_kv(&self) -> i64 {
        // SAFETY: valid model.
        unsafe { sys::llama_model_n_head_kv(self.raw()) as i64 }
    }
    pub fn n_layer(&self) -> i64 {
        // SAFETY: valid model.
        unsafe { sys::llama_model_n_layer(self.raw()) as i64 }
    }
    pub fn n_ctx_train(&self) -> i64 {
        // SAFETY: valid model.
        unsafe { sys::llama_model_n_ctx_train(self.raw()) as i64 }
    }
    pub fn n_vocab(&self) -> i64 {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_n_tokens(self.vocab()) as i64 }
    }

    /// A metadata value as a string (`general.architecture`, `gpt2.feed_forward_length`, ...).
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: buf is writable for buf.len() bytes; the key outlives the call.
            let n = unsafe {
                sys::llama_model_meta_val_str(
                    self.raw(),
                    key.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return None;
            }
            if (n as usize) < buf.len() {
                buf.truncate(n as usize);
                return String::from_utf8(buf).ok();
            }
            buf.resize(n as usize + 1, 0);
        }
    }

    /// Tokenizes like llama.cpp's tools do: special tokens added if the model says so, no special parsing.
    pub fn tokenize(&self, text: &str) -> Result<Vec<Token>> {
        let len = i32::try_from(text.len()).context("prompt too long")?;
        let mut tokens = vec![0 as Token; text.len() + 8];
        // SAFETY: text is valid for len bytes; tokens is writable for its length.
        let n = unsafe {
            sys::llama_tokenize(
                self.vocab(),
                text.as_ptr().cast(),
                len,
                tokens.as_mut_ptr(),
                tokens.len() as i32,
                true,
                false,
            )
        };
        if n < 0 {
            tokens.resize((-n) as usize, 0);
            // SAFETY: as above, with the size llama.cpp asked for.
            let n2 = unsafe {
                sys::llama_tokenize(
                    self.vocab(),
                    text.as_ptr().cast(),
                    len,
                    tokens.as_mut_ptr(),
                    tokens.len() as i32,
                    true,
                    false,
                )
            };
            ensure!(n2 >= 0, "llama.cpp could not tokenize the prompt");
            tokens.truncate(n2 as usize);
        } else {
            tokens.truncate(n as usize);
        }
        Ok(tokens)
    }

    /// The text of one token (special tokens rendered).
    pub fn token_to_piece(&self, token: Token) -> String {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab(),
                    token,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    0,
                    true,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return String::from_utf8_lossy(&buf).into_owned();
            }
            buf.resize((-n) as usize, 0);
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: we own the model; contexts borrow it and are dropped first.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// Writes `output`: `input` with every tensor dequantized to f32, through
/// llama.cpp's own quantize API (`LLAMA_FTYPE_ALL_F32`), so that a run on it
/// differs from a run on `input` only by how the kernels compute.
pub fn dequantize_to_f32(input: &Path, output: &Path, threads: i32) -> Result<()> {
    super::backend::init();
    ensure!(
        input.is_file(),
        "model file {} does not exist",
        input.display()
    );
    let c_in = CString::new(input.as_os_str().as_encoded_bytes())
        .context("model path contains a NUL byte")?;
    let c_out = CString::new(output.as_os_str().as_encoded_bytes())
        .context("output path contains a NUL byte")?;
    // SAFETY: default params are plain data; both paths outlive the call,
    // which reads `input` and writes `output` and keeps no pointer.
    let status = unsafe {
        let mut params = sys::llama_model_quantize_default_params();
        params.ftype = sys::llama_ftype::LLAMA_FTYPE_ALL_F32;
        params.nthread = threads;
        // From a quantized type to f32 is dequantizing; llama.cpp calls every
        // change of a quantized tensor's type requantizing.
        params.allow_requantize = true;
        sys::llama_model_quantize(c_in.as_ptr(), c_out.as_ptr(), &params)
    };
    ensure!(
        status == 0,
        "llama.cpp could not write an f32 copy of {} to {} (status {status}; run with -v for its reason)",
        input.display(),
        output.display()
    );
    Ok(())
}

/// KV cache element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    F16,
    F32,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        }
    }
}

pub struct ContextParams {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_threads: i32,
    pub kv_type: KvType,
    /// Flash attention fuses softmax into one op, so `kq_soft_max` never exists
    /// with it on. `Auto`: llama.cpp decides, as it does by default.
    pub flash_attn: FlashAttnMode,
}

/// An inference context over a borrowed model, with an optional eval hook.
pub struct Context<'m, O: Observer> {
    ptr: NonNull<sys::llama_context>,
    /// Registered with the context; a field, so dropped after `Drop::drop`
    /// has freed the context: it outlives every callback llama.cpp makes.
    hook: Option<InstalledHook<O>>,
    n_vocab: usize,
    _model: std::marker::PhantomData<&'m Model>,
}

impl<'m, O: Observer> Context<'m, O> {
    /// Creates a context. With `observer = None` no callback is registered at
    /// all, so disabled extraction costs nothing.
    pub fn new(
        model: &'m Model,
        params: &ContextParams,
        observer: Option<O>,
    ) -> Result<Context<'m, O>> {
        let hook = observer.map(InstalledHook::new);
        let kv = match params.kv_type {
            KvType::F16 => sys::ggml_type::GGML_TYPE_F16,
            KvType::F32 => sys::ggml_type::GGML_TYPE_F32,
        };
        // SAFETY: default params are plain data. The hook's pointers stay valid
        // until it is dropped, after llama_free (see Drop); `cb_eval` runs
        // only inside llama_decode, which `decode` calls from `&mut self`, so
        // no reference from the hook's accessors is alive then.
        let ptr = unsafe {
            let mut p = sys::llama_context_default_params();
            p.n_ctx = params.n_ctx;
            p.n_batch = params.n_batch;
            p.n_ubatch = params.n_batch;
            p.n_threads = params.n_threads;
            p.n_threads_batch = params.n_threads;
            p.type_k = kv;
            p.type_v = kv;
            compat::set_flash_attn(&mut p, params.flash_attn);
            p.no_perf = true;
            if let Some(hook) = &hook {
                p.cb_eval = Some(eval_trampoline::<O>);
                p.cb_eval_user_data = hook.user_data();
                p.abort_callback = Some(abort_trampoline);
                p.abort_callback_data = hook.abort_data();
            }
            sys::llama_init_from_model(model.ptr.as_ptr(), p)
        };
        let ptr = NonNull::new(ptr)
            .context("llama.cpp could not create a context (out of memory, or n_ctx too large?)")?;
        Ok(Context {
            ptr,
            hook,
            n_vocab: model.n_vocab() as usize,
            _model: std::marker::PhantomData,
        })
    }

    /// Runs one forward pass over `tokens` at positions `pos0..`. With
    /// `all_logits`, every position produces logits (and the last layer keeps
    /// every row); otherwise only the last one does.
    pub fn decode(&mut self, tokens: &[Token], pos0: i32, all_logits: bool) -> Result<()> {
        ensure!(!tokens.is_empty(), "nothing to decode");
        let n = tokens.len() as i32;
        // SAFETY: the batch is allocated for n tokens and one sequence id each,
        // filled within bounds, and freed below in every path. llama_decode
        // runs the hook's callbacks: `&mut self` means that no reference
        // from the hook's accessors is alive meanwhile.
        let status = unsafe {
            let batch = sys::llama_batch_init(n, 0, 1);
            for (i, &tok) in tokens.iter().enumerate() {
                *batch.token.add(i) = tok;
                *batch.pos.add(i) = pos0 + i as i32;
                *batch.n_seq_id.add(i) = 1;
                *(*batch.seq_id.add(i)) = 0;
                *batch.logits.add(i) = (all_logits || i + 1 == tokens.len()) as i8;
            }
            let mut batch = batch;
            batch.n_tokens = n;
            let status = sys::llama_decode(self.ptr.as_ptr(), batch);
            sys::llama_batch_free(batch);
            // A GPU backend may still be computing: wait, so that the time a
            // caller measures around decode is the computation's.
            sys::llama_synchronize(self.ptr.as_ptr());
            status
        };
        // Whatever the status: the scheduler may have finished the graph
        // (GPU backends never abort), or aborted it because of this error.
        if let Some(err) = self.hook.as_mut().and_then(InstalledHook::take_error) {
            return Err(err.context("extraction stopped the computation"));
        }
        match status {
            0 => Ok(()),
            1 => bail!("llama_decode: no KV-cache slot for {n} tokens (n_ctx too small)"),
            2 => bail!("llama_decode was aborted"),
            s => bail!("llama_decode failed with status {s}"),
        }
    }

    /// Empties the KV cache: the next decode starts a fresh sequence.
    pub fn clear_memory(&mut self) {
        // SAFETY: the context is valid; its memory lives as long as it does.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), true) }
    }

    /// The logits of output row `i` of the last decode (`-1`: the last row).
    pub fn logits(&self, i: i32) -> Result<&[f32]> {
        // SAFETY: llama.cpp returns n_vocab floats valid until the next decode,
        // which needs `&mut self`, so the borrow keeps them alive.
        let ptr = unsafe { sys::llama_get_logits_ith(self.ptr.as_ptr(), i) };
        ensure!(!ptr.is_null(), "no logits for output row {i}");
        // SAFETY: see above.
        Ok(unsafe { std::slice::from_raw_parts(ptr, self.n_vocab) })
    }

    pub fn observer_mut(&mut self) -> Option<&mut O> {
        self.hook.as_mut().map(InstalledHook::observer_mut)
    }
}

impl<O: Observer> Drop for Context<'_, O> {
    fn drop(&mut self) {
        // SAFETY: we own the context. Once it is freed no callback can run,
        // and only then is the hook (a field) dropped.
        unsafe { sys::llama_free(self.ptr.as_ptr()) }
    }
}
