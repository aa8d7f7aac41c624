//! docs/openapi.yaml describes every route the API serves.

#[test]
fn every_route_is_in_the_openapi_file() {
    let spec = include_str!("../../../docs/openapi.yaml");
    let source = include_str!("../src/api.rs");
    let routes: Vec<&str> = source
        .split(".route(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(routes.len() >= 10, "{routes:?}");
    for r in routes {
        assert!(
            spec.contains(&format!("  {r}:")),
            "{r} is served but not described in docs/openapi.yaml"
        );
    }
}
