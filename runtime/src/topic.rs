//! AMQP topic matching: `*` matches exactly one word, `#` zero or more.

/// Whether binding `pattern` matches `routing_key` on a topic exchange. Allocates nothing.
pub fn matches(pattern: &str, routing_key: &str) -> bool {
    // Most bindings are plain keys from a contract: compare them whole.
    if !pattern.contains(['*', '#']) {
        return pattern == routing_key;
    }
    words_match(Some(pattern), Some(routing_key))
}

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

#[cfg(test)]
mod tests {
    use super::matches;

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
}
