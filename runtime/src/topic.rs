//! AMQP topic matching (`*` one word, `#` zero or more), re-exported from `warren-topology`.

pub use warren_topology::topic::{matches, overlaps, pattern_problem, word_problem};
