//! AMQP topic patterns, shared by Warren's code generator (which checks contracts) and its runtime (which
//! routes in memory and checks subscriptions): `*` matches exactly one word, `#` zero or more.
//!
//! ```
//! use warren_topology::topic::{matches, overlaps};
//!
//! assert!(matches("user.*", "user.registered"));
//! // Some key matches both: "order.eu.created".
//! assert!(overlaps("order.*.created", "*.eu.#"));
//! assert!(!overlaps("user.*", "item.#"));
//! ```

/// Whether binding `pattern` matches `routing_key` on a topic exchange. Allocates nothing.
///
/// Takes time proportional to the pattern's length times the key's, however many `#` the pattern has.
pub fn matches(pattern: &str, routing_key: &str) -> bool {
    // Most bindings are plain keys from a contract: compare them whole.
    if !pattern.contains(['*', '#']) {
        return pattern == routing_key;
    }
    // RabbitMQ reads an empty routing key as no words at all: only `#`s match it (`*` needs a word).
    if routing_key.is_empty() {
        return pattern.split('.').all(|word| word == "#");
    }
    // Wildcard matching over words, as glob matching over characters: `*` is glob's `?`, `#` glob's `*`. On
    // a mismatch only the most recent `#` matters: it swallows one more word and matching resumes after it.
    // (An earlier `#` swallowing more instead cannot help: the later `#` can swallow those words itself.)
    //
    // Positions are byte offsets of a word's start; a string of n dots has n + 1 words (a key reaching here is
    // at least one word: the empty key, no words, was answered above), so a string is used up when its offset
    // passes its length.
    let (mut p, mut k) = (0, 0);
    // After the last `#` seen: where the pattern resumes, and where the key resumes when the `#` swallows
    // one more word.
    let mut hash: Option<(usize, usize)> = None;
    while k <= routing_key.len() {
        if p <= pattern.len() {
            let word = word_at(pattern, p);
            let next_p = p + word.len() + 1;
            if word == "#" {
                // Swallow nothing for now.
                hash = Some((next_p, k));
                p = next_p;
                continue;
            }
            let key_word = word_at(routing_key, k);
            if word == "*" || word == key_word {
                p = next_p;
                k += key_word.len() + 1;
                continue;
            }
        }
        // A mismatch, or the pattern used up before the key: the last `#` swallows one more word.
        let Some((resume_p, swallowed_to)) = hash else {
            return false;
        };
        let resume_k = swallowed_to + word_at(routing_key, swallowed_to).len() + 1;
        hash = Some((resume_p, resume_k));
        (p, k) = (resume_p, resume_k);
    }
    // The key is used up: what is left of the pattern must be `#`s, matching nothing.
    while p <= pattern.len() {
        let word = word_at(pattern, p);
        if word != "#" {
            return false;
        }
        p += word.len() + 1;
    }
    true
}

/// The word of `words` starting at byte offset `start` (at most `words.len()`): up to the next dot or the end.
fn word_at(words: &str, start: usize) -> &str {
    let rest = &words[start..];
    rest.find('.').map_or(rest, |end| &rest[..end])
}

/// Whether some routing key matches both topic patterns `a` and `b`.
///
/// Used to check that a subscription pattern can ever receive a contract event whose key is a template
/// (`order.{region}.created` binds as `order.*.created`), and that two events' keys cannot collide.
pub fn overlaps(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    // Search the pairs of positions (i, j) both patterns can reach after producing the same words.
    let width = b.len() + 1;
    let mut seen = vec![false; (a.len() + 1) * width];
    let mut todo = vec![(0, 0)];
    while let Some((i, j)) = todo.pop() {
        if std::mem::replace(&mut seen[i * width + j], true) {
            continue;
        }
        if i == a.len() && j == b.len() {
            return true;
        }
        let (x, y) = (a.get(i).copied(), b.get(j).copied());
        // A `#` may produce no word at all.
        if x == Some("#") {
            todo.push((i + 1, j));
        }
        if y == Some("#") {
            todo.push((i, j + 1));
        }
        // Both produce one word: possible unless they are two different literal words. A `#` may go on
        // producing words, so it stays.
        if let (Some(x), Some(y)) = (x, y) {
            let wild = |w: &str| w == "*" || w == "#";
            if wild(x) || wild(y) || x == y {
                let next_i = if x == "#" { i } else { i + 1 };
                let next_j = if y == "#" { j } else { j + 1 };
                todo.push((next_i, next_j));
            }
        }
    }
    false
}

