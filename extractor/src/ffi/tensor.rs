//! A graph node as the eval callback sees it, and its copy to host f32.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::sync::Mutex;

use anyhow::{bail, ensure, Result};

use super::sys;

/// A borrowed graph node, valid only inside one eval-callback call.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    t: &'a sys::ggml_tensor,
}

/// A tensor's name as bytes, up to its NUL.
fn name_of(t: &sys::ggml_tensor) -> &[u8] {
    // SAFETY: c_char and u8 have the same layout; the array lives as long as the tensor.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(t.name.as_ptr().cast(), t.name.len()) };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

impl<'a> Node<'a> {
    /// # Safety
    /// `t` must be a tensor of a graph being computed, valid for `'a`.
    pub(super) unsafe fn from_raw(t: &'a sys::ggml_tensor) -> Node<'a> {
        Node { t }
    }

    /// The node's name as bytes, without allocating.
    pub fn name(&self) -> &'a [u8] {
        name_of(self.t)
    }

    /// The names of the node's operands (weights, caches, other nodes), in
    /// order, without allocating: what finds nodes llama.cpp leaves unnamed.
    pub fn source_names(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.t.src.iter().filter(|p| !p.is_null()).map(|&p| {
            // SAFETY: a node's non-null sources are tensors of the same graph
            // or the model's weights, alive at least as long as the node.
            name_of(unsafe { &*p })
        })
    }

    /// The node's operands, in order, without allocating.
    pub fn sources(&self) -> impl Iterator<Item = Node<'a>> + 'a {
        self.t.src.iter().filter(|p| !p.is_null()).map(|&p| {
            // SAFETY: as in `source_names`: alive at least as long as the node.
            Node { t: unsafe { &*p } }
        })
    }

    /// The tensor's identity within the graph being computed (its address):
    /// the same node seen as one's result and as another's operand.
    pub fn identity(&self) -> usize {
        std::ptr::from_ref(self.t) as usize
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
        super::backend::type_name(self.t.type_)
    }

    /// Whether [`Node::copy_to_f32`] can convert this node's type (no allocation).
    pub fn converts_to_f32(&self) -> bool {
        // SAFETY: type traits are static per type.
        let traits = unsafe { &*sys::ggml_get_type_traits(self.t.type_) };
        self.t.type_ == sys::ggml_type::GGML_TYPE_F32 || traits.to_float.is_some()
    }

    /// ggml's parameters of the op (an epsilon, a scale, rope's mode...),
    /// floats as their bits.
    pub fn op_params(&self) -> [i32; 16] {
        self.t.op_params
    }

    /// Byte strides, innermost first.
    pub fn nb(&self) -> [usize; 4] {
        self.t.nb
    }

    /// Where a view's bytes start in its root's (0 for a tensor with its own).
    pub fn view_offset(&self) -> usize {
        self.t.view_offs
    }

    /// ggml's tensor flags (input, output, parameter, ... computed).
    pub fn flags(&self) -> i32 {
        self.t.flags
    }

    /// A tensor no op computes: a weight, a cache, a graph input.
    pub fn is_leaf(&self) -> bool {
        self.t.op == sys::ggml_op::GGML_OP_NONE
    }

    /// The address of the node's bytes: equal for a node and the operand
    /// whose memory ggml's allocator let it compute in place.
    pub fn data_address(&self) -> usize {
        self.t.data as usize
    }

    /// An i32 or i64 tensor (token ids, positions, an argsort's order),
    /// which [`Node::copy_to_f32`] converts too (exact below 2^24).
    pub fn is_integer(&self) -> bool {
        matches!(
            self.t.type_,
            sys::ggml_type::GGML_TYPE_I32 | sys::ggml_type::GGML_TYPE_I64
        )
    }

    /// Shape in ggml order (innermost first).
    pub fn ne(&self) -> [i64; 4] {
        self.t.ne
    }

    /// Extent and byte strides, innermost first.
    pub fn geometry(&self) -> crate::kv_cells::Geometry {
        crate::kv_cells::Geometry {
            ne: self.t.ne,
            nb: self.t.nb,
        }
    }

    /// Bytes per element (per block for quantized types).
    pub fn type_size(&self) -> usize {
        // SAFETY: type traits are static per type.
        unsafe { &*sys::ggml_get_type_traits(self.t.type_) }.type_size
    }

    /// The tensor whose bytes this node is a view of (ggml keeps the
    /// outermost one), or `None` for a tensor with its own.
    pub fn view_root(&self) -> Option<Node<'a>> {
        // SAFETY: a view's source outlives the view: it is a cache, a weight
        // or a node of the same graph.
        (!self.t.view_src.is_null()).then(|| Node {
            t: unsafe { &*self.t.view_src },
        })
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
    /// A large node is copied by up to `threads` threads: the compute
    /// threads wait while the callback runs, so their cores are free.
    /// Returns the bytes fetched from the backend (0 when read in host memory).
    pub fn copy_to_f32(
        &self,
        keep: [i64; 4],
        threads: usize,
        scratch: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<usize> {
        let layout = self.layout(keep)?;
        // Only up to the last kept byte crosses PCIe or the network: the
        // padded KV cells at the end of a cache view stay where they are.
        let extent = layout.extent(keep);
        let (src, fetched) = self.read(extent, scratch)?;
        layout.gather(src, keep, threads, out);
        Ok(fetched)
    }

    /// What a copy keeping `keep` needs checked before it reads anything, and
    /// how the node's bytes are laid out.
    fn layout(&self, keep: [i64; 4]) -> Result<Layout> {
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
        let layout = Layout {
            nb: t.nb,
            blck: traits.blck_size as usize,
            type_size: traits.type_size,
            element: match (t.type_, traits.to_float) {
                (sys::ggml_type::GGML_TYPE_F32, _) => Element::F32,
                (sys::ggml_type::GGML_TYPE_F16, _) => Element::F16,
                (sys::ggml_type::GGML_TYPE_BF16, _) => Element::Bf16,
                (sys::ggml_type::GGML_TYPE_I32, _) => Element::I32,
                (sys::ggml_type::GGML_TYPE_I64, _) => Element::I64,
                (_, Some(to_float)) => Element::Ggml(to_float),
                (_, None) => bail!(
                    "node `{}` has type {}, which ggml cannot convert to float",
                    self.name_lossy(),
                    self.type_name()
                ),
            },
            row_contiguous: t.nb[0] == traits.type_size,
        };
        if layout.blck > 1 {
            ensure!(
                layout.row_contiguous && keep[0] == t.ne[0],
                "quantized node `{}` is not row-contiguous",
                self.name_lossy()
            );
        }
        Ok(layout)
    }

    /// The node's first `extent` bytes (at least): read in place from host
    /// memory, or fetched from the backend into `scratch`. Also returns the
    /// bytes fetched (0 for host memory).
    fn read<'s>(&'s self, extent: usize, scratch: &'s mut Vec<u8>) -> Result<(&'s [u8], usize)> {
        let t = self.t;
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
        if host {
            // SAFETY: host memory of nbytes at t.data, not written while the
            // callback runs (the scheduler waits for it).
            let src = unsafe { std::slice::from_raw_parts(t.data.cast::<u8>(), nbytes) };
            return Ok((src, 0));
        }
        scratch.resize(extent, 0);
        // SAFETY: `scratch` is writable for `extent` bytes, which lie within the tensor.
        unsafe { sys::ggml_backend_tensor_get(t, scratch.as_mut_ptr().cast(), 0, extent) };
        Ok((scratch, extent))
    }
}

/// How a node's elements lie in its bytes: strides, type, block size.
struct Layout {
    nb: [usize; 4],
    /// Elements per block (1, or 32 for q8_0 and the like).
    blck: usize,
    /// Bytes per block.
    type_size: usize,
    element: Element,
    /// Elements of a row are packed (no stride between them).
    row_contiguous: bool,
}

/// How one element type becomes f32.
#[derive(Clone, Copy)]
enum Element {
    F32,
    /// f16 and bf16 are converted here, vectorised (F16C where the CPU has
    /// it): ggml-base's `to_float` for them is a scalar loop, measured at
    /// 2.9-4.2 GB/s of f32 written against 7-9 GB/s for an f32 node's copy.
    F16,
    Bf16,
    /// Integers (token ids, positions, row indices), exact below 2^24.
    I32,
    I64,
    /// Any other type ggml converts (quantized blocks), with its `to_float`.
    Ggml(unsafe extern "C" fn(*const std::ffi::c_void, *mut f32, i64)),
}

impl Layout {
    /// The bytes of the first `n0` elements of a row.
    fn row_bytes(&self, n0: usize) -> usize {
        match self.row_contiguous {
            true => n0 / self.blck * self.type_size,
            false => (n0 - 1) * self.nb[0] + self.type_size,
        }
    }

    /// The bytes from the node's start to the end of its last kept element.
    fn extent(&self, keep: [i64; 4]) -> usize {
        match keep.contains(&0) {
            true => 0,
            false => {
                (1..4)
                    .map(|d| (keep[d] as usize - 1) * self.nb[d])
                    .sum::<usize>()
                    + self.row_bytes(keep[0] as usize)
            }
        }
    }

    /// The kept elements of `src` (the node's bytes), as f32 in ggml order,
    /// into `out` (its capacity reused, nothing zero-filled first): in blocks
    /// of rows shared by up to `threads` threads (OpenMP's team where ggml
    /// computes with one: see [`super::team`]).
    fn gather(&self, src: &[u8], keep: [i64; 4], threads: usize, out: &mut Vec<f32>) {
        let [n0, n1, n2, n3] = keep.map(|k| k as usize);
        let rows = n1 * n2 * n3;
        let n = n0 * rows;
        out.clear();
        if n == 0 {
            return;
        }
        out.reserve(n);
        let rows_each = rows.div_ceil(blocks(n, threads));
        let run = |first: usize, out: &mut [MaybeUninit<f32>]| {
            // The row's indices, stepped rather than divided out per row: the
            // permuted cache views have rows of 64 elements.
            let (mut i1, mut i2, mut i3) = (first % n1, first / n1 % n2, first / (n1 * n2));
            for dst in out.chunks_exact_mut(n0) {
                let row = i1 * self.nb[1] + i2 * self.nb[2] + i3 * self.nb[3];
                self.gather_row(src, row, dst);
                i1 += 1;
                if i1 == n1 {
                    (i1, i2) = (0, i2 + 1);
                    if i2 == n2 {
                        (i2, i3) = (0, i3 + 1);
                    }
                }
            }
            stream::fence();
        };
        let spare = &mut out.spare_capacity_mut()[..n];
        if rows_each >= rows {
            run(0, spare);
        } else {
            let blocks: Vec<Mutex<&mut [MaybeUninit<f32>]>> =
                spare.chunks_mut(rows_each * n0).map(Mutex::new).collect();
            super::team::for_each_task(threads, blocks.len(), &|k| {
                let mut block = blocks[k].lock().unwrap_or_else(|p| p.into_inner());
                run(k * rows_each, &mut block);
            });
        }
        // SAFETY: every row of the first n elements was written above (the
        // blocks cover them all, each task ran once, `gather_row` writes each
        // element of its row); a panic there would have left the length 0.
        unsafe { out.set_len(n) };
    }

    /// The first `dst.len()` elements of the row at byte `row` of `src`, into `dst`.
    fn gather_row(&self, src: &[u8], row: usize, dst: &mut [MaybeUninit<f32>]) {
        let n0 = dst.len();
        if self.row_contiguous {
            convert(&src[row..row + self.row_bytes(n0)], dst, self.element);
        } else {
            for (i0, d) in dst.iter_mut().enumerate() {
                let at = row + i0 * self.nb[0];
                d.write(element_to_f32(&src[at..at + self.type_size], self.element));
            }
        }
    }
}

/// Below this many elements (128 KiB of f32) a node is copied on the
/// callback's thread alone: waking the team would cost more than it saves.
const PARALLEL_MIN: usize = 1 << 15;

/// At most this many elements (1 MiB of f32) in one block of rows.
const BLOCK_MAX: usize = 1 << 18;

/// How many blocks a copy of `n` elements is cut into: one per thread for
/// any node above [`PARALLEL_MIN`] (most nodes of a 120-token GPT-2 pass are
/// 0.1-1 MiB: with 1 MiB blocks they were copied on one thread), a multiple
/// of the threads for the large ones, so that each thread gets as many.
fn blocks(n: usize, threads: usize) -> usize {
    match n < PARALLEL_MIN || threads <= 1 {
        true => 1,
        false => threads * n.div_ceil(threads * BLOCK_MAX),
    }
}

/// Elements converted at a time through a buffer on the stack (in L1): the
/// vectorised f16 conversion writes initialised `f32`s, which `out` is not yet.
const CONVERT_CHUNK: usize = 1024;

/// Converts packed elements of one type to f32, writing every one of
/// `out.len()` elements.
fn convert(bytes: &[u8], out: &mut [MaybeUninit<f32>], element: Element) {
    let n = out.len();
    match element {
        Element::F32 => {
            assert!(bytes.len() >= 4 * n, "a row shorter than its elements");
            stream::copy(&bytes[..4 * n], out);
        }
        Element::F16 => convert_halves::<half::f16>(bytes, out),
        Element::Bf16 => convert_halves::<half::bf16>(bytes, out),
        Element::I32 | Element::I64 => {
            let size = if matches!(element, Element::I32) {
                4
            } else {
                8
            };
            for (d, at) in out.iter_mut().zip(bytes.chunks_exact(size)) {
                d.write(element_to_f32(at, element));
            }
        }
        Element::Ggml(to_float) => {
            // SAFETY: `bytes` holds exactly the packed encoding of n elements
            // (whole blocks for quantized types), and `out` is writable for
            // them; to_float writes every one.
            unsafe { to_float(bytes.as_ptr().cast(), out.as_mut_ptr().cast(), n as i64) };
        }
    }
}

/// f16 or bf16 elements to f32, a stack buffer's worth at a time.
fn convert_halves<H>(bytes: &[u8], out: &mut [MaybeUninit<f32>])
where
    H: Copy,
    [H]: half::slice::HalfFloatSliceExt,
{
    use half::slice::HalfFloatSliceExt;
    assert!(
        bytes.len() >= 2 * out.len(),
        "a row shorter than its elements"
    );
    assert!(
        bytes.as_ptr().cast::<H>().is_aligned(),
        "a misaligned 16-bit row"
    );
    // SAFETY: aligned (checked above), at least out.len() 16-bit elements
    // long, and f16 and bf16 have no invalid bit patterns.
    let halves: &[H] = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), out.len()) };
    let mut buf = [0f32; CONVERT_CHUNK];
    for (src, dst) in halves
        .chunks(CONVERT_CHUNK)
        .zip(out.chunks_mut(CONVERT_CHUNK))
    {
        let buf = &mut buf[..src.len()];
        src.convert_to_f32_slice(buf);
        stream::copy(bytemuck::cast_slice(buf), dst);
    }
}

