//! Checkpoint files.
//!
//! `.bin` (the seed's format), little-endian:
//! `[n_dims: i32][shape: i64 x n_dims][data: f32 x n_elements]`, shape row-major
//! (outermost first, i.e. ggml's ne reversed), data row-major. `.npy` is
//! standard NumPy v1.0 (`<f4`, C order), written and read with `npyz`.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use npyz::WriterBuilder;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Bin,
    Npy,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Bin => "bin",
            Format::Npy => "npy",
        }
    }
}

/// A checkpoint read back from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Row-major, outermost first.
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// The most dimensions a `.bin` may declare (ggml has 4; leave room, refuse nonsense).
const MAX_DIMS: i32 = 8;

pub fn write(format: Format, out: &mut impl Write, shape: &[i64], data: &[f32]) -> Result<()> {
    let n: i64 = shape.iter().product();
    assert_eq!(
        n as usize,
        data.len(),
        "shape {shape:?} does not match {} elements",
        data.len()
    );
    match format {
        Format::Bin => {
            out.write_all(&(shape.len() as i32).to_le_bytes())?;
            for d in shape {
                out.write_all(&d.to_le_bytes())?;
            }
            if cfg!(target_endian = "little") {
                // The data as it is in memory: no copy of a tensor of hundreds of MB.
                out.write_all(bytemuck::cast_slice(data))?;
            } else {
                let mut buf = Vec::with_capacity(64 << 10);
                for chunk in data.chunks(16 << 10) {
                    buf.clear();
                    buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                    out.write_all(&buf)?;
                }
            }
        }
        Format::Npy => {
            let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
            let mut writer = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(&shape)
                .writer(out)
                .begin_nd()?;
            writer.extend(data.iter().copied())?;
            writer.finish()?;
        }
    }
    Ok(())
}

/// Writes a checkpoint file whole or not at all; the format follows the
/// extension (`.npy`, else `.bin`).
pub fn write_file(path: &Path, shape: &[i64], data: &[f32]) -> Result<()> {
    let format = match path.extension().is_some_and(|e| e == "npy") {
        true => Format::Npy,
        false => Format::Bin,
    };
    let mut bytes = Vec::with_capacity(data.len() * 4 + 128);
    write(format, &mut bytes, shape, data)?;
    crate::files::write_atomically(path, &bytes)
}

/// A reference tensor in f64 as `.npy` (`<f8`), written whole or not at all.
pub fn write_npy_f64(path: &Path, shape: &[usize], data: &[f64]) -> Result<()> {
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut bytes = Vec::with_capacity(data.len() * 8 + 128);
    let mut writer = npyz::WriteOptions::<f64>::new()
        .default_dtype()
        .shape(&dims)
        .writer(&mut bytes)
        .begin_nd()?;
    writer.extend(data.iter().copied())?;
    writer.finish()?;
    crate::files::write_atomically(path, &bytes)
}

/// A checkpoint's or reference tensor's shape from its header alone, the
/// data left unread: `.bin`, or `.npy` by extension.
pub fn read_shape(path: &Path) -> Result<Vec<i64>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let shape = match format_of(path) {
        Format::Npy => npyz::NpyFile::new(reader)
            .map(|npy| npy.shape().iter().map(|&d| d as i64).collect())
            .context("not a NumPy .npy file"),
        Format::Bin => {
            let mut n_dims = [0u8; 4];
            reader.read_exact(&mut n_dims).context("truncated header")?;
            let n_dims = i32::from_le_bytes(n_dims);
            if !(1..=MAX_DIMS).contains(&n_dims) {
                bail!(
                    "{}: n_dims is {n_dims}, expected 1 to {MAX_DIMS}",
                    path.display()
                );
            }
            let mut dims = vec![0u8; 8 * n_dims as usize];
            reader.read_exact(&mut dims).context("truncated header")?;
            Ok(dims
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect())
        }
    };
    shape.with_context(|| format!("{} is not a valid tensor file", path.display()))
}