/// Why `pattern` is not a usable binding pattern, if it is not: it must be non-empty words separated by
/// single dots, each word either `*`, `#` or free of both.
pub fn pattern_problem(pattern: &str) -> Option<String> {
    if pattern.is_empty() {
        return Some("the pattern is empty".to_owned());
    }
    // Shown at most 64 characters long: patterns come from users (a gateway's clients, the CLI).
    let shown = |text: &str| match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    };
    for word in pattern.split('.') {
        if word.is_empty() {
            return Some(format!("\"{}\" has an empty word (two dots in a row, or a dot at an end)", shown(pattern)));
        }
        if word != "*" && word != "#" && word.contains(['*', '#']) {
            return Some(format!(
                "word \"{}\" of \"{}\" mixes a wildcard with other characters; `*` and `#` stand alone",
                shown(word),
                shown(pattern)
            ));
        }
    }
    None
}

/// Why `value` cannot be one word of a routing key, if it cannot: it must be non-empty and free of `.`, `*`
/// and `#` (which would split the key or act as wildcards in bindings).
pub fn word_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("is empty")
    } else if value.contains('.') {
        Some("contains '.'")
    } else if value.contains(['*', '#']) {
        Some("contains a wildcard ('*' or '#')")
    } else {
        None
    }
}

