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
mod tests {
    use super::*;

    fn bin(shape: &[i64], data: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        write(Format::Bin, &mut out, shape, data).unwrap();
        out
    }

    #[test]
    fn bin_layout_is_the_seed_format() {
        let bytes = bin(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(&bytes[0..4], &2i32.to_le_bytes());
        assert_eq!(&bytes[4..12], &2i64.to_le_bytes());
        assert_eq!(&bytes[12..20], &3i64.to_le_bytes());
        assert_eq!(&bytes[20..24], &1.0f32.to_le_bytes());
        assert_eq!(bytes.len(), 4 + 16 + 24);
        let back = parse_bin(&bytes).unwrap();
        assert_eq!(
            back,
            Tensor {
                shape: vec![2, 3],
                data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
            }
        );
    }

    #[test]
    fn npy_round_trips() {
        let mut bytes = Vec::new();
        write(Format::Npy, &mut bytes, &[1, 2, 2], &[0.5, -1.0, 3.25, 8.0]).unwrap();
        assert!(bytes.starts_with(b"\x93NUMPY\x01\x00"), "NPY v1.0 magic");
        let back = parse_npy(&bytes).unwrap();
        assert_eq!(back.shape, [1, 2, 2]);
        assert_eq!(back.data, [0.5, -1.0, 3.25, 8.0]);
    }

    #[test]
    fn corrupted_bin_files_are_rejected_with_their_defect() {
        let good = bin(&[2, 3], &[0.0; 6]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 3].to_vec(), "truncated data"),
            (good[..2].to_vec(), "truncated header"),
            ([good.clone(), vec![0; 4]].concat(), "4 trailing bytes"),
            (
                [&0i32.to_le_bytes()[..], &good[4..]].concat(),
                "n_dims is 0",
            ),
            (
                [&99i32.to_le_bytes()[..], &good[4..]].concat(),
                "n_dims is 99",
            ),
            (
                [&good[..4], &(-2i64).to_le_bytes()[..], &good[12..]].concat(),
                "dimension 0 is negative (-2)",
            ),
        ];
        for (bytes, defect) in cases {
            let msg = format!("{:#}", parse_bin(&bytes).unwrap_err());
            assert!(msg.contains(defect), "expected `{defect}` in: {msg}");
        }
    }

    #[test]
    fn read_f64_takes_bin_and_npy_of_f4_and_f8() {
        let dir = tempfile::tempdir().unwrap();
        let bin_path = dir.path().join("a.bin");
        std::fs::write(&bin_path, bin(&[2], &[0.5, -2.0])).unwrap();
        assert_eq!(read_f64(&bin_path).unwrap(), (vec![2], vec![0.5, -2.0]));

        let f8 = dir.path().join("b.npy");
        let mut bytes = Vec::new();
        let mut w = npyz::WriteOptions::<f64>::new()
            .default_dtype()
            .shape(&[1, 2])
            .writer(&mut bytes)
            .begin_nd()
            .unwrap();
        w.extend([0.1f64, 1e-300]).unwrap();
        w.finish().unwrap();
        std::fs::write(&f8, &bytes).unwrap();
        assert_eq!(
            read_f64(&f8).unwrap(),
            (vec![1, 2], vec![0.1, 1e-300]),
            "f8 keeps full precision"
        );

        let f4 = dir.path().join("c.npy");
        let mut bytes = Vec::new();
        write(Format::Npy, &mut bytes, &[3], &[1.0, 2.5, -4.0]).unwrap();
        std::fs::write(&f4, &bytes).unwrap();
        assert_eq!(read_f64(&f4).unwrap(), (vec![3], vec![1.0, 2.5, -4.0]));

        let f2 = dir.path().join("d.npy");
        let mut bytes = Vec::new();
        let mut w = npyz::WriteOptions::<npyz::half::f16>::new()
            .default_dtype()
            .shape(&[2])
            .writer(&mut bytes)
            .begin_nd()
            .unwrap();
        w.extend([1.5f32, -0.25].map(npyz::half::f16::from_f32))
            .unwrap();
        w.finish().unwrap();
        std::fs::write(&f2, &bytes).unwrap();
        assert_eq!(read_f64(&f2).unwrap(), (vec![2], vec![1.5, -0.25]), "f16");

        let i4 = dir.path().join("e.npy");
        let mut bytes = Vec::new();
        let mut w = npyz::WriteOptions::<i32>::new()
            .default_dtype()
            .shape(&[1])
            .writer(&mut bytes)
            .begin_nd()
            .unwrap();
        w.extend([7]).unwrap();
        w.finish().unwrap();
        std::fs::write(&i4, &bytes).unwrap();
        let msg = format!("{:#}", read_f64(&i4).unwrap_err());
        assert!(msg.contains("e.npy") && msg.contains("dtype <i4"), "{msg}");

        std::fs::write(&f4, b"\x93NUMPY junk").unwrap();
        let msg = format!("{:#}", read_f64(&f4).unwrap_err());
        assert!(
            msg.contains("c.npy") && msg.contains("not a valid tensor file"),
            "{msg}"
        );
    }

    #[test]
    fn npy_headers_past_the_file_or_nested_deep_are_refused_before_npyz_reads_them() {
        // Found by `cargo xtask fuzz`: a version-3 preamble whose u32 header
        // length reads 662 MB made npyz allocate it (libFuzzer: out-of-memory).
        let mut v3 = b"\x93NUMPY\x03\x00".to_vec();
        v3.extend(0x277b_0076u32.to_le_bytes());
        v3.extend(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 12, 2, 2, ), }\n");
        let mut v1 = b"\x93NUMPY\x01\x00".to_vec();
        v1.extend(60_000u16.to_le_bytes());
        v1.extend([b' '; 50]);
        // Found by `cargo xtask fuzz`: 31 nested braces in a 118-byte header
        // kept npyz's parser busy for minutes (libFuzzer: timeout).
        let header = format!("{{'descr': '<f4', {}", "{".repeat(31));
        let mut nested = b"\x93NUMPY\x01\x00".to_vec();
        nested.extend(118u16.to_le_bytes());
        nested.extend(format!("{header:<117}\n").as_bytes());
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend(20_000u32.to_le_bytes());
        v2.extend([b' '; 20_000]);
        for (bytes, expected) in [
            (
                &v3,
                "declares 662372470 bytes of header, the file has 69 after the preamble",
            ),
            (
                &v1,
                "declares 60000 bytes of header, the file has 50 after the preamble",
            ),
            (&nested, "nests brackets more than 4 deep"),
            (
                &v2,
                "the header is 20000 bytes, more than NumPy's limit of 10000",
            ),
        ] {
            for msg in [
                format!("{:#}", parse(bytes, Format::Npy).unwrap_err()),
                format!("{:#}", parse_npy_f64(bytes).unwrap_err()),
            ] {
                assert!(msg.contains(expected), "{msg}");
            }
        }
    }

    #[test]
    fn a_shape_whose_product_overflows_before_a_zero_is_refused() {
        // Found by `cargo xtask fuzz`: [936748722499707997, 10, 0, ...] holds
        // no element, but 9.4e18 overflows the i64 product every reader takes.
        let crash = b"\x08\x00\x00\x00\x5d\x64\x65\x00\x00\x00\x00\x0d\x0a\x00\x00\x00\x00\x00\x00\x00\
            \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x11\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
            \x00\x00\x5c\x5c\x5c\x09\x09\x09\x09\x09\x09\x09\x00\x00\x00\x00\x00\x00\x00\x80\x3e\x3e";
        let msg = format!("{:#}", parse(crash, Format::Bin).unwrap_err());
        assert!(
            msg.starts_with("shape [936748722499707997, 10, 0, "),
            "{msg}"
        );
        assert!(msg.ends_with("] overflows"), "{msg}");
    }

    #[test]
    fn headers_claiming_two_to_the_forty_elements_are_refused_before_allocating() {
        let mut bin = 1i32.to_le_bytes().to_vec();
        bin.extend((1i64 << 40).to_le_bytes());
        bin.extend([0u8; 64]);
        let msg = format!("{:#}", parse(&bin, Format::Bin).unwrap_err());
        assert!(
            msg.contains(
                "truncated data: shape [1099511627776] needs 4398046511116 bytes, the file has 76"
            ),
            "{msg}"
        );

        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }";
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let padded = format!("{header:<117}\n");
        npy.extend((padded.len() as u16).to_le_bytes());
        npy.extend(padded.as_bytes());
        npy.extend([0u8; 64]);
        for msg in [
            format!("{:#}", parse(&npy, Format::Npy).unwrap_err()),
            format!("{:#}", parse_npy_f64(&npy).unwrap_err()),
        ] {
            assert!(
                msg.contains(
                    "declares shape [1099511627776] of <f4, more data than the file's 192 bytes"
                ),
                "{msg}"
            );
        }
    }

    #[test]
    fn read_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint_01.bin");
        std::fs::write(&path, &bin(&[4], &[1.0; 4])[..10]).unwrap();
        let msg = format!("{:#}", read(&path).unwrap_err());
        assert!(
            msg.contains("checkpoint_01.bin (10 bytes) is not a valid checkpoint"),
            "{msg}"
        );
    }

    #[test]
    fn reads_bin_and_npy() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("x.bin");
        let mut bytes = 2i32.to_le_bytes().to_vec();
        for d in [2i64, 3] {
            bytes.extend_from_slice(&d.to_le_bytes());
        }
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.5] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&bin, &bytes).unwrap();
        assert_eq!(
            read_values(&bin).unwrap(),
            Values {
                shape: vec![2, 3],
                data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]
            }
        );
        std::fs::write(&bin, &bytes[..bytes.len() - 1]).unwrap();
        let err = format!("{:#}", read_values(&bin).unwrap_err());
        assert!(err.contains("needs 44 bytes"), "{err}");

        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }";
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let pad = 64 - (10 + header.len() + 1) % 64;
        let text = format!("{header}{}\n", " ".repeat(pad));
        npy.extend_from_slice(&(text.len() as u16).to_le_bytes());
        npy.extend_from_slice(text.as_bytes());
        for v in [0.25f64, -1.0, 1e-300] {
            npy.extend_from_slice(&v.to_le_bytes());
        }
        let path = dir.path().join("x.npy");
        std::fs::write(&path, &npy).unwrap();
        assert_eq!(
            read_values(&path).unwrap(),
            Values {
                shape: vec![3],
                data: vec![0.25, -1.0, 1e-300]
            }
        );
    }
}
