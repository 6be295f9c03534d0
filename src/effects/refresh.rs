//! `/refresh_configuration`: the configuration fetched again from the control plane.

use std::sync::Arc;

use compute_states::Event;

use super::Work;
use crate::report::Configuration;
use crate::spec::Reserved;

impl Work {
    /// Fetch the configuration again from the control plane; its spec comes back as a
    /// refreshed `SpecReceived`. A failure, or an answer without a spec, leaves the
    /// configuration in force.
    pub(super) async fn fetch_spec(&self) {
        let Some(control_plane) = &self.node.control_plane else {
            self.reporter.event(Event::ConfigurationFailed {
                error: "refreshing the configuration: no --control-plane-uri to fetch it from"
                    .to_owned(),
            });
            return;
        };
        let reserved = Reserved::new(&self.node.superuser, &self.node.privileged_role);
        let mut requests = crate::control_plane::Requests::new();
        let fetched = crate::control_plane::fetch_config(
            &control_plane.uri,
            &control_plane.compute_id,
            &mut requests,
            &reserved,
        )
        .await;
        self.reporter.cplane_requests(requests);
        let error = match fetched {
            Ok(config) => match config.spec {
                Some(spec) => {
                    // The keys in force stay (an empty set changes nothing): a refresh is
                    // Postgres's request, and must not be able to lock the API out.
                    self.reporter.spec(Configuration {
                        spec: Arc::new(spec),
                        jwks: Default::default(),
                        tls: config.compute_ctl_config.tls,
                        source: compute_states::SpecSource::Refresh,
                    });
                    return;
                }
                None => "the control plane has no spec for this compute (status empty)".to_owned(),
            },
            Err(error) => format!("{error:#}"),
        };
        self.reporter.event(Event::ConfigurationFailed {
            error: format!(
                "refreshing the configuration: {error}; the configuration in force stays"
            ),
        });
    }
}