/// An enum value as a routing-key word: its proto name without the enum's `prefix` (as prost strips it for
/// variant names), in lower case: `NOTIFICATION_TYPE_WARNING` → `warning`.
pub fn enum_word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).filter(|rest| !rest.is_empty()).unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first, recursive matcher: plainly right, but exponential on repeated `#`. The reference for
    /// [`matches`].
    fn reference_matches(pattern: &str, routing_key: &str) -> bool {
        /// The first word of what is left, and the rest; `None` when no words are left.
        fn split(words: Option<&str>) -> Option<(&str, Option<&str>)> {
            words.map(|w| match w.split_once('.') {
                Some((first, rest)) => (first, Some(rest)),
                None => (w, None),
            })
        }

        fn words_match(pattern: Option<&str>, key: Option<&str>) -> bool {
            match split(pattern) {
                None => key.is_none(),
                // `#`: match zero words, or swallow one word and try again.
                Some(("#", rest)) => {
                    words_match(rest, key) || split(key).is_some_and(|(_, key_rest)| words_match(pattern, key_rest))
                }
                Some((word, rest)) => match split(key) {
                    Some((first, key_rest)) => (word == "*" || word == first) && words_match(rest, key_rest),
                    None => false,
                },
            }
        }

        if !pattern.contains(['*', '#']) {
            return pattern == routing_key;
        }
        // An empty key has no words (RabbitMQ's reading); any other string of n dots has n + 1.
        words_match(Some(pattern), (!routing_key.is_empty()).then_some(routing_key))
    }

    /// Every dotted string of 1 to `max_words` words drawn from `alphabet`.
    fn all_strings(alphabet: &[&str], max_words: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut last: Vec<String> = vec![String::new()];
        for words in 1..=max_words {
            last = last
                .iter()
                .flat_map(|prefix| {
                    alphabet
                        .iter()
                        .map(move |word| if words == 1 { (*word).to_owned() } else { format!("{prefix}.{word}") })
                })
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn matching_agrees_with_the_recursive_reference() {
        // The empty word too: `*` matches it in `a.` (two words), but `""` is a key of no words, as RabbitMQ
        // reads it.
        let patterns = all_strings(&["a", "b", "*", "#", ""], 4);
        let keys = all_strings(&["a", "b", ""], 5);
        assert_eq!((patterns.len(), keys.len()), (780, 363));
        for pattern in &patterns {
            for key in &keys {
                assert_eq!(matches(pattern, key), reference_matches(pattern, key), "{pattern:?} vs {key:?}");
            }
        }
    }

    #[test]
    fn many_hashes_match_in_linear_time() {
        // The recursive matcher tries every way of sharing the key's words among the `#`s: C(220, 20) here.
        let pattern = format!("{}.z", ["#"; 20].join("."));
        let mut words = vec!["w"; 199];
        words.push("z");
        assert!(matches(&pattern, &words.join(".")));
        words[199] = "y";
        assert!(!matches(&pattern, &words.join(".")));
        words[100] = "z";
        assert!(!matches(&pattern, &words.join(".")));
        let short = "#.#.#.#.#.#.z";
        assert!(!matches(short, &["w"; 40].join(".")));
        assert!(matches(&format!("{short}.#"), &["w", "z"].repeat(20).join(".")));
    }

    #[test]
    fn empty_words_are_words() {
        for (pattern, key, expected) in [
            // Checked against RabbitMQ 3.10: an empty routing key reaches `#`, `#.#` and `` bindings only.
            ("*", "", false),
            ("*.#", "", false),
            ("#", "", true),
            ("#.#", "", true),
            ("", "", true),
            ("*.*", "", false),
            ("*", "a.", false),
            ("*.*", "a.", true),
            ("a.#", "a.", true),
            ("#.b", ".b", true),
            ("a.*", "a", false),
        ] {
            assert_eq!(matches(pattern, key), expected, "{pattern:?} vs {key:?}");
            assert_eq!(reference_matches(pattern, key), expected, "reference: {pattern:?} vs {key:?}");
        }
    }

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        for (pattern, key, expected) in [
            ("user.*", "user.registered", true),
            ("user.*", "item.listed", false),
            ("user.*", "user.a.b", false),
            ("user.#", "user.a.b", true),
            ("user.#", "user", true),
            ("#", "anything.at.all", true),
            ("*.registered", "user.registered", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.c", false),
            ("#.c", "c", true),
            ("a.#.c", "a.x.y.c", true),
            ("user.registered", "user.registered", true),
        ] {
            assert_eq!(matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }

    #[test]
    fn overlap_means_some_key_matches_both() {
        for (a, b, expected) in [
            ("user.*", "user.registered", true),
            ("user.*", "item.listed", false),
            ("order.*.created", "order.eu.created", true),
            ("order.*.created", "order.eu.deleted", false),
            ("order.*.created", "#.created", true),
            ("order.*.created", "order.#", true),
            ("order.*.created", "order", false),
            ("order.*.created", "*.*", false),
            ("#", "a.b.c", true),
            ("#", "#", true),
            ("a.#", "#.b", true),
            ("a.#.c", "*.b.*", true),
            ("a.#.c", "x.#", false),
            ("*.*", "#.x.y.z", false),
            ("#.a.#", "b.#", true),
            ("a", "a", true),
            ("a", "b", false),
        ] {
            assert_eq!(overlaps(a, b), expected, "{a} vs {b}");
            assert_eq!(overlaps(b, a), expected, "{b} vs {a} (symmetry)");
        }
    }

    #[test]
    fn overlap_agrees_with_matching_on_plain_keys() {
        let patterns = ["#", "*", "a.*", "a.#", "#.b", "*.b.#", "a.*.c", "a.#.c"];
        let keys = ["a", "b", "a.b", "a.c", "a.b.c", "a.x.y.c", "x.b", "x.b.y"];
        for pattern in patterns {
            for key in keys {
                assert_eq!(overlaps(pattern, key), matches(pattern, key), "{pattern} vs {key}");
            }
        }
    }

    #[test]
    fn bad_patterns_and_words_are_named() {
        assert!(pattern_problem("user.*").is_none());
        assert!(pattern_problem("#").is_none());
        assert!(pattern_problem("").unwrap().contains("empty"));
        assert!(pattern_problem("user..x").unwrap().contains("empty word"));
        assert!(pattern_problem("user.a*").unwrap().contains("stand alone"));
        assert_eq!(word_problem("eu"), None);
        assert_eq!(word_problem(""), Some("is empty"));
        assert_eq!(word_problem("e.u"), Some("contains '.'"));
        assert_eq!(word_problem("e#"), Some("contains a wildcard ('*' or '#')"));
    }
}
