//! Validation rules where a plain comparison gets them wrong, checked the same by generated code and by
//! `warren-reflect` (the CLI's and the gateway's).

use prost::Message as _;
use warren::Payload as _;
use warren_contracts::trading::v1::OrderCheck;

/// NaN compares false with every bound, so `value < min` alone let it through `min: 0`.
#[test]
fn nan_is_outside_every_bound() {
    let order = OrderCheck { symbol: "ACME".into(), side: 1, quantity: f64::NAN, price: 10.0 };
    let violations = order.validate().expect_err("NaN is no quantity");
    assert!(violations.to_string().contains("quantity"), "{violations}");
    assert!(OrderCheck { quantity: 1.0, ..order.clone() }.validate().is_ok());

    let catalog = warren_reflect::Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
    let message = catalog.parse_protobuf("trading.v1.OrderCheck", &order.encode_to_vec()).unwrap();
    let error = catalog.validate(&message).expect_err("NaN is no quantity here either");
    assert!(error.to_string().contains("quantity"), "{error}");
}

/// A proto3 `optional` message field is checked inside, as a plain message field is (its oneof is synthetic).
#[test]
fn an_optional_message_field_is_checked_inside() {
    let root = std::env::temp_dir().join(format!("warren-reflect-rules-{}", std::process::id()));
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::create_dir_all(root.join("warren")).unwrap();
    std::fs::create_dir_all(root.join("t/v1")).unwrap();
    std::fs::copy(workspace.join("proto/warren/options.proto"), root.join("warren/options.proto")).unwrap();
    let proto = r#"syntax = "proto3";
package t.v1;
import "warren/options.proto";

// What is inside.
message Inner {
  // A count.
  int64 n = 1 [(warren.rules) = { min: 1 }];
}

// What holds it.
message Outer {
  // Maybe an inner one.
  optional Inner inner = 1;
  // Always an inner one.
  Inner plain = 2;
}
"#;
    std::fs::write(root.join("t/v1/t.proto"), proto).unwrap();
    let catalog = warren_reflect::Catalog::from_proto_dir(&root).unwrap();
    for json in [r#"{"inner": {"n": "0"}}"#, r#"{"plain": {"n": "0"}}"#] {
        let message = catalog.parse_json("t.v1.Outer", json).unwrap();
        let error = catalog.validate(&message).expect_err(json);
        assert!(error.to_string().contains("must be at least 1"), "{json}: {error}");
    }
    let fine = catalog.parse_json("t.v1.Outer", r#"{"inner": {"n": "1"}}"#).unwrap();
    assert!(catalog.validate(&fine).is_ok());
    let _ = std::fs::remove_dir_all(&root);
}
