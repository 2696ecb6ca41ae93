//! `registry-edge init`: a configuration from what `az acr show-endpoints` prints.

use std::fmt::Write as _;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShowEndpoints {
    login_server: String,
    #[serde(default)]
    data_endpoints: Vec<Endpoint>,
    #[serde(default)]
    regional_endpoints: Vec<Endpoint>,
}

#[derive(Debug, Deserialize)]
struct Endpoint {
    region: String,
    endpoint: String,
}

/// The JSON as `az` prints it may carry trailing commas (the product announcement's example
/// does): drop a comma that only whitespace separates from a closing bracket, outside strings.
fn strip_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        if c == ',' {
            let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if matches!(next, Some('}') | Some(']')) {
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn host_of(endpoint: &str) -> &str {
    let e = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    e.trim_end_matches('/')
}

/// The YAML configuration, or a message saying what is wrong with the input.
pub fn render(json: &str, public_host: &str, data_host: &str) -> Result<String, String> {
    let parsed: ShowEndpoints = serde_json::from_str(&strip_trailing_commas(json))
        .map_err(|e| format!("not the JSON of `az acr show-endpoints`: {e}"))?;
    for d in &parsed.data_endpoints {
        if host_of(&d.endpoint).ends_with(".blob.core.windows.net") {
            return Err(format!(
                "data endpoint {} of {} is a storage account, not a dedicated data endpoint: \
                 enable dedicated data endpoints (`az acr update --name <registry> --data-endpoint-enabled`) \
                 and run `az acr show-endpoints` again",
                d.endpoint, d.region
            ));
        }
    }
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Written by `registry-edge init` from `az acr show-endpoints` output.\n\
         # Review the listeners, certificates, GeoIP and access sections; `registry-edge check -c FILE` validates.\n\
         version: 1\n\
         server:\n  threads: 2\n  grace_period: 30s\n  graceful_shutdown_timeout: 10s\n  \
         pid_file: /run/registry-edge/registry-edge.pid\n  upgrade_sock: /run/registry-edge/upgrade.sock\n\
         listeners:\n  - address: \"[::]:443\"\n    tls:\n      certificates:\n        \
         - {{ cert: /etc/registry-edge/tls/{public_host}.pem, key: /etc/registry-edge/tls/{public_host}.key }}\n        \
         - {{ cert: /etc/registry-edge/tls/{data_host}.pem, key: /etc/registry-edge/tls/{data_host}.key }}\n  \
         - address: \"[::]:80\"\n    redirect_to_https: true\n\
         admin:\n  address: \"0.0.0.0:9901\"\n\
         registry:\n  login_server: {}\n  public_host: {public_host}\n  tls: true",
        host_of(&parsed.login_server)
    );
    if !parsed.regional_endpoints.is_empty() {
        y.push_str("  regional_endpoints:\n");
        for r in &parsed.regional_endpoints {
            let _ = writeln!(
                y,
                "    - {{ region: {}, endpoint: {} }}",
                r.region,
                host_of(&r.endpoint)
            );
        }
    }
    if !parsed.data_endpoints.is_empty() {
        y.push_str("  data_endpoints:\n");
        for d in &parsed.data_endpoints {
            let _ = writeln!(
                y,
                "    - {{ region: {}, endpoint: {}, public_host: {data_host} }}",
                d.region,
                host_of(&d.endpoint)
            );
        }
        let _ = writeln!(y, "local_region: {}", parsed.data_endpoints[0].region);
    }
    y.push_str(
        "clients:\n  trusted_proxies: []\n\
         access:\n  mode: enforce\n  read_only: true\n\
         logging:\n  access_log: stdout\n",
    );
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the dedicated data endpoints announcement, trailing commas and all.
    const SEED: &str = r#"{
"loginServer": "contoso.azurecr.io",
"dataEndpoints": [
{
"region": "eastus",
"endpoint": "contoso.eastus.data.azurecr.io",
},
{
"region": "westus",
"endpoint": "contoso.westus.data.azurecr.io",
}
]
}"#;

    #[test]
    fn seed_example() {
        let y = render(SEED, "registry.contoso.com", "data.contoso.com").unwrap();
        assert!(y.contains("login_server: contoso.azurecr.io"));
        assert!(y.contains("- { region: westus, endpoint: contoso.westus.data.azurecr.io, public_host: data.contoso.com }"));
        let c = registry_edge_config::parse(
            &y,
            "init.yaml",
            std::path::Path::new("."),
            registry_edge_config::Options { check_files: false },
        )
        .unwrap();
        assert_eq!(c.registry.data_endpoints.len(), 2);
        assert!(c.registry.data_endpoints[0].shared_public_host);
    }

    #[test]
    fn storage_accounts_are_refused() {
        let json = r#"{"loginServer":"c.azurecr.io","dataEndpoints":[{"region":"eastus","endpoint":"*.blob.core.windows.net"}]}"#;
        let e = render(json, "r.example", "d.example").unwrap_err();
        assert!(e.contains("enable dedicated data endpoints"), "{e}");
    }

    #[test]
    fn commas_inside_strings_stay() {
        assert_eq!(strip_trailing_commas(r#"{"a":"x,}",}"#), r#"{"a":"x,}"}"#);
    }
}
