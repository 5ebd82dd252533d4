//! The size of a publish future. A caller running many publishes at once copies each whole future into a
//! slot (`buffer_unordered`, `join_all`, a spawned task), so it is kept small: see `Transport::publish_until`
//! in the runtime. It was 3,192 bytes with lapin's unconfirmed publish inline and each layer an `async fn`,
//! 1,632 since.

use warren::{Bus, PublishOptions};
use warren_contracts::gametrade::v1::UserRegistered;

/// Room for a compiler to lay futures out a little differently, not for another large state.
const LIMIT: usize = 2048;

#[tokio::test]
async fn a_publish_future_stays_small() {
    let bus = Bus::in_memory();
    let event = UserRegistered { user_id: 1, username: "ann".into(), email: String::new() };
    let sizes = [
        ("publish", std::mem::size_of_val(&bus.publish(&event))),
        ("publish_with", std::mem::size_of_val(&bus.publish_with(&event, PublishOptions::default()))),
    ];
    for (name, size) in sizes {
        assert!(
            size <= LIMIT,
            "Bus::{name}'s future is {size} bytes, over {LIMIT}: a large future (an unboxed lapin publish, an \
             `async fn` holding a copy of its arguments) is on a publish's path"
        );
    }
}
