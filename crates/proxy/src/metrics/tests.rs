//! The metrics module's own tests.
use super::*;

/// docs/metrics.md lists exactly the metrics registered here.
#[test]
fn documentation_lists_every_metric() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    let mut documented: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("registry_edge_"))
        .map(str::to_owned)
        .collect();
    documented.sort();
    let m = Metrics::new().unwrap();
    m.rewrite_counters(&["r"]).unwrap();
    let mut registered = m.names().to_vec();
    registered.sort();
    let missing: Vec<_> = registered
        .iter()
        .filter(|n| !documented.contains(n))
        .collect();
    let stale: Vec<_> = documented
        .iter()
        .filter(|n| !registered.contains(n))
        .collect();
    assert!(missing.is_empty(), "undocumented metrics: {missing:?}");
    assert!(stale.is_empty(), "documented but not registered: {stale:?}");
}

#[test]
fn every_label_combination_is_resolved_up_front() {
    let m = Metrics::new().unwrap();
    assert_eq!(
        m.requests.len(),
        ROUTES.len() * METHODS.len() * STATUS_CLASSES.len() * Disposition::COUNT
    );
    let get = http::Method::GET;
    m.record(&Finished {
        route: Some(Route::Data(0)),
        method: &get,
        status: 206,
        disposition: Disposition::Proxied,
        seconds: 0.1,
        bytes_sent: 10,
        bytes_received: 0,
        geo: Some((Some(*b"CU"), true)),
    });
    m.geo(Some(*b"ZZ"), false);
    m.geo(None, false);
    let text = String::from_utf8(m.render()).unwrap();
    assert!(text.contains("registry_edge_http_requests_total{decision=\"proxied\",method=\"GET\",route=\"data\",status_class=\"2xx\"} 1"));
    assert!(
        text.contains("registry_edge_geo_requests_total{country=\"CU\",decision=\"refused\"} 1")
    );
    assert!(text
        .contains("registry_edge_geo_requests_total{country=\"unknown\",decision=\"allowed\"} 2"));
    assert!(text.contains("registry_edge_http_response_body_bytes_total 10"));
}

/// Every reason of every outcome type has its series from the start, under its label, and
/// counting one counts that series alone.
#[test]
fn every_outcome_has_its_own_series() {
    let m = Metrics::new().unwrap();
    for &r in EdgeReason::ALL {
        m.edge_response(r);
    }
    for &r in PolicyReason::ALL {
        m.refusal(r, r.index() % 2 == 1);
    }
    for &k in SecurityKind::ALL {
        m.security_event(k);
    }
    let text = String::from_utf8(m.render()).unwrap();
    for r in EdgeReason::ALL {
        let line = format!(
            "registry_edge_http_edge_responses_total{{reason=\"{}\"}} 1",
            r.label()
        );
        assert!(text.contains(&line), "{line}");
    }
    for r in PolicyReason::ALL {
        let (hit, miss) = if r.index() % 2 == 1 {
            ("detect", "enforce")
        } else {
            ("enforce", "detect")
        };
        for (mode, n) in [(hit, 1), (miss, 0)] {
            let line = format!(
                "registry_edge_access_refusals_total{{mode=\"{mode}\",reason=\"{}\"}} {n}",
                r.label()
            );
            assert!(text.contains(&line), "{line}");
        }
    }
    for k in SecurityKind::ALL {
        let line = format!(
            "registry_edge_security_events_total{{kind=\"{}\"}} 1",
            k.label()
        );
        assert!(text.contains(&line), "{line}");
    }
}

/// docs/metrics.md names every reason label the edge and the policy count.
#[test]
fn documentation_lists_every_reason() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap();
    let labels = EdgeReason::ALL
        .iter()
        .map(|r| r.label())
        .chain(PolicyReason::ALL.iter().map(|r| r.label()))
        .chain(SecurityKind::ALL.iter().map(|k| k.label()))
        .chain(Disposition::ALL.iter().map(|d| d.label()));
    for l in labels {
        assert!(
            doc.contains(&format!("`{l}`")),
            "docs/metrics.md lacks `{l}`"
        );
    }
}
