//! The metadata-only GGUF reader: header, keys and tensor table, checked so
//! that no ggml getter can abort on a malformed file.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use anyhow::{bail, ensure, Context as _, Result};

use crate::ffi::sys;

/// One tensor as the GGUF header describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order, innermost first, trailing 1s dropped (at least one dimension).
    pub ne: Vec<i64>,
    pub ty: sys::ggml_type,
    /// Offset of the data from the start of the file.
    pub file_offset: u64,
    pub size: u64,
}

impl TensorInfo {
    pub fn type_name(&self) -> &'static str {
        crate::ffi::backend::type_name(self.ty)
    }
}

/// A GGUF file's metadata and tensor table (no tensor data is read).
pub struct GgufFile {
    ctx: NonNull<sys::gguf_context>,
    /// ggml's tensors of the table, metadata only (no data): their `ne`
    /// through the one accessor every llama.cpp version has.
    tensors: NonNull<sys::ggml_context>,
    path: PathBuf,
    file_len: u64,
}

/// A metadata value, as far as the checks need it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// An array: its element type name and length.
    Array(&'static str, usize),
}

impl GgufFile {
    /// Reads the header. A file that is not GGUF, or is cut short, or whose
    /// tensors point past its end, is an error naming the file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        crate::ffi::backend::init();
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        ensure!(meta.is_file(), "{} is not a file", path.display());
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .context("path contains a NUL byte")?;
        let mut tensors: *mut sys::ggml_context = std::ptr::null_mut();
        // SAFETY: metadata only (no_alloc: no tensor data). gguf_init_from_file
        // returns NULL on any malformed or truncated header, and then makes no
        // ggml context; otherwise `tensors` is a context of its own, ours to free.
        let ctx = unsafe {
            sys::gguf_init_from_file(
                c_path.as_ptr(),
                sys::gguf_init_params {
                    no_alloc: true,
                    ctx: &mut tensors,
                },
            )
        };
        let (ctx, tensors) = match (NonNull::new(ctx), NonNull::new(tensors)) {
            (Some(ctx), Some(tensors)) => (ctx, tensors),
            _ => bail!(
                "{} is not a readable GGUF file ({} bytes): bad magic, unsupported version, or a header cut short \
                 (ggml's reason: llorch-checkpoint-model -v check {})",
                path.display(),
                meta.len(),
                path.display()
            ),
        };
        let file = GgufFile {
            ctx,
            tensors,
            path: path.to_path_buf(),
            file_len: meta.len(),
        };
        for t in file.tensors() {
            let end = t.file_offset.checked_add(t.size);
            if end.is_none_or(|end| end > file.file_len) {
                bail!(
                    "{} is truncated: tensor {} ({} bytes at offset {}) ends past the end of the file ({} bytes)",
                    path.display(),
                    t.name,
                    t.size,
                    t.file_offset,
                    file.file_len
                );
            }
        }
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self) -> *const sys::gguf_context {
        self.ctx.as_ptr()
    }

    fn key_id(&self, key: &str) -> Option<i64> {
        let k = CString::new(key).ok()?;
        // SAFETY: valid context and key.
        let id = unsafe { sys::gguf_find_key(self.raw(), k.as_ptr()) };
        (id >= 0).then_some(id)
    }

    /// The keys, in file order.
    pub fn keys(&self) -> Vec<String> {
        // SAFETY: ids in 0..n_kv are valid.
        (0..unsafe { sys::gguf_get_n_kv(self.raw()) })
            .map(|i| {
                unsafe { CStr::from_ptr(sys::gguf_get_key(self.raw(), i)) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    /// A metadata value; `None` if the key is absent.
    pub fn get(&self, key: &str) -> Option<Value> {
        use sys::gguf_type as T;
        let id = self.key_id(key)?;
        // SAFETY: `id` is a valid key id; each getter is called only for the
        // type gguf reports for it (the getters assert on a mismatch).
        unsafe {
            let ty = sys::gguf_get_kv_type(self.raw(), id);
            Some(match ty {
                T::GGUF_TYPE_STRING => Value::Str(
                    CStr::from_ptr(sys::gguf_get_val_str(self.raw(), id))
                        .to_string_lossy()
                        .into_owned(),
                ),
                T::GGUF_TYPE_UINT8 => Value::Uint(sys::gguf_get_val_u8(self.raw(), id) as u64),
                T::GGUF_TYPE_UINT16 => Value::Uint(sys::gguf_get_val_u16(self.raw(), id) as u64),
                T::GGUF_TYPE_UINT32 => Value::Uint(sys::gguf_get_val_u32(self.raw(), id) as u64),
                T::GGUF_TYPE_UINT64 => Value::Uint(sys::gguf_get_val_u64(self.raw(), id)),
                T::GGUF_TYPE_INT8 => Value::Int(sys::gguf_get_val_i8(self.raw(), id) as i64),
                T::GGUF_TYPE_INT16 => Value::Int(sys::gguf_get_val_i16(self.raw(), id) as i64),
                T::GGUF_TYPE_INT32 => Value::Int(sys::gguf_get_val_i32(self.raw(), id) as i64),
                T::GGUF_TYPE_INT64 => Value::Int(sys::gguf_get_val_i64(self.raw(), id)),
                T::GGUF_TYPE_FLOAT32 => Value::Float(sys::gguf_get_val_f32(self.raw(), id) as f64),
                T::GGUF_TYPE_FLOAT64 => Value::Float(sys::gguf_get_val_f64(self.raw(), id)),
                T::GGUF_TYPE_BOOL => Value::Bool(sys::gguf_get_val_bool(self.raw(), id)),
                T::GGUF_TYPE_ARRAY => {
                    let elem = sys::gguf_get_arr_type(self.raw(), id);
                    let name = sys::gguf_type_name(elem);
                    let name = if name.is_null() {
                        "?"
                    } else {
                        CStr::from_ptr(name).to_str().unwrap_or("?")
                    };
                    Value::Array(name, sys::gguf_get_arr_n(self.raw(), id))
                }
                _ => return None,
            })
        }
    }

    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An integer value of any integer type, if non-negative.
    pub fn get_uint(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn get_float(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::Float(v) => Some(v),
            _ => None,
        }
    }

    /// Element `i` of a string array; `None` if absent, not a string array, or out of range.
    pub fn get_arr_str(&self, key: &str, i: usize) -> Option<String> {
        let id = self.key_id(key)?;
        // SAFETY: valid id; type and bound checked before gguf_get_arr_str.
        unsafe {
            if sys::gguf_get_kv_type(self.raw(), id) != sys::gguf_type::GGUF_TYPE_ARRAY
                || sys::gguf_get_arr_type(self.raw(), id) != sys::gguf_type::GGUF_TYPE_STRING
                || i >= sys::gguf_get_arr_n(self.raw(), id)
            {
                return None;
            }
            Some(
                CStr::from_ptr(sys::gguf_get_arr_str(self.raw(), id, i))
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> Vec<TensorInfo> {
        // SAFETY: ids in 0..n_tensors are valid; ne points at GGML_MAX_DIMS values.
        unsafe {
            let data_offset = sys::gguf_get_data_offset(self.raw()) as u64;
            (0..sys::gguf_get_n_tensors(self.raw()))
                .map(|i| {
                    let name = CStr::from_ptr(sys::gguf_get_tensor_name(self.raw(), i))
                        .to_string_lossy()
                        .into_owned();
                    let tensor = sys::ggml_get_tensor(
                        self.tensors.as_ptr(),
                        sys::gguf_get_tensor_name(self.raw(), i),
                    );
                    assert!(
                        !tensor.is_null(),
                        "gguf made a ggml tensor of every table entry"
                    );
                    let mut ne = (*tensor).ne.to_vec();
                    while ne.len() > 1 && ne.last() == Some(&1) {
                        ne.pop();
                    }
                    TensorInfo {
                        name,
                        ne,
                        ty: sys::gguf_get_tensor_type(self.raw(), i),
                        file_offset: data_offset
                            + sys::gguf_get_tensor_offset(self.raw(), i) as u64,
                        size: sys::gguf_get_tensor_size(self.raw(), i) as u64,
                    }
                })
                .collect()
        }
    }
}

impl Drop for GgufFile {
    fn drop(&mut self) {
        // SAFETY: both ours, freed once.
        unsafe {
            sys::gguf_free(self.ctx.as_ptr());
            sys::ggml_free(self.tensors.as_ptr());
        }
    }
}
