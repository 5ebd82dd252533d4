//! Generates the quick-start contract into OUT_DIR, the way a team that prefers `build.rs` would.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    warren_codegen::Builder::new()
        // prost-build settings pass through (tests/tests/build_rs_quickstart.rs compares two orders)
        .type_attribute(".shop.v1.OrderPlaced", "#[derive(PartialOrd)]")
        .compile(&["shop/v1/shop.proto", "awkward/v1/awkward.proto", "rich/v1/rich.proto"], &["fixtures/build_rs"])?;
    Ok(())
}
