//! `[tracing]`: where request spans go. Only the keys and their defaults live here;
//! what the spans are and how they are sent is `crate::telemetry`.

use serde::Deserialize;

use super::{UpstreamUrl, env};

/// `[tracing]`: request spans exported over OTLP/HTTP (protobuf) to a collector
/// (OpenTelemetry Collector, Jaeger, Tempo, a vendor's endpoint). Without
/// `otlp_endpoint` nothing is exported and a request pays almost nothing for tracing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tracing {
    /// The collector's OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318`; a URL without a
    /// path gets the standard `/v1/traces`, one with a path is used as written.
    /// Credentials a vendor wants go in the standard `OTEL_EXPORTER_OTLP_HEADERS`.
    pub otlp_endpoint: Option<UpstreamUrl>,
    /// `service.name` of the spans: how this deployment is found in the collector.
    #[serde(deserialize_with = "env::expanded")]
    pub service_name: String,
    /// Share of requests traced (0 to 1) when the client did not decide. A client's
    /// `traceparent` decides for its own requests (sampled or not), so a trace is never
    /// cut in the middle.
    pub sample_ratio: f64,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            otlp_endpoint: None,
            service_name: "outlast".to_owned(),
            sample_ratio: 1.0,
        }
    }
}

impl Tracing {
    /// What is wrong with these keys, as (key, message); empty when nothing is.
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(url) = &self.otlp_endpoint
            && !matches!(url.scheme(), "http" | "https")
        {
            out.push((
                "otlp_endpoint",
                format!("`{url}`: must be an http:// or https:// URL (OTLP over HTTP, e.g. http://127.0.0.1:4318)"),
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            out.push((
                "sample_ratio",
                format!(
                    "{} is not a share: must be from 0 (none) to 1 (every request)",
                    self.sample_ratio
                ),
            ));
        }
        if self.service_name.trim().is_empty() {
            out.push((
                "service_name",
                "must name this service, e.g. \"outlast\"".into(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    const CHAIN: &str = "\n[[chains]]\nname = \"local\"\nchain_id = 31337\n\n[[chains.upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\noperator = \"self\"\n";

    /// `section` loads, or its problems as `key: message` with their line.
    fn check(section: &str, expected: Result<(), &[&str]>) {
        let got = crate::config::load_str(&format!("{section}\n{CHAIN}"))
            .map(|_| ())
            .map_err(|p| {
                p.0.iter()
                    .map(|p| format!("{}:{}", p.line, p.key))
                    .collect::<Vec<_>>()
            });
        match expected {
            Ok(()) => assert!(got.is_ok(), "{section}: {got:?}"),
            Err(want) => assert_eq!(got.err().unwrap_or_default(), want, "{section}"),
        }
    }

    #[test]
    fn tracing_is_off_by_default_and_each_key_is_checked() {
        let config = crate::config::load_str(CHAIN).expect("loads");
        assert!(config.tracing.otlp_endpoint.is_none());
        assert_eq!(config.tracing.service_name, "outlast");
        check("", Ok(()));
        check(
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nservice_name = \"rpc-eu\"\nsample_ratio = 0.25",
            Ok(()),
        );
        check(
            "[tracing]\notlp_endpoint = \"grpc://127.0.0.1:4317\"",
            Err(&["2:tracing.otlp_endpoint"]),
        );
        check(
            "[tracing]\nsample_ratio = 1.5\nservice_name = \" \"",
            Err(&["2:tracing.sample_ratio", "3:tracing.service_name"]),
        );
        check(
            "[tracing]\notlp_endpont = \"http://127.0.0.1:4318\"",
            Err(&["2:tracing.otlp_endpont"]),
        );
    }
}
