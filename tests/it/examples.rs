//! The example configs (make run, the Docker image) parse and validate.

use std::path::Path;

use compute_ctl::http::jwks;
use compute_ctl::spec::{self, Reserved};

#[test]
fn example_configs_are_valid() {
    for file in ["examples/compute.json", "examples/docker/config.json"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        // Both run with `--connstr postgresql://cloud_admin@...`.
        let config = spec::load_config(&path, &Reserved::new("cloud_admin", "neon_superuser"))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(config.spec.is_some(), "{file} has no spec");
        jwks::verifying_keys(&config.compute_ctl_config.jwks, "compute_ctl_config.jwks.")
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}