/// Reads and validates a checkpoint file; the format follows the extension.
/// Every defect names the file and what is wrong with it.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = read_bytes(path)?;
    parse(&bytes, format_of(path)).with_context(|| {
        format!(
            "{} ({} bytes) is not a valid checkpoint",
            path.display(),
            bytes.len()
        )
    })
}

/// A checkpoint file's bytes, validated: the header is checked against the
/// bytes present before anything is allocated for the data.
pub fn parse(bytes: &[u8], format: Format) -> Result<Tensor> {
    match format {
        Format::Bin => parse_bin(bytes),
        Format::Npy => parse_npy(bytes),
    }
}

/// `.npy` by extension, `.bin` otherwise.
fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => Format::Npy,
        _ => Format::Bin,
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

pub fn parse_bin(bytes: &[u8]) -> Result<Tensor> {
    if bytes.len() < 4 {
        bail!(
            "truncated header: {} bytes, need at least 4 for n_dims",
            bytes.len()
        );
    }
    let n_dims = i32::from_le_bytes(bytes[0..4].try_into().unwrap());
    if !(1..=MAX_DIMS).contains(&n_dims) {
        bail!("n_dims is {n_dims}, expected 1 to {MAX_DIMS}");
    }
    let header = 4 + 8 * n_dims as usize;
    if bytes.len() < header {
        bail!(
            "truncated header: {} bytes, need {header} for {n_dims} dimensions",
            bytes.len()
        );
    }
    let shape: Vec<i64> = bytes[4..header]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    if let Some((i, d)) = shape.iter().enumerate().find(|(_, &d)| d < 0) {
        bail!("dimension {i} is negative ({d})");
    }
    // In i64, as every reader multiplies shapes: [2^60, 10, 0] holds nothing,
    // but its product overflows on the way.
    let n = shape
        .iter()
        .try_fold(1i64, |acc, &d| acc.checked_mul(d))
        .with_context(|| format!("shape {shape:?} overflows"))? as u64;
    let expected = n
        .checked_mul(4)
        .and_then(|b| b.checked_add(header as u64))
        .context("shape overflows")?;
    let actual = bytes.len() as u64;
    if actual < expected {
        bail!("truncated data: shape {shape:?} needs {expected} bytes, the file has {actual}");
    }
    if actual > expected {
        bail!(
            "{} trailing bytes after the data of shape {shape:?}",
            actual - expected
        );
    }
    let data = bytes[header..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Ok(Tensor { shape, data })
}

/// A checkpoint or reference tensor, row-major, widened to f64: what the
/// comparison and the matcher read.
#[derive(Debug, Clone, PartialEq)]
pub struct Values {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// A checkpoint (`.bin`) or a reference tensor (`.npy`, f4 or f8) as [`Values`].
pub fn read_values(path: &Path) -> Result<Values> {
    let (shape, data) = read_f64(path)?;
    Ok(Values {
        shape: shape.into_iter().map(|d| d as usize).collect(),
        data,
    })
}

/// A checkpoint, or a reference tensor in f64, as f64: `.bin`, or `.npy` of
/// little-endian `f4` or `f8` (what the PyTorch reference writes).
pub fn read_f64(path: &Path) -> Result<(Vec<i64>, Vec<f64>)> {
    if format_of(path) == Format::Bin {
        let t = read(path)?;
        return Ok((t.shape, t.data.into_iter().map(f64::from).collect()));
    }
    let bytes = read_bytes(path)?;
    parse_npy_f64(&bytes).with_context(|| {
        format!(
            "{} ({} bytes) is not a valid tensor file",
            path.display(),
            bytes.len()
        )
    })
}

/// A `.npy` of `<f8`, `<f4` or `<f2` as f64.
pub fn parse_npy_f64(bytes: &[u8]) -> Result<(Vec<i64>, Vec<f64>)> {
    let (npy, shape) = open_npy(bytes)?;
    let dtype = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => bail!("dtype {other:?} is not a plain float"),
    };
    let data = match dtype.as_str() {
        "<f8" => npy.into_vec::<f64>()?,
        "<f4" => npy.into_vec::<f32>()?.into_iter().map(f64::from).collect(),
        "<f2" => npy
            .into_vec::<npyz::half::f16>()?
            .into_iter()
            .map(f64::from)
            .collect(),
        other => bail!("dtype {other}: write <f4 (f32), <f2 (f16) or <f8 (f64)"),
    };
    Ok((shape, data))
}

fn parse_npy(bytes: &[u8]) -> Result<Tensor> {
    let (npy, shape) = open_npy(bytes)?;
    let data: Vec<f32> = npy.into_vec().context("data is not f32 or is truncated")?;
    Ok(Tensor { shape, data })
}

/// The header of a C-ordered `.npy`, refused when the data it declares is
/// more than the bytes present (a header claiming 2^40 elements must not
/// allocate for them).
fn open_npy(bytes: &[u8]) -> Result<(npyz::NpyFile<&[u8]>, Vec<i64>)> {
    check_npy_header(bytes)?;
    let npy = npyz::NpyFile::new(bytes).context("not a NumPy .npy file")?;
    if npy.order() != npyz::Order::C {
        bail!("Fortran-ordered arrays are not supported");
    }
    let shape: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
    if shape
        .iter()
        .try_fold(1i64, |acc, &d| acc.checked_mul(d))
        .is_none()
    {
        bail!("shape {:?} overflows", npy.shape());
    }
    let declared = npy
        .shape()
        .iter()
        .try_fold(npy.dtype().num_bytes().unwrap_or(1) as u64, |acc, &d| {
            acc.checked_mul(d)
        });
    match declared {
        Some(n) if n <= bytes.len() as u64 => Ok((npy, shape)),
        _ => bail!(
            "the header declares shape {shape:?} of {}, more data than the file's {} bytes",
            match npy.dtype() {
                npyz::DType::Plain(ts) => ts.to_string(),
                other => format!("{other:?}"),
            },
            bytes.len()
        ),
    }
}

/// NumPy's own limit on a `.npy` header (`max_header_size`, numpy >= 1.24).
const MAX_NPY_HEADER: usize = 10_000;

/// A `.npy` header is a flat dict with a shape tuple; deeper nesting is not
/// one we write or read, and npyz's parser (py_literal, pest) backtracks
/// exponentially in it.
const MAX_NPY_NESTING: usize = 4;

/// The header a `.npy` declares, checked before npyz sees it: its length (a
/// u16 in version 1, a u32 in 2 and 3, which npyz allocates before reading)
/// against the bytes present and NumPy's limit, and its bracket nesting.
fn check_npy_header(bytes: &[u8]) -> Result<()> {
    let (start, declared) = match (bytes.starts_with(b"\x93NUMPY"), bytes.get(6)) {
        (true, Some(1)) if bytes.len() >= 10 => {
            (10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize)
        }
        (true, Some(2 | 3)) if bytes.len() >= 12 => (
            12,
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
        ),
        _ => return Ok(()), // npyz names what is wrong with the preamble
    };
    if start + declared > bytes.len() {
        bail!(
            "the header declares {declared} bytes of header, the file has {} after the preamble",
            bytes.len() - start
        );
    }
    if declared > MAX_NPY_HEADER {
        bail!("the header is {declared} bytes, more than NumPy's limit of {MAX_NPY_HEADER}");
    }
    let mut depth = 0usize;
    for &b in &bytes[start..start + declared] {
        match b {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => continue,
        }
        if depth > MAX_NPY_NESTING {
            bail!("the header nests brackets more than {MAX_NPY_NESTING} deep; a .npy header is a flat dict");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