/// One element (`bytes` holds its encoding) as f32: the strided path's.
fn element_to_f32(bytes: &[u8], element: Element) -> f32 {
    match element {
        Element::F32 => f32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes")),
        Element::F16 => half::f16::from_ne_bytes([bytes[0], bytes[1]]).to_f32(),
        Element::Bf16 => half::bf16::from_ne_bytes([bytes[0], bytes[1]]).to_f32(),
        Element::I32 => i32::from_ne_bytes(bytes[..4].try_into().expect("4 bytes")) as f32,
        Element::I64 => i64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes")) as f32,
        Element::Ggml(_) => {
            let mut one = [MaybeUninit::uninit()];
            convert(bytes, &mut one, element);
            // SAFETY: `convert` wrote the one element.
            unsafe { one[0].assume_init() }
        }
    }
}

mod stream;

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    #[test]
    fn a_streamed_copy_writes_every_element_at_any_alignment() {
        for len in [0, 1, 3, 255, 256, 257, 1023, 1030] {
            let values: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 7.0).collect();
            let bytes = f32_bytes(&values);
            for offset in 0..4 {
                let mut dst = vec![MaybeUninit::new(f32::NAN); len + 4];
                stream::copy(&bytes, &mut dst[offset..offset + len]);
                stream::fence();
                // SAFETY: every element was initialised (NaN, then the copy).
                let got: Vec<f32> = dst.iter().map(|d| unsafe { d.assume_init() }).collect();
                assert_eq!(
                    &got[offset..offset + len],
                    &values[..],
                    "{len} at +{offset}"
                );
                assert!(got[..offset]
                    .iter()
                    .chain(&got[offset + len..])
                    .all(|v| v.is_nan()));
            }
        }
    }

    /// A node of `ne` elements laid out with the outer two dims swapped (as
    /// a permuted cache view is), each element `encode`d from its value.
    fn permuted(
        ne: [usize; 4],
        size: usize,
        encode: impl Fn(f32) -> Vec<u8>,
    ) -> (Vec<u8>, [usize; 4]) {
        let nb = [
            size,
            size * ne[0],
            size * ne[0] * ne[1] * ne[3],
            size * ne[0] * ne[1],
        ];
        let mut src = vec![0u8; size * ne.iter().product::<usize>()];
        for (i, value) in (0..ne.iter().product::<usize>()).map(|i| (i, value_at(i))) {
            let (i0, i1, i2, i3) = (
                i % ne[0],
                i / ne[0] % ne[1],
                i / (ne[0] * ne[1]) % ne[2],
                i / (ne[0] * ne[1] * ne[2]),
            );
            let at = i0 * nb[0] + i1 * nb[1] + i2 * nb[2] + i3 * nb[3];
            src[at..at + size].copy_from_slice(&encode(value));
        }
        (src, nb)
    }

    /// Element `i`'s value (in ggml order), exact in f16 too.
    fn value_at(i: usize) -> f32 {
        (i % 2039) as f32 * 0.25 - 255.0
    }

    #[test]
    fn a_strided_node_is_gathered_the_same_on_any_number_of_threads() {
        let ne = [64, 41, 30, 2];
        let f16 = |v: f32| half::f16::from_f32(v).to_ne_bytes().to_vec();
        let f32 = |v: f32| v.to_ne_bytes().to_vec();
        for (element, size, encode) in [
            (Element::F32, 4, &f32 as &dyn Fn(f32) -> Vec<u8>),
            (Element::F16, 2, &f16),
        ] {
            let (src, nb) = permuted(ne, size, encode);
            let layout = Layout {
                nb,
                blck: 1,
                type_size: size,
                element,
                row_contiguous: true,
            };
            // Whole, and with the last 11 cells of dim 1 dropped (KV padding).
            for keep in [ne, [64, 30, 30, 2]] {
                let expected: Vec<f32> = (0..keep.iter().product::<usize>())
                    .map(|k| {
                        let (i0, i1, rest) =
                            (k % keep[0], k / keep[0] % keep[1], k / (keep[0] * keep[1]));
                        value_at(i0 + ne[0] * (i1 + ne[1] * rest))
                    })
                    .collect();
                for threads in [1, 2, 3] {
                    let mut out = Vec::new();
                    layout.gather(&src, keep.map(|k| k as i64), threads, &mut out);
                    assert!(
                        out == expected,
                        "{size}-byte elements, keep {keep:?}, {threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    fn blocks_give_each_thread_work_above_the_minimum() {
        assert_eq!(blocks(PARALLEL_MIN - 1, 2), 1);
        assert_eq!(blocks(PARALLEL_MIN, 1), 1);
        assert_eq!(blocks(PARALLEL_MIN, 2), 2);
        assert_eq!(blocks(2 * BLOCK_MAX, 2), 2);
        assert_eq!(blocks(2 * BLOCK_MAX + 1, 2), 4);
    }
}
