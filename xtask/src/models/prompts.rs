//! The prompts checks and benchmarks run, defined once.

/// About 120 GPT-2 tokens of ordinary English: long enough for stable timings.
pub const PERF_PROMPT: &str = "The history of natural language processing generally started in the 1950s, although work can be \
found from earlier periods. In 1950, Alan Turing published an article titled Computing Machinery and Intelligence which \
proposed what is now called the Turing test as a criterion of intelligence. The Georgetown experiment in 1954 involved \
fully automatic translation of more than sixty Russian sentences into English. The authors claimed that within three or \
five years, machine translation would be a solved problem. However, real progress was much slower, and after a report \
in 1966 found that ten years of research had failed to fulfill the expectations, funding was dramatically reduced.";

/// The default prompt of a comparison without a manifest, whose pass is
/// also what the nodes are paired on: the paragraph's first sentence, about
/// 20 tokens (two tokens say too little: position 0 attends to itself
/// alone, and rope barely turns).
pub const MATCHING_PROMPT: &str = "The history of natural language processing generally started in the 1950s, although work can be \
found from earlier periods.";

/// `words` words of [`PERF_PROMPT`], repeated as often as needed.
pub fn words_of_english(words: usize) -> String {
    PERF_PROMPT
        .split_whitespace()
        .cycle()
        .take(words)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_prompt_repeats_to_the_length_asked() {
        let text = super::words_of_english(200);
        assert_eq!(text.split(' ').count(), 200);
        assert!(text.starts_with("The history of") && text.contains("reduced. The history"));
    }
}
