//! GGUF files through ggml's own gguf API: a writer (metadata, tensors in
//! f32/f16/q8_0) and a metadata-only reader that never aborts on a bad file.
//!
//! ggml's getters `GGML_ASSERT` on a wrong key type or index (an abort, not an
//! error), so [`GgufFile`] checks the type and the bounds before each call.

use std::collections::HashSet;
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use anyhow::{bail, ensure, Context as _, Result};

use super::sys;

mod read;
pub use read::{GgufFile, TensorInfo, Value};

/// Tensor element types the writer produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Q8_0,
}

impl Dtype {
    pub fn ggml(self) -> sys::ggml_type {
        match self {
            Dtype::F32 => sys::ggml_type::GGML_TYPE_F32,
            Dtype::F16 => sys::ggml_type::GGML_TYPE_F16,
            Dtype::Q8_0 => sys::ggml_type::GGML_TYPE_Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`enum llama_ftype`) for a model mostly of this type.
    pub fn llama_ftype(self) -> u32 {
        match self {
            Dtype::F32 => sys::llama_ftype::LLAMA_FTYPE_ALL_F32.0,
            Dtype::F16 => sys::llama_ftype::LLAMA_FTYPE_MOSTLY_F16.0,
            Dtype::Q8_0 => sys::llama_ftype::LLAMA_FTYPE_MOSTLY_Q8_0.0,
        }
    }

    /// Bytes of one row of `n` elements (q8_0 packs blocks of 32).
    pub fn row_size(self, n: i64) -> usize {
        // SAFETY: pure function of a valid type.
        unsafe { sys::ggml_row_size(self.ggml(), n) }
    }

    /// Converts f32 rows of `row_len` elements to this type with ggml's own
    /// conversion (the same code llama.cpp's quantizer uses).
    pub fn convert(self, data: &[f32], row_len: i64) -> Result<Vec<u8>> {
        ensure!(
            row_len > 0 && data.len() as i64 % row_len == 0,
            "{} values are not rows of {row_len}",
            data.len()
        );
        let rows = data.len() as i64 / row_len;
        match self {
            Dtype::F32 => {
                let mut out = Vec::with_capacity(data.len() * 4);
                for v in data {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Ok(out)
            }
            Dtype::F16 => {
                let mut out = vec![0u16; data.len()];
                // SAFETY: both buffers hold data.len() elements.
                unsafe {
                    sys::ggml_fp32_to_fp16_row(
                        data.as_ptr(),
                        out.as_mut_ptr().cast(),
                        data.len() as i64,
                    )
                };
                let mut bytes = Vec::with_capacity(out.len() * 2);
                for v in out {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                Ok(bytes)
            }
            Dtype::Q8_0 => {
                // SAFETY: block size of a valid type.
                let blck = unsafe { sys::ggml_blck_size(self.ggml()) };
                ensure!(
                    row_len % blck == 0,
                    "q8_0 needs rows that are a multiple of {blck}, not {row_len}"
                );
                let mut out = vec![0u8; self.row_size(row_len) * rows as usize];
                // SAFETY: `data` holds rows*row_len floats and `out` rows full q8_0 rows;
                // q8_0 needs no importance matrix.
                let written = unsafe {
                    sys::ggml_quantize_chunk(
                        self.ggml(),
                        data.as_ptr(),
                        out.as_mut_ptr().cast(),
                        0,
                        rows,
                        row_len,
                        std::ptr::null(),
                    )
                };
                ensure!(
                    written == out.len(),
                    "ggml_quantize_chunk wrote {written} bytes, expected {}",
                    out.len()
                );
                Ok(out)
            }
        }
    }
}

fn c_string(s: &str) -> Result<CString> {
    CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"))
}

/// A GGUF being assembled in memory; written by [`GgufWriter::write`].
pub struct GgufWriter {
    gguf: NonNull<sys::gguf_context>,
    /// Holds the tensors' metadata (no data: `no_alloc`).
    meta: NonNull<sys::ggml_context>,
    /// The tensors' bytes; gguf keeps pointers into these until it writes.
    data: Vec<Vec<u8>>,
    names: HashSet<String>,
    capacity: usize,
}

impl GgufWriter {
    /// An empty GGUF with room for `max_tensors` tensors.
    pub fn new(max_tensors: usize) -> Result<GgufWriter> {
        // ggml_tensor_overhead() is an object header plus the tensor struct;
        // 256 bytes more per tensor is ample for the header.
        let mem_size = max_tensors * (std::mem::size_of::<sys::ggml_tensor>() + 256) + 4096;
        // SAFETY: plain constructors; no_alloc means ggml allocates only metadata.
        unsafe {
            let meta = sys::ggml_init(sys::ggml_init_params {
                mem_size,
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            });
            let meta = NonNull::new(meta).context("ggml_init failed")?;
            let gguf = match NonNull::new(sys::gguf_init_empty()) {
                Some(g) => g,
                None => {
                    sys::ggml_free(meta.as_ptr());
                    bail!("gguf_init_empty failed");
                }
            };
            Ok(GgufWriter {
                gguf,
                meta,
                data: Vec::new(),
                names: HashSet::new(),
                capacity: max_tensors,
            })
        }
    }

    pub fn set_str(&mut self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (c_string(key)?, c_string(value)?);
        // SAFETY: valid context; gguf copies both strings.
        unsafe { sys::gguf_set_val_str(self.gguf.as_ptr(), k.as_ptr(), v.as_ptr()) };
        Ok(())
    }

    pub fn set_u32(&mut self, key: &str, value: u32) -> Result<()> {
        let k = c_string(key)?;
        // SAFETY: valid context; the key is copied.
        unsafe { sys::gguf_set_val_u32(self.gguf.as_ptr(), k.as_ptr(), value) };
        Ok(())
    }

    pub fn set_f32(&mut self, key: &str, value: f32) -> Result<()> {
        let k = c_string(key)?;
        // SAFETY: as above.
        unsafe { sys::gguf_set_val_f32(self.gguf.as_ptr(), k.as_ptr(), value) };
        Ok(())
    }

    pub fn set_bool(&mut self, key: &str, value: bool) -> Result<()> {
        let k = c_string(key)?;
        // SAFETY: as above.
        unsafe { sys::gguf_set_val_bool(self.gguf.as_ptr(), k.as_ptr(), value) };
        Ok(())
    }

    pub fn set_arr_i32(&mut self, key: &str, values: &[i32]) -> Result<()> {
        let k = c_string(key)?;
        // SAFETY: `values` holds values.len() i32s; gguf copies them.
        unsafe {
            sys::gguf_set_arr_data(
                self.gguf.as_ptr(),
                k.as_ptr(),
                sys::gguf_type::GGUF_TYPE_INT32,
                values.as_ptr().cast::<c_void>(),
                values.len(),
            )
        };
        Ok(())
    }

    pub fn set_arr_str(&mut self, key: &str, values: &[String]) -> Result<()> {
        let k = c_string(key)?;
        let owned = values
            .iter()
            .map(|v| c_string(v))
            .collect::<Result<Vec<_>>>()?;
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        // SAFETY: every pointer is a live NUL-terminated string; gguf copies them.
        unsafe {
            sys::gguf_set_arr_str(
                self.gguf.as_ptr(),
                k.as_ptr(),
                ptrs.as_mut_ptr(),
                ptrs.len(),
            )
        };
        Ok(())
    }

    /// Adds a tensor of shape `ne` (ggml order, innermost first) whose bytes
    /// are already in type `ty` (see [`Dtype::convert`]).
    pub fn add_tensor(&mut self, name: &str, ne: &[i64], ty: Dtype, bytes: Vec<u8>) -> Result<()> {
        ensure!(
            !ne.is_empty() && ne.len() <= 4,
            "tensor {name}: {} dimensions",
            ne.len()
        );
        ensure!(
            name.len() < sys::GGML_MAX_NAME as usize,
            "tensor name {name} is longer than ggml allows"
        );
        ensure!(
            self.names.insert(name.to_string()),
            "duplicate tensor {name}"
        );
        ensure!(
            self.names.len() <= self.capacity,
            "more than {} tensors",
            self.capacity
        );
        let rows: i64 = ne[1..].iter().product();
        let expected = ty.row_size(ne[0]) * rows as usize;
        ensure!(
            bytes.len() == expected,
            "tensor {name}: {} bytes, shape {ne:?} in {ty:?} needs {expected}",
            bytes.len()
        );
        let c_name = c_string(name)?;
        // SAFETY: the metadata context has room (checked above); ne has
        // ne.len() elements. gguf copies the tensor struct and keeps the data
        // pointer, whose Vec we own until drop (moving the Vec keeps its heap buffer).
        unsafe {
            let t =
                sys::ggml_new_tensor(self.meta.as_ptr(), ty.ggml(), ne.len() as i32, ne.as_ptr());
            ensure!(!t.is_null(), "ggml could not create tensor {name}");
            sys::ggml_set_name(t, c_name.as_ptr());
            sys::gguf_add_tensor(self.gguf.as_ptr(), t);
            sys::gguf_set_tensor_data(self.gguf.as_ptr(), c_name.as_ptr(), bytes.as_ptr().cast());
        }
        self.data.push(bytes);
        Ok(())
    }

    /// Writes the file atomically: to a temporary file beside it, then renamed.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let file_name = path
            .file_name()
            .context("output path has no file name")?
            .to_string_lossy();
        let tmp: PathBuf = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let c_tmp =
            CString::new(tmp.as_os_str().as_encoded_bytes()).context("path contains a NUL byte")?;
        // SAFETY: valid context; all tensor data pointers are alive (self.data).
        let ok = unsafe { sys::gguf_write_to_file(self.gguf.as_ptr(), c_tmp.as_ptr(), false) };
        if !ok {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "ggml could not write {} (disk full or not writable?)",
                tmp.display()
            );
        }
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        // SAFETY: both contexts are ours and freed once.
        unsafe {
            sys::gguf_free(self.gguf.as_ptr());
            sys::ggml_free(self.meta.as_ptr());
        }
    }
}
