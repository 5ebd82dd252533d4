//! AMQP topic matching: `*` matches exactly one word, `#` zero or more.

/// Whether binding `pattern` matches `routing_key` on a topic exchange.
pub fn matches(pattern: &str, routing_key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = routing_key.split('.').collect();
    matches_words(&pattern, &key)
}

fn matches_words(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| matches_words(rest, &key[skip..])),
        Some((&word, rest)) => match key.split_first() {
            Some((first, key_rest)) => (word == "*" || word == *first) && matches_words(rest, key_rest),
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
