//! AMQP topic matching (`*` one word, `#` zero or more), re-exported from `warren-topic`.

pub use warren_topic::{matches, overlaps, pattern_problem, word_problem};
