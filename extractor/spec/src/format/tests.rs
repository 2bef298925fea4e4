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
fn shapes_are_read_from_headers_and_f64_npy_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (bin_path, npy_path) = (dir.path().join("a.bin"), dir.path().join("b.npy"));
    write_file(&bin_path, &[2, 3], &[0.0; 6]).unwrap();
    write_npy_f64(&npy_path, &[3, 1, 2], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).unwrap();
    assert_eq!(read_shape(&bin_path).unwrap(), [2, 3]);
    assert_eq!(read_shape(&npy_path).unwrap(), [3, 1, 2]);
    // The data is not read: a header alone still gives the shape.
    let header = std::fs::read(&bin_path).unwrap()[..20].to_vec();
    std::fs::write(&bin_path, header).unwrap();
    assert_eq!(read_shape(&bin_path).unwrap(), [2, 3]);
    let back = read_values(&npy_path).unwrap();
    assert_eq!(back.data, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "f8 kept exact");
    std::fs::write(&bin_path, 9i32.to_le_bytes()).unwrap();
    let err = format!("{:#}", read_shape(&bin_path).unwrap_err());
    assert!(err.contains("n_dims is 9"), "{err}");
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
