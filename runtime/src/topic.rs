//! AMQP topic matching (`*` one word, `#` zero or more), re-exported from `warren-topology`.

pub use warren_topology::topic::{enum_word, matches, overlaps, pattern_problem, word_problem};
