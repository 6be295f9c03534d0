//! The example configs (make run, the Docker image) parse and validate.

use std::path::Path;

#[test]
fn example_configs_are_valid() {
    for file in ["examples/compute.json", "examples/docker/config.json"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let config =
            compute_ctl::spec::load_config(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(config.spec.is_some(), "{file} has no spec");
    }
}
