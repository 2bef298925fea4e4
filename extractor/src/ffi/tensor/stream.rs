//! Copies into the capture's buffers with non-temporal stores: the copy is
//! read again only by the writer, after the pass, so its lines need not
//! enter the cache, where they would evict the compute's working set (and
//! each would first be read from memory, for ownership). On x86-64 (SSE2,
//! always there); elsewhere a plain copy.

use std::mem::MaybeUninit;

/// The f32s whose bytes are `bytes` (native encoding), into every element of `dst`.
pub fn copy(bytes: &[u8], dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(bytes.len(), 4 * dst.len(), "a copy of unequal lengths");
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= STREAM_MIN {
        return copy_streaming(bytes, dst);
    }
    // SAFETY: both are 4 * dst.len() bytes and do not overlap (a node's
    // data, or a stack buffer, is never the copy's buffer); f32 has no
    // invalid bit patterns.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.as_mut_ptr().cast::<u8>(), bytes.len())
    };
}

/// Below this many f32s (1 KiB) a row is copied plainly: a streamed
/// row's partly written first and last cache lines cost more than they save.
#[cfg(target_arch = "x86_64")]
const STREAM_MIN: usize = 256;

#[cfg(target_arch = "x86_64")]
fn copy_streaming(bytes: &[u8], dst: &mut [MaybeUninit<f32>]) {
    use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
    // Up to 3 elements before the first 16-byte-aligned one.
    let head = dst.as_ptr().align_offset(16).min(dst.len());
    let body = (dst.len() - head) / 4 * 4;
    let (start, rest) = dst.split_at_mut(head);
    let (middle, end) = rest.split_at_mut(body);
    copy_plain(&bytes[..4 * head], start);
    for (i, quad) in middle.chunks_exact_mut(4).enumerate() {
        let at = 4 * (head + 4 * i);
        let from = &bytes[at..at + 16];
        // SAFETY: `from` is 16 readable bytes (unaligned load); `quad` is
        // 4 writable f32s, 16-byte aligned (split at `head` above).
        unsafe { _mm_stream_ps(quad.as_mut_ptr().cast(), _mm_loadu_ps(from.as_ptr().cast())) };
    }
    copy_plain(&bytes[4 * (head + body)..], end);
}

#[cfg(target_arch = "x86_64")]
fn copy_plain(bytes: &[u8], dst: &mut [MaybeUninit<f32>]) {
    for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
        d.write(f32::from_ne_bytes(b.try_into().expect("4 bytes")));
    }
}

/// Orders this thread's streamed stores before anything it does next
/// (handing the copy over, finishing its task): once per block of rows.
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no operands and no preconditions.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}
