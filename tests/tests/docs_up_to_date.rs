//! `docs/` holds exactly what `cargo xtask regen` (or `cargo xtask docs`) writes from the protos.

use warren_codegen::Config;
use warren_tests::workspace_root;

#[test]
fn docs_match_the_protos() {
    let root = workspace_root();
    let config = Config::for_workspace(&root).unwrap();
    let contracts = warren_codegen::load(&config).unwrap();
    let files = warren_codegen::docs::generate(&config, &contracts).unwrap();
    assert_eq!(files.len(), 2, "{:?}", files.keys());
    for (path, contents) in &files {
        let on_disk = std::fs::read(root.join("docs").join(path)).unwrap_or_default();
        assert!(on_disk == *contents, "docs/{} is stale: run `cargo xtask regen` and commit it", path.display());
    }
}

#[test]
fn the_catalog_lists_events_topology_and_services_with_their_comments() {
    let catalog = std::fs::read_to_string(workspace_root().join("docs/CATALOG.md")).unwrap();
    for expected in [
        "| [`gametrade.v1.UserRegistered`](#gametradev1userregistered) | `gametrade.events` (topic) | `user.registered` |",
        "A new user finished registration.",
        "### Exchange `trading.events` (topic, durable)",
        "Market data and trading signals, routed by dotted topic.",
        "| `<group>.trading.events` | 2 events (the exchange's event enum) | `market.tick`, `trading.signal` |",
        "`x-max-priority` 3",
        "### at.v1.IntSummator",
        "| `IntSum` | [`at.v1.IntSumRequest`](#atv1intsumrequest) | [`at.v1.IntSumResponse`](#atv1intsumresponse) | 5000 ms | Returns the sum a + b. |",
    ] {
        assert!(catalog.contains(expected), "docs/CATALOG.md lacks {expected:?}");
    }
}
