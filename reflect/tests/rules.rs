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
