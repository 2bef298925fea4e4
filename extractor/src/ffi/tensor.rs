//! A graph node as the eval callback sees it, and its copy to host f32.

use std::ffi::CStr;

use anyhow::{bail, ensure, Result};

use super::sys;

/// A borrowed graph node, valid only inside one eval-callback call.
pub struct Node<'a> {
    t: &'a sys::ggml_tensor,
}

impl<'a> Node<'a> {
    /// # Safety
    /// `t` must be a tensor of a graph being computed, valid for `'a`.
    pub(super) unsafe fn from_raw(t: &'a sys::ggml_tensor) -> Node<'a> {
        Node { t }
    }

    /// The node's name as bytes, without allocating.
    pub fn name(&self) -> &'a [u8] {
        // SAFETY: c_char and u8 have the same layout; the array lives as long as the tensor.
        let bytes: &'a [u8] =
            unsafe { std::slice::from_raw_parts(self.t.name.as_ptr().cast(), self.t.name.len()) };
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        &bytes[..end]
    }

    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(self.name()).into_owned()
    }

    /// ggml's op name ("MUL_MAT", "VIEW", ...).
    pub fn op_name(&self) -> &'static str {
        // SAFETY: ggml_op_name returns a static string for every op.
        unsafe { CStr::from_ptr(sys::ggml_op_name(self.t.op)) }
            .to_str()
            .unwrap_or("?")
    }

    pub fn ty(&self) -> sys::ggml_type {
        self.t.type_
    }

    pub fn type_name(&self) -> &'static str {
        super::type_name(self.t.type_)
    }

    /// Whether [`Node::copy_to_f32`] can convert this node's type (no allocation).
    pub fn converts_to_f32(&self) -> bool {
        // SAFETY: type traits are static per type.
        let traits = unsafe { &*sys::ggml_get_type_traits(self.t.type_) };
        self.t.type_ == sys::ggml_type::GGML_TYPE_F32 || traits.to_float.is_some()
    }

    /// Shape in ggml order (innermost first).
    pub fn ne(&self) -> [i64; 4] {
        self.t.ne
    }

    /// The backend buffer the node lives in ("CPU", "CUDA0", ...).
    pub fn buffer_name(&self) -> String {
        if self.t.buffer.is_null() {
            return "none".into();
        }
        // SAFETY: non-null buffer of a live tensor; the name is a static string.
        unsafe { CStr::from_ptr(sys::ggml_backend_buffer_name(self.t.buffer)) }
            .to_string_lossy()
            .into_owned()
    }

    /// Copies the node to host memory as f32 in ggml order, keeping only the
    /// first `keep[i]` indices of each dimension (to drop the padded KV cells).
    /// Strides are respected (views into fused tensors, the transposed V cache);
    /// any type ggml can convert to float (f16, bf16, quantized) is converted.
    /// `scratch` is reused between calls to avoid an allocation per node.
    /// Returns the bytes fetched from the backend (0 when read in host memory).
    pub fn copy_to_f32(
        &self,
        keep: [i64; 4],
        scratch: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        let t = self.t;
        for (d, (&k, &ne)) in keep.iter().zip(&t.ne).enumerate() {
            ensure!(
                (0..=ne).contains(&k),
                "cannot keep {k} of {ne} along dim {d}"
            );
        }
        ensure!(
            !t.buffer.is_null() && !t.data.is_null(),
            "node `{}` has no data yet",
            self.name_lossy()
        );
        // SAFETY: type traits are static per type.
        let traits = unsafe { &*sys::ggml_get_type_traits(t.type_) };
        let (blck, type_size) = (traits.blck_size as usize, traits.type_size);
        let is_f32 = t.type_ == sys::ggml_type::GGML_TYPE_F32;
        let to_float = traits.to_float;
        if !is_f32 && to_float.is_none() {
            bail!(
                "node `{}` has type {}, which ggml cannot convert to float",
                self.name_lossy(),
                self.type_name()
            );
        }
        let row_contiguous = t.nb[0] == type_size;
        if blck > 1 {
            ensure!(
                row_contiguous && keep[0] == t.ne[0],
                "quantized node `{}` is not row-contiguous",
                self.name_lossy()
            );
        }
        let row_bytes = |n0: usize| match row_contiguous {
            true => n0 / blck * type_size,
            false => (n0 - 1) * t.nb[0] + type_size,
        };
        // Only up to the last kept byte crosses PCIe or the network: the
        // padded KV cells at the end of a cache view stay where they are.
        let extent = match keep.contains(&0) {
            true => 0,
            false => {
                (1..4)
                    .map(|d| (keep[d] as usize - 1) * t.nb[d])
                    .sum::<usize>()
                    + row_bytes(keep[0] as usize)
            }
        };
        // SAFETY: the tensor is live and allocated; ggml_nbytes covers its whole
        // strided extent, and `extent` lies within it. A host buffer is read in
        // place; any other backend's is copied to `scratch` with
        // ggml_backend_tensor_get first.
        let nbytes = unsafe { sys::ggml_nbytes(t) };
        ensure!(
            extent <= nbytes,
            "node `{}`: kept extent beyond the tensor",
            self.name_lossy()
        );
        let host = unsafe { sys::ggml_backend_buffer_is_host(t.buffer) };
        let src: &[u8] = if host {
            // SAFETY: host memory of nbytes at t.data, not written while the
            // callback runs (the scheduler waits for it).
            unsafe { std::slice::from_raw_parts(t.data.cast::<u8>(), nbytes) }
        } else {
            scratch.resize(extent, 0);
            unsafe { sys::ggml_backend_tensor_get(t, scratch.as_mut_ptr().cast(), 0, extent) };
            scratch
        };

        let n = (keep[0] * keep[1] * keep[2] * keep[3]) as usize;
        out.clear();
        out.reserve(n);
        let [n0, n1, n2, n3] = keep.map(|k| k as usize);
        for i3 in 0..n3 {
            for i2 in 0..n2 {
                for i1 in 0..n1 {
                    let row = i1 * t.nb[1] + i2 * t.nb[2] + i3 * t.nb[3];
                    if row_contiguous && is_f32 {
                        let bytes = &src[row..row + n0 * 4];
                        out.extend(
                            bytes
                                .chunks_exact(4)
                                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
                        );
                    } else if row_contiguous {
                        let start = out.len();
                        out.resize(start + n0, 0.0);
                        let bytes = &src[row..row + row_bytes(n0)];
                        convert(bytes, &mut out[start..], is_f32, to_float);
                    } else {
                        for i0 in 0..n0 {
                            let at = row + i0 * t.nb[0];
                            let start = out.len();
                            out.push(0.0);
                            convert(
                                &src[at..at + type_size],
                                &mut out[start..],
                                is_f32,
                                to_float,
                            );
                        }
                    }
                }
            }
        }
        debug_assert_eq!(out.len(), n);
        Ok(if host { 0 } else { extent })
    }
}

/// Converts packed elements of one type to f32 (`out.len()` elements).
fn convert(bytes: &[u8], out: &mut [f32], is_f32: bool, to_float: sys::ggml_to_float_t) {
    if is_f32 {
        for (dst, src) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *dst = f32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        }
    } else if let Some(to_float) = to_float {
        // SAFETY: `bytes` holds exactly the packed encoding of out.len() elements
        // (whole blocks for quantized types), and `out` is writable for them.
        unsafe { to_float(bytes.as_ptr().cast(), out.as_mut_ptr(), out.len() as i64) };
    }
}
