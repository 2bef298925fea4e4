//! The command-line vocabulary every binary shares: llama.cpp's multi-letter
//! short flags, which clap cannot declare (`-fa`, `-ngl`), spelled as the
//! long flags they stand for before clap parses the line.

use std::ffi::OsString;

/// llama.cpp's multi-letter short flags and the long flag each stands for.
pub const LLAMA_SHORT: &[(&str, &str)] = &[("-fa", "--flash-attn"), ("-ngl", "--n-gpu-layers")];

/// `args` with every llama.cpp short flag in [`LLAMA_SHORT`] (alone, or as
/// `-fa=on`) replaced by its long form; everything else as it was. Values
/// are never rewritten: a flag's value that happens to read `-fa` follows
/// a flag, so only a token in flag position is touched.
pub fn expand_llama_short(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    let mut prompt_value_next = false;
    for arg in args {
        let rewritten = match arg.to_str() {
            Some(text) if !prompt_value_next => expand_one(text).map(OsString::from),
            _ => None,
        };
        // A value given to a flag that takes one (`-p -fa`) stays a value.
        prompt_value_next = matches!(arg.to_str(), Some("-p" | "--prompt"));
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

fn expand_one(arg: &str) -> Option<String> {
    LLAMA_SHORT.iter().find_map(|(short, long)| {
        if arg == *short {
            Some(long.to_string())
        } else {
            let value = arg.strip_prefix(short)?.strip_prefix('=')?;
            Some(format!("{long}={value}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(line: &str) -> Vec<String> {
        expand_llama_short(line.split(' ').map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn llama_short_flags_become_long_ones() {
        assert_eq!(
            expand("x -fa off -ngl 99 -m a.gguf"),
            [
                "x",
                "--flash-attn",
                "off",
                "--n-gpu-layers",
                "99",
                "-m",
                "a.gguf"
            ]
        );
        assert_eq!(expand("x -fa=auto"), ["x", "--flash-attn=auto"]);
    }

    #[test]
    fn other_flags_and_a_prompt_that_reads_like_one_stay() {
        assert_eq!(expand("x -f -fab --fa"), ["x", "-f", "-fab", "--fa"]);
        assert_eq!(expand("x -p -fa -n 1"), ["x", "-p", "-fa", "-n", "1"]);
    }
}
